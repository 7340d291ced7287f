"""Deployment formats of the export bundle: one row per format in `FORMATS`.

Each format is written by Keras' own exporter (`model.export(path, format=...)`)
and checked with its own runtime on the held-out test images; metrics.json
records, per format, whether it was converted (or the error), its size, the
exporter and runtime used, and its agreement with Keras.

| name          | file           | Keras exporter     | checked with                     | extra   |
|---------------|----------------|--------------------|----------------------------------|---------|
| `saved_model` | `saved_model/` | `tf_saved_model`   | `tf.saved_model.load(...).serve` |         |
| `litert`      | `model.tflite` | `litert` (3.13+)   | `ai_edge_litert` (or `tf.lite`)  | litert  |
| `onnx`        | `model.onnx`   | `onnx` (3.8+)      | `onnxruntime`                    | onnx    |
| `openvino`    | `model.xml`    | `openvino` (3.11+) | `openvino.Core().compile_model`  | openvino|

Keras older than a row's `since_keras` cannot write it: LiteRT then falls back
to TensorFlow's converter (`tf.lite.TFLiteConverter`, what Keras' exporter
runs too); ONNX and OpenVINO are refused by `check_formats` with the fix.

No TensorFlow at import: the CLI checks `--formats` before it loads it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import inspect
import io
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class FormatUnavailableError(ImportError):
    """A requested format needs a package (or a Keras) that is not installed."""


@dataclass(frozen=True)
class Format:
    """One deployment format of the bundle.

    Attributes:
        name: the name in `--formats`, `formats=` and metrics.json.
        title: the name people know it by, for messages and the card.
        keras_format: `model.export(format=...)`.
        file: the file (or folder) in the bundle; `extra_files` are written beside it.
        since_keras: the first Keras whose `model.export` writes it.
        modules: what must be importable to write and check it (besides TensorFlow).
        extra: resnet-tuner's pip extra that installs `modules`.
        run: `run(path, uint8_images) -> (probabilities, runtime)` with the format's own
            runtime; `runtime` says which, for metrics.json.
        snippet: the card's code; `{images}` is a uint8 (N, H, W, 3) array expression.
    """

    name: str
    title: str
    keras_format: str
    file: str
    since_keras: tuple[int, int]
    modules: tuple[str, ...]
    extra: str | None
    run: Callable[[Path, np.ndarray], tuple[np.ndarray, str]]
    snippet: str
    extra_files: tuple[str, ...] = ()


def _run_saved_model(path: Path, images: np.ndarray) -> tuple[np.ndarray, str]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # held: its variables die with it
    probs = loaded.serve(tf.constant(images)).numpy()
    return probs, f"tf.saved_model.load (TensorFlow {tf.__version__})"


def litert_interpreter() -> tuple[type, str]:
    """LiteRT's `Interpreter` class and what it is: ai-edge-litert's, else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, (
            f"tf.lite.Interpreter (TensorFlow {tf.__version__}; deprecated since TensorFlow "
            "2.20): ai-edge-litert is not installed, pip install 'resnet-tuner[litert]'")
    return Interpreter, f"ai_edge_litert {_version('ai-edge-litert')}"


def _run_litert(path: Path, images: np.ndarray) -> tuple[np.ndarray, str]:
    interpreter_class, runtime = litert_interpreter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = interpreter_class(model_path=str(path))
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images.astype(inp["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), runtime


def _run_onnx(path: Path, images: np.ndarray) -> tuple[np.ndarray, str]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: images})[0]
    return probs, f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"


def _run_openvino(path: Path, images: np.ndarray) -> tuple[np.ndarray, str]:
    import openvino

    # On CPUs with native bfloat16 (AVX512_BF16, AMX) OpenVINO computes in bf16 unless
    # told otherwise (top-1 still agreed, probabilities moved by 7e-4): the check compares
    # the converted model with Keras' float32 model, so it asks for f32.
    compiled = openvino.Core().compile_model(str(path), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(images)[0]), f"openvino {openvino.__version__} (CPU, f32)"


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("saved_model", "SavedModel", "tf_saved_model", "saved_model", (3, 0), (), None,
           _run_saved_model, '''import tensorflow as tf

model = tf.saved_model.load("saved_model")
probs = model.serve({images}).numpy()'''),
    Format("litert", "LiteRT (TFLite)", "litert", "model.tflite", (3, 13), (), "litert",
           _run_litert, '''# pip install ai-edge-litert
from ai_edge_litert.interpreter import Interpreter

interpreter = Interpreter(model_path="model.tflite")
inp = interpreter.get_input_details()[0]  # uint8, (batch, height, width, 3)
interpreter.resize_tensor_input(inp["index"], list({images}.shape))
interpreter.allocate_tensors()
interpreter.set_tensor(inp["index"], {images})
interpreter.invoke()
probs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])'''),
    Format("onnx", "ONNX", "onnx", "model.onnx", (3, 8), ("tf2onnx", "onnx", "onnxruntime"),
           "onnx", _run_onnx, '''import onnxruntime  # pip install onnxruntime

session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
probs = session.run(None, {{session.get_inputs()[0].name: {images}}})[0]'''),
    Format("openvino", "OpenVINO", "openvino", "model.xml", (3, 11), ("openvino",),
           "openvino", _run_openvino, '''import openvino  # pip install openvino

# f32 as exported; leave the hint out for bf16 on CPUs that have it (faster, ~1e-3 off)
compiled = openvino.Core().compile_model("model.xml", "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})
probs = compiled({images})[0]''', extra_files=("model.bin",)),
)}

#: What a bundle has unless asked otherwise: the SavedModel and LiteRT, as before `formats`.
DEFAULT_FORMATS = ("saved_model", "litert")


def parse_formats(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`"onnx,litert"`, `["onnx"]`, `"all"`, `()` or None (the default) -> names in table order.

    Raises:
        ValueError: an unknown name, or none at all.
    """
    if value is None:
        return DEFAULT_FORMATS
    names = value.split(",") if isinstance(value, str) else list(value)
    if not names:  # formats=(): model.keras alone
        return ()
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    if "all" in names:
        return tuple(FORMATS)
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"formats must be names among {', '.join(FORMATS)} (comma-separated) "
                         f"or all. Received: {value!r}")
    return tuple(n for n in FORMATS if n in names)


def keras_version() -> tuple[int, int]:
    """(major, minor) of the installed Keras, read without importing it (no TensorFlow)."""
    text = _version("keras")
    if text == "?":
        import keras

        text = keras.__version__
    return tuple(int(p) for p in text.split(".")[:2])  # type: ignore[return-value]


def keras_writes(fmt: Format) -> bool:
    """Whether the installed Keras' `model.export` writes `fmt`."""
    return keras_version() >= fmt.since_keras


def missing_modules(fmt: Format) -> list[str]:
    return [m for m in fmt.modules if importlib.util.find_spec(m) is None]


def check_formats(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`parse_formats(value)`, after checking this install can write and check each one.

    Called before a search trains anything and before an export writes anything.

    Raises:
        ValueError: an unknown format name.
        FormatUnavailableError: a format's packages are missing (naming the
            extra that installs them) or Keras is too old to write it.
    """
    names = parse_formats(value)
    for name in names:
        fmt = FORMATS[name]
        missing = missing_modules(fmt)
        if missing:
            raise FormatUnavailableError(
                f"The {name} format needs {', '.join(missing)}, not installed: "
                f"pip install 'resnet-tuner[{fmt.extra}]' (or leave {name} out of formats)")
        if not keras_writes(fmt) and name != "litert":  # litert: TensorFlow's converter
            since = ".".join(map(str, fmt.since_keras))
            raise FormatUnavailableError(
                f"The {name} format needs Keras >= {since} (model.export(format="
                f"{fmt.keras_format!r})); Keras {_version('keras')} is "
                f"installed: pip install -U 'keras>={since}' (or leave {name} out of formats)")
    return names


def keras_export(model, path: Path, keras_format: str) -> None:
    """`model.export(path, format=keras_format)` without its printing."""
    with warnings.catch_warnings():
        # tf2onnx's numpy-2 patch in Keras warns about np.object; nothing to act on.
        warnings.simplefilter("ignore")
        if "verbose" in inspect.signature(model.export).parameters:
            model.export(str(path), format=keras_format, verbose=False)
        else:  # Keras 3.3 (our floor) to 3.5 at least: no `verbose`, it always prints
            with contextlib.redirect_stdout(io.StringIO()):
                model.export(str(path), format=keras_format)


def _convert_tflite_with_tensorflow(model, path: Path) -> None:
    """Keras older than 3.13: what its LiteRT exporter does, SavedModel -> TFLiteConverter."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as folder:
        keras_export(model, Path(folder) / "saved_model", "tf_saved_model")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(folder) / "saved_model"))
        path.write_bytes(converter.convert())


def _size(fmt: Format, folder: Path) -> int:
    total = 0
    for name in (fmt.file, *fmt.extra_files):
        path = folder / name
        total += (sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                  if path.is_dir() else path.stat().st_size)
    return total


def _remove(fmt: Format, folder: Path) -> None:
    for name in (fmt.file, *fmt.extra_files):
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def write_format(name: str, model, folder: Path, images: np.ndarray,
                 keras_probs: np.ndarray) -> dict:
    """Writes one format of `model` into `folder` and checks it; never raises.

    Returns:
        metrics.json's record: `converted`, `file`, `bytes`, `exporter`,
        `runtime`, `test_images`, `top1_agreement`, `max_abs_probability_diff`;
        or `{"converted": False, "error": ...}` (the format's files removed).
    """
    import keras

    from resnet_tuner.metrics import class_probabilities

    fmt = FORMATS[name]
    path = folder / fmt.file
    try:
        if keras_writes(fmt):
            keras_export(model, path, fmt.keras_format)
            exporter = f"Keras {keras.__version__} model.export(format={fmt.keras_format!r})"
        else:
            _convert_tflite_with_tensorflow(model, path)
            import tensorflow as tf

            exporter = (f"tf.lite.TFLiteConverter (TensorFlow {tf.__version__}): Keras "
                        f"{keras.__version__} has no model.export(format='litert')")
        probs, runtime = fmt.run(path, images)
    except Exception as err:  # the converters' failures vary; the bundle stays useful
        _remove(fmt, folder)
        return {"converted": False, "error": f"{type(err).__name__}: {str(err)[:500]}"}
    a, b = class_probabilities(keras_probs), class_probabilities(probs)
    return {
        "converted": True,
        "file": fmt.file,
        "bytes": _size(fmt, folder),
        "exporter": exporter,
        "runtime": runtime,
        "test_images": int(len(images)),
        "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
        "max_abs_probability_diff": float(np.max(np.abs(a - b))),
    }


def failure_line(name: str, record: dict, where: str = "the bundle") -> str:
    """One line for a format that could not be written."""
    fmt = FORMATS[name]
    return (f"{fmt.title} conversion failed, so {where} has no {fmt.file} (model.keras and "
            f"the other formats are fine): {record['error']}")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def card_section(records: dict[str, dict], image_size: Sequence[int], resize: str | None,
                 binary: bool = False) -> str:
    """The model card's "Deployment formats": agreement table, failures, a snippet per format.

    Each snippet feeds the exported signature what it takes: RGB uint8 of
    `image_size`, unscaled, batched, made by `load()` of the card's
    Preprocessing section (the same pixels as training).
    """
    if not records:
        return "Only `model.keras` was written (formats=() at export)."
    height, width = image_size
    rows, failed, snippets = [], [], []
    if resize is None:
        prelude = (f"# images: your uint8 RGB arrays, (N, {height}, {width}, 3), prepared as "
                   "the training arrays were\n")
    else:
        prelude = (f"import numpy as np\n\n# load(): the OpenCV snippet under Preprocessing\n"
                   f'images = np.stack([load("photo.jpg")])  # uint8 RGB, (1, {height}, '
                   f"{width}, 3)\n")
    for name, record in records.items():
        fmt = FORMATS[name]
        if not record.get("converted"):
            failed.append(f"- {fmt.title} conversion failed, so no {fmt.file}: "
                          f"{record.get('error')}")
            continue
        rows.append(f"| {fmt.title} | `{fmt.file}` | {record['bytes'] / 1024:,.1f} KiB | "
                    f"{100 * record['top1_agreement']:.1f} % | "
                    f"{record['max_abs_probability_diff']:.2g} | {record['runtime']} |")
        code = fmt.snippet.format(images="images")
        snippets.append(f"### {fmt.title}\n```python\n{prelude}{code}\n```")
    output = ("`probs` is (N, 1): the probability of the second class (classes.json)"
              if binary else "`probs` is (N, classes), in the order of classes.json")
    parts = []
    if rows:
        parts.append(
            "Each written by Keras' exporter and run with its own runtime on the held-out "
            "images, against `model.keras`:\n\n| format | file | size | top-1 agreement | "
            "max probability difference | runtime |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows))
    parts += failed
    if snippets:
        parts.append(f"Each takes RGB uint8 images of {height}x{width}, unscaled (the model "
                     f"rescales them), in a batch; {output}.\n\n" + "\n\n".join(snippets))
    return "\n\n".join(parts)
