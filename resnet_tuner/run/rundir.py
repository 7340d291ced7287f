"""The run directory: its layout, its record, the resume check and the run's data.

A run directory holds `run.json` (the settings and the versions that made it),
`manifest.json` (which image is in which split), `tuner/` (keras-tuner's
project: one folder per trial, each with our `history.json`) and `best/` (the
export bundle). Running the same search again on the same directory resumes:
keras-tuner reloads finished trials and does not run them again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from resnet_tuner.run.options import DATASETS, IDENTITY, SearchOptions

RUN_FILE = "run.json"
LOCK_FILE = ".search.lock"
#: Set by a search for the trial processes it starts: they run under its lock.
LOCK_HELD_ENV = "RESNET_TUNER_LOCK_HELD"
MANIFEST_FILE = "manifest.json"
PROJECT = "tuner"
#: keras-tuner trial statuses of a trial that will not run again.
ENDED = ("COMPLETED", "FAILED", "INVALID")
#: Bumped when the layout of a run directory changes in a way old runs can't resume.
RUN_FORMAT = 1
#: Packages whose saved state a resumed run reloads: their minor versions must match.
VERSIONED = ("keras", "keras_tuner")


def versions() -> dict[str, Any]:
    """The run format and the versions of the packages that write a run's state."""
    import keras
    import keras_tuner

    from resnet_tuner import __version__

    return {"run_format": RUN_FORMAT, "resnet_tuner": __version__,
            "keras": keras.__version__, "keras_tuner": keras_tuner.__version__}


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def check_resume(run_dir: Path, options: SearchOptions,
                 current: dict[str, Any] | None = None) -> dict | None:
    """Reads an existing run's record and refuses to resume a different or incompatible one.

    Args:
        run_dir: the run directory.
        options: the settings of the run about to start.
        current: the versions of this installation (default: `versions()`).

    Returns:
        The existing record, or None when there is none or `options.overwrite`.

    Raises:
        ValueError: the run was made with other identity settings (each named
            with its old and new value), or by versions whose saved state this
            one cannot read.
    """
    record_path = Path(run_dir) / RUN_FILE
    if options.overwrite or not record_path.is_file():
        return None
    record = json.loads(record_path.read_text("utf-8"))
    saved, now = record.get("versions", {}), current or versions()
    problems = []
    if saved.get("run_format") != now["run_format"]:
        problems.append(f"run format {saved.get('run_format')} -> {now['run_format']}")
    for package in VERSIONED:
        if _minor(str(saved.get(package, ""))) != _minor(str(now[package])):
            problems.append(f"{package} {saved.get(package)} -> {now[package]}")
    if problems:
        raise ValueError(
            f"Cannot resume {run_dir}: it was written by other versions ({'; '.join(problems)}), "
            "whose saved trials this installation may not load. Use --overwrite to start "
            "over, or reinstall the versions in its run.json."
        )
    # A setting added after the run was made counts as its default there.
    old = {**SearchOptions.defaults(), **record.get("options", {})}
    changed = [f"{k}: {old.get(k)!r} -> {v!r}"
               for k, v in options.to_json().items() if k in IDENTITY and old.get(k) != v]
    if changed:
        raise ValueError(
            f"{run_dir} holds a search with other settings ({'; '.join(changed)}). Resume it "
            "with the same settings, use --overwrite to start over, or choose another --out."
        )
    return record


#: Seconds the last session spent reading the data and exporting (the report's time line).
TIMINGS_FILE = "timings.json"


def record_timing(run_dir: Path, **seconds: float) -> None:
    """Adds `name=seconds` to the run's `timings.json` (e.g. `data=3.2`, `export=21.0`)."""
    import os

    path = Path(run_dir) / TIMINGS_FILE
    try:
        timings = json.loads(path.read_text())
    except (OSError, ValueError):
        timings = {}
    timings.update({k: round(float(v), 3) for k, v in seconds.items()})
    temporary = path.with_name(f".{TIMINGS_FILE}.{os.getpid()}")
    temporary.write_text(json.dumps(timings))
    os.replace(temporary, path)


def write_record(run_dir: Path, options: SearchOptions, space, class_names) -> None:
    """Writes `run.json`: the settings, the versions, the space and the classes."""
    record = {"options": options.to_json(), "versions": versions(), "space": space.to_dict(),
              "space_source": space.source, "class_names": list(class_names)}
    (Path(run_dir) / RUN_FILE).write_text(json.dumps(record, indent=1))


def read_record(run_dir: Path) -> dict:
    """`run.json` of `run_dir`; FileNotFoundError if it is not a run directory."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"Not a resnet-tuner run directory (no {RUN_FILE}): {run_dir}")
    return json.loads(path.read_text("utf-8"))


def load_data(options: SearchOptions, run_dir: Path, verbose: int = 1):
    """The run's data: the manifest's splits when resuming, a new split otherwise.

    A dataset name (`DATASETS`) loads it (`named_dataset`); resuming, its
    splits are the manifest's, file by file, as a folder's are.
    """
    from resnet_tuner import ImageFolder

    size = (options.image_size, options.image_size)
    manifest = Path(run_dir) / MANIFEST_FILE
    if options.data_dir in DATASETS:
        from resnet_tuner.data.datasets import named_dataset

        resumed = manifest.is_file() and not options.overwrite
        return named_dataset(options.data_dir, size, options.split, options.seed,
                             manifest=manifest if resumed else None,
                             given="--split " + ",".join(f"{f:g}" for f in options.split))
    if manifest.is_file() and not options.overwrite:
        return ImageFolder.from_manifest(manifest, verbose=verbose)
    limit = {} if options.max_pixels is None else {"max_pixels": options.max_pixels}
    data = ImageFolder(options.data_dir, image_size=size, split=_split_to_use(options),
                       seed=options.seed, resize=options.resize, verbose=verbose, **limit)
    data.write_manifest(manifest)
    from resnet_tuner.card import SKIPPED_FILE, write_skipped  # the manifest lists used files only

    write_skipped(Path(run_dir) / SKIPPED_FILE, data.skipped, data.root)
    return data


def _split_to_use(options: SearchOptions):
    """`options.split`, or None (the default) when it is the default or the folder ignores it.

    A `--split` other than the default on a folder already split into train/,
    val/ and test/ is said in one warning, in the command line's words.
    """
    import warnings

    from resnet_tuner.data.folder import (
        SplitIgnoredWarning,
        split_ignored,
        split_ignored_message,
    )
    from resnet_tuner.data.scan import presplit_folders
    from resnet_tuner.data.splits import DEFAULT_SPLIT

    if tuple(options.split) == DEFAULT_SPLIT:
        return None
    if split_ignored(presplit_folders(Path(options.data_dir))):
        flag = "--split " + ",".join(f"{f:g}" for f in options.split)
        warnings.warn(SplitIgnoredWarning(split_ignored_message(flag, options.data_dir)),
                      stacklevel=3)
        return None
    return options.split


def search_space(options: SearchOptions):
    """The run's `SearchSpace`, with the command line's batch size and epochs fixed.

    Pretrained backbones whose ImageNet weights are neither cached nor
    downloadable are left out (`SearchSpace.with_available_weights`); a space
    with none left fails here, before the run directory is touched. The
    warning is said once a search: not again under the run's lock, which its
    later calls and its trial processes (`LOCK_HELD_ENV`) hold.
    """
    from resnet_tuner import load_space

    space = load_space(options.space).with_available_weights(
        warn=LOCK_HELD_ENV not in os.environ)
    overrides = {}
    if options.batch_size:
        overrides["batch_size"] = options.batch_size
    if options.epochs:
        overrides["epochs"] = options.epochs
    return space.override("train", **overrides) if overrides else space


def finished_trials(run_dir: Path) -> int:
    """Trials of the run that have ended, from their `trial.json` files."""
    done = 0
    for path in (Path(run_dir) / PROJECT).glob("trial_*/trial.json"):
        try:
            done += json.loads(path.read_text("utf-8")).get("status") in ENDED
        except (OSError, ValueError):
            pass
    return done


class RunInUseError(RuntimeError):
    """Another search holds the run directory."""


@contextlib.contextmanager
def search_lock(run_dir: Path):
    """Holds `run_dir` for one search; a second search on it is refused at once.

    An advisory `flock` on `run_dir/.search.lock`: the operating system drops
    it when the holding process ends, however it ends (kill -9 included), so
    a dead search never leaves the directory locked. The file names the
    holder (pid, host, start, command) for the refusal message. Trial
    processes started by the holder (`LOCK_HELD_ENV`) and distributed
    workers, which join the chief's run on purpose, do not take it. Where
    `fcntl` is missing (Windows) no lock is taken. Over NFS, `flock` may only
    lock within one machine.

    Raises:
        RunInUseError: another live search holds `run_dir`.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    if os.environ.get(LOCK_HELD_ENV) == str(Path(run_dir).resolve()):
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            try:
                who = json.loads(holder)
                text = (f"pid {who['pid']} on {who['host']}, started "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(who['started']))}: "
                        f"{who['command']}")
            except (ValueError, KeyError, TypeError):
                text = "a process that left no details"
            raise RunInUseError(
                f"{run_dir} is in use by another search ({text}). Wait for it to finish or "
                "stop it (a stopped or killed search frees the directory at once), or choose "
                "another --out. Workers of a distributed search join with --worker."
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv[:8])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        previous = os.environ.get(LOCK_HELD_ENV)
        os.environ[LOCK_HELD_ENV] = str(Path(run_dir).resolve())
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(LOCK_HELD_ENV, None)
            else:
                os.environ[LOCK_HELD_ENV] = previous
    finally:
        os.close(fd)  # closing the descriptor releases the lock
