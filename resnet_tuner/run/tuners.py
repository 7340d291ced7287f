"""Our keras-tuner tuners: declared subclasses that start from the space's `[[initial]]`.

`RandomSearch`, `Hyperband`, `BayesianOptimization` and `GridSearch` are
keras-tuner's tuners with keras-tuner's constructor arguments, plus:

* the hypermodel's `space.initial` configurations are tried first (AutoKeras
  starts its searches the same way, from configurations known to train well).
  Random search tries them as its first trials, Hyperband as its first
  candidates, Bayesian optimization as its first initial points. GridSearch
  walks its whole grid from the defaults as keras-tuner's does: it visits the
  initial configurations wherever they lie on the grid, and starting the walk
  elsewhere would skip the grid points before them;
* each trial leaves `history.json` (per-epoch metrics, model size, wall time)
  in its trial folder (and `progress.json` after each epoch, for `resnet-tuner
  trials` while it runs), and a progress line is printed when it ends (with
  `epoch_progress`, progress within the trial too: `progress.EpochProgress`);
* Hyperband's `max_trials` is the number of trials its brackets run
  (`hyperband_trials`), capped by the `max_trials` given: a progress line's
  "trial 3 of N" is true for every tuner;
* they run as a distributed chief or worker (`resnet_tuner.run.distribute`);
* callbacks given to `search` that are `tracking.TrialLogger`s (`MlflowLogger`)
  are told when each trial begins and ends, so they can log it as one run;
* with `keep_checkpoints = K` (`make_tuner` sets `--keep-checkpoints`'s), the
  checkpoints of all but the best K finished trials are deleted after each
  trial, except those Hyperband may still load (`resnet_tuner.run.checkpoints`).

Example:
    >>> from resnet_tuner import Hyperband, ResNetHyperModel
    >>> hm = ResNetHyperModel("quick", input_shape=(32, 32, 3), num_classes=10)
    >>> tuner = Hyperband(hm, objective="val_accuracy", max_epochs=10, seed=1)

`make_tuner` builds one from `SearchOptions`; it is the only place the CLI's
runs assemble a tuner. Their oracles (time budget, `[[initial]]` first, the
trials Hyperband runs) are `run.oracles`'.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import keras_tuner as kt

from resnet_tuner.devices import training_record
from resnet_tuner.run import budget as _budget
from resnet_tuner.run import distribute, ktcompat, progress
from resnet_tuner.run.options import SearchOptions
from resnet_tuner.run.oracles import (
    BayesianOptimizationOracle,
    GridSearchOracle,
    HyperbandOracle,
    RandomSearchOracle,
    hyperband_trials,
)
from resnet_tuner.run.processes import Handover
from resnet_tuner.run.rundir import ENDED, PROJECT
from resnet_tuner.run.trials import write_progress


def _initial(hypermodel) -> list[dict]:
    return list(getattr(getattr(hypermodel, "space", None), "initial", None) or [])


class RecordingTuner:
    """Mixin for keras-tuner tuners: per-trial history files and a progress line.

    Keeps per-epoch metrics (keras-tuner keeps only the best), the model size
    and the trial's wall time in `<trial dir>/history.json` for reports.
    """

    #: Trials the progress lines count to (None: no total, no time estimate).
    progress_total: int | None = None
    progress_stream = None  # None: sys.stdout at print time
    #: Seconds of silence after which a distributed chief counts a worker as lost.
    worker_timeout: float = 60.0
    #: A distributed chief's token and TLS files (`auth.Credentials`; None: none).
    credentials = None
    #: Trials this process runs before it hands over to a fresh one (None: all).
    stop_after: int | None = None
    #: Set when this process stopped after `stop_after` trials with trials left.
    recycled: bool = False
    #: When the whole search started and how many trials had ended then, for
    #: progress lines that span several processes (None: this process's own).
    search_started_at: float | None = None
    done_at_start: int | None = None
    #: `callbacks=` of `search` that are told each trial (`tracking.TrialLogger`).
    _trial_loggers: tuple = ()
    #: Show progress within each trial (`progress.EpochProgress`); the CLI's
    #: searches do, the Python API leaves it to `search(verbose=...)`.
    epoch_progress: bool = False
    #: After each trial, delete the checkpoints of all finished trials but the best
    #: this many and those Hyperband may still load (`run.checkpoints`); 0 keeps
    #: all, as keras-tuner does. `make_tuner` sets `SearchOptions.keep_checkpoints`.
    keep_checkpoints: int = 0
    #: The whole search's wall-clock budget in seconds (None: none), the share of
    #: it kept for the final training, and the median stopping rule (`run.budget`).
    time_budget: float | None = None
    final_training: float = _budget.FINAL_TRAINING
    median_stopping: bool = False
    #: The open `run.budget.TimeBudget` while a budgeted search runs.
    budget: _budget.TimeBudget | None = None

    def _take_search_arguments(self, kwargs: dict) -> None:
        """Takes our constructor arguments out of `kwargs` (keras-tuner's `Tuner`
        refuses unknown ones): `time_budget` (seconds or "30m"), `final_training`
        (a share of the budget, 0 to 1), `median_stopping` (bool)."""
        budget = kwargs.pop("time_budget", None)
        self.time_budget = None if budget is None else _budget.parse_duration(budget)
        final = float(kwargs.pop("final_training", _budget.FINAL_TRAINING))
        if not 0 <= final < 1:
            raise ValueError("final_training must be a share of the time budget in [0, 1). "
                             f"Received: final_training={final!r}")
        self.final_training = final
        self.median_stopping = bool(kwargs.pop("median_stopping", False))

    def _print(self, line: str) -> None:
        print(line, file=self.progress_stream or sys.stdout, flush=True)

    def _epoch_callback(self, trial) -> progress.EpochProgress:
        configs = getattr(self.hypermodel, "configs", None)
        batch_size = configs(trial.hyperparameters)[1].batch_size if configs else None
        return progress.EpochProgress(self.oracle.objective.name, batch_size,
                                      stream=lambda: self.progress_stream or sys.stdout)

    def _budget_callbacks(self, trial, kwargs: dict) -> list:
        """The trial's clock, and the budget's deadline, final epochs and median rule."""
        added: list = [_budget.EpochClock()]
        final = trial.hyperparameters.values.get(_budget.FINAL_EPOCHS)
        if final:  # the epochs estimated to fit; the deadline ends it (run.budget)
            kwargs["epochs"] = _budget.final_epochs_bound(int(final))
            kwargs.pop("initial_epoch", None)
        if self.budget is not None:
            added.append(_budget.Deadline(self.budget.training_end))
        if self.median_stopping and not final and not ktcompat.is_worker(self):
            added.append(_budget.BelowMedian(
                _budget.objective_curves(self.oracle, exclude=trial.trial_id),
                self.oracle.objective.name, self.oracle.objective.direction))
        return added

    def run_trial(self, trial, *args, **kwargs):
        started = self._trial_started = time.time()
        added = self._budget_callbacks(trial, kwargs)
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), *added]
        if self.epoch_progress:
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), self._epoch_callback(trial)]
        try:
            if ktcompat.is_worker(self):
                self._print(f"worker {self.tuner_id}: running trial {trial.trial_id}")
                with distribute.Heartbeat(self.oracle, trial.trial_id):
                    histories = super().run_trial(trial, *args, **kwargs)
            else:
                histories = super().run_trial(trial, *args, **kwargs)
        finally:
            progress.close_live_lines()  # a failed trial skips the callback's on_train_end
        history = histories[-1] if isinstance(histories, list) and histories else None
        model = getattr(history, "model", None)
        record = {
            "trial_id": trial.trial_id,
            "tuner_id": self.tuner_id,
            "started": started,
            "ended": time.time(),
            "history": getattr(history, "history", {}),
            "params": model.count_params() if model is not None else None,
            "epoch_times": added[0].times,
            **self._stopped_record(added),
            **self.training_record(trial),
        }
        path = Path(self.get_trial_dir(trial.trial_id)) / "history.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, default=float))
        return histories

    @staticmethod
    def _stopped_record(added: list) -> dict:
        """Why the trial stopped early, if it did: `{"stopped": "deadline" | "below median"}`."""
        for callback in added:
            if isinstance(callback, _budget.Deadline) and callback.stopped:
                return {"stopped": "deadline"}
            if isinstance(callback, _budget.BelowMedian) and callback.stopped:
                return {"stopped": "below median", "median_epoch": callback.stopped}
        return {}

    def training_record(self, trial) -> dict:
        """How the trial trained: dtype policy, replicas, global and per-replica batch."""
        configs = getattr(self.hypermodel, "configs", None)
        batch = configs(trial.hyperparameters)[1].batch_size if configs else None
        return training_record(getattr(self.hypermodel, "precision", None),
                               self.distribution_strategy, batch)

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        for logger in self._trial_loggers:  # before keras-tuner copies the callbacks
            logger.trial_started(trial, self)

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs=logs)
        # keras-tuner writes trial.json only when a trial starts and ends: this file
        # lets `resnet-tuner trials` show a running trial's epochs and time.
        write_progress(self.get_trial_dir(trial.trial_id), epoch,
                       getattr(self, "_trial_started", None), logs)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        if self.budget is not None:
            self.budget.save()
        for logger in self._trial_loggers:  # the oracle has recorded status and score
            logger.trial_ended(trial, self)
        self._print_progress(trial)
        self._prune_checkpoints()
        self._ran_here = getattr(self, "_ran_here", 0) + 1
        if self.stop_after and self._ran_here >= self.stop_after:
            remaining = self.oracle.remaining_trials()
            if remaining is None or remaining > 0:
                self.recycled = True
                raise Handover()

    def on_search_end(self):
        super().on_search_end()
        if self.budget is not None:
            self.budget.save()

    def _prune_checkpoints(self) -> None:
        if not self.keep_checkpoints or ktcompat.is_worker(self):  # the chief's oracle decides
            return
        from resnet_tuner.run.checkpoints import prune

        try:
            prune(self, self.keep_checkpoints)
        except OSError as err:  # a full or read-only disk must not end the search
            import warnings

            warnings.warn(f"could not delete old checkpoints: {err}", stacklevel=2)

    def _chief_trial_ended(self, trial) -> None:
        self._print_progress(trial)
        self._prune_checkpoints()

    def _print_progress(self, trial):
        if ktcompat.is_worker(self):  # the chief prints the search's progress
            self._print(progress.worker_line(self.tuner_id, trial, self.oracle.objective.name))
            return
        self._print(progress.search_line(
            self.oracle, trial, started=getattr(self, "_search_started", time.time()),
            done_before=getattr(self, "_done_before", 0), total=self.progress_total,
            budget=self.budget))

    def _open_budget(self) -> None:
        """The search's `TimeBudget`, counting what earlier sessions spent; the
        oracle (a chief's too) decides from it which trials still start."""
        if self.time_budget is None or ktcompat.is_worker(self):
            return
        self.budget = _budget.TimeBudget.open(self.project_dir, self.time_budget,
                                              self._search_started, self.final_training)
        self.oracle.time_budget = self.budget
        self.budget.save()

    def search(self, *args, **kwargs):
        self._search_started = self.search_started_at or time.time()
        self._open_budget()
        self._done_before = self.done_at_start if self.done_at_start is not None else sum(
            t.status in ENDED for t in getattr(self.oracle, "trials", {}).values()
        )
        if distribute.role() == "chief":  # serve trials to the workers until all are done
            distribute.resume_running(self.oracle, log=self._print)  # before the oracle saves
            self.save()
            distribute.serve(self.oracle, self.worker_timeout,
                             on_trial_end=self._chief_trial_ended,
                             log=self._print, credentials=self.credentials)
            return None
        if ktcompat.is_worker(self):
            distribute.outlast_chief_restarts(self.oracle)
        from resnet_tuner.tracking import TrialLogger

        self._trial_loggers = [c for c in kwargs.get("callbacks") or []
                               if isinstance(c, TrialLogger)]
        return super().search(*args, **kwargs)


class RandomSearch(RecordingTuner, kt.RandomSearch):
    """`keras_tuner.RandomSearch` that tries the hypermodel's `space.initial` first."""

    def __init__(self, hypermodel=None, objective=None, max_trials=10, seed=None,
                 hyperparameters=None, tune_new_entries=True, allow_new_entries=True,
                 max_retries_per_trial=0, max_consecutive_failed_trials=3, **kwargs):
        self.seed = seed
        self._take_search_arguments(kwargs)
        oracle = RandomSearchOracle(
            objective=objective, max_trials=max_trials, seed=seed,
            hyperparameters=hyperparameters, tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries, max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
            initial=_initial(hypermodel))
        ktcompat.init_tuner_with_oracle(self, kt.RandomSearch, oracle, hypermodel, **kwargs)


class BayesianOptimization(RecordingTuner, kt.BayesianOptimization):
    """`keras_tuner.BayesianOptimization` whose first initial points are `space.initial`."""

    def __init__(self, hypermodel=None, objective=None, max_trials=10, num_initial_points=None,
                 alpha=1e-4, beta=2.6, seed=None, hyperparameters=None, tune_new_entries=True,
                 allow_new_entries=True, max_retries_per_trial=0,
                 max_consecutive_failed_trials=3, **kwargs):
        self._take_search_arguments(kwargs)
        oracle = BayesianOptimizationOracle(
            objective=objective, max_trials=max_trials, num_initial_points=num_initial_points,
            alpha=alpha, beta=beta, seed=seed, hyperparameters=hyperparameters,
            tune_new_entries=tune_new_entries, allow_new_entries=allow_new_entries,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
            initial=_initial(hypermodel))
        ktcompat.init_tuner_with_oracle(self, kt.BayesianOptimization, oracle, hypermodel,
                                        **kwargs)


class Hyperband(RecordingTuner, kt.Hyperband):
    """`keras_tuner.Hyperband` whose first candidates are `space.initial`.

    Takes keras-tuner's arguments plus `max_trials`: a cap on the trials on
    top of the brackets (None: run the brackets out).
    """

    def __init__(self, hypermodel=None, objective=None, max_epochs=100, factor=3,
                 hyperband_iterations=1, seed=None, hyperparameters=None,
                 tune_new_entries=True, allow_new_entries=True, max_retries_per_trial=0,
                 max_consecutive_failed_trials=3, max_trials=None, **kwargs):
        self._take_search_arguments(kwargs)
        oracle = HyperbandOracle(
            objective, max_epochs=max_epochs, factor=factor,
            hyperband_iterations=hyperband_iterations, seed=seed,
            hyperparameters=hyperparameters, tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries, max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
            max_trials=max_trials, initial=_initial(hypermodel))
        ktcompat.init_tuner_with_oracle(self, kt.Hyperband, oracle, hypermodel, **kwargs)


class GridSearch(RecordingTuner, kt.GridSearch):
    """`keras_tuner.GridSearch` with history files and progress lines.

    It walks the whole grid from the defaults, so it reaches the space's
    `initial` configurations where they lie on the grid (see the module
    docstring).
    """

    def __init__(self, hypermodel=None, objective=None, max_trials=None, seed=None,
                 hyperparameters=None, tune_new_entries=True, allow_new_entries=True,
                 max_retries_per_trial=0, max_consecutive_failed_trials=3, **kwargs):
        self.seed = seed
        self._take_search_arguments(kwargs)
        oracle = GridSearchOracle(
            objective=objective, max_trials=max_trials, seed=seed,
            hyperparameters=hyperparameters, tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries, max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials)
        ktcompat.init_tuner_with_oracle(self, kt.GridSearch, oracle, hypermodel, **kwargs)


#: `SearchOptions.tuner` -> tuner class.
TUNER_CLASSES: dict[str, type] = {
    "hyperband": Hyperband,
    "random": RandomSearch,
    "bayesian": BayesianOptimization,
    "grid": GridSearch,
}


def trial_epochs(options: SearchOptions, space=None) -> int:
    """The epochs of a trial (Hyperband's most): `options.epochs`, else the space's (else 10)."""
    return options.epochs or (space.fixed_value("train", "epochs", 10) if space else 10)


def planned_trials(options: SearchOptions, epochs: int) -> int:
    """The trials a search of `options` runs: `max_trials`, or fewer for Hyperband's brackets."""
    if options.tuner == "hyperband":
        return min(options.max_trials, hyperband_trials(
            epochs, options.hyperband_factor, options.hyperband_iterations))
    return options.max_trials


@contextlib.contextmanager
def _reload_line_dropped() -> Iterator[None]:
    """keras-tuner prints `Reloading Tuner from <file>` when a tuner resumes its project
    (a `print` in `BaseTuner.__init__`): a line per trial when every trial runs in
    its own process. Everything else printed meanwhile is passed on."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        sys.stdout.write("".join(line for line in printed.getvalue().splitlines(keepends=True)
                                 if not line.startswith("Reloading Tuner from ")))


def make_tuner(options: SearchOptions | str, hypermodel, directory: str | os.PathLike,
               *, project_name: str = PROJECT, verbose: int = 1, **fields) -> kt.Tuner:
    """The tuner of a run: `options.tuner`'s class with the options that feed it.

    Args:
        options: the run's `SearchOptions`, or a tuner name (`"hyperband"`,
            `"random"`, `"bayesian"`, `"grid"`) whose other options are `fields`.
        hypermodel: usually a `ResNetHyperModel`.
        directory: where keras-tuner keeps its project.
        project_name: the project folder in `directory`.
        verbose: 2 lets keras-tuner's own `Reloading Tuner from ...` line through.
        **fields: `SearchOptions` fields to replace (e.g. `max_trials=5, epochs=3`).
            `epochs` None takes the space's (default 10).

    Raises:
        ValueError: an unknown tuner or an option out of its bounds.
    """
    import dataclasses

    if isinstance(options, str):
        options = SearchOptions(data_dir="", out=str(directory), tuner=options, **fields)
    elif fields:
        options = dataclasses.replace(options, **fields)
    options.validate(paths=False)
    epochs = trial_epochs(options, getattr(hypermodel, "space", None))
    with contextlib.nullcontext() if verbose >= 2 else _reload_line_dropped():
        tuner = TUNER_CLASSES[options.tuner](
            hypermodel, directory=str(directory), project_name=project_name,
            **options.tuner_arguments(epochs=epochs))
    tuner.progress_total = tuner.oracle.max_trials  # Hyperband: what its brackets run
    tuner.trial_epochs = epochs  # what each trial trains for (Hyperband: at most)
    tuner.keep_checkpoints = options.keep_checkpoints
    return tuner
