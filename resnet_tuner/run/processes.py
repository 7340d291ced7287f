"""A search in a series of fresh processes, each resuming the run for a few trials.

TensorFlow does not give back all the memory of a trained model, even after
`keras.backend.clear_session()`: on the quick space about 40 MB a trial
(bench/trial_memory.py). Each process resumes the run directory (finished
trials are kept, exactly like a rerun of the command) and exits after its
share, so resident memory stays flat however long the search. Costs one
TensorFlow start per process (a few seconds).

The handover: a process's tuner raises `Handover` after its share of trials
(`RecordingTuner.stop_after`); the process (`resnet-tuner _trials`) then exits
with `HANDOVER_EXIT` and `run_search_in_processes` starts the next one.

The series' first steps run once, here: the data is read (a folder's images
decoded into the cache the processes then read), the run recorded and the
data and plan lines printed; bad data fails here, before any process starts.
The processes inherit the environment, so the `TF_CPP_MIN_LOG_LEVEL` the
command line sets quiets TensorFlow in each of them as in this one.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from resnet_tuner.run.options import SearchOptions
from resnet_tuner.run.rundir import check_resume, finished_trials, search_lock, search_space

#: Exit code of a search process that stopped after its share of trials.
HANDOVER_EXIT = 75
#: The CLI's hidden sub-command that runs one process of the series.
TRIALS_COMMAND = "_trials"


class Handover(Exception):
    """Raised after `stop_after` trials: this process ends, a fresh one resumes."""


class SearchProcessError(RuntimeError):
    """A search process failed; it printed why. `code` is its exit code."""

    def __init__(self, code: int):
        super().__init__(f"search process exited with code {code}")
        self.code = code


def _die_with_parent() -> None:  # pragma: no cover (runs in the child before exec)
    """Linux: the child gets SIGKILL when its parent dies (kill -9 included)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def trials_command(options: SearchOptions, stop_after: int, started: float,
                   done_at_start: int, verbose: int = 1) -> list[str]:
    """The command line of one process of the series (`verbose` 2: `--verbose`)."""
    return [sys.executable, "-m", "resnet_tuner.cli", TRIALS_COMMAND,
            json.dumps(options.to_json()), "--stop-after", str(stop_after),
            "--started", repr(started), "--done-at-start", str(done_at_start),
            *(["--verbose"] if verbose >= 2 else [])]


def run_search_in_processes(options: SearchOptions, trials_per_process: int = 1,
                            verbose: int = 1, started: float | None = None) -> None:
    """Runs a search in a series of fresh processes of `trials_per_process` trials each.

    Args:
        options: the run's settings.
        trials_per_process: trials each process runs before a fresh one resumes.
        verbose: as `run_search`'s; 2 also lets the processes' libraries talk.
        started: when the search began (default: now), for progress lines and
            the time budget (`--time-budget` counts from here).

    Raises:
        ValueError / FileNotFoundError / SpaceError: bad options, data or space
            (checked here, before any process starts).
        SearchProcessError: a process failed; it printed its error.
    """
    from resnet_tuner.run.search import prepare_run

    started = time.time() if started is None else started
    options.validate()
    search_space(options)
    run_dir = Path(options.out)
    check_resume(run_dir, options)
    with search_lock(run_dir):  # the trial processes run under this one's lock
        prepare_run(options, verbose, summary=verbose >= 1)
        _run_processes(options, trials_per_process, run_dir, verbose, started)


def _run_processes(options: SearchOptions, trials_per_process: int, run_dir: Path,
                   verbose: int, started: float) -> None:
    import subprocess

    done = 0 if options.overwrite else finished_trials(run_dir)
    first = True
    while True:
        child = dataclasses.replace(options, overwrite=options.overwrite and first)
        proc = subprocess.Popen(
            trials_command(child, trials_per_process, started, done, verbose),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
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
