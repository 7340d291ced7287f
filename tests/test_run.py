"""resnet_tuner.run without training: options, the resume identity, tuners, the chief's requeue."""

import argparse
import dataclasses
import json
from pathlib import Path

import keras_tuner as kt
import pytest

from resnet_tuner.run import distribute, rundir
from resnet_tuner.run.options import IDENTITY, SearchOptions, add_arguments

#: The settings that define a run. Pinned here on purpose: dropping one from the
#: identity (say `seed`) would let a resume mix two different searches.
EXPECTED_IDENTITY = {"data_dir", "space", "tuner", "image_size", "batch_size", "seed", "split",
                     "resize", "epochs", "hyperband_factor", "objective", "class_weight",
                     "early_stopping", "precision"}
#: A value different from `base()`'s for every field.
OTHER = {"data_dir": "elsewhere", "out": "runs/b", "space": "mini", "tuner": "random",
         "max_trials": 20, "epochs": 5, "hyperband_factor": 2, "image_size": 32,
         "batch_size": 8, "seed": 1, "split": (0.6, 0.2, 0.2), "resize": "crop",
         "max_pixels": 4096, "max_params": 1000, "max_failures": 5, "overwrite": True,
         "hyperband_iterations": 2, "objective": "val_loss", "class_weight": "balanced",
         "early_stopping": 3, "tensorboard": "runs/tb", "mlflow": "file:///tmp/mlruns",
         "mlflow_experiment": "pets", "keep_checkpoints": 0, "precision": "mixed_bfloat16",
         "devices": 2, "time_budget": 600.0, "final_training": 0.25, "median_stopping": True,
         "no_feature_cache": True}
VERSIONS = {"run_format": rundir.RUN_FORMAT, "resnet_tuner": "0.1.0", "keras": "3.15.0",
            "keras_tuner": "1.4.8"}


def base(tmp_path) -> SearchOptions:
    return SearchOptions(data_dir="digits", out=str(tmp_path / "run"), epochs=3)


def saved_run(tmp_path, options, versions=VERSIONS):
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / rundir.RUN_FILE).write_text(json.dumps({"options": options.to_json(),
                                                       "versions": versions}))
    return run_dir


def test_other_covers_every_field():
    assert set(OTHER) == {f.name for f in dataclasses.fields(SearchOptions)}


def test_the_identity_is_the_settings_that_define_a_run():
    assert set(IDENTITY) == EXPECTED_IDENTITY


@pytest.mark.parametrize("name", sorted(EXPECTED_IDENTITY))
def test_resuming_with_another_identity_setting_is_refused_by_name(name, tmp_path):
    run_dir = saved_run(tmp_path, base(tmp_path))
    changed = dataclasses.replace(base(tmp_path), **{name: OTHER[name]})
    with pytest.raises(ValueError, match=rf"other settings \({name}: "):
        rundir.check_resume(run_dir, changed, current=VERSIONS)


@pytest.mark.parametrize("name", sorted(set(OTHER) - EXPECTED_IDENTITY - {"overwrite"}))
def test_other_settings_may_change_on_resume(name, tmp_path):
    run_dir = saved_run(tmp_path, base(tmp_path))
    changed = dataclasses.replace(base(tmp_path), **{name: OTHER[name]})
    assert rundir.check_resume(run_dir, changed, current=VERSIONS)["options"]["seed"] == 0


@pytest.mark.parametrize("package, version", [("keras", "3.16.0"), ("keras", "4.0.0"),
                                              ("keras_tuner", "1.5.0"),
                                              ("keras_tuner", "1.3.0")])
def test_other_keras_or_keras_tuner_versions_are_refused(package, version, tmp_path):
    run_dir = saved_run(tmp_path, base(tmp_path))
    with pytest.raises(ValueError, match=rf"other versions \({package} .* -> {version}\)"):
        rundir.check_resume(run_dir, base(tmp_path), current={**VERSIONS, package: version})
    patch = {**VERSIONS, package: VERSIONS[package][:-1] + "9"}  # same minor: fine
    assert rundir.check_resume(run_dir, base(tmp_path), current=patch) is not None


def test_another_run_format_is_refused_and_overwrite_accepts_anything(tmp_path):
    run_dir = saved_run(tmp_path, base(tmp_path), versions={**VERSIONS, "run_format": 0})
    with pytest.raises(ValueError, match=rf"run format 0 -> {rundir.RUN_FORMAT}"):
        rundir.check_resume(run_dir, base(tmp_path), current=VERSIONS)
    different = dataclasses.replace(base(tmp_path), seed=9, tuner="grid", overwrite=True)
    assert rundir.check_resume(run_dir, different, current={**VERSIONS, "keras": "9.0"}) is None


def test_a_run_older_than_a_setting_counts_as_its_default(tmp_path):
    old = base(tmp_path).to_json()
    del old["hyperband_factor"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / rundir.RUN_FILE).write_text(json.dumps({"options": old, "versions": VERSIONS}))
    assert rundir.check_resume(run_dir, base(tmp_path), current=VERSIONS) is not None
    with pytest.raises(ValueError, match="hyperband_factor: 3 -> 2"):
        rundir.check_resume(run_dir, dataclasses.replace(base(tmp_path), hyperband_factor=2),
                            current=VERSIONS)


def test_every_setting_round_trips_through_run_json_and_the_command_line(tmp_path):
    options = SearchOptions(**{k: v for k, v in OTHER.items()})
    assert SearchOptions.from_dict(json.loads(json.dumps(options.to_json()))) == options
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["elsewhere", "--out", "runs/b", "--space", "mini", "--tuner", "random",
            "--max-trials", "20", "--epochs", "5", "--hyperband-factor", "2",
            "--image-size", "32", "--batch-size", "8", "--seed", "1", "--split", "0.6,0.2,0.2",
            "--resize", "crop", "--max-pixels", "4096", "--max-params", "1000",
            "--max-failures", "5", "--overwrite", "--hyperband-iterations", "2",
            "--objective", "val_loss", "--class-weight", "balanced", "--early-stopping", "3",
            "--tensorboard", "runs/tb", "--mlflow", "file:///tmp/mlruns",
            "--mlflow-experiment", "pets", "--keep-checkpoints", "0",
            "--precision", "mixed_bfloat16", "--devices", "2", "--time-budget", "10m",
            "--final-training", "0.25", "--median-stopping", "--no-feature-cache"]
    assert SearchOptions.from_args(parser.parse_args(argv)) == options


BAD = [("time_budget", "soon", "expected a duration like 30m"),
       ("time_budget", "-5m", "expected a duration"), ("time_budget", 0, "a positive duration"),
       ("final_training", 1.0, "final_training must be a share"),
       ("tuner", "anneal", "tuner must be one of"), ("resize", "squash", "resize must be one of"),
       ("max_trials", 0, "max_trials must be a positive integer"),
       ("epochs", 0, "epochs must be a positive integer"),
       ("image_size", 2.5, "image_size must be a positive integer"),
       ("batch_size", -1, "batch_size must be a positive integer"),
       ("max_params", 0, "max_params must be a positive integer"),
       ("max_pixels", 0, "max_pixels must be a positive integer"),
       ("max_failures", 0, "max_failures must be a positive integer"),
       ("hyperband_factor", 1, "hyperband_factor must be an integer >= 2"),
       ("hyperband_iterations", 0, "hyperband_iterations must be a positive integer"),
       ("objective", "val_auc", "objective must be one of"),
       ("class_weight", "auto", "class_weight must be one of"),
       ("early_stopping", 0, "early_stopping must be a positive integer"),
       ("keep_checkpoints", -1, "keep_checkpoints must be an integer >= 0"),
       ("precision", "float16", "precision must be one of"),
       ("devices", 0, "devices must be 'all' or a positive integer"),
       ("split", (0.5, 0.4, 0.4), "sum to 1"),
       ("data_dir", "/no/such/folder", "Image folder not found: /no/such/folder")]


@pytest.mark.parametrize("name, value, message", BAD, ids=[b[0] for b in BAD])
def test_validate_names_the_bad_setting(name, value, message, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        dataclasses.replace(base(tmp_path), **{name: value}).validate()


def test_the_run_loads_its_folder_with_the_pixel_budget(tmp_path):
    import cv2
    import numpy as np
    from test_cli import make_folder

    folder = make_folder(tmp_path / "shapes", per_class=6, size=20)  # 400 px each
    big = folder / "circle" / "big.png"
    cv2.imwrite(str(big), np.zeros((30, 30, 3), np.uint8))  # 900 px
    options = SearchOptions(data_dir=str(folder), out=str(tmp_path / "run"), image_size=16,
                            split=(0.5, 0.25, 0.25), max_pixels=500)
    (tmp_path / "run").mkdir()
    with pytest.warns(UserWarning, match="1 too large"):
        data = rundir.load_data(options, tmp_path / "run", verbose=0)
    assert [Path(path).name for path, _ in data.skipped] == ["big.png"]
    assert sum(sum(c.values()) for c in data.counts.values()) == 18
    unlimited = dataclasses.replace(options, max_pixels=None, overwrite=True)
    assert rundir.load_data(unlimited, tmp_path / "run", verbose=0).skipped == []


def test_tuner_arguments_go_to_the_tuners_that_take_them(tmp_path):
    options = dataclasses.replace(base(tmp_path), tuner="hyperband", hyperband_factor=2,
                                  max_params=99, seed=0)
    kwargs = options.tuner_arguments()
    assert kwargs["factor"] == 2 and kwargs["max_epochs"] == 3 and kwargs["max_trials"] == 10
    assert kwargs["max_model_size"] == 99 and kwargs["max_consecutive_failed_trials"] == 3
    assert kwargs["seed"] == 1  # keras-tuner reads 0 as "no seed"
    random = dataclasses.replace(options, tuner="random").tuner_arguments(epochs=7)
    assert "factor" not in random and "max_epochs" not in random


# --- tuners: the space's [[initial]] first -------------------------------------------------

INITIAL_SPACE = {
    "model": {"stem": "cifar", "stage_depths": [[1, 1], [2, 2]], "base_width": [4, 8]},
    "train": {"learning_rate": [0.01, 0.001], "batch_size": [16, 32], "epochs": 2},
    "initial": [{"base_width": 8, "learning_rate": 0.001, "stage_depths": "2-2"}],
}


def hypermodel():
    from resnet_tuner import ResNetHyperModel

    return ResNetHyperModel(INITIAL_SPACE, input_shape=(8, 8, 3), num_classes=3)


def end(oracle, trial, score=0.5):
    oracle.update_trial(trial.trial_id, {"val_accuracy": score})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)


@pytest.mark.parametrize("name", ["RandomSearch", "Hyperband", "BayesianOptimization"])
def test_top_level_tuners_try_the_initial_table_first(name, tmp_path):
    import resnet_tuner

    cls = getattr(resnet_tuner, name)
    assert issubclass(cls, getattr(kt, name))
    kwargs = {"max_epochs": 2} if name == "Hyperband" else {"max_trials": 4}
    tuner = cls(hypermodel(), objective="val_accuracy", directory=str(tmp_path), seed=3,
                **kwargs)
    first = tuner.oracle.create_trial("a").hyperparameters.values
    wanted = INITIAL_SPACE["initial"][0]
    assert {k: first[k] for k in wanted} == wanted
    assert first["batch_size"] == 16  # not named: its default
    second = tuner.oracle.create_trial("b").hyperparameters.values
    assert {k: second[k] for k in wanted} != wanted  # tried once, then the oracle's own


def test_grid_search_walks_its_whole_grid_from_the_defaults(tmp_path):
    from resnet_tuner import GridSearch

    tuner = GridSearch(hypermodel(), objective="val_accuracy", directory=str(tmp_path),
                       max_trials=50)
    seen = []
    while True:
        trial = tuner.oracle.create_trial("a")
        if trial.status != "RUNNING":
            break
        seen.append({k: v for k, v in trial.hyperparameters.values.items()})
        end(tuner.oracle, trial)
    assert seen[0] == {"stage_depths": "1-1", "base_width": 4, "learning_rate": 0.01,
                       "batch_size": 16}
    assert len(seen) == 2 * 2 * 2 * 2  # every grid point once
    wanted = INITIAL_SPACE["initial"][0]
    assert any({k: s[k] for k in wanted} == wanted for s in seen)


def test_make_tuner_reads_the_options(tmp_path):
    from resnet_tuner.run.tuners import Hyperband, RandomSearch, make_tuner

    options = dataclasses.replace(base(tmp_path), tuner="hyperband", hyperband_factor=2,
                                  max_trials=2, epochs=None)
    tuner = make_tuner(options, hypermodel(), tmp_path / "a")
    assert isinstance(tuner, Hyperband) and tuner.oracle.factor == 2
    assert tuner.oracle.max_epochs == 2 == tuner.trial_epochs  # the space's epochs
    assert tuner.oracle.max_trials == 2 and tuner.oracle.seed == 1
    for trial_id in ("a", "b"):
        assert tuner.oracle.create_trial(trial_id).status == "RUNNING"
    assert tuner.oracle.create_trial("c").status == "STOPPED"  # max_trials caps Hyperband
    random = make_tuner("random", hypermodel(), tmp_path / "b", max_trials=5, max_failures=4)
    assert isinstance(random, RandomSearch) and random.oracle.max_trials == 5
    assert random.oracle.max_consecutive_failed_trials == 4
    with pytest.raises(ValueError, match="tuner must be one of"):
        make_tuner("anneal", hypermodel(), tmp_path / "c")


# --- the distributed chief: a silent worker's trial goes back in the queue ----------------

def chief_oracle(tmp_path):
    hp = kt.HyperParameters()
    hp.Int("units", 1, 1000)
    oracle = kt.oracles.RandomSearchOracle(objective="val_accuracy", max_trials=5,
                                           hyperparameters=hp, seed=1)
    oracle._set_project_dir(str(tmp_path), "tuner")
    return oracle


def test_the_chief_requeues_the_trial_of_a_silent_worker(tmp_path):
    oracle = chief_oracle(tmp_path)
    lost = oracle.create_trial("w1")
    alive = oracle.create_trial("w2")
    seen = {lost.trial_id: 100.0, alive.trial_id: 150.0}
    lines = []
    assert distribute.requeue_silent_workers(oracle, seen, 160.0, 60.0, lines.append) == []
    assert distribute.requeue_silent_workers(oracle, seen, 161.0, 60.0, lines.append) == [
        lost.trial_id]
    assert lines == [f"chief: no word from worker w1 for 61 s; trial {lost.trial_id} goes "
                     "back in the queue"]
    assert set(oracle.ongoing_trials) == {"w2"}
    saved = json.loads((tmp_path / "tuner" / f"trial_{lost.trial_id}" / "trial.json")
                       .read_text())
    assert saved["status"] == "INVALID" and "w1 stopped answering" in saved["message"]
    rerun = oracle.create_trial("w3")  # the next worker that asks gets the lost trial
    assert rerun.trial_id == lost.trial_id and rerun.status == "RUNNING"
    assert rerun.hyperparameters.values == lost.hyperparameters.values


def test_a_trial_never_heard_from_counts_from_now(tmp_path):
    oracle = chief_oracle(tmp_path)
    trial = oracle.create_trial("w1")
    seen = {}
    assert distribute.requeue_silent_workers(oracle, seen, 500.0, 60.0, print) == []
    assert seen == {trial.trial_id: 500.0}
    assert distribute.requeue_silent_workers(oracle, seen, 561.0, 60.0, print) == [
        trial.trial_id]


def test_the_help_lists_the_presets_and_resize_modes_from_their_one_source():
    from resnet_tuner import available_spaces
    from resnet_tuner.data import RESIZE_MODES
    from resnet_tuner.run.options import preset_names

    assert preset_names() == available_spaces()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert f"a preset ({', '.join(available_spaces())})" in text
    assert "{" + ",".join(RESIZE_MODES) + "}" in text


def test_the_command_line_parser_loads_neither_tensorflow_nor_keras_tuner():
    import subprocess
    import sys

    code = ("import sys; from resnet_tuner import cli; cli.build_parser(); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'keras_tuner') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_worker_heartbeat_reports_its_trial_until_the_trial_ends(monkeypatch):
    """A training worker tells the chief about its trial every HEARTBEAT_S seconds."""
    import time

    from resnet_tuner.run import distribute, ktcompat

    beats = []
    monkeypatch.setattr(distribute, "HEARTBEAT_S", 0.02)
    monkeypatch.setattr(ktcompat, "send_heartbeat",
                        lambda client, trial_id, timeout: beats.append((client, trial_id)))
    with distribute.Heartbeat("client", "07"):
        time.sleep(0.3)
    during = len(beats)
    time.sleep(0.1)
    assert during >= 3 and set(beats) == {("client", "07")}
    assert len(beats) == during  # stopped with the trial
