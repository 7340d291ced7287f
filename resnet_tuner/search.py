"""One search run: data + space + tuner in a run directory that can be resumed.

A run directory holds `run.json` (the settings and the versions that made it),
`manifest.json` (which image is in which split), `tuner/` (keras-tuner's
project: one folder per trial, each with our `history.json`) and `best/` (the
export bundle). Running the same search again on the same directory resumes:
keras-tuner reloads finished trials and does not run them again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from resnet_tuner.config import TUNERS
from resnet_tuner.space import SearchSpace, load_space

RUN_FILE = "run.json"
#: keras-tuner trial statuses of a trial that will not run again.
ENDED = ("COMPLETED", "FAILED", "INVALID")
MANIFEST_FILE = "manifest.json"
PROJECT = "tuner"
#: Bumped when the layout of a run directory changes in a way old runs can't resume.
RUN_FORMAT = 1
#: Data directory name that selects the bundled digits dataset.
DIGITS = "digits"


@dataclass
class SearchOptions:
    """Everything a search run needs; stored in `run.json`.

    Attributes:
        data_dir: image folder, or `"digits"` for scikit-learn's bundled digits.
        out: the run directory.
        space: preset name or TOML path.
        tuner: `hyperband`, `random`, `bayesian` or `grid`.
        max_trials: trials to run (a cap for Hyperband).
        epochs: epochs per trial (Hyperband's `max_epochs`); None: the space's.
        image_size: images are resized to `image_size` x `image_size`.
        batch_size: overrides the space's batch size when set.
        seed: seed of the split and the tuner.
        split: train / val / test fractions.
        resize: `stretch`, `crop` or `pad`.
        max_params: trials whose model has more parameters fail (None: no cap).
        max_failures: consecutive failed trials that stop the search.
        overwrite: start over instead of resuming.
    """

    data_dir: str
    out: str
    space: str = "quick"
    tuner: str = "hyperband"
    max_trials: int = 10
    epochs: int | None = None
    image_size: int = 64
    batch_size: int | None = None
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    resize: str = "stretch"
    max_params: int | None = None
    max_failures: int = 3
    overwrite: bool = False

    def validate(self) -> None:
        if self.tuner not in TUNERS:
            raise ValueError(f"tuner must be one of {TUNERS}. Received: tuner={self.tuner!r}")
        for name in ("max_trials", "image_size", "max_failures"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        for name in ("epochs", "batch_size", "max_params"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        from resnet_tuner.data import _check_split_fractions

        _check_split_fractions(self.split)
        if self.data_dir != DIGITS and not Path(self.data_dir).is_dir():
            raise FileNotFoundError(
                f"Image folder not found: {self.data_dir} (give a folder with one subfolder "
                f"per class, or '{DIGITS}' for the bundled digits)"
            )

    @classmethod
    def from_dict(cls, saved: dict) -> SearchOptions:
        """Options from `dataclasses.asdict` JSON (run.json); unknown keys are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in saved.items() if k in fields}
        values["split"] = tuple(values.get("split", (0.8, 0.1, 0.1)))
        return cls(**values)

    # Settings that define a run: resuming with others would mix two searches.
    IDENTITY = ("data_dir", "space", "tuner", "image_size", "batch_size", "seed", "split",
                "resize", "epochs")


def versions() -> dict[str, Any]:
    from resnet_tuner import __version__

    return {
        "run_format": RUN_FORMAT,
        "resnet_tuner": __version__,
        "keras": keras.__version__,
        "keras_tuner": kt.__version__,
    }


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def check_resume(run_dir: Path, options: SearchOptions) -> dict | None:
    """Reads an existing run's record and refuses to resume a different or incompatible one.

    Raises:
        ValueError: the run was made with other settings, or by versions whose
            saved state this one cannot read.
    """
    record_path = run_dir / RUN_FILE
    if options.overwrite or not record_path.is_file():
        return None
    record = json.loads(record_path.read_text("utf-8"))
    saved, now = record.get("versions", {}), versions()
    problems = []
    if saved.get("run_format") != now["run_format"]:
        problems.append(f"run format {saved.get('run_format')} -> {now['run_format']}")
    for package in ("keras", "keras_tuner"):
        if _minor(str(saved.get(package, ""))) != _minor(now[package]):
            problems.append(f"{package} {saved.get(package)} -> {now[package]}")
    if problems:
        raise ValueError(
            f"Cannot resume {run_dir}: it was written by other versions ({'; '.join(problems)}), "
            "whose saved trials this installation may not load. Use --overwrite to start "
            "over, or reinstall the versions in its run.json."
        )
    old = record.get("options", {})
    changed = [
        f"{k}: {old.get(k)!r} -> {v!r}"
        for k, v in _jsonable(dataclasses.asdict(options)).items()
        if k in SearchOptions.IDENTITY and old.get(k) != v
    ]
    if changed:
        raise ValueError(
            f"{run_dir} holds a search with other settings ({'; '.join(changed)}). Resume it "
            "with the same settings, use --overwrite to start over, or choose another --out."
        )
    return record


def _jsonable(options: dict) -> dict:
    return json.loads(json.dumps(options))


def load_data(options: SearchOptions, run_dir: Path, verbose: int = 1):
    """The run's data: the manifest's splits when resuming, a new split otherwise."""
    from resnet_tuner import datasets
    from resnet_tuner.data import ImageFolder

    size = (options.image_size, options.image_size)
    if options.data_dir == DIGITS:
        return datasets.digits(image_size=size, split=options.split, seed=options.seed)
    manifest = run_dir / MANIFEST_FILE
    if manifest.is_file() and not options.overwrite:
        return ImageFolder.from_manifest(manifest, verbose=verbose)
    data = ImageFolder(options.data_dir, image_size=size, split=options.split, seed=options.seed,
                       resize=options.resize, verbose=verbose)
    data.write_manifest(manifest)
    return data


def search_space(options: SearchOptions) -> SearchSpace:
    """The space with the command line's batch size and epochs fixed."""
    space = load_space(options.space)
    overrides = {}
    if options.batch_size:
        overrides["batch_size"] = options.batch_size
    if options.epochs:
        overrides["epochs"] = options.epochs
    return space.override("train", **overrides) if overrides else space


class RecordingTuner:
    """Mixin for keras-tuner tuners: per-trial history files and a progress line.

    Keeps per-epoch metrics (keras-tuner keeps only the best), the model size
    and the trial's wall time in `<trial dir>/history.json` for reports.
    """

    progress_total: int | None = None
    progress_stream = None  # None: sys.stdout at print time

    #: Seconds of silence after which a distributed chief counts a worker as lost.
    worker_timeout: float = 60.0
    #: Trials this process runs before it hands over to a fresh one (None: all).
    stop_after: int | None = None
    #: Set when this process stopped after `stop_after` trials with trials left.
    recycled: bool = False
    #: When the whole search started and how many trials had ended then, for
    #: progress lines that span several processes (None: this process's own).
    search_started_at: float | None = None
    done_at_start: int | None = None

    def run_trial(self, trial, *args, **kwargs):
        from resnet_tuner import distribute

        started = time.time()
        if self._is_worker():
            print(f"worker {self.tuner_id}: running trial {trial.trial_id}",
                  file=self.progress_stream or sys.stdout, flush=True)
            with distribute.Heartbeat(self.oracle, trial.trial_id):
                histories = super().run_trial(trial, *args, **kwargs)
        else:
            histories = super().run_trial(trial, *args, **kwargs)
        history = histories[-1] if isinstance(histories, list) and histories else None
        record = {
            "trial_id": trial.trial_id,
            "tuner_id": self.tuner_id,
            "started": started,
            "ended": time.time(),
            "history": getattr(history, "history", {}),
            "params": getattr(getattr(history, "model", None), "count_params", lambda: None)(),
        }
        path = Path(self.get_trial_dir(trial.trial_id)) / "history.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, default=float))
        return histories

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self._print_progress(trial)
        self._ran_here = getattr(self, "_ran_here", 0) + 1
        if self.stop_after and self._ran_here >= self.stop_after:
            remaining = self.oracle.remaining_trials()
            if remaining is None or remaining > 0:
                self.recycled = True
                raise _Handover()

    def _print_progress(self, trial):
        stream = self.progress_stream or sys.stdout
        score = f"{trial.score:.4f}" if trial.score is not None else trial.status
        if self._is_worker():  # the chief prints the search's progress
            print(f"worker {self.tuner_id}: trial {trial.trial_id} "
                  f"{self.oracle.objective.name}={score}", file=stream, flush=True)
            return
        trials = list(self.oracle.trials.values())
        done = [t for t in trials if t.status in ENDED]
        start = getattr(self, "_search_started", time.time())
        elapsed = time.time() - start
        this_session = max(1, len(done) - getattr(self, "_done_before", 0))
        total = self.progress_total
        remaining = ""
        if total:
            left = max(0, total - len(done))
            remaining = f", ~{_duration(elapsed / this_session * left)} left"
        best = self.oracle.get_best_trials(1)
        best_text = f"{best[0].score:.4f}" if best and best[0].score is not None else "-"
        of = f" of {total}" if total else ""
        print(
            f"trial {len(done)}{of}: {self.oracle.objective.name}={score} | best {best_text} | "
            f"{_duration(elapsed)} elapsed{remaining}",
            file=stream,
            flush=True,
        )

    def search(self, *args, **kwargs):
        from resnet_tuner import distribute

        self._search_started = self.search_started_at or time.time()
        self._done_before = self.done_at_start if self.done_at_start is not None else sum(
            t.status in ENDED for t in getattr(self.oracle, "trials", {}).values()
        )
        if distribute.role() == "chief":  # serve trials to the workers until all are done
            self.save()
            distribute.serve(self.oracle, self.worker_timeout, on_trial_end=self._print_progress,
                             log=lambda line: print(line, file=self.progress_stream or sys.stdout,
                                                    flush=True))
            return None
        return super().search(*args, **kwargs)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Handover(Exception):
    """Raised after `stop_after` trials: this process ends, a fresh one resumes."""


class InitialFirst:
    """Oracle mixin: the space's `[[initial]]` configurations come before random ones.

    Applies wherever an oracle draws a fresh random candidate: every trial of
    RandomSearch, Hyperband's new candidates and BayesianOptimization's initial
    points (GridSearch walks its grid). A configuration already tried (say,
    before a resume) is not tried again. AutoKeras starts its searches the
    same way, from hand-picked configurations known to train well.
    """

    initial_values: list = []

    def _random_values(self):
        for wanted in self.initial_values:
            hps = kt.HyperParameters()
            for hp in self.hyperparameters.space:
                hps.merge([hp])
                if hps.is_active(hp):
                    hps.values[hp.name] = wanted.get(hp.name, hp.default)
            if not self._duplicate(hps.values):
                return hps.values
        return super()._random_values()


def start_with_initial(tuner: kt.Tuner, initial: list[dict]) -> kt.Tuner:
    """Makes `tuner`'s oracle try the `initial` hyperparameter values first.

    `make_tuner` does this with the space's `[[initial]]` tables; call it on a
    tuner you built yourself, e.g. `start_with_initial(tuner, hypermodel.space.initial)`.
    """
    oracle = tuner.oracle
    if initial and isinstance(oracle, kt.Oracle) and not isinstance(oracle, InitialFirst):
        oracle.__class__ = type(f"InitialFirst{type(oracle).__name__}",
                                (InitialFirst, type(oracle)), {})
        oracle.initial_values = [dict(v) for v in initial]
    return tuner


_TUNER_CLASSES = {
    "hyperband": kt.Hyperband,
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "grid": kt.GridSearch,
}


def make_tuner(
    kind: str,
    hypermodel: kt.HyperModel,
    directory: str | os.PathLike,
    *,
    max_trials: int = 10,
    epochs: int = 10,
    seed: int = 0,
    overwrite: bool = False,
    max_params: int | None = None,
    max_failures: int = 3,
    project_name: str = PROJECT,
) -> kt.Tuner:
    """A keras-tuner tuner of `kind` with progress lines and per-trial histories.

    Args:
        kind: `hyperband`, `random`, `bayesian` or `grid`.
        hypermodel: usually a `ResNetHyperModel`.
        directory: where keras-tuner keeps its project.
        max_trials: trials to run; for Hyperband a cap on top of its brackets.
        epochs: Hyperband's `max_epochs` (the others take epochs in `search`).
        seed: the tuner's random seed.
        overwrite: start over instead of reloading finished trials.
        max_params: models with more parameters fail their trial.
        max_failures: consecutive failed trials that stop the search.
    """
    if kind not in _TUNER_CLASSES:
        raise ValueError(f"tuner must be one of {TUNERS}. Received: tuner={kind!r}")
    base = _TUNER_CLASSES[kind]
    cls = type(f"Recording{base.__name__}", (RecordingTuner, base), {})
    common = dict(
        objective="val_accuracy",
        directory=str(directory),
        project_name=project_name,
        overwrite=overwrite,
        max_model_size=max_params,
        max_consecutive_failed_trials=max_failures,
    )
    # keras-tuner treats seed 0 as "no seed" and draws a random one; shift so that
    # every seed, 0 included, gives the same trials on every run and resume.
    oracle_seed = seed % (2**31 - 1) + 1
    if kind == "hyperband":
        tuner = cls(hypermodel, max_epochs=epochs, factor=3, hyperband_iterations=1,
                    seed=oracle_seed, **common)
        tuner.oracle.max_trials = max_trials  # the base oracle stops creating trials there
    else:
        tuner = cls(hypermodel, max_trials=max_trials, seed=oracle_seed, **common)
    tuner.progress_total = max_trials
    return start_with_initial(tuner, getattr(getattr(hypermodel, "space", None), "initial", []))


def run_search(options: SearchOptions, verbose: int = 1, *, connect_timeout: float = 60.0,
               worker_timeout: float = 60.0, stop_after: int | None = None,
               started: float | None = None, done_at_start: int | None = None):
    """Runs (or resumes) a search; returns `(tuner, data)`.

    In a distributed search (see `resnet_tuner.distribute`) the chief serves
    trials until all have ended and the workers run them; all share `out`.

    Args:
        options: the run's settings.
        verbose: 1 prints the data summary and progress lines.
        connect_timeout: seconds a worker waits for the chief.
        worker_timeout: seconds of silence after which the chief counts a
            worker as lost and queues its trial again.
        stop_after: run at most this many trials, then return with
            `tuner.recycled` set if trials are left (see `run_search_in_processes`).
        started, done_at_start: the whole search's start time and finished
            trials then, for progress lines across processes.

    Raises:
        ValueError / FileNotFoundError / SpaceError: bad options, data or space.
        ChiefUnreachableError: a worker could not reach, or lost, its chief.
    """
    from resnet_tuner import distribute
    from resnet_tuner.hypermodel import ResNetHyperModel

    options.validate()
    role = distribute.role()
    run_dir = Path(options.out)
    space = search_space(options)  # fail on a bad space before touching the run dir
    if role == "worker":
        if options.overwrite:
            raise ValueError("--overwrite is for the chief: a worker joins the chief's run.")
        distribute.wait_for_chief(connect_timeout)  # the chief writes run.json first
        if not (run_dir / RUN_FILE).is_file():
            raise FileNotFoundError(
                f"The chief at {distribute.address()} is up but {run_dir} holds no {RUN_FILE}: "
                "give every worker the chief's run directory (a shared folder) as --out."
            )
        check_resume(run_dir, options)
        data = load_data(options, run_dir, verbose=verbose)
    else:
        check_resume(run_dir, options)
        run_dir.mkdir(parents=True, exist_ok=True)
        data = load_data(options, run_dir, verbose=verbose)
        if options.data_dir == DIGITS and (
            options.overwrite or not (run_dir / MANIFEST_FILE).exists()
        ):
            data.write_manifest(run_dir / MANIFEST_FILE)
        record = {"options": _jsonable(dataclasses.asdict(options)), "versions": versions(),
                  "space": space.to_dict(), "space_source": space.source,
                  "class_names": data.class_names}
        (run_dir / RUN_FILE).write_text(json.dumps(record, indent=1))
    hypermodel = ResNetHyperModel(space, input_shape=data.input_shape, num_classes=data.num_classes)
    epochs = options.epochs or space.fixed_value("train", "epochs", 10)
    tuner = make_tuner(
        options.tuner, hypermodel, run_dir, max_trials=options.max_trials, epochs=epochs,
        seed=options.seed, overwrite=options.overwrite, max_params=options.max_params,
        max_failures=options.max_failures,
    )
    tuner.worker_timeout = worker_timeout
    tuner.stop_after, tuner.search_started_at = stop_after, started
    tuner.done_at_start = done_at_start
    fit_kwargs: dict[str, Any] = {"verbose": 0}
    if options.tuner != "hyperband":
        fit_kwargs["epochs"] = epochs
    import grpc

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
        try:
            tuner.search(data, **fit_kwargs)
        except _Handover:  # this process ran its share (`stop_after`)
            pass
        except grpc.RpcError as err:
            if role != "worker":
                raise
            detail = err.details() if hasattr(err, "details") else str(err)
            raise distribute.ChiefUnreachableError(
                f"Worker {tuner.tuner_id} lost the chief at {distribute.address()}: {detail}. "
                "Its trial goes to another worker once the chief notices."
            ) from None
    return tuner, data


#: Exit code of a search process that stopped after its share of trials.
HANDOVER_EXIT = 75


class SearchProcessError(RuntimeError):
    """A search process failed; it printed why. `code` is its exit code."""

    def __init__(self, code: int):
        super().__init__(f"search process exited with code {code}")
        self.code = code


def _finished_trials(run_dir: Path) -> int:
    done = 0
    for path in (run_dir / PROJECT).glob("trial_*/trial.json"):
        try:
            done += json.loads(path.read_text("utf-8")).get("status") in ENDED
        except (OSError, ValueError):
            pass
    return done


def _die_with_parent() -> None:  # pragma: no cover (runs in the child before exec)
    """Linux: the child gets SIGKILL when its parent dies (kill -9 included)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_search_in_processes(options: SearchOptions, trials_per_process: int = 1) -> None:
    """Runs a search in a series of fresh processes of `trials_per_process` trials each.

    TensorFlow does not give back all the memory of a trained model, even after
    `keras.backend.clear_session()`: on the quick space about 40 MB a trial
    (bench/trial_memory.py). Each process resumes the run directory (finished
    trials are kept, exactly like a rerun of the command) and exits after its
    share, so resident memory stays flat however long the search. Costs one
    TensorFlow start per process (a few seconds).

    Raises:
        ValueError / FileNotFoundError / SpaceError: bad options or space
            (checked here, before any process starts).
        SearchProcessError: a process failed; it printed its error.
    """
    import subprocess

    options.validate()
    search_space(options)
    run_dir = Path(options.out)
    check_resume(run_dir, options)
    started = time.time()
    done = 0 if options.overwrite else _finished_trials(run_dir)
    first = True
    while True:
        child = dataclasses.replace(options, overwrite=options.overwrite and first)
        command = [sys.executable, "-m", "resnet_tuner.cli", "_trials",
                   json.dumps(_jsonable(dataclasses.asdict(child))),
                   "--stop-after", str(trials_per_process), "--started", repr(started),
                   "--done-at-start", str(done)]
        proc = subprocess.Popen(
            command, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None
        )
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches the child too; let it save and stop
            proc.wait()
            raise
        if code == HANDOVER_EXIT:
            first = False
            continue
        if code != 0:
            raise SearchProcessError(code)
        return


def load_run(run_dir: str | os.PathLike):
    """Reloads a finished (or interrupted) run: `(tuner, data, options)`."""
    from resnet_tuner.hypermodel import ResNetHyperModel

    run_dir = Path(run_dir)
    record_path = run_dir / RUN_FILE
    if not record_path.is_file():
        raise FileNotFoundError(f"Not a resnet-tuner run directory (no {RUN_FILE}): {run_dir}")
    record = json.loads(record_path.read_text("utf-8"))
    options = SearchOptions.from_dict({**record["options"], "overwrite": False})
    space = search_space(options)
    data = load_data(options, run_dir, verbose=0)
    hypermodel = ResNetHyperModel(space, input_shape=data.input_shape, num_classes=data.num_classes)
    epochs = options.epochs or space.fixed_value("train", "epochs", 10)
    tuner = make_tuner(options.tuner, hypermodel, run_dir, max_trials=options.max_trials,
                       epochs=epochs, seed=options.seed, max_params=options.max_params)
    return tuner, data, options
