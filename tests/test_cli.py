"""The resnet-tuner CLI end to end on a tiny folder: search, resume, export, predict, report."""

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from resnet_tuner import cli

TINY_SPACE = """
[model]
stem = "cifar"
stage_depths = [1, 1]
base_width = [4, 8]

[augment]
flip = ["none", "horizontal"]

[train]
learning_rate = 0.01
batch_size = 8
epochs = 1
"""


def make_folder(root, classes=("circle", "square", "stripe"), per_class=8, size=20):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8) + 60 * c
            ok, buf = cv2.imencode(".jpg", image)
            (root / name / f"{i}.jpg").write_bytes(buf.tobytes())
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished two-trial search shared by the tests of this module."""
    base = tmp_path_factory.mktemp("cli")
    folder = make_folder(base / "shapes")
    space = base / "tiny.toml"
    space.write_text(TINY_SPACE)
    out = base / "run"
    args = ["search", str(folder), "--out", str(out), "--space", str(space), "--tuner", "random",
            "--max-trials", "2", "--image-size", "16", "--split", "0.5,0.25,0.25"]
    assert cli.main(args) == 0
    return {"base": base, "folder": folder, "space": space, "out": out, "args": args}


def trial_dirs(out):
    return sorted((out / "tuner").glob("trial_*"))


def test_search_writes_a_run_and_a_bundle(run, capsys):
    out = run["out"]
    assert (out / "run.json").is_file() and (out / "manifest.json").is_file()
    record = json.loads((out / "run.json").read_text())
    assert record["versions"]["keras_tuner"] and record["class_names"] == [
        "circle", "square", "stripe"]
    assert len(trial_dirs(out)) == 2
    for name in ("model.keras", "saved_model", "model.tflite", "classes.json", "config.json",
                 "hyperparameters.json", "manifest.json", "metrics.json", "MODEL_CARD.md"):
        assert (out / "best" / name).exists(), name
    assert all((d / "history.json").is_file() for d in trial_dirs(out))


@pytest.mark.slow  # end to end, 20-55 s: CI's slow step runs it
def test_rerun_resumes_without_rerunning_finished_trials(run, capfd):
    out = run["out"]
    before = {d.name: json.loads((d / "history.json").read_text())["started"]
              for d in trial_dirs(out)}
    assert cli.main(run["args"]) == 0  # same command: nothing left to run
    assert len(trial_dirs(out)) == 2
    more = [a if a != "2" else "3" for a in run["args"]]
    assert cli.main(more) == 0  # one more trial
    after = {d.name: json.loads((d / "history.json").read_text())["started"]
             for d in trial_dirs(out)}
    assert len(after) == 3
    assert all(after[name] == started for name, started in before.items())
    printed = capfd.readouterr().out  # the trial processes print it
    assert "trial 3 of 3" in printed and "left" in printed


def test_resume_with_other_settings_is_refused(run, capsys):
    args = [a if a != "16" else "20" for a in run["args"]]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "other settings (image_size: 16 -> 20)" in err and "Traceback" not in err


def test_export_again_and_refit(run, tmp_path, capsys):
    assert cli.main(["export", str(run["out"]), "--to", str(tmp_path / "b1")]) == 0
    assert cli.main(["export", str(run["out"]), "--to", str(tmp_path / "b2"), "--refit"]) == 0
    refit = json.loads((tmp_path / "b2" / "hyperparameters.json").read_text())
    assert refit["trial"]["refit"] is True
    assert json.loads((tmp_path / "b1" / "metrics.json").read_text())["images"] == 6


def test_predict_table_and_json(run, capsys):
    bundle = run["out"] / "best"
    image = next((run["folder"] / "square").glob("*.jpg"))
    assert cli.main(["predict", str(bundle), str(image), str(run["folder"] / "circle")]) == 0
    table = capsys.readouterr().out
    assert "probability" in table and str(image) in table
    assert cli.main(["predict", str(bundle), str(image), "--json", "--top", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["class"] in ("circle", "square", "stripe")
    assert len(rows[0]["predictions"]) == 2
    assert 0 <= rows[0]["probability"] <= 1
    # The command prints what the library function returns (a script's way to serve).
    from resnet_tuner import predict_files

    assert predict_files(bundle, [image], top=2) == rows


def test_report_writes_html_and_plots(run, capsys):
    assert cli.main(["report", str(run["out"])]) == 0
    report = run["out"] / "report"
    page = (report / "index.html").read_text()
    for png in ("objective.png", "accuracy_vs_params.png", "best_curves.png",
                "confusion_matrix.png"):
        assert (report / png).stat().st_size > 1000
        assert png in page
    assert page.count("<tr class='completed'>") == len(trial_dirs(run["out"]))


@pytest.mark.parametrize(
    "args, message",
    [
        (["search", "/no/such/folder", "--out", "x"], "Image folder not found: /no/such/folder"),
        (["search", "digits", "--out", "x", "--space", "quik"], "Unknown search space 'quik'"),
        (["search", "digits", "--out", "x", "--image-size", "0"], "expected a positive integer"),
        (["search", "digits", "--out", "x", "--split", "0.5,0.5"], "expected three fractions"),
        (["search", "digits", "--out", "x", "--split", "0.5,0.4,0.4"],
         "split fractions must sum to 1"),
        (["search", "digits", "--out", "x", "--tuner", "anneal"], "invalid choice: 'anneal'"),
        (["search", "digits", "--out", "x", "--split", "0.8,0,0.2"],
         "split needs a validation fraction above 0: the search ranks its models by their "
         "validation accuracy. Received: split=(0.8, 0.0, 0.2). To keep every image for the "
         "search, set the test fraction to 0 instead: pass e.g. --split 0.8,0.2,0"),
        (["predict", "/no/bundle", "a.jpg"], "Not an export bundle"),
        (["report", "/no/run"], "Not a resnet-tuner run directory"),
        (["export", "/no/run", "--to", "b"], "Not a resnet-tuner run directory"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        sys.exit(cli.main(args))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_every_command_has_help(capsys):
    for command in ("search", "export", "predict", "report", "demo"):
        with pytest.raises(SystemExit) as info:
            cli.main([command, "--help"])
        assert info.value.code == 0
        assert "usage: resnet-tuner " + command in capsys.readouterr().out


def test_console_script_is_installed():
    exe = shutil.which("resnet-tuner")
    if exe is None:
        pytest.skip("resnet-tuner is not on PATH (package not installed in this environment)")
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "search" in done.stdout


@pytest.mark.slow  # end to end, 20-55 s: CI's slow step runs it
def test_max_params_fails_trials_and_stops_with_their_reasons(tmp_path, capfd):
    folder = make_folder(tmp_path / "shapes")
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    code = cli.main(["search", str(folder), "--out", str(tmp_path / "run"), "--space", str(space),
                     "--tuner", "random", "--max-trials", "5", "--image-size", "16",
                     "--split", "0.5,0.25,0.25", "--max-params", "50"])
    assert code == 2
    err = capfd.readouterr().err
    assert "consecutive" in err and "Oversized model" in err
    statuses = [json.loads((d / "trial.json").read_text())["status"]
                for d in trial_dirs(tmp_path / "run")]
    assert statuses.count("FAILED") >= 2 and "COMPLETED" not in statuses


@pytest.mark.slow  # end to end, 20-55 s: CI's slow step runs it
def test_trials_run_in_fresh_processes_and_in_process_alike(tmp_path, capfd):
    """The default hands over to a new process after each trial; 0 keeps one process."""
    folder = make_folder(tmp_path / "shapes")
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    common = [str(folder), "--space", str(space), "--tuner", "random", "--max-trials", "3",
              "--image-size", "16", "--split", "0.5,0.25,0.25"]
    assert cli.main(["search", *common, "--out", str(tmp_path / "a")]) == 0
    printed = capfd.readouterr().out
    # Trials 2 and 3 each in a new process that resumes, then the export reloads the run:
    # keras-tuner's "Reloading Tuner" line is dropped each time (test_output has --verbose).
    assert "Reloading Tuner" not in printed
    assert "trial 3 of 3" in printed
    assert cli.main(["search", *common, "--out", str(tmp_path / "b"),
                     "--trials-per-process", "0"]) == 0
    assert "Reloading Tuner" not in capfd.readouterr().out

    def values(run):
        return sorted(json.dumps(json.loads(p.read_text())["hyperparameters"]["values"],
                                 sort_keys=True)
                      for p in (tmp_path / run / "tuner").glob("trial_*/trial.json"))

    assert values("a") == values("b") and len(values("a")) == 3


def test_argparse_errors_are_one_line_and_a_pointer_to_help(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["search", "digits", "--out", "x", "--tuner", "anneal"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "resnet-tuner search: error: argument --tuner: invalid choice: 'anneal' "
        "(choose from 'hyperband', 'random', 'bayesian', 'grid')",
        "Run 'resnet-tuner search --help' for usage.",
    ]


def test_the_internal_trials_command_is_not_offered(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serch"])
    err = capsys.readouterr().err
    assert "invalid choice: 'serch'" in err and "_trials" not in err
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "_trials" not in capsys.readouterr().out


def test_too_few_images_suggests_a_split_flag(tmp_path, capsys):
    folder = make_folder(tmp_path / "shapes", per_class=4)
    code = cli.main(["search", str(folder), "--out", str(tmp_path / "run"),
                     "--trials-per-process", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "too few images" in err
    assert "pass e.g. --split 0.6,0.2,0.2" in err and "(0.6, 0.2, 0.2)" not in err


def test_predict_equals_load_image_and_the_model(run, capsys):
    import keras

    from resnet_tuner import load_image

    bundle = run["out"] / "best"
    images = sorted((run["folder"] / "stripe").glob("*.jpg"))[:3]
    assert cli.main(["predict", str(bundle), *map(str, images), "--json", "--top", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    config = json.loads((bundle / "config.json").read_text())
    classes = json.loads((bundle / "classes.json").read_text())
    model = keras.saving.load_model(bundle / "model.keras", safe_mode=True)
    x = np.stack([load_image(p, tuple(config["image_size"]), config["resize"]) for p in images])
    probs = model.predict(x, verbose=0)
    assert [row["image"] for row in rows] == [str(p) for p in images]
    for row, p in zip(rows, probs, strict=True):
        assert row["class"] == classes[int(p.argmax())]
        assert [q["class"] for q in row["predictions"]] == [classes[i] for i in np.argsort(-p)[:3]]
        assert [q["probability"] for q in row["predictions"]] == pytest.approx(
            sorted(p, reverse=True)[:3], abs=1e-6)


def test_a_failed_tflite_conversion_is_said_on_the_command_line(run, tmp_path, capsys,
                                                                monkeypatch):
    import tensorflow as tf

    class Refuses:
        @staticmethod
        def from_saved_model(path):
            raise RuntimeError("op not supported")

    monkeypatch.setattr(tf.lite, "TFLiteConverter", Refuses)
    assert cli.main(["export", str(run["out"]), "--to", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert (f"resnet-tuner: warning: LiteRT (TFLite) conversion failed, so {tmp_path / 'b'} has "
            "no model.tflite (model.keras and the other formats are fine): RuntimeError: op not "
            "supported") in err
    assert not (tmp_path / "b" / "model.tflite").exists()


# --- item 10 of issue 12: objective, class weights, early stopping ----------------------------

def tiny_run_options(tmp_path, *flags):
    from resnet_tuner.run.options import SearchOptions

    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    args = cli.build_parser().parse_args(["search", "digits", "--out", str(tmp_path / "run"),
                                          "--space", str(space), *flags])
    return SearchOptions.from_args(args)


def open_tiny_tuner(options, tmp_path):
    from types import SimpleNamespace

    from resnet_tuner.run.rundir import search_space
    from resnet_tuner.run.search import open_tuner

    data = SimpleNamespace(input_shape=(8, 8, 3), num_classes=3)
    return open_tuner(options, tmp_path / "run", search_space(options), data)


def test_objective_class_weight_and_early_stopping_reach_the_tuner_and_the_model(tmp_path):
    options = tiny_run_options(tmp_path, "--objective", "val_balanced_accuracy",
                               "--class-weight", "balanced", "--early-stopping", "2")
    assert (options.objective, options.class_weight, options.early_stopping) == (
        "val_balanced_accuracy", "balanced", 2)
    tuner = open_tiny_tuner(options, tmp_path)
    assert (tuner.oracle.objective.name, tuner.oracle.objective.direction) == (
        "val_balanced_accuracy", "max")
    hypermodel = tuner.hypermodel
    assert hypermodel.class_weight == "balanced" and hypermodel.early_stopping == 2
    assert hypermodel.extra_metrics == ("balanced_accuracy",)
    loss = open_tiny_tuner(tiny_run_options(tmp_path, "--objective", "val_loss",
                                            "--overwrite"), tmp_path)
    assert (loss.oracle.objective.name, loss.oracle.objective.direction) == ("val_loss", "min")
    plain = open_tiny_tuner(tiny_run_options(tmp_path, "--overwrite"), tmp_path).hypermodel
    assert (plain.class_weight, plain.early_stopping, plain.extra_metrics) == (None, None, ())


@pytest.mark.parametrize("binary", [False, True])
def test_balanced_accuracy_is_scikit_learns(binary):
    from sklearn.metrics import balanced_accuracy_score

    from resnet_tuner.training import BalancedAccuracy

    rng = np.random.default_rng(0)
    classes = 2 if binary else 4
    labels = rng.choice(classes, 90, p=[0.7, 0.3] if binary else [0.55, 0.25, 0.15, 0.05])
    probs = rng.random((90, 1 if binary else classes)).astype("float32")
    predicted = (probs[:, 0] > 0.5).astype(int) if binary else probs.argmax(-1)
    metric = BalancedAccuracy(classes, binary=binary)
    for start in range(0, 90, 32):  # counts accumulate over batches
        metric.update_state(labels[start:start + 32], probs[start:start + 32])
    assert float(metric.result()) == pytest.approx(balanced_accuracy_score(labels, predicted),
                                                   abs=1e-6)
    metric.reset_state()
    metric.update_state(np.zeros(4, int), np.eye(classes, dtype="float32")[[0, 0, 1, 1]]
                        if not binary else np.array([[0.1], [0.2], [0.9], [0.8]], "float32"))
    assert float(metric.result()) == pytest.approx(0.5)  # class 1 never seen: left out


def test_early_stopping_ends_a_trial_that_stopped_improving(tiny_images):
    import keras_tuner as kt

    from resnet_tuner import ResNetHyperModel

    x, y = tiny_images(n=16, size=8)
    # One validation image: accuracy is 0 or 1, so it can improve at most once and
    # patience 1 stops training by epoch 3 of 6.
    space = {"model": {"stem": "cifar", "stage_depths": [1, 1], "base_width": 4},
             "train": {"learning_rate": 0.01, "batch_size": 8, "epochs": 6}}

    def epochs_trained(**kwargs):
        hm = ResNetHyperModel(space, input_shape=(8, 8, 3), num_classes=3, **kwargs)
        hp = kt.HyperParameters()
        history = hm.fit(hp, hm.build(hp), x, y, validation_data=(x[:1], y[:1]), verbose=0)
        return history.history

    assert len(epochs_trained()["loss"]) == 6
    stopped = epochs_trained(early_stopping=1, objective="val_balanced_accuracy")
    assert 2 <= len(stopped["loss"]) <= 3 and "val_balanced_accuracy" in stopped


@pytest.mark.parametrize("flags, message", [
    (["--objective", "val_auc"], "invalid choice: 'val_auc'"),
    (["--class-weight", "auto"], "invalid choice: 'auto'"),
    (["--early-stopping", "0"], "expected a positive integer"),
    (["--hyperband-iterations", "0"], "expected a positive integer"),
])
def test_bad_objective_weights_or_patience_exit_2(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["search", "digits", "--out", "x", *flags])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_hypermodel_refuses_an_objective_its_models_do_not_compute():
    from resnet_tuner import ResNetHyperModel

    with pytest.raises(ValueError, match=r"objective must name a metric .* "
                                         r"Received: objective='val_auc'"):
        ResNetHyperModel("quick", input_shape=(8, 8, 3), num_classes=3, objective="val_auc")


def test_predict_refuses_an_image_training_would_skip_and_goes_on(run, tmp_path, capsys):
    bundle = run["out"] / "best"
    min_size = json.loads((bundle / "manifest.json").read_text())["min_size"]
    assert min_size == 8  # ImageFolder's default, recorded with the split
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(cv2.imencode(".png", np.full((4, 4, 3), 128, np.uint8))[1].tobytes())
    good = next((run["folder"] / "square").glob("*.jpg"))
    assert cli.main(["predict", str(bundle), str(tiny), str(good)]) == 0  # as for a bad file
    lines = capsys.readouterr().out.splitlines()
    reason = "too small (4x4 px; min_size=8)"  # the wording of the skipped list
    assert [line.split()[1:] for line in lines if str(tiny) in line] == [
        ["skipped:", *reason.split()]]
    assert any(str(good) in line and "skipped" not in line for line in lines)
    assert cli.main(["predict", str(bundle), str(tiny), "--json"]) == 2  # nothing predicted
    assert json.loads(capsys.readouterr().out) == [{"image": str(tiny), "error": reason}]


def test_an_explicit_split_on_a_presplit_folder_is_one_warning_line(tmp_path, capsys):
    from resnet_tuner import console
    from resnet_tuner.run.options import SearchOptions
    from resnet_tuner.run.rundir import _split_to_use

    folder = tmp_path / "voc"
    for split in ("train", "val", "test"):
        make_folder(folder / split, per_class=2)
    options = SearchOptions(data_dir=str(folder), out=str(tmp_path / "run"),
                            split=(0.7, 0.15, 0.15))
    with console.command_output(verbose=False):
        assert _split_to_use(options) is None  # the folder's own splits are used
        assert _split_to_use(SearchOptions(data_dir=str(folder), out="x")) is None
        flat = make_folder(tmp_path / "flat", per_class=2)
        assert _split_to_use(SearchOptions(data_dir=str(flat), out="x", split=(0.5, 0.5, 0))
                             ) == (0.5, 0.5, 0)
    assert capsys.readouterr().err.splitlines() == [
        f"resnet-tuner: warning: --split 0.7,0.15,0.15 ignored: {folder} is already split into "
        "train/, val/ and test/ folders, which are used as they are."]


def test_the_offline_weights_error_says_what_to_write_in_a_space_file(tmp_path, monkeypatch,
                                                                     capsys):
    import keras

    from resnet_tuner.model.weights import resolve_weights

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setitem(cli.COMMANDS, "report", lambda args: resolve_weights("imagenet"))
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert 'weights = "none" in the space file' in err and "weights=None in Python" in err
    assert 'weights = "/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" under ' \
           "[transfer]" in err


@pytest.mark.slow
def test_a_search_without_a_test_split_end_to_end(tmp_path, capsys):
    """`--split 0.5,0.5,0`: search, bundle, card, report and predict, all saying so."""
    folder = make_folder(tmp_path / "shapes", per_class=6)
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    out = tmp_path / "run"
    assert cli.main(["search", str(folder), "--out", str(out), "--space", str(space),
                     "--tuner", "random", "--max-trials", "1", "--image-size", "16",
                     "--split", "0.5,0.5,0", "--trials-per-process", "0"]) == 0
    printed = capsys.readouterr().out
    assert "9 train, 9 val, 0 test" in printed
    assert "validation accuracy" in printed and "an optimistic estimate" in printed
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["images"] == 9
    assert "## Validation results (no test split)" in (out / "best" / "MODEL_CARD.md").read_text()
    image = next((folder / "circle").glob("*.jpg"))
    assert cli.main(["predict", str(out / "best"), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["class"] in ("circle", "square", "stripe")
    assert cli.main(["report", str(out)]) == 0
    assert "validation accuracy <b>" in (out / "report" / "index.html").read_text()


def test_the_predict_table_lines_up_wide_characters():
    """CJK class and file names take two terminal columns each; the table pads by columns."""
    assert cli._columns("长城") == 4 and cli._columns("flower 花") == 9
    rows = [cli._pad("photos/长城/0.jpg", 24) + "|", cli._pad("photos/flower 花/0.jpg", 24) + "|"]
    assert len({cli._columns(r) for r in rows}) == 1
