"""TensorBoard and MLflow for every trial: event files with HParams data, one MLflow run per trial.

One tiny two-trial search (in this process) feeds the default tests; the command
line's flow (trials in fresh processes, then the export) is the slow test.
"""

import dataclasses
import glob
import json
import os

import keras
import pytest
from conftest import separable_images

from resnet_tuner import tracking
from resnet_tuner.run.options import SearchOptions

TINY_SPACE = {"model": {"stem": "cifar", "stage_depths": [1, 1], "base_width": [4, 8]},
              "augment": {"flip": ["none", "horizontal"]},
              "train": {"learning_rate": 0.01, "batch_size": 8, "epochs": 2}}


def has_mlflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """Two trials of two epochs, logged to TensorBoard and (if installed) MLflow."""
    from resnet_tuner import RandomSearch, ResNetHyperModel

    base = tmp_path_factory.mktemp("tracking")
    x, y = separable_images(n=32)
    hm = ResNetHyperModel(TINY_SPACE, input_shape=x.shape[1:], num_classes=3)
    tuner = RandomSearch(hm, objective="val_accuracy", max_trials=2, seed=3,
                         directory=str(base / "run"))
    callbacks = [keras.callbacks.TensorBoard(str(base / "tb"))]
    uri = (base / "mlruns").as_uri()
    if has_mlflow():
        callbacks.append(tracking.MlflowLogger(uri, experiment="tiny"))
    tuner.search(x[:24], y[:24], validation_data=(x[24:], y[24:]), epochs=2, verbose=0,
                 callbacks=callbacks)
    trials = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    assert len(trials) == 2
    return {"base": base, "tuner": tuner, "trials": trials, "uri": uri}


def hparams_of(event_file) -> dict:
    """The hyperparameters an HParams `session_start_info` summary in `event_file` holds."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = event_accumulator.EventAccumulator(event_file)
    events.Reload()
    for raw in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            return {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
                    for name, value in data.session_start_info.hparams.items()}
    return {}


def test_tensorboard_gets_a_folder_per_trial_with_its_curves_and_hparams(search):
    tb = search["base"] / "tb"
    for trial in search["trials"]:
        folder = tb / trial.trial_id / "execution0"
        assert glob.glob(str(folder / "train" / "events.out.tfevents.*"))
        assert glob.glob(str(folder / "validation" / "events.out.tfevents.*"))
        (hparams_file,) = glob.glob(str(folder / "events.out.tfevents.*"))
        assert hparams_of(hparams_file) == trial.hyperparameters.values


def runs_by_trial(uri, experiment="tiny"):
    client = tracking._client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, {r.data.tags[tracking.TRIAL_TAG]: r for r in runs}


def test_mlflow_logs_a_run_per_trial_with_params_and_metrics(search):
    pytest.importorskip("mlflow")
    client, runs = runs_by_trial(search["uri"])
    assert set(runs) == {t.trial_id for t in search["trials"]}
    for trial in search["trials"]:
        run = runs[trial.trial_id]
        assert run.info.status == "FINISHED" and run.info.run_name == f"trial {trial.trial_id}"
        assert run.data.tags["resnet_tuner.status"] == "COMPLETED"
        params = run.data.params
        assert {k: params[k] for k in trial.hyperparameters.values} == {
            k: str(v) for k, v in trial.hyperparameters.values.items()}
        assert int(params["model_parameters"]) > 0
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [0, 1]
        assert {"loss", "accuracy", "val_loss"} <= set(run.data.metrics)
        assert run.data.metrics["best_val_accuracy"] == pytest.approx(trial.score)
        assert max(m.value for m in history) == pytest.approx(trial.score)


def test_the_bundle_goes_to_the_best_trials_run(search, tmp_path):
    pytest.importorskip("mlflow")
    bundle = tmp_path / "best"  # what log_bundle reads of a bundle; the slow test exports one
    bundle.mkdir()
    (bundle / "config.json").write_text("{}")
    (bundle / "metrics.json").write_text(json.dumps({"split": "test", "accuracy": 0.75,
                                                     "images": 8, "tflite": {}}))
    logger = tracking.MlflowLogger(search["uri"], experiment="tiny")
    run_id = logger.log_bundle(bundle, search["tuner"])
    client, runs = runs_by_trial(search["uri"])
    best = search["tuner"].oracle.get_best_trials(1)[0]
    assert runs[best.trial_id].info.run_id == run_id
    artifacts = {a.path for a in client.list_artifacts(run_id, tracking.BUNDLE_ARTIFACT)}
    assert artifacts == {"bundle/config.json", "bundle/metrics.json"}
    run = client.get_run(run_id)
    assert run.data.metrics["test_accuracy"] == 0.75 and run.data.metrics["test_images"] == 8
    assert run.data.tags["resnet_tuner.best"] == "true"


def test_a_fit_without_our_tuner_is_a_run_of_its_own(tmp_path):
    """keras-tuner's own tuners tell callbacks no trial: each fit is a run, said once."""
    pytest.importorskip("mlflow")
    logger = tracking.MlflowLogger((tmp_path / "mlruns").as_uri(), experiment="plain")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    logger.set_model(model)
    with pytest.warns(tracking.TrackingWarning, match="each fit is logged as a run"):
        logger.on_train_begin()
    logger.on_epoch_end(0, {"loss": 0.5, "val_loss": float("nan")})
    logger.on_train_end()
    client = tracking._client((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([logger.experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics == {"loss": 0.5}
    assert run.data.params == {"model_parameters": "3"}


def test_a_store_that_fails_mid_search_warns_and_the_search_goes_on(tmp_path):
    pytest.importorskip("mlflow")
    logger = tracking.MlflowLogger((tmp_path / "mlruns").as_uri(), experiment="flaky")
    logger.run_id = "no-such-run"
    with pytest.warns(tracking.TrackingWarning, match="could not log the epoch's metrics"):
        logger.on_epoch_end(0, {"loss": 0.5})


def test_the_options_give_the_callbacks(tmp_path):
    options = SearchOptions("digits", out=str(tmp_path / "pets"))
    assert tracking.search_callbacks(options) == []
    (board,) = tracking.search_callbacks(dataclasses.replace(options, tensorboard="tb"))
    assert isinstance(board, keras.callbacks.TensorBoard) and board.log_dir == "tb"
    assert tracking.mlflow_experiment(options) == "pets"
    assert tracking.mlflow_experiment(dataclasses.replace(options, mlflow_experiment="x")) == "x"
    if has_mlflow():
        with_mlflow = dataclasses.replace(options, mlflow=(tmp_path / "mlruns").as_uri())
        (logger,) = tracking.search_callbacks(with_mlflow)
        assert isinstance(logger, tracking.MlflowLogger) and logger.experiment == "pets"


def test_without_mlflow_the_option_names_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    from resnet_tuner import cli

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    options = SearchOptions("digits", out=str(tmp_path / "run"), mlflow="file:///tmp/x")
    with pytest.raises(tracking.TrackingUnavailableError, match=r"resnet-tuner\[mlflow\]"):
        options.validate()
    with pytest.raises(ImportError, match=r"resnet-tuner\[mlflow\]"):
        tracking.MlflowLogger("file:///tmp/x")
    assert cli.main(["search", "digits", "--out", str(tmp_path / "run"),
                     "--mlflow", "file:///tmp/x"]) == 2
    assert 'pip install "resnet-tuner[mlflow]"' in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_command_line_logs_trials_from_their_processes_and_the_exported_bundle(tmp_path):
    """`resnet-tuner search --tensorboard --mlflow`: each trial in a fresh process, then export."""
    pytest.importorskip("mlflow")
    from test_cli import TINY_SPACE as CLI_SPACE
    from test_cli import make_folder

    from resnet_tuner import cli

    folder = make_folder(tmp_path / "shapes")
    space = tmp_path / "tiny.toml"
    space.write_text(CLI_SPACE)
    uri = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "shapes-run"
    assert cli.main(["search", str(folder), "--out", str(out), "--space", str(space),
                     "--tuner", "random", "--max-trials", "2", "--image-size", "16",
                     "--split", "0.5,0.25,0.25", "--tensorboard", str(tmp_path / "tb"),
                     "--mlflow", uri]) == 0
    trial_ids = sorted(p.name.removeprefix("trial_") for p in (out / "tuner").glob("trial_*"))
    assert len(trial_ids) == 2
    for trial_id in trial_ids:
        values = json.loads((out / "tuner" / f"trial_{trial_id}" / "trial.json").read_text())
        (hparams_file,) = glob.glob(str(tmp_path / "tb" / trial_id / "execution0" / "events*"))
        assert hparams_of(hparams_file) == values["hyperparameters"]["values"]
    client, runs = runs_by_trial(uri, experiment="shapes-run")
    assert sorted(runs) == trial_ids
    assert all(r.info.status == "FINISHED" and r.data.metrics for r in runs.values())
    (best,) = [r for r in runs.values() if r.data.tags.get("resnet_tuner.best") == "true"]
    artifacts = {os.path.basename(a.path)
                 for a in client.list_artifacts(best.info.run_id, tracking.BUNDLE_ARTIFACT)}
    assert {"model.keras", "metrics.json", "config.json"} <= artifacts
    bundle_metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert best.data.metrics[f"{bundle_metrics['split']}_accuracy"] == pytest.approx(
        bundle_metrics["accuracy"])
