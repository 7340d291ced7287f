"""The trials of a run as data: one reader for `resnet-tuner trials` and the report.

Reads keras-tuner's `trial.json` and our `history.json` in each trial folder,
the run's objective from `run.json` and the pruned checkpoints' ledger, all
from disk: no TensorFlow, no keras-tuner, no run lock. So it works while a
search runs, and a file caught half-written (keras-tuner rewrites `trial.json`
after every epoch, in place) is read again once, then shown as `UNKNOWN`
rather than failing the whole listing.

Each trial is a dict (JSON values only):

    trial_id         keras-tuner's id ("0", "1", ...)
    status           COMPLETED, RUNNING, FAILED, INVALID (keras-tuner's), or
                     UNKNOWN (trial.json unreadable)
    score            the objective's value (None until the trial completes)
    hyperparameters  the searched values (keras-tuner's own `tuner/...` left out)
    parent           Hyperband: the trial whose checkpoint this one continued
    epochs           epochs trained (so far, for a running trial)
    seconds          wall time of the trial (so far, for a running trial)
    started, ended   UNIX times (ours, from history.json)
    params           the model's parameter count (recorded when it trained)
    reason           why a FAILED / INVALID trial failed: its error's last line
    checkpoint       "kept", "pruned" (`--keep-checkpoints`) or None (none written)
    history          per-epoch metrics (from history.json)
    epoch_times      UNIX time at the end of each epoch ([] for runs before the budget)
    stopped          why training ended early: "deadline" (the time budget's) or
                     "below median" (`--median-stopping`); None if it ran all its epochs
    final            True for a time budget's final training (the best configuration
                     trained again: its hyperparameters carry `FINAL_EPOCHS`)
    final_from       the final training's source trial (`FINAL_FROM`), else None

`read_trials` returns them best first: completed trials by the run's objective
in its direction, then running ones, then the rest, each by trial number.
`disk_usage` totals the run directory and its checkpoints. `table_lines`,
`csv_text` and `json_text` are the command line's three formats.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet_tuner.run.options import OBJECTIVES
from resnet_tuner.run.rundir import PROJECT, read_record

#: keras-tuner saves a trial's best weights as `<trial dir>/checkpoint.weights.h5`
#: (TF checkpoints `checkpoint.*` before Keras 3): `ktcompat.checkpoint_path`.
CHECKPOINT_PREFIX = "checkpoint"
#: In the keras-tuner project folder: `{"trials": {trial_id: bytes freed}}`.
PRUNED_FILE = "pruned_checkpoints.json"
#: In a trial folder, rewritten after each epoch (`write_progress`): keras-tuner 1.4
#: writes `trial.json` only when a trial starts and ends.
PROGRESS_FILE = "progress.json"
#: The hyperparameters that mark a time budget's final training and hold its epochs and
#: the trial whose configuration it trains again, and the budget's file: here,
#: TensorFlow-free, for the reader and the report; `run.budget` (which imports Keras)
#: must use the same names.
FINAL_EPOCHS = "final/epochs"
FINAL_FROM = "final/from_trial"
#: A time budget's record in the tuner's project folder (`run.budget.read_budget`).
BUDGET_FILE = "budget.json"
#: Fields of each trial in the order of the CSV's first columns.
COLUMNS = ("trial_id", "status", "score", "epochs", "seconds", "params", "checkpoint",
           "parent", "reason", "started", "ended", "stopped", "final", "final_from")
#: How the table says why a trial stopped early (`history.json`'s `stopped`).
STOPPED_TEXT = {"deadline": "stopped at the deadline", "below median": "stopped below the median"}
#: After the scored trials: the unscored, running, ended, then unreadable ones.
#: `keras_tuner.src.errors.FailedTrialError: ...` -> `FailedTrialError: ...`.
_MODULE_PATH = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?=\w+:)")
_ORDER = {"COMPLETED": 0, "RUNNING": 1, "IDLE": 1, "FAILED": 2, "INVALID": 2}


def _read_json(path: Path, retries: int = 1) -> dict | None:
    """The JSON object in `path`, or None if it is missing or (still) not valid JSON."""
    for attempt in range(retries + 1):
        try:
            value = json.loads(path.read_text("utf-8"))
            return value if isinstance(value, dict) else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # caught mid-write: the writer is quick
            if attempt < retries:
                time.sleep(0.05)
    return None


def reason_of(message: str | None) -> str:
    """The last line of a failure traceback: the error (its class without its module) and
    its message, e.g. `FailedTrialError: Oversized model: 19763 parameters. Skip model.`"""
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return _MODULE_PATH.sub("", lines[-1].strip()) if lines else ""


def checkpoint_files(trial_dir: Path) -> list[Path]:
    """keras-tuner's checkpoint file(s) of one trial folder."""
    return [p for p in Path(trial_dir).glob(CHECKPOINT_PREFIX + "*") if p.is_file()]


def pruned_ledger(project_dir: Path) -> dict[str, int]:
    """Trial id -> bytes freed, for the checkpoints `--keep-checkpoints` deleted."""
    ledger = _read_json(Path(project_dir) / PRUNED_FILE) or {}
    trials = ledger.get("trials", {})
    return trials if isinstance(trials, dict) else {}


def write_progress(trial_dir: str | os.PathLike, epoch: int, started: float | None,
                   logs: dict | None = None) -> None:
    """Records that the trial in `trial_dir` finished `epoch` (0-based, as Keras counts;
    Hyperband's promoted trials start past 0). Atomic: a reader sees the old or the new."""
    record = {"epoch": epoch, "started": started, "updated": time.time(),
              "logs": {k: float(v) for k, v in (logs or {}).items()
                       if isinstance(v, (int, float))}}
    path = Path(trial_dir) / PROGRESS_FILE
    temporary = path.with_name(f".{PROGRESS_FILE}.{os.getpid()}")
    temporary.write_text(json.dumps(record))
    os.replace(temporary, path)


def _observed_epochs(raw: dict) -> int | None:
    """Epochs keras-tuner has recorded in `trial.json` (it saves after every epoch)."""
    metrics = (raw.get("metrics") or {}).get("metrics") or {}
    loss = metrics.get("loss") or next(iter(metrics.values()), None)
    if not loss:
        return None
    return len({o.get("step") for o in loss.get("observations", [])}) or None


def _trial(trial_dir: Path, pruned: dict[str, int]) -> dict[str, Any]:
    raw = _read_json(trial_dir / "trial.json")
    extra = _read_json(trial_dir / "history.json") or {}
    values = ((raw or {}).get("hyperparameters") or {}).get("values") or {}
    history = extra.get("history") or {}
    first = next(iter(history.values()), None)
    trial_id = str((raw or {}).get("trial_id") or extra.get("trial_id")
                   or trial_dir.name.removeprefix("trial_"))
    started, ended = extra.get("started"), extra.get("ended")
    status = (raw or {}).get("status") or "UNKNOWN"
    epochs = len(first) if isinstance(first, list) else _observed_epochs(raw or {})
    seconds = ended - started if started and ended else None
    progress = _read_json(trial_dir / PROGRESS_FILE) if not history else None
    if progress and isinstance(progress.get("epoch"), int):  # running, or failed mid-way
        epochs = progress["epoch"] + 1 - int(values.get("tuner/initial_epoch") or 0)
        started = started or progress.get("started")
        if started:
            seconds = (time.time() if status == "RUNNING" else progress["updated"]) - started
    reason = reason_of((raw or {}).get("message"))
    final = FINAL_EPOCHS in values
    source = values.get(FINAL_FROM) if final else None
    if raw is None:
        reason = "trial.json unreadable (being written, or damaged)"
    checkpoint = "kept" if checkpoint_files(trial_dir) else (
        "pruned" if trial_id in pruned else None)
    return {
        "trial_id": trial_id,
        "status": status,
        "score": (raw or {}).get("score"),
        "hyperparameters": {k: v for k, v in values.items()
                            if not k.startswith(("tuner/", "final/"))},
        "parent": values.get("tuner/trial_id"),
        "epochs": epochs,
        "seconds": seconds,
        "started": started,
        "ended": ended,
        "params": extra.get("params"),
        "reason": reason if status != "COMPLETED" else "",
        "checkpoint": checkpoint,
        "history": history,
        "epoch_times": [t for t in extra.get("epoch_times") or [] if isinstance(t, (int, float))],
        "stopped": extra.get("stopped") or None,
        "final": final,
        "final_from": None if source is None else str(source),
    }


def _number(trial_id: str) -> tuple:
    return (0, int(trial_id), "") if trial_id.isdigit() else (1, 0, trial_id)


def best_first(trials: Sequence[dict], direction: str = "max") -> list[dict]:
    """Completed trials by score in `direction` ("max" or "min"), then the others."""
    sign = -1.0 if direction == "max" else 1.0

    def key(t):
        scored = t["status"] == "COMPLETED" and isinstance(t["score"], (int, float))
        group = 0 if scored else 1 + _ORDER.get(t["status"], 3)
        return (group, sign * t["score"] if scored else 0.0, _number(t["trial_id"]))

    return sorted(trials, key=key)


def objective_of(run_dir: str | os.PathLike) -> tuple[str, str]:
    """The run's objective and its direction ("max" / "min"), from `run.json`."""
    options = read_record(Path(run_dir)).get("options", {})
    name = options.get("objective") or "val_accuracy"
    return name, OBJECTIVES.get(name, "min" if name.endswith("loss") else "max")


def read_trials(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every trial of a run, best first (see the module docstring for the fields).

    Raises:
        FileNotFoundError: `run_dir` is not a run directory.
    """
    run_dir = Path(run_dir)
    _, direction = objective_of(run_dir)
    project = run_dir / PROJECT
    pruned = pruned_ledger(project)
    trials = [_trial(d, pruned) for d in project.glob("trial_*") if d.is_dir()]
    return best_first(trials, direction)


def _bytes(path: str | os.PathLike) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:  # deleted meanwhile (a running search prunes)
        return 0


def _tree_bytes(root: Path) -> int:
    return sum(_bytes(os.path.join(folder, name))
               for folder, _, files in os.walk(root) for name in files)


def disk_usage(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Bytes the run directory uses, its checkpoints', and the pruned checkpoints'.

    Returns:
        `{"total", "checkpoints", "checkpoint_files", "pruned", "pruned_bytes",
        "cache", "cache_dir"}`: `cache` is the decoded-image cache's bytes when
        it lies inside the run directory (then counted in `total` too), else None.
    """
    from resnet_tuner.data.store import default_cache_dir

    run_dir = Path(run_dir)
    files = [p for d in (run_dir / PROJECT).glob("trial_*") for p in checkpoint_files(d)]
    ledger = pruned_ledger(run_dir / PROJECT)
    cache_dir = default_cache_dir()
    inside = cache_dir.resolve().is_relative_to(run_dir.resolve())
    return {
        "total": _tree_bytes(run_dir),
        "checkpoints": sum(_bytes(p) for p in files),
        "checkpoint_files": len(files),
        "pruned": len(ledger),
        "pruned_bytes": sum(int(b) for b in ledger.values() if isinstance(b, (int, float))),
        "cache": _tree_bytes(cache_dir) if inside else None,
        "cache_dir": str(cache_dir),
    }


def size_text(n: float) -> str:
    """`2_400_000` -> `2.4 MB`."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


# ---------------------------------------------------------------------- formats
def value_text(value: Any) -> str:
    """A hyperparameter value as the table and the report show it (floats to 4 digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(value_text(v) for v in value)
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def notes_text(trial: dict) -> str:
    """`final training of trial 3; stopped at the deadline`: what sets a trial apart
    (the budget's final training, an early stop), for the table and the report."""
    notes = []
    if trial.get("final"):
        source = trial.get("final_from")
        notes.append(f"final training of trial {source}" if source else "final training")
    if trial.get("stopped"):
        notes.append(STOPPED_TEXT.get(trial["stopped"], f"stopped: {trial['stopped']}"))
    return "; ".join(notes)


def varying(trials: Sequence[dict]) -> tuple[list[str], dict[str, Any]]:
    """Hyperparameter names whose values differ between trials, and those that do not."""
    names = sorted({k for t in trials for k in t["hyperparameters"]})
    differ, same = [], {}
    for name in names:
        seen = {json.dumps(t["hyperparameters"].get(name), sort_keys=True) for t in trials}
        if len(seen) > 1:
            differ.append(name)
        else:
            same[name] = trials[0]["hyperparameters"].get(name)
    return differ, same


def table_lines(trials: Sequence[dict], objective: str, width: int | None = None) -> list[str]:
    """An aligned table, one line per trial, hyperparameters last.

    Only the hyperparameters that differ between trials are on each line
    (the others once, above the table); a failed trial's reason comes first
    in that column. `width` cuts each line to it (a terminal's width).
    """
    differ, same = varying(trials)
    head = ("trial", "status", objective, "epochs", "time", "params", "hyperparameters")
    rows = []
    for t in trials:
        hps = " ".join(f"{n}={value_text(t['hyperparameters'][n])}" for n in differ
                       if n in t["hyperparameters"])
        if t["parent"] is not None:
            hps = f"(from {t['parent']}) {hps}"
        notes = [note for note in (t["reason"], notes_text(t)) if note]
        if notes:
            hps = " | ".join([*notes, hps] if hps else notes)
        score = t["score"]
        rows.append((t["trial_id"], t["status"],
                     f"{score:.4f}" if isinstance(score, (int, float)) else "-",
                     str(t["epochs"]) if t["epochs"] is not None else "-",
                     _duration(t["seconds"]),
                     f"{t['params']:,}" if t["params"] else "-", hps))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    right = {2, 3, 4, 5}  # numbers
    lines = []
    if same:
        lines.append("same in every trial: " + " ".join(f"{k}={value_text(v)}"
                                                        for k, v in same.items()))
    for row in [head, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        line = "  ".join([*cells, row[-1]]).rstrip()
        if width and len(line) > width:
            line = line[: max(width - 1, 1)] + "…"
        lines.append(line)
    return lines


def summary_line(trials: Sequence[dict], usage: dict[str, Any] | None = None) -> str:
    """`5 trials: 3 completed, 2 failed; checkpoints: 2 kept (4.1 MB), 1 pruned (2.0 MB)`."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    done = ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
    line = f"{len(trials)} trial{'s' * (len(trials) != 1)}: {done}" if trials else "no trials yet"
    if usage:
        line += (f"; run directory {size_text(usage['total'])}, checkpoints "
                 f"{usage['checkpoint_files']} kept ({size_text(usage['checkpoints'])}), "
                 f"{usage['pruned']} pruned ({size_text(usage['pruned_bytes'])} freed)")
    return line


def csv_text(trials: Sequence[dict]) -> str:
    """One row per trial: the fixed columns, then every hyperparameter as a column."""
    names = sorted({k for t in trials for k in t["hyperparameters"]})
    columns = {n: (f"hp_{n}" if n in COLUMNS else n) for n in names}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*COLUMNS, *columns.values()])
    for t in trials:
        hps = t["hyperparameters"]
        writer.writerow([("" if t[c] is None else t[c]) for c in COLUMNS]
                        + [value_text(hps[n]) if n in hps else "" for n in names])
    return out.getvalue()


def json_text(trials: Sequence[dict]) -> str:
    """A JSON list of the trials, best first."""
    return json.dumps(list(trials), indent=1, ensure_ascii=False, default=str)


def terminal_width(stream) -> int | None:
    """The terminal's width when `stream` is one; None when piped (lines stay whole)."""
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size((100, 24)).columns
