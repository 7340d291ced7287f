"""Issue 12, the first hour: the command line prints its own lines (the libraries' only
with --verbose), its numbers are the trials that run, and long trials show progress."""

import io
import os
import re
import subprocess
import sys
import warnings

import keras_tuner as kt
import pytest
from test_cli import make_folder, trial_dirs

from resnet_tuner import console
from resnet_tuner.run import progress
from resnet_tuner.run.options import SearchOptions
from resnet_tuner.run.tuners import HyperbandOracle, hyperband_trials

#: A learning-rate range: the space never runs out of new configurations.
SPACE = """
[model]
stem = "cifar"
stage_depths = [1, 1]
base_width = 4

[train]
learning_rate = { min = 0.005, max = 0.02, sampling = "log" }
batch_size = 8
"""

#: What the libraries print by themselves (issue 12's list).
NOISE = {
    "TensorFlow C++ log": r"(?m)^[IWE]\d{4} ",
    "cudart_stub": r"cudart_stub",
    "cpu_feature_guard": r"cpu_feature_guard",
    "oneDNN": r"oneDNN",
    "absl notice": r"absl::InitializeLog",
    "TFLite delegate": r"XNNPACK delegate",
    "keras-tuner reload": r"Reloading Tuner",
    "a warning's source line": r"(?m)^\S+\.py:\d+: \w*Warning: |^\s+warnings\.warn\(",
    "TFLite deprecation": r"tf\.lite\.Interpreter is deprecated",
}
#: Every line a quiet search may print.
OURS = re.compile(r"(data|search): |decoding images \d|  epoch \d+/\d+: |trial \d+ of \d+: "
                  r"|best model exported to ")


def run_cli(*args) -> subprocess.CompletedProcess:
    """The console command as a user runs it: a fresh process, TensorFlow's level unset."""
    env = {k: v for k, v in os.environ.items() if k != console.TF_LEVEL}
    return subprocess.run([sys.executable, "-m", "resnet_tuner.cli", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A 2-trial Hyperband search (2 epochs, factor 3), a fresh process per trial."""
    base = tmp_path_factory.mktemp("output")
    folder = make_folder(base / "shapes")
    space = base / "tiny.toml"
    space.write_text(SPACE)
    args = ["search", str(folder), "--out", str(base / "run"), "--space", str(space),
            "--epochs", "2", "--image-size", "16", "--split", "0.5,0.25,0.25"]
    return {"args": args, "out": base / "run", "first": run_cli(*args)}


def trial_totals(printed: str) -> list[tuple[int, int]]:
    return [(int(k), int(n)) for k, n in re.findall(r"(?m)^trial (\d+) of (\d+): ", printed)]


def test_a_search_prints_its_own_lines_and_nothing_else(search):
    done = search["first"]
    assert done.returncode == 0, done.stdout[-3000:]
    printed = done.stdout
    found = {name for name, pattern in NOISE.items() if re.search(pattern, printed)}
    assert found == set(), printed
    lines = [line for line in printed.splitlines() if line.strip()]
    assert [line for line in lines if not OURS.match(line)] == [], printed
    assert re.search(r"(?m)^data: 24 images of 3 classes at 16x16 px: 12 train, 6 val, 6 test$",
                     printed)
    assert re.search(r"(?m)^best model exported to .*: test accuracy ", printed)


@pytest.mark.slow  # end to end, 20-55 s: CI's slow step runs it
def test_hyperband_prints_the_trials_it_runs_and_more_iterations_run_more(search):
    first = search["first"]
    assert first.returncode == 0, first.stdout[-3000:]
    # --max-trials is 10, but Hyperband's brackets for 2 epochs, factor 3 hold 2 trials.
    assert re.search(r"(?m)^search: 2 trials of Hyperband .*raise --hyperband-iterations",
                     first.stdout)
    assert trial_totals(first.stdout) == [(1, 2), (2, 2)]
    assert len(trial_dirs(search["out"])) == 2
    # Both new trials in one process: one TensorFlow start less.
    more = run_cli(*search["args"], "--hyperband-iterations", "2", "--verbose",
                   "--trials-per-process", "2")
    assert more.returncode == 0, more.stdout[-3000:]
    assert trial_totals(more.stdout) == [(3, 4), (4, 4)]
    assert len(trial_dirs(search["out"])) == 4
    # --verbose shows the libraries' own lines again: the trials' process resumes the
    # run, and so does the export.
    assert more.stdout.count("Reloading Tuner from") == 2


@pytest.mark.parametrize("max_epochs, factor, iterations",
                         [(1, 3, 1), (2, 3, 1), (2, 2, 1), (3, 3, 2), (4, 3, 1), (10, 3, 1),
                          (9, 3, 1), (27, 3, 1), (20, 4, 2), (5, 2, 1)])
def test_hyperband_trials_is_what_keras_tuners_oracle_runs(max_epochs, factor, iterations,
                                                          tmp_path):
    hp = kt.HyperParameters()
    hp.Float("x", 0, 1)
    oracle = kt.oracles.HyperbandOracle(objective="val_accuracy", max_epochs=max_epochs,
                                        factor=factor, hyperband_iterations=iterations,
                                        hyperparameters=hp, seed=1)
    oracle.verbose = 0
    oracle._set_project_dir(str(tmp_path), "p")
    ran = 0
    while (trial := oracle.create_trial("a")).status == "RUNNING":
        oracle.update_trial(trial.trial_id, {"val_accuracy": (ran * 0.37) % 1})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
        ran += 1
    assert hyperband_trials(max_epochs, factor, iterations) == ran
    ours = HyperbandOracle(objective="val_accuracy", max_epochs=max_epochs, factor=factor,
                           hyperband_iterations=iterations, max_trials=100)
    assert ours.max_trials == min(100, ran)


def test_the_plan_line_says_how_to_get_more_trials():
    hyperband = SearchOptions("digits", out="x", epochs=2)
    assert progress.plan_line(hyperband, 2, 2, 0) == (
        "search: 2 trials of Hyperband (brackets up to 2 epochs, factor 3, 1 iteration); "
        "raise --hyperband-iterations to run more")
    assert progress.plan_line(hyperband, 2, 2, 2).startswith("search: all 2 trials of Hyperband")
    random = SearchOptions("digits", out="x", tuner="random", max_trials=5)
    assert progress.plan_line(random, 5, 8, 2) == (
        "search: 5 trials of random search, 8 epochs each, 2 done: resuming")
    # 16 bits (the auto default on a bf16 CPU or a tensor-core GPU) is said, with the way back
    assert progress.plan_line(random, 5, 8, 0, precision="mixed_bfloat16") == (
        "search: 5 trials of random search, 8 epochs each, in mixed_bfloat16 "
        "(--precision float32 for full precision)")
    assert progress.plan_line(random, 5, 8, 0, precision="float32") == (
        "search: 5 trials of random search, 8 epochs each")


SAMPLES = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1795619134.355073   24559 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used.\n",
    b"E0000 00:00:1795619540.696346   27585 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    b"2025-01-01 12:00:00.123456: I tensorflow/core/util/port.cc:153] oneDNN custom operations "
    b"are on.\n",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
]


def test_native_log_lines_are_dropped_and_everything_else_kept(capfd, monkeypatch):
    monkeypatch.delenv(console.TF_LEVEL, raising=False)
    with console.command_output(verbose=False), console.native_logs_dropped():
        for line in SAMPLES:
            os.write(2, line)
        os.write(2, b"F0000 00:00:1.0   1 check.cc:1] Check failed: kept, it explains a crash\n")
        os.write(2, b"resnet-tuner: error: ours\n")
    assert capfd.readouterr().err.splitlines() == [
        "F0000 00:00:1.0   1 check.cc:1] Check failed: kept, it explains a crash",
        "resnet-tuner: error: ours"]
    with console.command_output(verbose=True), console.native_logs_dropped():
        os.write(2, SAMPLES[1])
    assert capfd.readouterr().err == SAMPLES[1].decode()


def test_a_tensorflow_level_the_user_set_is_theirs(capfd, monkeypatch):
    monkeypatch.setenv(console.TF_LEVEL, "1")
    with console.command_output(verbose=False), console.native_logs_dropped():
        os.write(2, SAMPLES[1])
    assert capfd.readouterr().err == SAMPLES[1].decode()


def test_our_warnings_are_one_line_and_other_libraries_are_not_shown(tmp_path, capsys):
    from resnet_tuner import ImageFolder

    folder = make_folder(tmp_path / "shapes")
    (folder / "circle" / "broken.jpg").write_bytes(b"not an image")
    with console.command_output(verbose=False):
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        ImageFolder(folder, image_size=16, split=(0.5, 0.25, 0.25), cache_dir=False, verbose=0)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err  # no source line, and the library's warning is not shown
    assert err[0].startswith(f"resnet-tuner: warning: Skipped 1 file(s) in {folder}: 1 not a "
                             "decodable image. See data.skipped")


def tiny_fit(callback, epochs=2):
    import keras
    from conftest import separable_images

    x, y = separable_images(n=32, size=8)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(), keras.layers.Dense(3, "softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, validation_data=(x, y), epochs=epochs, batch_size=8, verbose=0,
              callbacks=[callback])


def test_off_a_terminal_each_long_epoch_gets_one_line():
    out = io.StringIO()
    tiny_fit(progress.EpochProgress("val_accuracy", batch_size=8, stream=lambda: out,
                                    min_seconds=0))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    for k, line in enumerate(lines, 1):
        assert re.fullmatch(rf"  epoch {k}/2: loss [\d.e-]+, val_accuracy [\d.]+, [\d,]+ img/s",
                            line), line
    quiet = io.StringIO()  # epochs shorter than min_seconds: no lines
    tiny_fit(progress.EpochProgress("val_accuracy", batch_size=8, stream=lambda: quiet,
                                    min_seconds=60))
    assert quiet.getvalue() == ""


def test_on_a_terminal_the_line_updates_and_is_gone_after_the_trial():
    out = io.StringIO()
    callback = progress.EpochProgress("val_accuracy", batch_size=8, stream=lambda: out,
                                      min_seconds=0, live=True)
    tiny_fit(callback)
    assert "epoch 1/2:" not in out.getvalue() and progress._LIVE == []
    assert callback._bar is None


def test_a_workers_line_gives_the_score_of_the_trial_it_ran():
    """A worker's trial has no score of its own (the chief's oracle sets it): the line
    reads the objective's best value from the trial's metrics, in its direction."""
    from keras_tuner.src.engine import trial as trial_module

    trial = trial_module.Trial(kt.HyperParameters(), trial_id="3")
    assert progress.worker_line("w1", trial, "val_accuracy").endswith("val_accuracy=RUNNING")
    for step, (acc, loss) in enumerate([(0.5, 0.9), (0.75, 0.4), (0.625, 0.6)]):
        trial.metrics.update("val_accuracy", acc, step=step)
        trial.metrics.update("val_loss", loss, step=step)
    assert progress.worker_line("w1", trial, "val_accuracy") == \
        "worker w1: trial 3 val_accuracy=0.7500"
    assert progress.worker_line("w1", trial, "val_loss").endswith("val_loss=0.4000")
