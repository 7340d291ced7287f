"""A wall-clock budget for a whole search: `--time-budget 30m` / `time_budget=`.

The budget covers everything a search does, from reading the data to the
exported bundle. How it is spent:

1. **Search.** Trials run as the tuner chooses them, each stopped at the
   deadline if it runs into it (`Deadline`: training stops after the current
   batch, the partial epoch is validated, and the trial keeps its best
   epoch, as any trial does). No trial starts that the time left before the
   final training cannot hold: a trial is expected to take the median time
   of the finished ones.
2. **Final training** (`final_training`, a share of the budget, default
   0.5): the best configuration found is trained again from scratch in one
   more trial, for the time that is left: its cosine learning-rate schedule
   decays over that time, up to the deadline, which ends it (the number of
   epochs need not be guessed right: `final/epochs` holds the estimate from
   the best trial's seconds per epoch, `final_epochs_bound` the most it may
   run). It is an ordinary trial (its hyperparameters carry
   `final/epochs`): the export takes it when its validation score is the
   best, the search's best trial otherwise.
3. **Export**: `export_reserve` keeps time for the bundle (test set,
   `model.keras`, the deployment formats, the card).

Optionally (`median_stopping`), a trial whose best objective after an epoch
is worse than the median of the finished trials' best after the same epoch
is stopped there (`BelowMedian`; Google Vizier's median stopping rule, also
Optuna's `MedianPruner`): a bad configuration is decided in an epoch or two
and its time goes to the others.

What has been spent is kept in the tuner's project folder (`budget.json`,
written after every trial). A search resumed later (a rerun of the command,
or the next process of `resnet-tuner search`'s series) counts what earlier
sessions spent: the budget is the whole search's, not each session's.
Processes of one session share the session's start time
(`RecordingTuner.search_started_at`), so the seconds between them count too.
A new `time_budget` on resume replaces the old one (extending a search is
rerunning it with a larger budget).

A distributed search's chief applies the budget to the trials it hands out
(and the final training); a worker's running trial is not stopped at the
deadline.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import keras_tuner as kt

from resnet_tuner.run.options import parse_duration  # noqa: F401 (re-exported)

# The budget's file and the final training's hyperparameters are named in run.trials,
# which reads them without TensorFlow (`resnet-tuner trials`, the report).
from resnet_tuner.run.trials import BUDGET_FILE, FINAL_EPOCHS, FINAL_FROM  # noqa: F401

#: Default share of the budget kept for the final training of the best configuration.
FINAL_TRAINING = 0.5
#: The fewest epochs a final training is worth starting for.
MIN_FINAL_EPOCHS = 2

def export_reserve(seconds: float) -> float:
    """Seconds kept at the end of a budget for the end of the last trial (its last
    batch and validation), reloading the run and exporting the bundle.

    A twentieth of the budget, at least 30 s and at most 90 s, but never more
    than a quarter of it. Exporting the digits' best model (`model.keras`,
    SavedModel, LiteRT, the card) took 8-17 s on 2 CPU cores beside other
    jobs; Fashion-MNIST's (10,000 test images) 58-83 s beside them while every
    format ran all test images, 12.7 s alone since formats check 1,000
    (`bench/fashion_mnist.py`, 2026-12-04).
    """
    return min(90.0, max(30.0, 0.05 * seconds), 0.25 * seconds)


@dataclass
class TimeBudget:
    """The budget of one search and what has been spent of it.

    Attributes:
        seconds: the whole budget.
        session_started: `time.time()` when this session of the search began
            (its data reading included).
        earlier: seconds spent by earlier sessions.
        final_training: share of the budget kept for the final training
            (0: none).
        path: where the record is kept (None: not kept).
    """

    seconds: float
    session_started: float
    earlier: float = 0.0
    final_training: float = FINAL_TRAINING
    path: Path | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def open(cls, folder: str | os.PathLike, seconds: float, session_started: float,
             final_training: float = FINAL_TRAINING) -> TimeBudget:
        """The budget of the search whose project is `folder`, counting earlier sessions.

        A record written by this same session (another process of its series)
        carries over its `earlier`; one from an earlier session adds all it
        spent.
        """
        path = Path(folder) / BUDGET_FILE
        earlier, extra = 0.0, {}
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict):
            extra = saved.get("extra") or {}
            if abs(float(saved.get("session_started", 0)) - session_started) < 1e-3:
                earlier = float(saved.get("earlier", 0.0))
            else:
                earlier = float(saved.get("spent", 0.0))
        return cls(seconds=float(seconds), session_started=float(session_started),
                   earlier=earlier, final_training=float(final_training), path=path,
                   extra=extra)

    def spent(self, now: float | None = None) -> float:
        """Seconds of the budget spent, all sessions."""
        return self.earlier + max(0.0, (time.time() if now is None else now) - self.session_started)

    def remaining(self, now: float | None = None) -> float:
        """Seconds left of the budget (0 when over)."""
        return max(0.0, self.seconds - self.spent(now))

    @property
    def end(self) -> float:
        """The `time.time()` at which the budget ends."""
        return self.session_started + self.seconds - self.earlier

    @property
    def training_end(self) -> float:
        """The `time.time()` after which no model trains: the export's time is kept."""
        return self.end - export_reserve(self.seconds)

    @property
    def search_end(self) -> float:
        """The `time.time()` after which no search trial starts: the final training's
        share is kept."""
        return self.training_end - self.final_training * self.seconds

    def save(self, **extra) -> None:
        """Records what has been spent (atomic; `extra` is kept beside it)."""
        if self.path is None:
            return
        self.extra.update(extra)
        record = {"seconds": self.seconds, "spent": self.spent(),
                  "session_started": self.session_started, "earlier": self.earlier,
                  "final_training": self.final_training, "saved": time.time(),
                  "extra": self.extra}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{BUDGET_FILE}.{os.getpid()}")
        temporary.write_text(json.dumps(record, indent=1))
        os.replace(temporary, self.path)


def final_epochs_bound(estimated: int) -> int:
    """The epochs a final training may run: twice the estimate and two more.

    Its learning rate decays over the time left, up to the deadline
    (`training.CosineDecayPerStep(ends_at=)`), and the deadline stops it, so
    the estimate (from the best trial's seconds per epoch, which vary by tens
    of percent between epochs on a shared machine) only has to be generous:
    a final training planned at 6 epochs of 144 s once ran its 6 epochs of
    80 s and left 7.5 of a 20-minute budget unused.
    """
    return 2 * int(estimated) + 2


def read_budget(folder: str | os.PathLike) -> dict | None:
    """A search's `budget.json` (None: the search had no budget)."""
    try:
        return json.loads((Path(folder) / BUDGET_FILE).read_text())
    except (OSError, ValueError):
        return None


class _TrialCallback(keras.callbacks.Callback):
    """A callback made for one trial: keras-tuner's deep copy of a trial's callbacks
    hands back this same object, so the tuner reads what it recorded."""

    def __deepcopy__(self, memo):
        return self


class Deadline(_TrialCallback):
    """Stops training once `time.time()` passes `at`.

    Checked after every batch; Keras then validates the partial epoch and
    ends `fit`, and keras-tuner keeps the best epoch's weights as for any
    trial. `stopped` says whether it fired.
    """

    def __init__(self, at: float):
        super().__init__()
        self.at = at
        self.stopped = False

    def _check(self) -> None:
        if time.time() >= self.at:
            self.stopped = True
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        self._check()

    def on_epoch_begin(self, epoch, logs=None):
        self._check()


class EpochClock(_TrialCallback):
    """Records `time.time()` at the end of every epoch (`times`), for the budget's
    estimates, the report's time line and benchmarks."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.time())


def _best_so_far(values: list[float], direction: str) -> float:
    return max(values) if direction == "max" else min(values)


class BelowMedian(_TrialCallback):
    """The median stopping rule: stops a trial that falls behind the others.

    After each epoch from `min_epochs` on, the trial's best objective so far
    is compared with the median, over the finished trials that trained at
    least as many epochs, of their best objective up to the same epoch; a
    trial worse than that median stops (`stopped` is then the epoch, 1-based).
    Needs `min_trials` such trials before it stops anything.

    Args:
        others: per finished trial, its objective per epoch (index = epoch).
        objective: the objective's name; direction: "max" or "min".
    """

    def __init__(self, others: list[list[float]], objective: str, direction: str,
                 min_trials: int = 3, min_epochs: int = 1):
        super().__init__()
        self.others = [o for o in others if o]
        self.objective, self.direction = objective, direction
        self.min_trials, self.min_epochs = min_trials, min_epochs
        self.values: list[float] = []
        self.stopped: int | None = None

    def median_at(self, epoch: int) -> float | None:
        """The median of the others' best up to `epoch` (0-based), or None if too few."""
        best = [_best_so_far(o[: epoch + 1], self.direction)
                for o in self.others if len(o) > epoch]
        if len(best) < self.min_trials:
            return None
        return statistics.median(best)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.objective)
        if value is None:
            return
        self.values.append(float(value))
        if len(self.values) < self.min_epochs:
            return
        median = self.median_at(len(self.values) - 1)
        if median is None:
            return
        mine = _best_so_far(self.values, self.direction)
        if (mine < median) if self.direction == "max" else (mine > median):
            self.stopped = len(self.values)
            self.model.stop_training = True


def objective_curves(oracle, exclude: str | None = None) -> list[list[float]]:
    """The objective per epoch of each finished, non-final trial of `oracle`.

    Steps are keras-tuner's (the epoch, 0-based); a Hyperband trial promoted
    from a parent is counted from its first own epoch.
    """
    name = oracle.objective.name
    curves = []
    for trial in oracle.trials.values():
        if trial.trial_id == exclude or trial.status != "COMPLETED" or is_final(trial):
            continue
        if not trial.metrics.exists(name):
            continue
        history = trial.metrics.get_history(name)
        curves.append([float(obs.value[0]) for obs in history if obs.value])
    return curves


def is_final(trial) -> bool:
    """The trial is a budget's final training."""
    return FINAL_EPOCHS in trial.hyperparameters.values


def _history(project_dir: str, trial_id: str) -> dict:
    try:
        return json.loads((Path(project_dir) / f"trial_{trial_id}" / "history.json").read_text())
    except (OSError, ValueError):
        return {}


def trial_seconds(project_dir: str, oracle) -> list[float]:
    """Wall seconds of each finished search trial (`history.json`'s start to end)."""
    out = []
    for trial in oracle.trials.values():
        if trial.status in ("COMPLETED", "FAILED") and not is_final(trial):
            record = _history(project_dir, trial.trial_id)
            if record.get("started") and record.get("ended"):
                out.append(float(record["ended"]) - float(record["started"]))
    return out


def epoch_seconds(record: dict) -> tuple[float, float] | None:
    """`(seconds before the first epoch, seconds per epoch)` from a trial's `history.json`.

    Per epoch: the median gap between epoch ends (validation included); the
    first epoch's own time when there is only one. None without `epoch_times`.
    """
    times = record.get("epoch_times") or []
    started = record.get("started")
    if not times or started is None:
        return None
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    per_epoch = statistics.median(gaps) if gaps else times[0] - started
    overhead = max(0.0, times[0] - started - per_epoch)
    return overhead, max(per_epoch, 1e-3)


class BudgetOracle:
    """Oracle mixin: a search within a `TimeBudget` (see the module docstring).

    `time_budget` is set by the tuner when its search begins (None: no
    budget, the oracle is keras-tuner's). The final training is created
    here, so that a distributed chief runs it too.
    """

    time_budget: TimeBudget | None = None

    def _final_trial(self):
        return next((t for t in self.trials.values() if is_final(t)), None)

    def _search_time_left(self, now: float) -> bool:
        budget = self.time_budget
        spent = trial_seconds(self._project_dir, self)
        expected = statistics.median(spent) if spent else 0.0
        return now + expected <= budget.search_end

    def final_values(self, now: float | None = None) -> dict | None:
        """The final training's hyperparameters: the best trial's and the epochs that fit.

        None when there is no completed trial, no final share, or fewer than
        `MIN_FINAL_EPOCHS` fit in the time left.
        """
        budget = self.time_budget
        if budget is None or budget.final_training <= 0:
            return None
        best = self.get_best_trials(1)
        if not best or best[0].score is None:
            return None
        best = best[0]
        timing = epoch_seconds(_history(self._project_dir, best.trial_id))
        if timing is None:
            return None
        overhead, per_epoch = timing
        now = time.time() if now is None else now
        epochs = int((budget.training_end - now - overhead) // (1.1 * per_epoch))
        if epochs < MIN_FINAL_EPOCHS:
            return None
        values = {k: v for k, v in best.hyperparameters.values.items()
                  if not k.startswith("tuner/")}
        values[FINAL_EPOCHS] = epochs
        values[FINAL_FROM] = best.trial_id
        return values

    @kt.synchronized
    def create_trial(self, tuner_id):
        from resnet_tuner.run import ktcompat

        budget = self.time_budget
        if budget is None or tuner_id in self.ongoing_trials or self._retry_queue:
            return super().create_trial(tuner_id)
        now = time.time()
        if self._final_trial() is not None or now >= budget.training_end:
            return ktcompat.stopped_trial(self, tuner_id)
        if now < budget.search_end and self._search_time_left(now):
            trial = super().create_trial(tuner_id)
            if trial.status != "STOPPED":
                return trial
            self.tuner_ids.add(tuner_id)  # keras-tuner let go of it; the final trial may follow
        values = self.final_values(now)
        if values is None:
            return ktcompat.stopped_trial(self, tuner_id)
        return ktcompat.start_trial(self, tuner_id, values)

    def remaining_trials(self):
        budget = self.time_budget
        if budget is None:
            return super().remaining_trials()
        if self._final_trial() is not None or time.time() >= budget.training_end:
            return 0
        remaining = super().remaining_trials()
        if remaining == 0 and budget.final_training > 0:
            return 1  # the final training
        return remaining
