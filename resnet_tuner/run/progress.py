"""What a search prints: the data and plan lines, progress within a trial, a line per trial.

    data: 36 images of 3 classes at 16x16 px: 18 train, 9 val, 9 test
    search: 2 trials of Hyperband (brackets up to 2 epochs, factor 3, 1 iteration) ...
      epoch 3/10: loss 0.41, val_accuracy 0.88, 412 img/s        (long epochs, not a TTY)
    trial 3 of 10: val_accuracy=0.8125 | best 0.8750 | 1m02s elapsed, ~3m30s left
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import keras

from resnet_tuner.run.rundir import ENDED

#: Off a terminal, an epoch gets its line when it took at least this long.
EPOCH_LINE_SECONDS = 2.0


def duration(seconds: float) -> str:
    """`75` -> `1m15s`, `9` -> `9s`."""
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def data_line(data) -> str:
    """`data: 36 images of 3 classes at 16x16 px: 18 train, 9 val, 9 test`, and a hint when
    the training classes are imbalanced (the largest over 3x the smallest)."""
    counts = data.counts
    sizes = {split: sum(per_class.values()) for split, per_class in counts.items()}
    height, width = data.input_shape[:2]
    line = (f"data: {sum(sizes.values())} images of {data.num_classes} classes at "
            f"{height}x{width} px: " + ", ".join(f"{n} {split}" for split, n in sizes.items()))
    train = [n for n in counts["train"].values() if n]
    if train and max(train) > 3 * min(train):
        line += (f" (imbalanced: {max(train)} to {min(train)} training images a class; "
                 "see --class-weight balanced and --objective val_balanced_accuracy)")
    return line


def plan_line(options, total: int, epochs: int, done: int, precision: str | None = None) -> str:
    """What the search will run: `search: 10 trials of random search, 8 epochs each`.

    For Hyperband the total is what its brackets run (at most `--max-trials`),
    and the line says how to get more when the brackets are the limit. A
    `precision` (the resolved policy) other than float32 is named, with the
    way back to float32: `--precision auto`, the default, picks 16 bits on
    some machines only.
    """
    if options.tuner == "hyperband":
        iterations = options.hyperband_iterations
        what = (f"{total} trials of Hyperband (brackets up to {epochs} epochs, factor "
                f"{options.hyperband_factor}, {iterations} iteration{'s' * (iterations > 1)})")
    else:
        what = f"{total} trials of {options.tuner} search, {epochs} epochs each"
    if precision and precision != "float32":
        what += f", in {precision} (--precision float32 for full precision)"
    more = ("raise --hyperband-iterations to run more" if options.tuner == "hyperband"
            and total < options.max_trials else "raise --max-trials to run more")
    if getattr(options, "time_budget", None):
        from resnet_tuner.run.options import parse_duration

        seconds = parse_duration(options.time_budget)
        final = options.final_training
        what += f", within {duration(seconds)}"
        if final:
            what += (f"; the last {duration(final * seconds)} train the best configuration "
                     "again (--final-training)")
    if done >= total:
        return f"search: all {what} have run; {more}"
    resumed = f", {done} done: resuming" if done else ""
    limit = f"; {more}" if options.tuner == "hyperband" and total < options.max_trials else ""
    return f"search: {what}{resumed}{limit}"


def worker_line(tuner_id: str, trial, objective: str) -> str:
    """A worker's line for a trial it ran (the chief prints the search's progress)."""
    # A worker's copy of the trial has no score (the chief's oracle computes it):
    # read the objective from the trial's own metrics.
    best = None
    try:
        if trial.metrics.exists(objective):
            best = trial.metrics.get_best_value(objective)
    except Exception:  # a metric of another shape: fall back to the status
        best = None
    score = f"{best:.4f}" if best is not None else _score(trial)
    return f"worker {tuner_id}: trial {trial.trial_id} {objective}={score}"


def search_line(oracle, trial, *, started: float, done_before: int, total: int | None,
                now: float | None = None, budget=None) -> str:
    """`trial 3 of 10: val_accuracy=0.8125 | best 0.8750 | 1m02s elapsed, ~3m30s left`.

    Args:
        oracle: the search's oracle (its trials and best trial).
        trial: the trial that just ended.
        started: when the search (all its processes) started.
        done_before: trials that had ended when this process started; the time
            left is estimated from this process's pace.
        total: trials the search runs (None: no estimate).
        now: the current time (default: `time.time()`).
        budget: the search's `run.budget.TimeBudget`: the time left is the budget's.
    """
    from resnet_tuner.run.trials import FINAL_EPOCHS, FINAL_FROM

    done = sum(t.status in ENDED for t in oracle.trials.values())
    now = time.time() if now is None else now
    elapsed = now - started
    this_session = max(1, done - done_before)
    remaining = ""
    values = trial.hyperparameters.values
    if FINAL_EPOCHS in values:
        best = oracle.get_best_trials(1)
        best_text = f"{best[0].score:.4f}" if best and best[0].score is not None else "-"
        name = oracle.objective.name
        return (f"final training (the configuration of trial {values.get(FINAL_FROM, '?')}, "
                f"for the time left): {name}={_score(trial)} | "
                f"best {best_text} | {duration(elapsed)} elapsed")
    if budget is not None:
        remaining = f", {duration(budget.remaining(now))} of the budget left"
    elif total:
        left = max(0, total - done)
        remaining = f", ~{duration(elapsed / this_session * left)} left"
    best = oracle.get_best_trials(1)
    best_text = f"{best[0].score:.4f}" if best and best[0].score is not None else "-"
    of = f" of {total}" if total else ""
    return (f"trial {done}{of}: {oracle.objective.name}={_score(trial)} | best {best_text} | "
            f"{duration(elapsed)} elapsed{remaining}")


def _score(trial) -> str:
    return f"{trial.score:.4f}" if trial.score is not None else str(trial.status)


def _number(value: float) -> str:
    return f"{value:.4g}"


class EpochProgress(keras.callbacks.Callback):
    """Progress within a trial, which trains silently otherwise (`verbose=0`).

    On a terminal: one line updated in place, removed when the trial ends (its
    trial line follows): `epoch 2/10`, a bar over the trial's steps, images/s,
    the time left and the loss. It is drawn with `rich`, which Keras brings
    and uses for its own summaries.

    Elsewhere (a log file, CI): `  epoch 3/10: loss 0.41, val_accuracy 0.88, 412 img/s`
    for each epoch whose training took `min_seconds` or more. Shorter epochs
    end before anyone waits on them, and a line for each would bury the trial
    lines that matter: ten trials of ten one-second epochs on the digits would
    print 100. The first step of a fit is left out of the times and the rate:
    it traces and compiles the model, seconds that say nothing about the
    epochs (a tiny model's first epoch would otherwise read "2 img/s").

    keras-tuner deep-copies a search's callbacks for every trial, so this one
    holds no stream until training starts: `stream` is a function that returns
    it.

    Args:
        objective: the metric shown after the loss (the search's objective).
        batch_size: images per step, for images/s (None: steps/s instead).
        stream: returns where to write (default: `sys.stdout` at that time).
        min_seconds: the shortest epoch that gets a line off a terminal.
        live: the updating line (default: when the stream is a terminal).
    """

    def __init__(self, objective: str = "val_accuracy", batch_size: int | None = None,
                 stream: Callable[[], object] | None = None,
                 min_seconds: float = EPOCH_LINE_SECONDS, live: bool | None = None):
        super().__init__()
        self.objective = objective
        self.batch_size = batch_size
        self.stream = stream
        self.min_seconds = min_seconds
        self.live = live
        self._bar = None

    def _out(self):
        return self.stream() if self.stream else sys.stdout

    def _rate(self, steps: int, seconds: float) -> str:
        per_second = steps * (self.batch_size or 1) / max(seconds, 1e-9)
        return f"{per_second:,.0f} {'img' if self.batch_size else 'steps'}/s"

    def on_train_begin(self, logs=None):
        self._epochs = self.params.get("epochs")
        self._steps = self.params.get("steps")  # None: the data's length is unknown
        self._compiled_at = None  # the end of the fit's first step
        self._steps_since = 0  # steps since then
        out = self._out()
        live = self.live if self.live is not None else bool(getattr(out, "isatty", bool)())
        if live:
            self._start_bar(out)

    def _start_bar(self, out) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("  epoch {task.fields[epoch]}"), BarColumn(bar_width=24),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            TextColumn("{task.fields[loss]}"),
            console=Console(file=out), transient=True,
        )
        self._task = None
        self._bar.start()
        _LIVE.append(self)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = self._epoch_from = self._trained_until = time.perf_counter()
        self._epoch_steps = self._timed_steps = 0
        if self._bar is None:
            return
        label = f"{epoch + 1}/{self._epochs}"
        if self._task is None:  # the bar spans the epochs of this fit (Hyperband resumes)
            total = self._steps * (self._epochs - epoch) if self._steps else None
            self._task = self._bar.add_task("", total=total, epoch=label, rate="", loss="")
        else:
            self._bar.update(self._task, epoch=label)

    def on_train_batch_end(self, batch, logs=None):
        now = self._trained_until = time.perf_counter()
        self._epoch_steps += 1
        if self._compiled_at is None:  # timing starts after the first step
            self._compiled_at = self._epoch_from = now
        else:
            self._timed_steps += 1
            self._steps_since += 1
        if self._bar is None or self._task is None:
            return
        loss = (logs or {}).get("loss")
        rate = self._rate(self._steps_since, now - self._compiled_at) if self._steps_since else ""
        self._bar.update(self._task, advance=1, rate=rate,
                         loss=f"loss {_number(float(loss))}" if loss is not None else "")

    def on_epoch_end(self, epoch, logs=None):
        if self._bar is not None:
            return
        steps, timed = self._timed_steps, self._trained_until - self._epoch_from
        if not steps:  # a one-step first epoch: only its compiling step to time
            steps, timed = self._epoch_steps, self._trained_until - self._epoch_started
        # The epoch's training time, the compiling first step counted as a step.
        if timed * self._epoch_steps / max(steps, 1) < self.min_seconds:
            return
        logs = logs or {}
        parts = [f"{name} {_number(float(logs[name]))}" for name in dict.fromkeys(
            ("loss", self.objective)) if name in logs]
        parts.append(self._rate(steps, timed))
        out = self._out()
        out.write(f"  epoch {epoch + 1}/{self._epochs}: {', '.join(parts)}\n")
        out.flush()

    def on_train_end(self, logs=None):
        self.close()

    def close(self) -> None:
        """Removes the updating line (also when training stopped with an error)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self in _LIVE:
            _LIVE.remove(self)


#: Callbacks showing an updating line now: keras-tuner trains deep copies of a
#: search's callbacks, and a trial that fails skips `on_train_end`.
_LIVE: list[EpochProgress] = []


def close_live_lines() -> None:
    """Removes any updating line left by a trial that stopped with an error."""
    for callback in list(_LIVE):
        callback.close()
