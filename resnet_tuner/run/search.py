"""One search run: data + space + tuner in a run directory that can be resumed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from resnet_tuner.devices import resolve_precision
from resnet_tuner.run import auth, distribute, progress
from resnet_tuner.run.options import DATASETS, SearchOptions, kt_objective
from resnet_tuner.run.processes import Handover
from resnet_tuner.run.rundir import (
    MANIFEST_FILE,
    RUN_FILE,
    check_resume,
    finished_trials,
    load_data,
    read_record,
    record_timing,
    search_lock,
    search_space,
    write_record,
)
from resnet_tuner.run.tuners import make_tuner, planned_trials, trial_epochs


def open_tuner(options: SearchOptions, run_dir: Path, space, data, verbose: int = 1):
    """The run's hypermodel and tuner: the one place a run assembles them."""
    from resnet_tuner import ResNetHyperModel

    hypermodel = ResNetHyperModel(space, input_shape=data.input_shape,
                                  num_classes=data.num_classes, class_weight=options.class_weight,
                                  objective=kt_objective(options.objective),
                                  early_stopping=options.early_stopping,
                                  precision=options.precision,
                                  feature_cache=not options.no_feature_cache)
    return make_tuner(options, hypermodel, run_dir, verbose=verbose)


def prepare_run(options: SearchOptions, verbose: int = 1, *, summary: bool = True):
    """Loads the data of a run and records the run (`run.json`, the manifest).

    What the chief of a search (or its only process) does before the first
    trial, under the run's lock; `run_search_in_processes` does it once before
    its first process. Call it after `check_resume`.

    Args:
        options: the run's settings (validated).
        verbose: 1 shows the decoding progress of a folder read the first time.
        summary: print the data line and what the search will run.

    Returns:
        `(space, data)`.

    Raises:
        ValueError / FileNotFoundError: bad data.
    """
    run_dir = Path(options.out)
    space = search_space(options)
    run_dir.mkdir(parents=True, exist_ok=True)
    reading = time.time()
    data = load_data(options, run_dir, verbose=verbose)
    if summary:  # the session's first read (a process of a series reads the cache again)
        record_timing(run_dir, data=time.time() - reading)
    if options.data_dir in DATASETS and (
        options.overwrite or not (run_dir / MANIFEST_FILE).exists()
    ):
        data.write_manifest(run_dir / MANIFEST_FILE)
    write_record(run_dir, options, space, data.class_names)
    if summary:
        epochs = trial_epochs(options, space)
        done = 0 if options.overwrite else finished_trials(run_dir)
        print(progress.data_line(data), flush=True)
        print(progress.plan_line(options, planned_trials(options, epochs), epochs, done,
                                 precision=resolve_precision(options.precision)), flush=True)
    return space, data


def run_search(options: SearchOptions, verbose: int = 1, **kwargs):
    """Runs (or resumes) a search; returns `(tuner, data)`.

    The run directory is held for the search (`rundir.search_lock`): a
    second search on it is refused at once, naming the first. Workers of a
    distributed search join the chief's directory without the lock.
    Arguments and errors as `_run_search`, plus `RunInUseError`.
    """
    options.validate()
    if distribute.role() == "worker":
        return _run_search(options, verbose, **kwargs)
    search_space(options)  # bad settings fail before the directory is touched
    check_resume(Path(options.out), options)
    with search_lock(Path(options.out)):
        return _run_search(options, verbose, **kwargs)


def _run_search(options: SearchOptions, verbose: int = 1, *, connect_timeout: float = 60.0,
                worker_timeout: float = 60.0, credentials: auth.Credentials | None = None,
                stop_after: int | None = None, started: float | None = None,
                done_at_start: int | None = None, summary: bool = True):
    """Runs (or resumes) a search; returns `(tuner, data)`.

    In a distributed search (see `resnet_tuner.run.distribute`) the chief serves
    trials until all have ended and the workers run them; all share `out`.

    Args:
        options: the run's settings.
        verbose: 0 prints a line per trial only; 1 also the data and plan lines
            (with `summary`), the decoding progress and progress within each
            trial (`progress.EpochProgress`); 2 also keras-tuner's own lines.
        connect_timeout: seconds a worker waits for the chief.
        worker_timeout: seconds of silence after which the chief counts a
            worker as lost and queues its trial again.
        credentials: the chief's or a worker's token and TLS files
            (`auth.Credentials`; checked against the role before anything runs).
        stop_after: run at most this many trials, then return with
            `tuner.recycled` set if trials are left (see `run_search_in_processes`).
        started, done_at_start: the whole search's start time and finished
            trials then, for progress lines across processes.
        summary: print the data and plan lines (a process of a series does
            not: the series printed them).

    Raises:
        ValueError / FileNotFoundError / SpaceError: bad options, data, space or
            credentials.
        ChiefUnreachableError: a worker could not reach, or lost, its chief
            (`ChiefRefusedError`: the chief refused its token).
    """
    options.validate()
    role = distribute.role()
    credentials = credentials or auth.Credentials()
    credentials.check(role)
    run_dir = Path(options.out)
    space = search_space(options)  # fail on a bad space before touching the run dir
    if role == "worker":
        if options.overwrite:
            raise ValueError("--overwrite is for the chief: a worker joins the chief's run.")
        distribute.wait_for_chief(connect_timeout, credentials)  # the chief writes run.json first
        if not (run_dir / RUN_FILE).is_file():
            raise FileNotFoundError(
                f"The chief at {distribute.address()} is up but {run_dir} holds no {RUN_FILE}: "
                "give every worker the chief's run directory (a shared folder) as --out."
            )
        check_resume(run_dir, options)
        data = load_data(options, run_dir, verbose=verbose)
    else:
        check_resume(run_dir, options)
        space, data = prepare_run(options, verbose, summary=summary and verbose >= 1)
    tuner = open_tuner(options, run_dir, space, data, verbose=verbose)
    if role == "worker":
        distribute.use_credentials(tuner.oracle, credentials)
    tuner.worker_timeout, tuner.credentials = worker_timeout, credentials
    tuner.stop_after, tuner.search_started_at = stop_after, started
    tuner.done_at_start = done_at_start
    tuner.epoch_progress = verbose >= 1
    fit_kwargs: dict[str, Any] = {"verbose": 0}
    if options.tuner != "hyperband":  # Hyperband sets each trial's epochs itself
        fit_kwargs["epochs"] = tuner.trial_epochs
    from resnet_tuner.tracking import search_callbacks

    # --tensorboard / --mlflow: keras-tuner gives a TensorBoard callback a folder per trial
    # and adds the HParams dashboard's; our tuners tell an MlflowLogger each trial.
    if callbacks := search_callbacks(options):
        fit_kwargs["callbacks"] = callbacks
    import grpc

    try:
        tuner.search(data, **fit_kwargs)
    except Handover:  # this process ran its share (`stop_after`)
        pass
    except grpc.RpcError as err:
        if role != "worker":
            raise
        detail = err.details() if hasattr(err, "details") else str(err)
        if getattr(err, "code", lambda: None)() == grpc.StatusCode.UNAUTHENTICATED:
            # e.g. the chief was restarted with another --token-file
            raise distribute.ChiefRefusedError(distribute.refused_message(detail)) from None
        raise distribute.ChiefUnreachableError(
            f"Worker {tuner.tuner_id} lost the chief at {distribute.address()}: {detail}. "
            "Its trial goes to another worker once the chief notices; once the chief is "
            "back (restarted with its same command), rerun this command to rejoin."
        ) from None
    return tuner, data


def load_run(run_dir: str | Path, verbose: int = 1):
    """Reloads a finished (or interrupted) run: `(tuner, data, options)`.

    Args:
        run_dir: the run directory.
        verbose: 2 lets keras-tuner's `Reloading Tuner from ...` line through.

    Raises:
        FileNotFoundError: `run_dir` is not a run directory.
    """
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    options = SearchOptions.from_dict({**record["options"], "overwrite": False})
    space = search_space(options)
    data = load_data(options, run_dir, verbose=0)
    return open_tuner(options, run_dir, space, data, verbose=verbose), data, options
