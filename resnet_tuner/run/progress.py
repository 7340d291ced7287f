"""Progress lines: one per ended trial, with the best so far and the time left."""

from __future__ import annotations

import time

from resnet_tuner.run.rundir import ENDED


def duration(seconds: float) -> str:
    """`75` -> `1m15s`, `9` -> `9s`."""
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def worker_line(tuner_id: str, trial, objective: str) -> str:
    """A worker's line for a trial it ran (the chief prints the search's progress)."""
    return f"worker {tuner_id}: trial {trial.trial_id} {objective}={_score(trial)}"


def search_line(oracle, trial, *, started: float, done_before: int, total: int | None,
                now: float | None = None) -> str:
    """`trial 3 of 10: val_accuracy=0.8125 | best 0.8750 | 1m02s elapsed, ~3m30s left`.

    Args:
        oracle: the search's oracle (its trials and best trial).
        trial: the trial that just ended.
        started: when the search (all its processes) started.
        done_before: trials that had ended when this process started; the time
            left is estimated from this process's pace.
        total: trials the search runs (None: no estimate).
        now: the current time (default: `time.time()`).
    """
    done = sum(t.status in ENDED for t in oracle.trials.values())
    elapsed = (time.time() if now is None else now) - started
    this_session = max(1, done - done_before)
    remaining = ""
    if total:
        left = max(0, total - done)
        remaining = f", ~{duration(elapsed / this_session * left)} left"
    best = oracle.get_best_trials(1)
    best_text = f"{best[0].score:.4f}" if best and best[0].score is not None else "-"
    of = f" of {total}" if total else ""
    return (f"trial {done}{of}: {oracle.objective.name}={_score(trial)} | best {best_text} | "
            f"{duration(elapsed)} elapsed{remaining}")


def _score(trial) -> str:
    return f"{trial.score:.4f}" if trial.score is not None else str(trial.status)
