"""Experiment tracking: TensorBoard and MLflow for every trial of a search.

TensorBoard needs no code of ours. A `keras.callbacks.TensorBoard(DIR)` passed
to `tuner.search(callbacks=[...])` gets a folder per trial from keras-tuner
(`DIR/<trial id>/execution0/`, `Tuner._configure_tensorboard_dir`), which
also adds TensorBoard's HParams callback: the trial's hyperparameters and
results appear in the HParams dashboard of `tensorboard --logdir DIR`.

MLflow: `MlflowLogger` is a Keras callback that our tuners (`RandomSearch`,
`Hyperband`, `BayesianOptimization`, `GridSearch`) also tell when each trial
begins and ends (`TrialLogger`): one MLflow run per trial with the trial's
hyperparameters as params, its per-epoch metrics and its best objective;
`log_bundle` adds the exported bundle to the best trial's run. MLflow is an
extra: `pip install "resnet-tuner[mlflow]"` (mlflow-skinny: the client and
the file store, no server or UI).

`search_callbacks` gives the callbacks a run's `--tensorboard` / `--mlflow`
options ask for; every trial process of a CLI search makes its own, logging
to the same folder and experiment.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import keras

#: What to install for `MlflowLogger` / `--mlflow`.
MLFLOW_MISSING = ("MLflow logging (--mlflow, resnet_tuner.MlflowLogger) needs MLflow, which is "
                  "not installed: pip install \"resnet-tuner[mlflow]\" (or mlflow itself)")
#: Tag names on each trial's MLflow run.
TRIAL_TAG, PROJECT_TAG = "resnet_tuner.trial_id", "resnet_tuner.project"
#: The artifact folder of the exported bundle in the best trial's run.
BUNDLE_ARTIFACT = "bundle"


class TrackingUnavailableError(ImportError):
    """A tracking option was asked for but its package is not installed."""


class TrackingWarning(UserWarning):
    """Logging to the tracking server failed; the search goes on without it."""


def require_mlflow() -> None:
    """Raises `TrackingUnavailableError` naming the extra when MLflow is not installed."""
    if importlib.util.find_spec("mlflow") is None:
        raise TrackingUnavailableError(MLFLOW_MISSING)


class TrialLogger(keras.callbacks.Callback):
    """A Keras callback that our tuners also tell when each trial begins and ends.

    `RecordingTuner.search` finds the instances among `callbacks=` and calls
    `trial_started` before keras-tuner copies the callbacks for the trial's
    training (so the copies carry what it set) and `trial_ended` once the
    oracle has recorded the trial's result (failed trials included).
    """

    def trial_started(self, trial, tuner) -> None:
        """Called by the tuner before the trial's model is built."""

    def trial_ended(self, trial, tuner) -> None:
        """Called by the tuner after the trial ended (status and score recorded)."""


_CLIENTS: dict[str | None, Any] = {}


def _client(tracking_uri: str | None):
    """One `MlflowClient` per URI and process (its store keeps connections)."""
    if tracking_uri not in _CLIENTS:
        require_mlflow()
        from mlflow.tracking import MlflowClient
        from mlflow.utils.uri import get_uri_scheme

        if tracking_uri is not None and get_uri_scheme(tracking_uri) in ("", "file"):
            # MLflow 3.x refuses its file store unless told otherwise; a file:
            # URI (or a plain folder) given here is that request.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        _CLIENTS[tracking_uri] = MlflowClient(tracking_uri)
    return _CLIENTS[tracking_uri]


def _param_value(value: Any) -> str:
    return str(value)[:500]  # MLflow 2's limit (3.x takes 6000)


class MlflowLogger(TrialLogger):
    """Logs each trial of a search as an MLflow run.

    Pass it to the search of one of our tuners; each trial becomes a run named
    `trial <id>` with the trial's hyperparameters as params, `model_parameters`,
    every epoch's metrics (step = epoch) and `best_<objective>` at the end. Each
    process of a search (CLI trial processes, distributed workers) makes its
    own logger for the same experiment. With keras-tuner's own tuners, which
    tell no callback its trial, each `fit` is a run without hyperparameters.

    Failures to log after the experiment is found are `TrackingWarning`s: a
    tracking server going away does not end a search.

    Args:
        tracking_uri: the tracking server or store: `http://host:5000`,
            `file:///path/mlruns` (MLflow's file store, no server: the
            `mlflow-skinny` extra is enough; MLflow 3.x wants
            `MLFLOW_ALLOW_FILE_STORE=true` for it, which this sets unless set
            already), `sqlite:///mlflow.db` (needs the full `mlflow`), or
            None for MLflow's default (`MLFLOW_TRACKING_URI`).
        experiment: the experiment's name; created if missing.

    Raises:
        TrackingUnavailableError: MLflow is not installed.
        MlflowException: the store cannot be reached or the experiment not
            made (before the search starts).

    Example:
        >>> from resnet_tuner import MlflowLogger, RandomSearch
        >>> mlflow_logger = MlflowLogger("file:///tmp/mlruns", experiment="pets")
        >>> tuner = RandomSearch(hypermodel, objective="val_accuracy", max_trials=10)
        >>> tuner.search(data, callbacks=[mlflow_logger])
        >>> bundle = export_best(tuner, "best", data=data)
        >>> mlflow_logger.log_bundle(bundle, tuner)
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "resnet-tuner"):
        super().__init__()
        require_mlflow()
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.experiment_id = self._experiment_id()
        self.run_id: str | None = None
        self._bound = False  # a tuner called trial_started
        self._run_per_fit = False

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        client = _client(self.tracking_uri)
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(self.experiment)
        except MlflowException:  # made meanwhile by another process of the search
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _safely(self, what: str, action, *args, **kwargs):
        try:
            return action(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 (any store error: warn, go on)
            warnings.warn(f"MLflow: could not {what} ({self.tracking_uri}): "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}",
                          TrackingWarning, stacklevel=2)
            return None

    def _log(self, metrics: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
             step: int = 0) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        metric_rows = [Metric(str(k), float(v), now, step) for k, v in (metrics or {}).items()
                       if isinstance(v, int | float) and not isinstance(v, bool)
                       and math.isfinite(float(v))]
        param_rows = [Param(str(k), _param_value(v)) for k, v in (params or {}).items()]
        client = _client(self.tracking_uri)
        for start in range(0, max(len(metric_rows), len(param_rows)), 100):  # log_batch limits
            client.log_batch(self.run_id, metrics=metric_rows[start:start + 100],
                             params=param_rows[start:start + 100])

    # ----------------------------------------------------------------- tuner hooks
    def trial_started(self, trial, tuner) -> None:
        self._bound = True
        self.run_id = None
        tags = {TRIAL_TAG: str(trial.trial_id),
                PROJECT_TAG: str(Path(tuner.project_dir).resolve()),
                "resnet_tuner.tuner": type(tuner).__name__,
                "resnet_tuner.objective": tuner.oracle.objective.name}
        run = self._safely("start a run", _client(self.tracking_uri).create_run,
                           self.experiment_id, run_name=f"trial {trial.trial_id}", tags=tags)
        if run is not None:
            self.run_id = run.info.run_id
            self._safely("log the hyperparameters", self._log,
                         params=dict(trial.hyperparameters.values))

    def trial_ended(self, trial, tuner) -> None:
        if self.run_id is None:
            return
        objective = tuner.oracle.objective
        score = trial.score
        if score is None:  # a distributed worker's copy of the trial has no score
            score = self._safely("read the metric history", self._best_logged, objective)
        status = str(getattr(trial.status, "value", trial.status))
        client = _client(self.tracking_uri)
        if score is not None:
            self._safely("log the score", self._log, {f"best_{objective.name}": score})
        self._safely("tag the status", client.set_tag, self.run_id, "resnet_tuner.status",
                     status)
        if getattr(trial, "message", None):
            self._safely("tag the message", client.set_tag, self.run_id,
                         "resnet_tuner.message", str(trial.message)[:5000])
        self._safely("end the run", client.set_terminated, self.run_id,
                     "FINISHED" if status == "COMPLETED" else "FAILED")
        self.run_id = None

    def _best_logged(self, objective) -> float | None:
        history = _client(self.tracking_uri).get_metric_history(self.run_id, objective.name)
        values = [m.value for m in history]
        if not values:
            return None
        return max(values) if objective.direction == "max" else min(values)

    # ----------------------------------------------------------------- Keras callback
    def on_train_begin(self, logs=None):
        if not self._bound and self.run_id is None:
            warnings.warn(
                "MlflowLogger was told no trial (keras-tuner's own tuners do not tell "
                "callbacks): each fit is logged as a run without hyperparameters. Search with "
                "resnet_tuner's RandomSearch, Hyperband, BayesianOptimization or GridSearch "
                "for a run per trial with its hyperparameters.", TrackingWarning, stacklevel=2)
            run = self._safely("start a run", _client(self.tracking_uri).create_run,
                               self.experiment_id, run_name="fit")
            if run is not None:
                self.run_id, self._run_per_fit = run.info.run_id, True
        if self.run_id is not None and self.model is not None:
            self._safely("log the model size", self._log,
                         params={"model_parameters": self.model.count_params()})

    def on_epoch_end(self, epoch, logs=None):
        if self.run_id is not None and logs:
            self._safely("log the epoch's metrics", self._log, dict(logs), step=epoch)

    def on_train_end(self, logs=None):
        if self._run_per_fit and self.run_id is not None:
            self._safely("end the run", _client(self.tracking_uri).set_terminated, self.run_id)
            self.run_id, self._run_per_fit = None, False

    # ----------------------------------------------------------------- export
    def log_bundle(self, bundle: str | os.PathLike, tuner=None,
                   trial_id: str | None = None) -> str | None:
        """Logs an exported bundle as the `bundle/` artifact of its trial's run.

        The run is the one of `trial_id` (default: `tuner`'s best trial) in
        this experiment and `tuner`'s project; without one (e.g. the search
        was not logged), a new run named `best model`. The bundle's held-out
        figures (`metrics.json`: `test_accuracy`, ...) are logged as metrics
        and the run is tagged `resnet_tuner.best`.

        Args:
            bundle: the bundle directory (`export_best`'s result).
            tuner: the search's tuner, to find the best trial and its project.
            trial_id: the exported trial (default: `tuner`'s best).

        Returns:
            The MLflow run id the bundle went to, or None if logging failed
            (a `TrackingWarning` says why).
        """
        import json

        bundle = Path(bundle)
        if trial_id is None and tuner is not None:
            best = tuner.oracle.get_best_trials(1)
            trial_id = best[0].trial_id if best else None
        client = _client(self.tracking_uri)
        run_id = None
        if trial_id is not None:
            query = f"tags.`{TRIAL_TAG}` = '{trial_id}'"
            if tuner is not None:
                query += f" and tags.`{PROJECT_TAG}` = '{Path(tuner.project_dir).resolve()}'"
            runs = self._safely("find the trial's run", client.search_runs,
                                [self.experiment_id], filter_string=query,
                                order_by=["attributes.start_time DESC"], max_results=1)
            run_id = runs[0].info.run_id if runs else None
        if run_id is None:
            tags = {TRIAL_TAG: str(trial_id)} if trial_id is not None else {}
            run = self._safely("start a run", client.create_run, self.experiment_id,
                               run_name="best model", tags=tags)
            if run is None:
                return None
            run_id = run.info.run_id
            client.set_terminated(run_id)
        self._safely("log the bundle", client.log_artifacts, run_id, str(bundle),
                     BUNDLE_ARTIFACT)
        self._safely("tag the best run", client.set_tag, run_id, "resnet_tuner.best", "true")
        metrics_file = bundle / "metrics.json"
        if metrics_file.is_file():
            figures = json.loads(metrics_file.read_text())
            split = figures.get("split", "test")
            held_out = {f"{split}_{k}": v for k, v in figures.items()}
            previous, self.run_id = self.run_id, run_id
            try:
                self._safely("log the bundle's metrics", self._log, held_out)
            finally:
                self.run_id = previous
        return run_id


def mlflow_experiment(options) -> str:
    """The MLflow experiment of a run: `options.mlflow_experiment`, else `--out`'s folder name."""
    return options.mlflow_experiment or Path(options.out).resolve().name


def search_callbacks(options) -> list[keras.callbacks.Callback]:
    """The callbacks a run's `tensorboard` and `mlflow` options ask for (`SearchOptions`)."""
    callbacks: list[keras.callbacks.Callback] = []
    if options.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(options.tensorboard))
    if options.mlflow:
        callbacks.append(MlflowLogger(options.mlflow, experiment=mlflow_experiment(options)))
    return callbacks
