"""Search runs: settings, tuners, the run directory, processes and distribution.

What lives where:

* `options`    `SearchOptions`, the one list of a run's settings; each field's
               metadata drives the CLI's arguments, validation, the resume
               identity and the tuner's constructor arguments.
* `tuners`     our declared keras-tuner tuners (`RandomSearch`, `Hyperband`,
               `BayesianOptimization`, `GridSearch`): the space's `[[initial]]`
               configurations first, per-trial `history.json`, progress lines;
               `make_tuner`, the one place a run's tuner is built.
* `rundir`     the run directory: `run.json`, the resume check, the manifest
               and the run's data and space.
* `search`     `run_search` (run or resume) and `load_run` (reload a run).
* `progress`   what a search prints: the data and plan lines, progress
               within a trial (`EpochProgress`), a line per trial.
* `processes`  `run_search_in_processes`: trials in fresh processes, and the
               handover between them.
* `distribute` chief/worker search on keras-tuner's gRPC engine, heartbeats
               and the requeue of a silent worker's trial.
* `auth`       who may talk to the chief: the shared token (`--token-file`)
               and TLS (`Credentials`), the open-chief warning.
* `trials`     the trials of a run read from disk, best first (no TensorFlow):
               `resnet-tuner trials` and the report.
* `budget`     `--time-budget`: the deadline, no trial started that cannot
               finish, the final training of the best configuration, the median
               stopping rule, what earlier sessions spent (`budget.json`).
* `checkpoints` `--keep-checkpoints`: after each trial, delete the checkpoints
               no export, resume or Hyperband round will load.
* `ktcompat`   every use of keras-tuner's private API, each covered by a
               contract test (tests/test_ktcompat.py).

Names are imported on first use: `options` loads neither TensorFlow nor
keras-tuner, so the CLI can build its parser without them.
"""

from importlib import import_module

_EXPORTS = {
    "SearchOptions": "options",
    "IDENTITY": "options",
    "DIGITS": "options",
    "DATASETS": "options",
    "RandomSearch": "tuners",
    "Hyperband": "tuners",
    "BayesianOptimization": "tuners",
    "GridSearch": "tuners",
    "RecordingTuner": "tuners",
    "TUNER_CLASSES": "tuners",
    "make_tuner": "tuners",
    "check_resume": "rundir",
    "run_search": "search",
    "load_run": "search",
    "run_search_in_processes": "processes",
    "SearchProcessError": "processes",
    "ChiefUnreachableError": "distribute",
    "ChiefRefusedError": "distribute",
    "Credentials": "auth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'resnet_tuner.run' has no attribute {name!r}")
    value = getattr(import_module(f"resnet_tuner.run.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
