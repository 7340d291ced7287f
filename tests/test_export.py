"""The export bundle: every artifact reloads and agrees with the model that was exported."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from resnet_tuner import (
    ResNetConfig,
    build_resnet,
    datasets,
    export_best,
    export_model,
    load_bundle,
)
from resnet_tuner import card as card_module
from resnet_tuner import export as export_module
from resnet_tuner.config import TrainConfig
from resnet_tuner.training import compile_model

CONFIG = ResNetConfig(stage_depths=(1, 1), stage_widths=(4, 8), stem="cifar", stem_width=4,
                      flip="horizontal", gamma=(0.5, 0.9), shift=0.1)


@pytest.fixture(scope="module")
def trained():
    data = datasets.digits(image_size=(16, 16))
    model = build_resnet(CONFIG, data.input_shape, data.num_classes)
    compile_model(model, TrainConfig(learning_rate=0.01), data.num_classes)
    x, y = data.arrays("train")
    model.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)
    return model, data


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory):
    model, data = trained
    path = tmp_path_factory.mktemp("export") / "best"
    export_model(model, path, data=data, model_config=CONFIG, train_config=TrainConfig(),
                 hyperparameters={"base_width": 4}, trial={"trial_id": "00"})
    return path


def test_keras_model_reloads_in_safe_mode_and_predicts_identically(trained, bundle):
    model, data = trained
    x, _ = data.arrays("test")
    reloaded = keras.saving.load_model(bundle / "model.keras", safe_mode=True)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))
    loaded = load_bundle(bundle)
    assert loaded["classes"] == data.class_names
    assert ResNetConfig.from_dict(loaded["config"]["model"]) == CONFIG
    assert loaded["config"]["input_shape"] == [16, 16, 3]


def test_saved_model_serves_uint8_without_resnet_tuner(trained, bundle, tmp_path):
    model, data = trained
    x, _ = data.arrays("test")
    np.save(tmp_path / "x.npy", x[:8])
    np.save(tmp_path / "expected.npy", model.predict(x[:8], verbose=0))
    script = f"""
import sys
sys.modules["resnet_tuner"] = None  # any attempt to import it now raises ImportError
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(bundle / "saved_model")!r})
signature = loaded.signatures["serving_default"]
spec = list(signature.structured_input_signature[1].values())[0]
assert spec.dtype == tf.uint8 and tuple(spec.shape[1:]) == (16, 16, 3), spec
x = np.load({str(tmp_path / "x.npy")!r})
out = list(signature(tf.constant(x)).values())[0].numpy()
np.testing.assert_allclose(out, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-5)
np.testing.assert_allclose(loaded.serve(x).numpy(), out, atol=1e-6)
assert not any(name.startswith("resnet_tuner") for name in sys.modules if sys.modules[name])
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_tflite_agrees_with_keras(trained, bundle):
    from resnet_tuner.formats import litert_interpreter

    model, data = trained
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert list(metrics["formats"]) == ["saved_model", "litert"]  # the default formats
    litert = metrics["formats"]["litert"]
    assert litert["converted"] is True and litert["file"] == "model.tflite"
    assert litert["top1_agreement"] == 1.0
    assert litert["max_abs_probability_diff"] < 1e-4
    x, _ = data.arrays("test")
    interpreter_class, _ = litert_interpreter()  # ai-edge-litert's, else tf.lite's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation
        interpreter = interpreter_class(model_path=str(bundle / "model.tflite"))
    inp = interpreter.get_input_details()[0]
    assert inp["dtype"] == np.uint8
    interpreter.resize_tensor_input(inp["index"], [4, 16, 16, 3])
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x[:4])
    interpreter.invoke()
    lite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(lite, model.predict(x[:4], verbose=0), atol=1e-4)


def test_metrics_are_held_out_test_figures(trained, bundle):
    model, data = trained
    x, y = data.arrays("test")
    metrics = json.loads((bundle / "metrics.json").read_text())
    predicted = model.predict(x, verbose=0).argmax(1)
    assert metrics["images"] == len(y) == 180
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == y))
    assert "top5_accuracy" in metrics  # 10 classes
    assert set(data.class_names) <= set(metrics["per_class"])
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 180
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert len(manifest["files"]["test"]) == 180
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "keras.saving.load_model" in card and f"{100 * metrics['accuracy']:.2f} %" in card


def test_without_a_test_split_the_bundle_says_its_figures_are_validation(trained, tmp_path):
    from resnet_tuner import report
    from resnet_tuner.metrics import NO_TEST_SPLIT, accuracy_text

    model, data = trained
    no_test = data._with_index({"train": data._index["train"], "val": data._index["val"],
                                "test": []})  # as split=(0.9, 0.1, 0) would give
    run_dir = tmp_path / "run"
    export_model(model, run_dir / "best", data=no_test, model_config=CONFIG,
                 train_config=TrainConfig(), trial={"trial_id": "00"})
    metrics = json.loads((run_dir / "best" / "metrics.json").read_text())
    x, y = data.arrays("val")
    assert metrics["split"] == "val" and metrics["images"] == len(y) == 180
    assert metrics["accuracy"] == pytest.approx(np.mean(model.predict(x, verbose=0).argmax(1) == y))
    assert metrics["note"] == NO_TEST_SPLIT
    assert NO_TEST_SPLIT.startswith("no test split: the accuracy shown is validation accuracy "
                                    "of the search, an optimistic estimate")
    assert accuracy_text(metrics) == (f"validation accuracy {100 * metrics['accuracy']:.2f} %; "
                                      f"{NO_TEST_SPLIT}")
    card = (run_dir / "best" / "MODEL_CARD.md").read_text()
    assert "## Validation results (no test split)" in card and "## Test results" not in card
    assert "**No test split: the accuracy shown is validation accuracy of the search" in card
    assert json.loads((run_dir / "best" / "manifest.json").read_text())["files"]["test"] == []
    (run_dir / "run.json").write_text(json.dumps({"options": {"space": "quick"}}))
    page = report.write_report(run_dir).read_text()
    assert "validation accuracy <b>" in page and "test accuracy" not in page
    assert "<b>no test split: the accuracy shown is validation accuracy" in page


def test_failed_export_leaves_the_earlier_bundle_intact(trained, bundle, tmp_path, monkeypatch):
    model, data = trained
    target = tmp_path / "best"
    export_model(model, target, data=data, model_config=CONFIG)
    before = (target / "metrics.json").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "held_out_metrics", broken)
    with pytest.raises(OSError, match="disk full"):
        export_model(model, target, data=data, model_config=CONFIG)
    assert (target / "metrics.json").read_text() == before
    assert (target / "model.keras").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no staging left behind


def test_tflite_failure_is_reported_not_fatal(trained, tmp_path, monkeypatch):
    import tensorflow as tf

    model, data = trained

    class Refuses:
        @staticmethod
        def from_saved_model(path):
            raise RuntimeError("op not supported")

    monkeypatch.setattr(tf.lite, "TFLiteConverter", Refuses)
    with pytest.warns(export_module.ExportWarning,
                      match=r"LiteRT \(TFLite\) conversion failed, so the bundle has no "
                            r"model.tflite \(model.keras and the other formats are fine\): "
                            "RuntimeError: op not supported"):
        path = export_model(model, tmp_path / "b", data=data, model_config=CONFIG)
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["formats"]["litert"] == {"converted": False,
                                            "error": "RuntimeError: op not supported"}
    assert metrics["formats"]["saved_model"]["converted"] is True
    assert not (path / "model.tflite").exists() and (path / "saved_model").is_dir()
    card = (path / "MODEL_CARD.md").read_text()
    assert ("LiteRT (TFLite) conversion failed, so no model.tflite: RuntimeError: op not "
            "supported") in card


def test_held_out_metrics_match_hand_computed_figures():
    probs = np.array([
        [0.50, 0.20, 0.10, 0.10, 0.05, 0.05],  # class a: right
        [0.40, 0.30, 0.10, 0.10, 0.06, 0.04],  # class b: predicted a, b 2nd (in the top 5)
        [0.30, 0.25, 0.20, 0.15, 0.10, 0.00],  # class f: predicted a, f last (not in the top 5)
        [0.10, 0.10, 0.60, 0.10, 0.05, 0.05],  # class c: right
    ])
    labels = np.array([0, 1, 5, 2])
    metrics = export_module.held_out_metrics(probs, labels, list("abcdef"))
    assert metrics["images"] == 4
    assert metrics["accuracy"] == 0.5
    assert metrics["top5_accuracy"] == 0.75
    a, b, c, f = (metrics["per_class"][k] for k in "abcf")
    # a: predicted 3 times, right once -> precision 1/3, recall 1/1, F1 2PR/(P+R) = 0.5
    assert a["precision"] == pytest.approx(1 / 3) and a["recall"] == 1.0
    assert a["f1-score"] == pytest.approx(0.5) and a["support"] == 1
    assert (b["precision"], b["recall"], b["f1-score"]) == (0.0, 0.0, 0.0)  # never predicted
    assert (c["precision"], c["recall"], c["support"]) == (1.0, 1.0, 1)
    assert (f["recall"], f["support"]) == (0.0, 1)
    assert metrics["per_class"]["d"]["support"] == 0
    assert metrics["confusion_matrix"] == [
        [1, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 0],
    ]
    # Five classes or fewer: top-5 would always be 1, so it is left out.
    assert "top5_accuracy" not in export_module.held_out_metrics(probs[:, :5], labels % 5,
                                                                 list("abcde"))


def test_refit_trains_on_train_and_val_together(trained, monkeypatch):
    _, data = trained
    seen = {}
    fit = keras.Model.fit

    def counting_fit(self, x, *args, **kwargs):
        seen["images"] = sum(int(labels.shape[0]) for _, labels in x)
        seen["batches"] = {int(labels.shape[0]) for _, labels in x}
        return fit(self, x, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", counting_fit)
    batch = 64
    export_module.refit_model(CONFIG, TrainConfig(batch_size=batch, learning_rate=0.01), data,
                              epochs=1)
    train, val = (len(data.arrays(split)[1]) for split in ("train", "val"))
    assert (train, val) == (1437, 180)
    assert seen["images"] == (train + val) // batch * batch > train  # val is in, full batches
    assert seen["batches"] == {batch}


def test_binary_sigmoid_bundle(tmp_path):
    from resnet_tuner.data import ImageData

    digits = datasets.digits(image_size=(16, 16))
    parts = {s: digits.arrays(s) for s in ("train", "val", "test")}
    keep = {s: np.isin(y, [0, 1]) for s, (_, y) in parts.items()}
    images = np.concatenate([parts[s][0][keep[s]] for s in parts])
    labels = np.concatenate([parts[s][1][keep[s]] for s in parts])
    bounds = np.cumsum([0] + [int(keep[s].sum()) for s in parts])
    index = {s: np.arange(bounds[i], bounds[i + 1]) for i, s in enumerate(parts)}
    data = ImageData(images, labels, [f"d{i}" for i in range(len(labels))], index, ["0", "1"],
                     (16, 16))
    config = CONFIG.replace(binary_head=True, head_hidden=4)
    model = build_resnet(config, data.input_shape, 2)
    compile_model(model, TrainConfig(learning_rate=0.01), 2)
    model.fit(*data.arrays("train"), epochs=1, verbose=0)
    path = export_model(model, tmp_path / "b", data=data, model_config=config)
    metrics = json.loads((path / "metrics.json").read_text())
    x, y = data.arrays("test")
    sigmoid = model.predict(x, verbose=0)[:, 0]
    assert metrics["accuracy"] == pytest.approx(np.mean((sigmoid > 0.5) == y))
    assert np.array(metrics["confusion_matrix"]).shape == (2, 2)
    assert json.loads((path / "config.json").read_text())["binary"] is True
    np.testing.assert_allclose(export_module.class_probabilities(np.array([[0.2], [0.9]])),
                               [[0.8, 0.2], [0.1, 0.9]])


# --------------------------------------------------------------------------- a search on arrays
#: Four tiny configurations: enough for keras-tuner's Hyperband to sample without repeats.
ARRAY_SPACE = {
    "model": {"stem": "cifar", "stage_depths": [1, 1], "base_width": [4, 8]},
    "train": {"batch_size": 8, "learning_rate": [0.01, 0.02], "epochs": 10},
}
ARRAY_CLASSES = ["长城", "flower 花", "cat"]


@pytest.fixture(scope="module")
def array_search(tmp_path_factory):
    """keras-tuner's own Hyperband (the README's Python path) on numpy arrays."""
    import keras_tuner as kt
    from conftest import separable_images

    from resnet_tuner import ResNetHyperModel

    x, y = separable_images(num_classes=3, n=48, size=16)
    hypermodel = ResNetHyperModel(ARRAY_SPACE, input_shape=(16, 16, 3), num_classes=3)
    # max_epochs=2, factor=3: one bracket of two trials, each trained for 2 epochs.
    tuner = kt.Hyperband(hypermodel, objective="val_accuracy", max_epochs=2, factor=3,
                         hyperband_iterations=1, seed=1,
                         directory=str(tmp_path_factory.mktemp("hyperband")))
    tuner.search(x[:36], y[:36], validation_data=(x[36:], y[36:]), verbose=0)
    x_test, y_test = separable_images(num_classes=3, n=18, size=16, seed=1)
    return tuner, x_test, y_test


@pytest.fixture(scope="module")
def array_bundle(array_search, tmp_path_factory):
    tuner, x_test, y_test = array_search
    path = tmp_path_factory.mktemp("arrays") / "best"
    return export_best(tuner, path, test=(x_test, y_test), class_names=ARRAY_CLASSES)


def best_model_of(tuner):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuner.get_best_models(1)[0]


def test_a_search_on_arrays_exports_with_its_test_arrays(array_search, array_bundle):
    tuner, x_test, y_test = array_search
    predicted = best_model_of(tuner).predict(x_test, verbose=0).argmax(1)
    metrics = json.loads((array_bundle / "metrics.json").read_text())
    assert metrics["images"] == 18
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == y_test))
    assert set(ARRAY_CLASSES) <= set(metrics["per_class"])
    assert json.loads((array_bundle / "classes.json").read_text()) == ARRAY_CLASSES
    config = json.loads((array_bundle / "config.json").read_text())
    assert config["input_shape"] == [16, 16, 3] and config["resize"] is None
    manifest = json.loads((array_bundle / "manifest.json").read_text())
    assert manifest["files"]["test"][:2] == [["x_test[0]", "长城"], ["x_test[1]", "flower 花"]]
    assert manifest["files"]["train"] == [] and manifest["root"] is None
    card = (array_bundle / "MODEL_CARD.md").read_text()
    assert "Source: numpy arrays" in card and "| train |" not in card and "| test | 18 |" in card
    assert "resnet_tuner did not decode or resize them" in card
    assert "no file was read, so none was skipped" in card
    assert load_bundle(array_bundle)["model"].predict(x_test, verbose=0).shape == (18, 3)


def test_arrays_and_data_are_checked_before_anything_is_trained_or_written(array_search,
                                                                           trained, tmp_path):
    tuner, x_test, y_test = array_search
    _, data = trained
    cases = [
        ({}, "either as data= .* or as test="),
        ({"data": data, "test": (x_test, y_test)}, "not both and not neither"),
        ({"test": (x_test, y_test), "class_names": ["a", "b"]},
         r"class_names must name the model's 3 classes. Received: 2 names \['a', 'b'\]"),
        ({"test": (x_test.astype("float32"), y_test)},
         r"x_test must be uint8 images of shape \(N, 16, 16, 3\).*dtype float32"),
        ({"test": (x_test, y_test + 1)}, "one integer label from 0 to 2 per image"),
        ({"test": (x_test, y_test[:5])}, r"shape \(5,\)"),
        ({"test": x_test}, "test must be a pair"),
        ({"data": data, "class_names": ["a"]}, "class_names= goes with test= arrays"),
        ({"test": (x_test, y_test), "refit": True}, "refit=True .* needs data="),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            export_best(tuner, tmp_path / "b", **kwargs)
    assert not (tmp_path / "b").exists()


def test_model_keras_loads_without_warnings_and_predicts_identically(array_search, array_bundle,
                                                                    tmp_path):
    tuner, x_test, _ = array_search
    best = best_model_of(tuner)
    # The bug this guards against: the tuner's model, saved as is, warns on every load.
    best.save(tmp_path / "as_is.keras")
    with pytest.warns(UserWarning, match="Skipping variable loading for optimizer"):
        keras.saving.load_model(tmp_path / "as_is.keras", safe_mode=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloaded = keras.saving.load_model(array_bundle / "model.keras", safe_mode=True)
    assert [str(w.message) for w in caught] == []
    np.testing.assert_array_equal(reloaded.predict(x_test, verbose=0),
                                  best.predict(x_test, verbose=0))
    assert reloaded.name == best.name and reloaded.count_params() == best.count_params()


def test_card_records_the_epochs_the_best_trial_trained(array_search, array_bundle):
    tuner, _, _ = array_search
    trial = tuner.oracle.get_best_trials(1)[0]
    epochs = trial.hyperparameters.values["tuner/epochs"]
    assert epochs == 2  # Hyperband's budget; the space says 10
    recorded = json.loads((array_bundle / "hyperparameters.json").read_text())
    assert recorded["train"]["epochs"] == epochs
    assert (recorded["trial"]["epochs"], recorded["trial"]["epochs_source"]) == (epochs,
                                                                                 "tuner/epochs")
    card = (array_bundle / "MODEL_CARD.md").read_text()
    assert (f"- Epochs trained: {epochs} (keras-tuner Hyperband's `tuner/epochs` for the trial)"
            in card)
    training = next(line for line in card.splitlines() if line.startswith("- Training:"))
    assert f'"epochs": {epochs},' in training


def test_trained_epochs_prefers_the_trial_history_then_hyperband_then_the_space(tmp_path):
    from types import SimpleNamespace

    class Tuner:
        def get_trial_dir(self, trial_id):
            return str(tmp_path / f"trial_{trial_id}")

    def trial(trial_id, **values):
        return SimpleNamespace(trial_id=trial_id, hyperparameters=SimpleNamespace(values=values))

    (tmp_path / "trial_1").mkdir()
    (tmp_path / "trial_1" / "history.json").write_text(
        json.dumps({"history": {"loss": [0.9, 0.5, 0.4], "val_accuracy": [0.5, 0.6, 0.7]}}))
    tuner = Tuner()
    assert export_module.trained_epochs(tuner, trial("1"), 10) == (3, "history")
    # A Hyperband trial that continued another's weights from epoch 2 ran 3 more.
    hyperband = trial("1", **{"tuner/epochs": 5, "tuner/initial_epoch": 2})
    assert export_module.trained_epochs(tuner, hyperband, 10) == (5, "history")
    assert export_module.trained_epochs(tuner, trial("2", **{"tuner/epochs": 4}),
                                        10) == (4, "tuner/epochs")
    assert export_module.trained_epochs(tuner, trial("2"), 10) == (10, "space")
    assert export_module.trained_epochs(object(), trial("2"), 7) == (7, "space")


# --------------------------------------------------------------------------- skipped files
def test_bundle_lists_every_skipped_file_with_its_reason(make_folder, tmp_path):
    from resnet_tuner import ImageFolder

    root = make_folder(tmp_path / "pets")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "fox" / "bad | name.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.warns(UserWarning, match="Skipped 3 file"):
        data = ImageFolder(root, image_size=16, split=(0.5, 0.25, 0.25), cache_dir=False,
                           verbose=0)
    assert len(data.skipped) == 3
    model = build_resnet(CONFIG, data.input_shape, data.num_classes)
    compile_model(model, TrainConfig(learning_rate=0.01), data.num_classes)
    path = export_model(model, tmp_path / "best", data=data, model_config=CONFIG)

    record = json.loads((path / "skipped.json").read_text())
    assert record["root"] == data.root and record["count"] == 3
    expected = {(os.path.relpath(p, data.root), reason) for p, reason in data.skipped}
    assert {(f["path"], f["reason"]) for f in record["files"]} == expected
    assert {p for p, _ in expected} == {"cat/empty.jpg", "dog/notes.txt", "fox/bad | name.png"}
    card = (path / "MODEL_CARD.md").read_text()
    assert "3 file(s) of the image folder were not used" in card
    for rel, reason in expected:
        assert f"| {rel.replace('|', chr(92) + '|')} | {reason} |" in card
    assert "| cat/empty.jpg | empty file (0 bytes) |" in card
    # The card says how the images were resized and how to do it again.
    assert 'load_image("photo.jpg", (16, 16), "stretch")' in card
    assert card_module.opencv_snippet((16, 16), "stretch") in card
    for rule in ("cv2.INTER_AREA", "cv2.INTER_LINEAR", "cv2.INTER_CUBIC",
                 "cv2.IMREAD_REDUCED_COLOR_"):
        assert rule in card


def test_an_export_without_skipped_files_says_so(bundle):
    assert json.loads((bundle / "skipped.json").read_text())["files"] == []
    assert "No file was skipped." in (bundle / "MODEL_CARD.md").read_text()


def test_export_best_reads_the_run_directorys_skipped_files(tmp_path):
    from types import SimpleNamespace

    run = tmp_path / "run"
    (run / "tuner").mkdir(parents=True)
    card_module.write_skipped(run / "skipped.json", [(str(tmp_path / "pets/cat/x.gif"),
                                                      "not a decodable image")],
                              str(tmp_path / "pets"))
    tuner = SimpleNamespace(project_dir=str(run / "tuner"))
    assert export_module._run_skipped(tuner) == []  # not a run directory: no run.json
    (run / "run.json").write_text("{}")
    assert export_module._run_skipped(tuner) == [("cat/x.gif", "not a decodable image")]
    assert export_module._run_skipped(SimpleNamespace(project_dir=str(tmp_path / "x"))) == []


# --------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
def test_the_cards_opencv_snippet_preprocesses_exactly_as_load_image(resize, write_image,
                                                                     tmp_path):
    import cv2

    from resnet_tuner import load_image

    size = (32, 24)
    images = [
        write_image(tmp_path / "big.jpg", size=(200, 150)),  # decoded reduced by 4, then area
        write_image(tmp_path / "mid.jpg", size=(50, 40)),  # full decode, bilinear
        write_image(tmp_path / "tiny.png", size=(10, 12)),  # bicubic
        write_image(tmp_path / "wide.png", size=(40, 130)),  # area one way, cubic the other
        write_image(tmp_path / "gray.png", size=(100, 80), channels=1),  # area
        write_image(tmp_path / "same.bmp", size=size),  # no resize
    ]
    namespace = {}
    exec(card_module.opencv_snippet(size, resize), namespace)  # noqa: S102 (our own text)
    for path in images:
        np.testing.assert_array_equal(namespace["load"](path), load_image(path, size, resize),
                                      err_msg=path.name)
    # A naive resize of the full decode differs: why the card spells the rule out.
    naive = cv2.resize(cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB),
                       size[::-1])
    if resize == "stretch":
        assert not np.array_equal(naive, load_image(images[0], size, resize))
