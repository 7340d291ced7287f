"""Deployment formats: written by Keras' exporter, run in their own runtimes, agreeing with Keras.

A format whose runtime (or Keras exporter) is not installed is skipped with the
reason; `pip install ".[litert,onnx,openvino]"` installs them all.
"""

import importlib.util
import json
import re
import sys
import warnings

import numpy as np
import pytest
from conftest import TINY_MODEL, separable_images

from resnet_tuner import ResNetConfig, build_resnet, cli, export_model, formats
from resnet_tuner import card as card_module
from resnet_tuner import export as export_module
from resnet_tuner.config import TrainConfig
from resnet_tuner.training import compile_model

CONFIG = ResNetConfig(**TINY_MODEL, flip="horizontal")  # augmentation: left out of the formats
CLASSES = ["dark", "mid", "light"]


def unavailable(name):
    """Why this install cannot write and check `name`, or None."""
    try:
        formats.check_formats(name)
    except formats.FormatUnavailableError as err:
        return str(err)
    return None


AVAILABLE = tuple(name for name in formats.FORMATS if unavailable(name) is None)


def needs(name):
    reason = unavailable(name)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def trained():
    x, y = separable_images(num_classes=3, n=48, size=16)
    model = build_resnet(CONFIG, (16, 16, 3), 3)
    compile_model(model, TrainConfig(learning_rate=0.01), 3)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    x_test, y_test = separable_images(num_classes=3, n=9, size=16, seed=1)
    return model, x_test, y_test


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory):
    """Every format this install has, in one bundle."""
    model, x_test, y_test = trained
    path = tmp_path_factory.mktemp("formats") / "best"
    with warnings.catch_warnings():
        warnings.simplefilter("error", export_module.ExportWarning)  # no format may fail
        export_model(model, path, test=(x_test, y_test), class_names=CLASSES,
                     model_config=CONFIG, formats=AVAILABLE)
    return path


@pytest.mark.parametrize("name", list(formats.FORMATS))
def test_each_format_runs_in_its_own_runtime_and_agrees_with_keras(name, trained, bundle):
    needs(name)
    model, x_test, _ = trained
    fmt = formats.FORMATS[name]
    record = json.loads((bundle / "metrics.json").read_text())["formats"][name]
    assert record["converted"] is True and record["file"] == fmt.file
    assert record["test_images"] == 9 and record["top1_agreement"] == 1.0
    assert record["max_abs_probability_diff"] < 1e-4
    size = sum(p.stat().st_size for f in (fmt.file, *fmt.extra_files)
               for p in ([bundle / f] if (bundle / f).is_file() else (bundle / f).rglob("*"))
               if p.is_file())
    assert record["bytes"] == size > 0
    assert record["exporter"].startswith(
        "Keras " if formats.keras_writes(fmt) else "tf.lite.TFLiteConverter ")  # Keras < 3.13
    # Loaded again here, with the runtime alone, on other images than metrics.json's.
    images = separable_images(num_classes=3, n=5, size=16, seed=7)[0]
    probs, runtime = fmt.run(bundle / fmt.file, images)
    assert runtime == record["runtime"]
    expected = model.predict(images, verbose=0)
    assert np.array_equal(probs.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_the_litert_runtime_is_ai_edge_litert(bundle):
    needs("litert")
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed")
    record = json.loads((bundle / "metrics.json").read_text())["formats"]["litert"]
    assert record["runtime"].startswith("ai_edge_litert ")


def test_old_keras_and_no_ai_edge_litert_fall_back_to_tensorflows_converter_and_interpreter(
        trained, tmp_path, monkeypatch):
    """Keras < 3.13 has no LiteRT exporter; without ai-edge-litert, tf.lite's interpreter checks."""
    model, x_test, _ = trained
    serving = export_module.serving_model(model, CONFIG, (16, 16, 3), 3)
    monkeypatch.setattr(formats, "keras_version", lambda: (3, 3))
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    record = formats.write_format("litert", serving, tmp_path, x_test,
                                  model.predict(x_test, verbose=0))
    assert record["converted"] is True and record["top1_agreement"] == 1.0
    assert record["max_abs_probability_diff"] < 1e-4
    assert re.fullmatch(r"tf.lite.TFLiteConverter \(TensorFlow [\d.]+\S*\): Keras [\d.]+\S* has "
                        r"no model.export\(format='litert'\)", record["exporter"])
    assert record["runtime"].startswith("tf.lite.Interpreter (TensorFlow ")
    assert "ai-edge-litert is not installed, pip install 'resnet-tuner[litert]'" in record[
        "runtime"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]  # no SavedModel left over


def test_the_card_lists_each_format_and_its_snippets_run(trained, bundle, tmp_path, write_image,
                                                        monkeypatch):
    """The card's code per format, after its OpenCV preprocessing, gives Keras' probabilities."""
    from resnet_tuner import load_image

    model, _, _ = trained
    card = (bundle / "MODEL_CARD.md").read_text()
    metrics = json.loads((bundle / "metrics.json").read_text())
    for name in AVAILABLE:
        fmt = formats.FORMATS[name]
        assert f"| {fmt.title} | `{fmt.file}` |" in card
        assert f"### {fmt.title}\n```python\n# images: your uint8 RGB arrays" in card  # arrays
    photo = write_image(tmp_path / "photo.jpg", size=(40, 30))
    expected = model.predict(load_image(photo, (16, 16), "stretch")[None], verbose=0)
    section = formats.card_section(metrics["formats"], (16, 16), "stretch")
    monkeypatch.chdir(bundle)  # the snippets name the bundle's files relative to it
    for name in AVAILABLE:
        title = formats.FORMATS[name].title
        code = section.split(f"### {title}\n```python\n")[1].split("```")[0]
        if importlib.util.find_spec("ai_edge_litert") is None:  # the card's advice not taken
            code = code.replace("from ai_edge_litert.interpreter import Interpreter",
                                "import tensorflow as tf\nInterpreter = tf.lite.Interpreter")
        namespace = {}
        exec(card_module.opencv_snippet((16, 16), "stretch")  # noqa: S102 (our own text)
             + code.replace("photo.jpg", str(photo)), namespace)
        np.testing.assert_allclose(namespace["probs"], expected, atol=1e-4, err_msg=name)


# --------------------------------------------------------------------------- choosing formats
def test_formats_parse_in_table_order_with_all_and_the_default():
    assert formats.parse_formats(None) == ("saved_model", "litert")
    assert formats.parse_formats("onnx, LiteRT,onnx") == ("litert", "onnx")
    assert formats.parse_formats(["openvino"]) == ("openvino",)
    assert formats.parse_formats("all") == tuple(formats.FORMATS)
    assert formats.parse_formats([]) == ()  # model.keras only
    for bad in ("tflite", "onnx,coreml", ","):
        with pytest.raises(ValueError, match=r"formats must be names among saved_model, litert, "
                                             r"onnx, openvino \(comma-separated\) or all"):
            formats.parse_formats(bad)


@pytest.mark.parametrize("name", [n for n in formats.FORMATS if formats.FORMATS[n].modules])
def test_a_format_whose_package_is_missing_names_the_extra(name, monkeypatch):
    fmt = formats.FORMATS[name]
    monkeypatch.setitem(sys.modules, fmt.modules[-1], None)  # `import` of it now fails
    with pytest.raises(formats.FormatUnavailableError,
                       match=rf"The {name} format needs (\w+, )*{fmt.modules[-1]}, not installed: "
                             rf"pip install 'resnet-tuner\[{fmt.extra}\]' \(or leave {name} "
                             r"out of formats\)"):
        formats.check_formats(f"saved_model,{name}")


def test_a_format_keras_cannot_write_names_the_keras_it_needs(monkeypatch):
    monkeypatch.setattr(formats, "keras_version", lambda: (3, 3))
    monkeypatch.setattr(formats, "_version", lambda name: "3.3.3")
    monkeypatch.setattr(formats, "missing_modules", lambda fmt: [])
    with pytest.raises(formats.FormatUnavailableError,
                       match=r"The onnx format needs Keras >= 3.8 \(model.export\("
                             r"format='onnx'\)\); Keras 3.3.3 is installed: "
                             r"pip install -U 'keras>=3.8'"):
        formats.check_formats("onnx")
    assert formats.check_formats("litert") == ("litert",)  # TensorFlow's converter instead


def test_a_missing_package_stops_the_export_before_anything_is_written(trained, tmp_path,
                                                                      monkeypatch):
    model, x_test, y_test = trained
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(formats.FormatUnavailableError, match=r"resnet-tuner\[onnx\]"):
        export_model(model, tmp_path / "b", test=(x_test, y_test), class_names=CLASSES,
                     model_config=CONFIG, formats="onnx")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_refuses_a_missing_format_before_the_search_starts(tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setattr(cli, "cmd_search", lambda args: pytest.fail("the search started"))
    for command in (["search", "digits", "--out", str(tmp_path / "run")],
                    ["export", str(tmp_path / "run"), "--to", str(tmp_path / "b")]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*command, "--formats", "saved_model,openvino"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert (f"resnet-tuner {command[0]}: error: argument --formats: The openvino format "
                "needs openvino, not installed: pip install 'resnet-tuner[openvino]'") in err
    with pytest.raises(SystemExit):
        cli.main(["search", "digits", "--formats", "tflite"])
    assert "argument --formats: formats must be names among" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_failed_format_is_recorded_and_the_rest_of_the_bundle_kept(trained, tmp_path,
                                                                     monkeypatch):
    model, x_test, y_test = trained
    real_export = formats.keras_export

    def export(model, path, keras_format):
        if keras_format == "litert":
            path.write_bytes(b"half a file")
            raise RuntimeError("op not supported")
        return real_export(model, path, keras_format)

    monkeypatch.setattr(formats, "keras_export", export)
    monkeypatch.setattr(formats, "_convert_tflite_with_tensorflow",
                        lambda model, path: export(model, path, "litert"))
    with pytest.warns(export_module.ExportWarning,
                      match=r"^LiteRT \(TFLite\) conversion failed, so the bundle has no "
                            r"model.tflite \(model.keras and the other formats are fine\): "
                            "RuntimeError: op not supported$"):
        path = export_model(model, tmp_path / "b", test=(x_test, y_test), class_names=CLASSES,
                            model_config=CONFIG, formats="litert")
    records = json.loads((path / "metrics.json").read_text())["formats"]
    assert records == {"litert": {"converted": False, "error": "RuntimeError: op not supported"}}
    assert not (path / "model.tflite").exists()
    assert {"model.keras", "metrics.json", "MODEL_CARD.md"} <= {p.name for p in path.iterdir()}
    card = (path / "MODEL_CARD.md").read_text()
    assert ("- LiteRT (TFLite) conversion failed, so no model.tflite: RuntimeError: op not "
            "supported") in card
    assert "### LiteRT" not in card


def test_no_formats_writes_model_keras_alone(trained, tmp_path):
    model, x_test, y_test = trained
    path = export_model(model, tmp_path / "b", test=(x_test, y_test), class_names=CLASSES,
                        model_config=CONFIG, formats=[])
    assert json.loads((path / "metrics.json").read_text())["formats"] == {}
    assert not (path / "saved_model").exists() and not (path / "model.tflite").exists()
    assert "Only `model.keras` was written" in (path / "MODEL_CARD.md").read_text()
