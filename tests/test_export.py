"""The export bundle: every artifact reloads and agrees with the model that was exported."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from resnet_tuner import ResNetConfig, build_resnet, datasets, export_model, load_bundle
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
    import tensorflow as tf

    model, data = trained
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["tflite"]["converted"] is True
    assert metrics["tflite"]["top1_agreement"] == 1.0
    assert metrics["tflite"]["max_abs_probability_diff"] < 1e-4
    x, _ = data.arrays("test")
    interpreter = tf.lite.Interpreter(model_path=str(bundle / "model.tflite"))
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
                      match="TFLite conversion failed, so the bundle has no model.tflite "
                            r"\(model.keras and saved_model/ are fine\): "
                            "RuntimeError: op not supported"):
        path = export_model(model, tmp_path / "b", data=data, model_config=CONFIG)
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["tflite"] == {"converted": False, "error": "RuntimeError: op not supported"}
    assert not (path / "model.tflite").exists()
    card = (path / "MODEL_CARD.md").read_text()
    assert "TFLite conversion failed, so no model.tflite: RuntimeError: op not supported" in card


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
