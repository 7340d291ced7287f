"""`resnet-tuner trials` (the trials as a table, CSV or JSON) and `--keep-checkpoints`.

One small real search shared by the module (random search on 24 images, a
trial in a few seconds, oversized models failing on purpose), and a Hyperband
search driven through its real oracle without training, to check that pruning
never deletes a checkpoint a later round loads.
"""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import pytest
from conftest import make_image_folder

from resnet_tuner import cli
from resnet_tuner.run import trials as listing

SPACE = """
[model]
stem = "cifar"
stage_depths = [1, 1]
base_width = [4, 16]

[augment]
flip = ["none", "horizontal"]

[train]
learning_rate = [0.01, 0.05]
batch_size = 4
epochs = 1
"""
KEEP = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Four trials ranked by val_loss (continuous: no ties), one too big (FAILED), K = 2."""
    base = tmp_path_factory.mktemp("trials")
    folder = make_image_folder(base / "colours", per_class=8)
    space = base / "tiny.toml"
    space.write_text(SPACE)
    out = base / "run"
    args = ["search", str(folder), "--out", str(out), "--space", str(space), "--tuner", "random",
            "--max-trials", "4", "--image-size", "16", "--split", "0.5,0.25,0.25",
            "--objective", "val_loss", "--max-params", "4000", "--max-failures", "4",
            "--keep-checkpoints", str(KEEP), "--trials-per-process", "0"]
    assert cli.main(args) == 0
    return {"out": out, "args": args, "folder": folder, "space": space}


def trial_json(out):
    return {d.name.removeprefix("trial_"): json.loads((d / "trial.json").read_text())
            for d in (out / "tuner").glob("trial_*")}


def completed_by_loss(out):
    done = [(t["score"], i) for i, t in trial_json(out).items() if t["status"] == "COMPLETED"]
    return [i for _, i in sorted(done)]


def test_the_run_has_completed_and_failed_trials(run):
    statuses = [t["status"] for t in trial_json(run["out"]).values()]
    assert statuses.count("COMPLETED") > KEEP and "FAILED" in statuses, statuses
    for trial_id in completed_by_loss(run["out"]):  # each epoch's progress.json, the last
        progress = json.loads((run["out"] / "tuner" / f"trial_{trial_id}" /
                               listing.PROGRESS_FILE).read_text())
        assert progress["epoch"] == 0 and progress["logs"]["val_loss"] > 0


def test_table_best_first_with_failures_and_their_reason(run, capsys):
    assert cli.main(["trials", str(run["out"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("best first by val_loss (lower is better)")
    head = next(i for i, line in enumerate(lines) if line.startswith("trial "))
    assert lines[head].split()[:6] == ["trial", "status", "val_loss", "epochs", "time", "params"]
    rows = [line.split() for line in lines[head + 1:-1]]
    assert len(rows) == len(trial_json(run["out"]))
    completed = [r[0] for r in rows if r[1] == "COMPLETED"]
    assert completed == completed_by_loss(run["out"])
    assert rows[: len(completed)] == [r for r in rows if r[1] == "COMPLETED"]  # failed last
    failed = [line for line in lines if " FAILED " in line]
    assert failed and all("Oversized model" in line and "base_width=16" in line
                          for line in failed)
    assert all(r[3] == "1" and r[5] != "-" for r in rows if r[1] == "COMPLETED")
    assert lines[-1].startswith(f"{len(rows)} trials: ") and f"checkpoints {KEEP} kept" in lines[-1]


def test_a_narrow_terminal_cuts_lines_a_pipe_does_not(run):
    rows = listing.read_trials(run["out"])
    assert all(len(line) <= 40 for line in listing.table_lines(rows, "val_loss", width=40))
    assert max(map(len, listing.table_lines(rows, "val_loss"))) > 40


def test_csv_has_a_row_per_trial_and_a_column_per_hyperparameter(run, capsys):
    assert cli.main(["trials", str(run["out"]), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(trial_json(run["out"]))
    assert {"base_width", "flip", "learning_rate", "trial_id", "status", "score", "params",
            "reason", "checkpoint"} <= set(rows[0])
    saved = trial_json(run["out"])
    for row in rows:
        values = saved[row["trial_id"]]["hyperparameters"]["values"]
        assert row["base_width"] == str(values["base_width"]) and row["flip"] == values["flip"]
    completed = [r for r in rows if r["status"] == "COMPLETED"]
    assert [r["trial_id"] for r in completed] == completed_by_loss(run["out"])
    assert [float(r["score"]) for r in completed] == sorted(float(r["score"]) for r in completed)
    assert all("Oversized model" in r["reason"] for r in rows if r["status"] == "FAILED")


def test_json_is_the_reader_s_list(run, capsys):
    assert cli.main(["trials", str(run["out"]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == json.loads(listing.json_text(listing.read_trials(run["out"])))
    first = rows[0]
    assert first["trial_id"] == completed_by_loss(run["out"])[0]
    assert first["status"] == "COMPLETED" and first["epochs"] == 1 and first["params"] > 0
    assert first["seconds"] > 0 and first["checkpoint"] == "kept" and first["history"]["val_loss"]
    assert set(first["hyperparameters"]) == {"base_width", "flip", "learning_rate"}


def test_trials_loads_no_tensorflow(run):
    code = ("import sys; from resnet_tuner.cli import main; "
            f"assert main(['trials', {str(run['out'])!r}, '--json']) == 0; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_half_written_files_are_tolerated(run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run["out"], out, ignore=shutil.ignore_patterns("best", "*.h5"))
    first, second = sorted((out / "tuner").glob("trial_*"))[:2]
    text = (first / "trial.json").read_text()
    (first / "trial.json").write_text(text[: len(text) // 2])  # caught mid-write
    (second / "history.json").write_text('{"trial_id": "1", "hist')
    assert cli.main(["trials", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "UNKNOWN" in printed and "trial.json unreadable" in printed
    rows = {t["trial_id"]: t for t in listing.read_trials(out)}
    assert rows[first.name.removeprefix("trial_")]["status"] == "UNKNOWN"
    assert rows[second.name.removeprefix("trial_")]["status"] != "UNKNOWN"
    assert listing.best_first(list(rows.values()), "min")[-1]["status"] == "UNKNOWN"


def test_a_running_trial_shows_its_epochs_and_time_so_far(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run["out"], out, ignore=shutil.ignore_patterns("best", "*.h5"))
    trial_id = completed_by_loss(out)[0]
    folder = out / "tuner" / f"trial_{trial_id}"
    saved = json.loads((folder / "trial.json").read_text())
    # What a trial two epochs into its training leaves: keras-tuner's trial.json as it
    # was created, our progress.json of its last epoch, no history.json yet.
    (folder / "trial.json").write_text(json.dumps(
        {**saved, "status": "RUNNING", "score": None, "metrics": {"metrics": {}}}))
    (folder / "history.json").unlink()
    listing.write_progress(folder, 1, started=time.time() - 30, logs={"loss": 0.5})
    rows = listing.read_trials(out)
    running = next(t for t in rows if t["trial_id"] == trial_id)
    assert (running["status"], running["epochs"]) == ("RUNNING", 2)
    assert 30 <= running["seconds"] < 300
    order = [t["status"] for t in rows]
    assert order.index("RUNNING") == order.count("COMPLETED") < order.index("FAILED")


def test_the_reader_s_budget_names_are_the_budget_s():
    from resnet_tuner.run import budget

    # Copied into the TensorFlow-free reader (`run.budget` imports Keras).
    assert (listing.FINAL_EPOCHS, listing.FINAL_FROM, listing.BUDGET_FILE) == (
        budget.FINAL_EPOCHS, budget.FINAL_FROM, budget.BUDGET_FILE)


def test_not_a_run_directory_exits_2(tmp_path, capsys):
    assert cli.main(["trials", str(tmp_path)]) == 2
    assert "Not a resnet-tuner run directory" in capsys.readouterr().err


# --- --keep-checkpoints -----------------------------------------------------------------------

def test_only_the_best_k_checkpoints_remain_and_the_rest_are_recorded(run, capsys):
    out = run["out"]
    kept = {d.name.removeprefix("trial_") for d in (out / "tuner").glob("trial_*")
            if listing.checkpoint_files(d)}
    best = completed_by_loss(out)
    assert kept == set(best[:KEEP])
    ledger = listing.pruned_ledger(out / "tuner")
    assert set(best[KEEP:]) <= set(ledger) and all(size > 0 for size in ledger.values())
    usage = listing.disk_usage(out)
    assert usage["checkpoint_files"] == KEEP and usage["pruned"] == len(ledger)
    assert usage["total"] > usage["checkpoints"] > 0
    states = {t["trial_id"]: t["checkpoint"] for t in listing.read_trials(out)}
    assert all(states[i] == "pruned" for i in best[KEEP:])


def test_the_exported_bundle_is_the_best_trial_s(run):
    bundle = run["out"] / "best"
    assert (bundle / "model.keras").is_file()
    trial = json.loads((bundle / "hyperparameters.json").read_text())["trial"]
    assert str(trial["trial_id"]) == completed_by_loss(run["out"])[0]


def test_the_report_says_the_disk_use_and_the_pruned_checkpoints(run, tmp_path):
    from resnet_tuner.report import write_report

    page = write_report(run["out"], tmp_path / "report").read_text()
    assert "Disk: the run directory takes" in page
    pruned = len(listing.pruned_ledger(run["out"] / "tuner"))
    assert f"; {pruned} checkpoint{'s' * (pruned != 1)} pruned (" in page and pruned
    assert "<th>val_loss</th>" in page
    ids = [row.split("<td>")[1].split("</td>")[0] for row in page.split("<tr class='")[1:]]
    assert ids[: len(completed_by_loss(run["out"]))] == completed_by_loss(run["out"])


def test_a_resumed_run_searches_on_and_keeps_k(run, tmp_path):
    from resnet_tuner.run.options import SearchOptions
    from resnet_tuner.run.search import run_search

    out = tmp_path / "run"
    shutil.copytree(run["out"], out, ignore=shutil.ignore_patterns("best", "report"))
    record = json.loads((out / "run.json").read_text())
    options = SearchOptions.from_dict({**record["options"], "out": str(out), "max_trials": 6})
    tuner, _ = run_search(options, verbose=0)
    assert len(trial_json(out)) == 6
    kept = {d.name.removeprefix("trial_") for d in (out / "tuner").glob("trial_*")
            if listing.checkpoint_files(d)}
    assert kept == set(completed_by_loss(out)[:KEEP])
    with warnings.catch_warnings():  # the checkpoint's optimizer state is not loaded
        warnings.simplefilter("ignore")
        assert tuner.get_best_models(1)[0].count_params() > 0  # what export loads


# --- Hyperband: a later round starts from its parent's checkpoint -------------------------------

def drive_hyperband(tmp_path, keep, slots=1, max_epochs=9, seed=1):
    """Runs our Hyperband tuner's oracle to its end, training nothing: each trial builds its
    model (from its parent's weights, as keras-tuner's Hyperband does), saves the weights as
    its checkpoint and reports a random val_loss; `slots` trials run at once. After each
    prune, the best trial must load through `tuner.load_model`, as export loads it.

    Returns the tuner, the trials that started from a parent, the checkpoints left after
    each prune.
    """
    import keras
    import keras_tuner as kt
    import numpy as np

    from resnet_tuner.run import checkpoints, ktcompat
    from resnet_tuner.run.tuners import Hyperband

    def build(hp):
        hp.Float("lr", 1e-4, 1e-1, sampling="log")
        return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])

    tuner = Hyperband(build, objective=kt.Objective("val_loss", "min"), max_epochs=max_epochs,
                      factor=3, seed=seed, directory=str(tmp_path), project_name="hb")
    oracle, rng = tuner.oracle, np.random.default_rng(seed)

    def checkpoint(trial_id):
        return ktcompat.checkpoint_path(tuner, trial_id)

    running, loaded, counts, last_loaded = [], [], [], None
    while True:
        for slot in range(slots):
            if any(t[0] == slot for t in running):
                continue
            trial = oracle.create_trial(f"t{slot}")
            if trial.status != "RUNNING":
                continue
            model = build(trial.hyperparameters)
            parent = trial.hyperparameters.values.get("tuner/trial_id")
            if parent is not None:  # what keras-tuner's Hyperband._build_hypermodel does
                assert os.path.exists(checkpoint(parent)), (
                    f"trial {trial.trial_id} needs the pruned checkpoint of {parent}")
                model.load_weights(checkpoint(parent))
                loaded.append(trial.trial_id)
            model.save_weights(checkpoint(trial.trial_id))  # what training leaves
            with open(os.path.join(tuner.get_trial_dir(trial.trial_id), "build_config.json"),
                      "w") as f:
                json.dump(model.get_build_config(), f)
            running.append((slot, trial))
        if not running:
            break
        slot, trial = running.pop(0)
        parent = trial.hyperparameters.values.get("tuner/trial_id")
        if parent is not None:  # an interrupted trial reruns, from the parent's checkpoint
            assert os.path.exists(checkpoint(parent)), (
                f"running trial {trial.trial_id} lost its parent {parent}'s checkpoint")
        epochs = trial.hyperparameters.values["tuner/epochs"]  # longer training, lower loss
        oracle.update_trial(trial.trial_id, {"val_loss": float(rng.random()) / epochs})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
        pruned = checkpoints.prune(tuner, keep)
        counts.append(sum(os.path.exists(checkpoint(i)) for i in oracle.trials))
        best = oracle.get_best_trials(1)[0]
        if pruned or best.trial_id != last_loaded:  # else nothing changed for it
            tuner.load_model(best)  # export's path: the best's checkpoint, and its parent's
            last_loaded = best.trial_id
    return tuner, loaded, counts


@pytest.fixture
def no_gc(monkeypatch):
    """keras-tuner's `load_model` clears the Keras session with two `gc.collect()` calls,
    0.3 s each in a test process (see conftest's `_fresh_keras_session`)."""
    import gc

    monkeypatch.setattr(gc, "collect", lambda *args: 0)


@pytest.mark.parametrize("slots", [1, 2], ids=["sequential", "two-workers"])
def test_hyperband_parents_keep_their_checkpoints_while_needed(tmp_path, slots, no_gc):
    from resnet_tuner.run import ktcompat
    from resnet_tuner.run.tuners import hyperband_trials

    tuner, loaded, counts = drive_hyperband(tmp_path, keep=1, slots=slots)
    oracle = tuner.oracle
    assert len(oracle.trials) == hyperband_trials(9, 3) == 23  # 3 brackets, 6 rounds
    assert len(loaded) >= 4  # promotions happened, each found its parent's checkpoint
    assert min(counts) < max(counts) and max(counts) < len(oracle.trials)  # pruned as it went
    best = oracle.get_best_trials(1)[0]
    left = {i for i in oracle.trials if os.path.exists(ktcompat.checkpoint_path(tuner, i))}
    parent = best.hyperparameters.values.get("tuner/trial_id")
    assert parent is not None  # (seed 1) the best was promoted: its model loads its parent's
    assert left == {best.trial_id, parent}  # all brackets over: the best K = 1 and its parent


def test_keep_zero_keeps_every_checkpoint(tmp_path, no_gc):
    tuner, loaded, counts = drive_hyperband(tmp_path, keep=0, max_epochs=3)
    assert counts[-1] == len(tuner.oracle.trials) and loaded
