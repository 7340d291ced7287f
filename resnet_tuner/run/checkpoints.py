"""`--keep-checkpoints K`: delete the weight checkpoints a search will not load again.

keras-tuner saves the best epoch's weights of every trial
(`<trial dir>/checkpoint.weights.h5`): 2-4 MB for the quick space's models
and about 100 MB for a ResNet50 by issue 13's count, so a long search fills
a disk. After each trial
ends, `prune` deletes every checkpoint except:

* those of the best K completed trials, and of every trial tied with the
  K-th best score: keras-tuner breaks ties by the order it loaded its trials
  in, which a resumed run may change, and export (`get_best_models`) loads the
  best trial's checkpoint, so the best trial always keeps its own;
* the parent's of each of those: keras-tuner's Hyperband builds a promoted
  trial's model from its parent's checkpoint (`tuner/trial_id`) every time,
  `load_model` and so export included, before loading the trial's own;
* those a trial that may still run will load: Hyperband builds a promoted
  trial from its parent's checkpoint (`tuner/trial_id`), so the parent of any
  trial not yet COMPLETED or FAILED is kept (a running trial, one an
  interrupted run resumes, one queued again), and so is every completed trial
  that a later round of an unfinished bracket may still promote
  (`ktcompat.promotable`): only trials with fewer strictly better rivals in
  their round than the next round has places left. A trial that has that
  many can never be promoted, so pruning it early is safe;
* those of trials that have not ended (a running trial is writing its own).

FAILED trials' partial checkpoints are deleted (nothing loads them). Each
rule only ever lets go of a checkpoint for good: a trial out of the best K
stays out (and so does its parent), a trial out of the running for promotion
stays out, an ended trial does not run again, so a checkpoint is never
deleted that a later state of the search would need.

`K = 0` keeps every checkpoint (keras-tuner's behaviour). What was deleted is
recorded in `<project>/pruned_checkpoints.json` (trial id -> bytes freed),
which `resnet-tuner trials` and the report read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from resnet_tuner.run import ktcompat
from resnet_tuner.run.trials import PRUNED_FILE, pruned_ledger

_ENDED_FOR_GOOD = ("COMPLETED", "FAILED")


def _better(direction: str):
    return (lambda a, b: a > b) if direction == "max" else (lambda a, b: a < b)


def best_kept(oracle, keep: int) -> set[str]:
    """The best `keep` completed trials, and all trials tied with the last of them."""
    completed = [t for t in oracle.trials.values()
                 if t.status == "COMPLETED" and t.score is not None]
    if keep <= 0 or len(completed) <= keep:
        return {t.trial_id for t in completed}
    better = _better(oracle.objective.direction)
    ranked = oracle.get_best_trials(len(completed))  # keras-tuner's own order (export's)
    last = ranked[keep - 1].score
    return {t.trial_id for t in completed if not better(last, t.score)}


def still_needed(oracle) -> set[str]:
    """Trials whose checkpoint a trial that may still run will load, or is writing."""
    needed = set(ktcompat.promotable(oracle))
    for trial in oracle.trials.values():
        if trial.status not in _ENDED_FOR_GOOD:
            needed.add(trial.trial_id)
            parent = trial.hyperparameters.values.get("tuner/trial_id")
            if parent is not None:
                needed.add(str(parent))
    return needed


def _parents(oracle, trial_ids: set[str]) -> set[str]:
    parents = (oracle.trials[i].hyperparameters.values.get("tuner/trial_id") for i in trial_ids)
    return {str(p) for p in parents if p is not None}


@ktcompat.synchronized
def _to_delete(oracle, keep: int) -> list[str]:
    """Under the oracle's lock: a distributed chief's gRPC threads create trials meanwhile."""
    best = best_kept(oracle, keep)
    keep_ids = best | _parents(oracle, best) | still_needed(oracle)
    return [t.trial_id for t in oracle.trials.values()
            if t.status in _ENDED_FOR_GOOD and t.trial_id not in keep_ids]


def prune(tuner, keep: int) -> list[str]:
    """Deletes the checkpoints `keep` does not keep (see the module docstring).

    Args:
        tuner: a keras-tuner tuner whose oracle is local (not a worker's client).
        keep: checkpoints of the best completed trials to keep; 0 keeps all.

    Returns:
        The ids of the trials whose checkpoint was deleted now.
    """
    if not keep or keep < 0:
        return []
    oracle = tuner.oracle
    freed: dict[str, int] = {}
    for trial_id in _to_delete(oracle, keep):
        path = ktcompat.checkpoint_path(tuner, trial_id)
        files = [p for p in Path(path).parent.glob(Path(path).name + "*") if p.is_file()]
        size = 0
        for file in files:
            try:
                size += file.stat().st_size
                file.unlink()
            except FileNotFoundError:  # another process pruned it meanwhile
                pass
        if files:
            freed[trial_id] = size
    if freed:
        project = Path(tuner.project_dir)
        ledger = {**pruned_ledger(project), **freed}
        temporary = project / (PRUNED_FILE + ".tmp")
        temporary.write_text(json.dumps({"trials": ledger}))
        os.replace(temporary, project / PRUNED_FILE)  # readers never see half a ledger
    return sorted(freed)
