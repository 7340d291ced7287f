"""Training throughput on this CPU: which ResNet shapes, batch sizes, dtype policies and input
pipelines train fastest per image, and how close they get to the machine's matmul peak.

What it measures, each part in fresh subprocesses (TensorFlow's thread pools, oneDNN caches
and traced graphs never carry from one part to the next):

* machine: CPU model and the /proc/cpuinfo flags that matter (AVX2, AVX-512, bf16, AMX),
  `os.getloadavg()` at start and end (a loaded machine lowers every absolute figure), what
  `resnet_tuner.devices.resolve_precision("auto")` picks here;
* matmul peak: `tf.linalg.matmul` of n x n matrices (2048 and 4096 by default) in float32
  and in bfloat16, median GFLOP/s over `--matmul-repeats` calls after one warm-up call;
  measured before and after the training runs, the higher median is "the peak";
* training images/s: for each config x image size x batch size, a float32 and a
  mixed_bfloat16 model (`build_resnet(..., precision=)`, compiled by
  `training.compile_model` as a trial is: Adam, sparse cross-entropy, accuracy + top-5;
  the bf16 model starts from the float32 one's weights), trained with `model.fit` on
  in-memory uint8 arrays (random pixels, `--steps` full batches). A warm-up fit of
  `--warmup-steps` steps traces the step first; then `--repeats` timed one-epoch fits,
  the two policies alternating (so a neighbour's load falls on both). Steady-state rate:
  the images of steps 2..N over the time from the end of step 1 to the end of step N
  (no tracing, no per-epoch set-up); the table shows the median over the repeats;
* FLOPs per image (forward): analytically from the Keras layers (Conv2D
  2*kh*kw*cin/groups*cout*Hout*Wout, Dense 2*in*out, + bias adds; BatchNorm, ReLU, Add,
  pooling and rescaling counted apart as "elementwise"), cross-checked on one model
  against TensorFlow's profiler (`tf.compat.v1.profiler`, float_operation, on the frozen
  inference graph of one image). Training FLOPs ~= 3 x forward (forward + the two
  gradient convolutions per conv); achieved GFLOP/s = img/s x 3 x forward FLOPs, and
  its share of the matmul peak in the same dtype;
* input pipeline: one model trained through several inputs, alternating per repeat:
  `one_batch` (the same in-memory batch repeated: no input work at all, the ceiling),
  `keras_numpy` (fit on numpy arrays, the table's method), `tensor_slices` with and
  without `prefetch`, `hypermodel.shuffled_full_batches` (a search on numpy arrays),
  and `ImageData.dataset("train", shuffle=True)` (a search on a folder / dataset
  object: shuffled row numbers, one numpy gather per batch, prefetch) with and without
  its final prefetch. Also each pipeline alone (no model) in images/s. Overhead % =
  1 - img/s(pipeline) / img/s(one_batch);
* optional (`--accuracy-epochs N`, off in --quick): the fastest config trained N epochs
  on the real Fashion-MNIST (/usr/share/datasets/fashion-mnist) in float32 and
  mixed_bfloat16 from the same initial weights and the same batch order, validation
  accuracy per epoch, so a faster policy is adopted only if it does not lose accuracy.

Then the table (config, size, batch, precision, params, MFLOPs/img, img/s, GFLOP/s,
% of peak), and the conclusions: fastest batch per model, bf16/float32 ratio, pipeline
overhead, achieved FLOP/s of the best setting, and epochs of 54,000 images each config
trains in a 30-minute budget.

Usage:
    python bench/throughput.py --quick                   # 2 configs; ~5 min on a loaded box
    python bench/throughput.py                           # full grid (about an hour)
    python bench/throughput.py --configs resnet20_w16 wide_s2 --sizes 28 --batches 64 128
    python bench/throughput.py --steps 30 --repeats 7 --accuracy-epochs 3

Writes bench/results/throughput.json (not committed).

First figures (the project's 2-core AMD EPYC, TF 2.21, Keras 3.15; short runs, `--steps 8
--repeats 3`, on a machine shared with other jobs: trust the rows whose `cores` is ~1.9).
This EPYC has AVX-512 and avx512_bf16 (oneDNN runs `brg_conv_*:avx512_core_bf16`
kernels), unlike the CPU of bench/precision.py's figures; `auto` gives mixed_bfloat16:

    matmul 2048^2 medians: float32 ~205 GFLOP/s, bfloat16 ~400 GFLOP/s
    28 px, best batch          float32 img/s   mixed_bfloat16 img/s   bf16/f32
    quick_init1  (41 MFLOP)    793 (b256)      864 (b256)             1.09-1.18x
    resnet20_w16 (62 MFLOP)    590 (b256)      680 (b256)             1.07-1.27x
    wide_s2      (81 MFLOP)    703 (b128)      925 (b128)             1.26-1.32x
    wide_cifar   (168 MFLOP)   289 (b256)      398 (b64)              1.27-1.48x
    resnet20_w32 (247 MFLOP)   191 (b128)      256 (b256)             1.15-1.37x
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))  # run from a checkout without installing

POLICIES = ("float32", "mixed_bfloat16")
NUM_CLASSES = 10
TRAIN_IMAGES = 54_000  # Fashion-MNIST's 60,000 less 6,000 for validation
VAL_IMAGES = 6_000
BUDGET_S = 30 * 60
FASHION = Path("/usr/share/datasets/fashion-mnist")
#: Flags worth printing: vector width and native low-precision arithmetic.
FLAGS_OF_INTEREST = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                     "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                     "amx_int8")

#: name -> (how it is made, ResNetConfig fields or a quick-space [[initial]] index).
#: All "cifar"-stem models keep full resolution in their first stage; `wide_s2` halves it
#: in the stem (3x3 stride 2), the cheap way to make a wide model affordable at 28 px.
CONFIGS: dict[str, dict] = {
    "quick_init1": {"initial": 0,
                    "about": "quick space [[initial]] #1: w16, depths 2-2-2, shortcut B"},
    "quick_init2": {"initial": 1,
                    "about": "quick space [[initial]] #2: w32, depths 1-1-1, shortcut B"},
    "resnet20_w16": {"preset": "resnet20",
                     "about": "ResNet-20 (He et al. CIFAR): cifar stem, 3x3 basic, w16, A"},
    "resnet20_w32": {"preset": "resnet20", "stage_widths": (32, 64, 128), "stem_width": 32,
                     "about": "ResNet-20 at width 32 (32-64-128)"},
    "wide_s2": {"block": "basic", "stage_depths": (1, 1, 1), "stage_widths": (64, 128, 256),
                "stem": "strided3x3", "stem_width": 64, "shortcut": "B",
                "about": "wide/shallow: 3x3/2 stem 64, depths 1-1-1, w64-128-256, B"},
    "wide_cifar": {"block": "basic", "stage_depths": (1, 1, 1),
                   "stage_widths": (48, 96, 192), "stem": "cifar", "stem_width": 48,
                   "shortcut": "B",
                   "about": "wide/shallow at full resolution: cifar stem, 1-1-1, w48-96-192"},
}

FULL = {"configs": list(CONFIGS), "sizes": [28, 32], "batches": [32, 64, 128, 256],
        "precisions": list(POLICIES), "steps": 20, "warmup_steps": 3, "repeats": 5,
        "matmul_sizes": [2048, 4096], "matmul_repeats": 7,
        "pipeline_config": "resnet20_w16", "pipeline_batches": [64, 256],
        "flops_check": "resnet20_w16", "accuracy_epochs": 0}
QUICK = {"configs": ["quick_init1", "wide_s2"], "sizes": [28],
         "batches": [32, 128], "precisions": list(POLICIES), "steps": 5, "warmup_steps": 2,
         "repeats": 3, "matmul_sizes": [2048], "matmul_repeats": 3,
         "pipeline_config": "quick_init1", "pipeline_batches": [64],
         "flops_check": "resnet20_w16", "accuracy_epochs": 0}


# =========================================================================== in a child


def model_config(name: str):
    """The `ResNetConfig` and `TrainConfig` of a `CONFIGS` row."""
    import keras_tuner as kt

    from resnet_tuner.config import ResNetConfig, TrainConfig
    from resnet_tuner.space import load_space

    row = {k: v for k, v in CONFIGS[name].items() if k != "about"}
    if "initial" in row:
        space = load_space("quick")
        hp = kt.HyperParameters()
        hp.values.update(space.initial[row["initial"]])
        return space.sample(hp)
    preset = row.pop("preset", None)
    cfg = ResNetConfig.preset(preset, **row) if preset else ResNetConfig(**row)
    return cfg, TrainConfig(optimizer="adam", learning_rate=1e-3)


def build(name: str, size: int, precision: str, weights=None):
    """A compiled model of config `name` on size x size x 3 uint8 images."""
    from resnet_tuner.model import build_resnet
    from resnet_tuner.training import compile_model

    cfg, train = model_config(name)
    model = build_resnet(cfg, (size, size, 3), NUM_CLASSES, precision=precision)
    if weights is not None:
        model.set_weights(weights)
    return compile_model(model, train, NUM_CLASSES)


def _layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def _elements(shape) -> int:
    n = 1
    for d in shape[1:]:
        n *= int(d)
    return n


def analytic_flops(model) -> dict:
    """Forward FLOPs of one image, from the layers' shapes (a multiply-add = 2 FLOPs).

    `matmul`: Conv2D (2*kh*kw*cin/groups*cout*Hout*Wout) and Dense (2*in*out), plus their
    bias adds; `elementwise`: BatchNormalization (scale + shift, 2/element, as folded at
    inference), ReLU (1), Add (1 per extra input), pooling (1 per input element),
    Rescaling (2). Layers of no arithmetic (input, zero-pad shortcut, dropout) count 0.
    """
    import keras

    matmul = elementwise = 0
    per_type: dict[str, int] = {}
    for layer in _layers(model):
        flops = 0
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = int(layer.input.shape[-1]) // getattr(layer, "groups", 1)
            out = _elements(layer.output.shape)  # Hout * Wout * cout
            flops = 2 * kh * kw * cin * out + (out if layer.use_bias else 0)
            matmul += flops
        elif isinstance(layer, keras.layers.Dense):
            fan_in, units = int(layer.input.shape[-1]), int(layer.units)
            flops = 2 * fan_in * units + (units if layer.use_bias else 0)
            matmul += flops
        elif isinstance(layer, keras.layers.BatchNormalization):
            flops = 2 * _elements(layer.output.shape)
            elementwise += flops
        elif isinstance(layer, keras.layers.Activation):
            flops = _elements(layer.output.shape)
            elementwise += flops
        elif isinstance(layer, keras.layers.Add):
            flops = (len(layer.input) - 1) * _elements(layer.output.shape)
            elementwise += flops
        elif isinstance(layer, (keras.layers.GlobalAveragePooling2D,
                                keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            flops = _elements(layer.input.shape)
            elementwise += flops
        elif isinstance(layer, keras.layers.Rescaling):
            flops = 2 * _elements(layer.output.shape)
            elementwise += flops
        if flops:
            kind = type(layer).__name__
            per_type[kind] = per_type.get(kind, 0) + flops
    return {"matmul": matmul, "elementwise": elementwise, "per_layer_type": per_type}


def profiler_flops(model, size: int) -> dict:
    """Forward FLOPs of one image by TensorFlow's profiler on the frozen inference graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec((1, size, size, 3), tf.uint8))
    frozen = convert_variables_to_constants_v2(concrete)
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    result = tf.compat.v1.profiler.profile(graph=frozen.graph,
                                           run_meta=tf.compat.v1.RunMetadata(),
                                           cmd="op", options=options)
    per_op: dict[str, int] = {}
    stack = list(result.children)  # the "op" view nests each op type under the previous
    while stack:
        node = stack.pop()
        if node.float_ops:
            per_op[node.name] = per_op.get(node.name, 0) + int(node.float_ops)
        stack.extend(node.children)
    return {"total": int(result.total_float_ops), "per_op": per_op,
            "matmul": sum(v for k, v in per_op.items()
                          if k in ("Conv2D", "MatMul", "BiasAdd", "DepthwiseConv2dNative"))}


class StepClock:
    """Times a fit: the wall clock and this process's CPU time at the end of every step.

    The CPU time (all threads: `time.process_time`) gives images per CPU-second, which a
    neighbour's load changes much less than images per second: on a machine shared with
    other jobs, compare policies and shapes by it too.
    """

    def __init__(self):
        import keras

        clock = self

        class _Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                clock.ends.append((time.perf_counter(), time.process_time()))

        self.callback = _Callback()
        self.ends: list[tuple[float, float]] = []

    def reset(self):
        self.ends = []

    def steady(self, batch: int) -> tuple[float, float]:
        """Images per second and per CPU-second from the end of step 1 to the last step's."""
        if len(self.ends) < 2:
            return float("nan"), float("nan")
        images = (len(self.ends) - 1) * batch
        (wall0, cpu0), (wall1, cpu1) = self.ends[0], self.ends[-1]
        return images / (wall1 - wall0), images / max(cpu1 - cpu0, 1e-9)


def timed_fit(model, clock: StepClock, batch: int, x, y=None, **kwargs) -> dict:
    clock.reset()
    started = time.perf_counter()
    if y is not None:  # numpy arrays: Keras batches them (in order); datasets come batched
        kwargs.setdefault("batch_size", batch)
    kwargs.setdefault("shuffle", False)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[clock.callback], **kwargs)
    wall = time.perf_counter() - started
    steps = len(clock.ends)
    img_s, cpu_img_s = clock.steady(batch)
    return {"steady_img_s": img_s, "cpu_img_s": cpu_img_s, "cores_used": img_s / cpu_img_s,
            "steps": steps, "epoch_img_s": steps * batch / wall, "seconds": wall}


def random_images(n: int, size: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            rng.integers(0, NUM_CLASSES, n).astype(np.int32))


def child_throughput(a: dict) -> dict:
    """One config at one size: every batch size, the policies alternating per repeat."""
    import keras

    name, size = a["config"], a["size"]
    rows, info, matmul = [], {}, []
    for batch in a["batches"]:
        if a.get("matmul_size"):  # the peak as the neighbours' load leaves it now
            matmul.extend(matmul_rates([a["matmul_size"]], 3))
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        x, y = random_images(a["steps"] * batch, size)
        xw, yw = x[: a["warmup_steps"] * batch], y[: a["warmup_steps"] * batch]
        models, clock, warm = {}, StepClock(), {}
        weights = None
        for policy in a["precisions"]:
            models[policy] = build(name, size, policy, weights)
            weights = weights or models[policy].get_weights()
            t = time.perf_counter()
            timed_fit(models[policy], clock, batch, xw, yw)  # traces the train step
            warm[policy] = time.perf_counter() - t
        if not info:
            model = next(iter(models.values()))
            cfg, train = model_config(name)
            info = {"params": model.count_params(), "model": model.name,
                    "config": cfg.to_dict(), "optimizer": train.optimizer,
                    "flops": analytic_flops(model)}
        runs: dict[str, list[dict]] = {p: [] for p in a["precisions"]}
        for r in range(a["repeats"]):
            order = a["precisions"] if r % 2 == 0 else a["precisions"][::-1]
            for policy in order:
                runs[policy].append(timed_fit(models[policy], clock, batch, x, y))
        for policy, reps in runs.items():
            rates = [rep["steady_img_s"] for rep in reps]
            rows.append({"config": name, "size": size, "batch": batch, "precision": policy,
                         "img_s": statistics.median(rates), "img_s_runs": rates,
                         "cpu_img_s": statistics.median(rep["cpu_img_s"] for rep in reps),
                         "cores_used": statistics.median(rep["cores_used"] for rep in reps),
                         "epoch_img_s": statistics.median(rep["epoch_img_s"] for rep in reps),
                         "warmup_s": warm[policy]})
        print(f"  {name} {size}px batch {batch}: " + ", ".join(
            f"{row['precision']} {row['img_s']:.0f}" for row in rows[-len(runs):]) + " img/s",
            file=sys.stderr, flush=True)
    return {"info": info, "rows": rows, "matmul": matmul}


def pipeline_inputs(x, y, batch: int, steps: int, size: int) -> dict:
    """label -> `() -> (x, y or None)`: the inputs `child_pipeline` trains through."""
    import numpy as np
    import tensorflow as tf

    from resnet_tuner.data.images import ImageData
    from resnet_tuner.hypermodel import shuffled_full_batches

    n = len(x)
    data = ImageData(images=x, labels=y, files=[f"random/{i}" for i in range(n)],
                     index={"train": np.arange(n)},
                     class_names=[str(c) for c in range(NUM_CLASSES)],
                     image_size=(size, size), batch_size=batch)
    imagedata = data.dataset("train", batch_size=batch, shuffle=True)
    slices = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)
    one = tf.data.Dataset.from_tensors((x[:batch], y[:batch])).repeat(steps)
    inputs = {
        "one_batch": lambda: (one, None),
        "keras_numpy": lambda: (x, y),
        "tensor_slices": lambda: (slices, None),
        "tensor_slices+prefetch": lambda: (slices.prefetch(tf.data.AUTOTUNE), None),
        "hypermodel_numpy": lambda: (shuffled_full_batches(x, y, batch, seed=0), None),
        "imagedata": lambda: (imagedata, None),
    }
    # The same ImageData pipeline without its last step, when that is the prefetch.
    if "Prefetch" in type(imagedata).__name__ and hasattr(imagedata, "_input_dataset"):
        no_prefetch = imagedata._input_dataset
        inputs["imagedata-prefetch"] = lambda: (no_prefetch, None)
    return inputs


def pipeline_alone(source, passes: int) -> float:
    """Images/s of iterating a dataset without a model (each pass from its second batch)."""
    rates = []
    for _ in range(passes):
        started, count = None, 0
        for xb, _yb in source:
            if started is None:
                started = time.perf_counter()
                continue
            count += int(xb.shape[0])
        if started is not None and count:
            rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates) if rates else float("nan")


def child_pipeline(a: dict) -> dict:
    """One model per batch size trained through each input pipeline, alternating per repeat."""
    import keras

    name, size, precision = a["config"], a["size"], a["precision"]
    out = []
    for batch in a["batches"]:
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        x, y = random_images(a["steps"] * batch, size)
        inputs = pipeline_inputs(x, y, batch, a["steps"], size)
        alone = {}
        for label, make in inputs.items():
            source, labels = make()
            if labels is None:  # (numpy arrays: Keras makes its own dataset in fit)
                alone[label] = pipeline_alone(source, max(5, a["repeats"]))

        model = build(name, size, precision)
        clock = StepClock()
        warm_x, warm_y = x[: a["warmup_steps"] * batch], y[: a["warmup_steps"] * batch]
        timed_fit(model, clock, batch, warm_x, warm_y)
        for make in inputs.values():  # each input signature traced once
            source, labels = make()
            timed_fit(model, clock, batch, source, labels)
        runs: dict[str, list[dict]] = {label: [] for label in inputs}
        for r in range(a["repeats"]):
            order = list(inputs) if r % 2 == 0 else list(inputs)[::-1]
            for label in order:
                source, labels = inputs[label]()
                runs[label].append(timed_fit(model, clock, batch, source, labels))
        for label, reps in runs.items():
            out.append({"config": name, "size": size, "batch": batch, "precision": precision,
                        "input": label,
                        "img_s": statistics.median(r["steady_img_s"] for r in reps),
                        "cpu_img_s": statistics.median(r["cpu_img_s"] for r in reps),
                        "epoch_img_s": statistics.median(r["epoch_img_s"] for r in reps),
                        "alone_img_s": alone.get(label)})
        print(f"  pipeline {name} {size}px batch {batch}: " + ", ".join(
            f"{row['input']} {row['img_s']:.0f}" for row in out[-len(runs):]),
            file=sys.stderr, flush=True)
    return {"rows": out}


def child_flops(a: dict) -> dict:
    """Analytic vs profiler FLOPs of one config."""
    model = build(a["config"], a["size"], "float32")
    return {"config": a["config"], "size": a["size"], "analytic": analytic_flops(model),
            "profiler": profiler_flops(model, a["size"])}


def matmul_rates(sizes, repeats: int) -> list[dict]:
    """GFLOP/s of `tf.linalg.matmul` of n x n matrices, float32 and bfloat16 inputs."""
    import tensorflow as tf

    out = []
    for dtype in ("float32", "bfloat16"):
        for n in sizes:
            left = tf.cast(tf.random.normal((n, n), seed=1), dtype)
            right = tf.cast(tf.random.normal((n, n), seed=2), dtype)
            tf.linalg.matmul(left, right).numpy()  # warm-up: oneDNN primitive creation
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                tf.linalg.matmul(left, right).numpy()
                seconds.append(time.perf_counter() - started)
            rates = [2 * n ** 3 / s / 1e9 for s in seconds]
            out.append({"dtype": dtype, "n": n, "gflop_s": statistics.median(rates),
                        "best_gflop_s": max(rates)})
    return out


def child_matmul(a: dict) -> dict:
    return {"rows": matmul_rates(a["sizes"], a["repeats"])}


def child_accuracy(a: dict) -> dict:
    """float32 vs mixed_bfloat16 on real Fashion-MNIST: same init, same batches."""
    import gzip

    import keras
    import numpy as np
    from sklearn.model_selection import train_test_split

    from resnet_tuner.data.images import ImageData
    from resnet_tuner.training import schedule_callbacks

    def read(name: str, offset: int):
        with gzip.open(FASHION / name, "rb") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    images = read("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read("train-labels-idx1-ubyte.gz", 8).astype(np.int32)
    pad = (a["size"] - 28) // 2
    if pad > 0:
        images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    images = np.repeat(images[..., None], 3, axis=-1)
    train, val = train_test_split(np.arange(len(labels)), test_size=VAL_IMAGES,
                                  stratify=labels, random_state=0)
    if a["images"]:
        train = train[: a["images"]]
    data = ImageData(images=images, labels=labels, files=[str(i) for i in range(len(labels))],
                     index={"train": np.sort(train), "val": np.sort(val)},
                     class_names=[str(c) for c in range(NUM_CLASSES)],
                     image_size=(a["size"], a["size"]), batch_size=a["batch"], seed=0)
    keras.utils.set_random_seed(0)
    _, train_cfg = model_config(a["config"])
    weights, out = None, {}
    for policy in a["precisions"]:
        keras.utils.set_random_seed(0)
        model = build(a["config"], a["size"], policy, weights)
        weights = weights or model.get_weights()
        started = time.perf_counter()
        history = model.fit(data.dataset("train", a["batch"], shuffle=True),
                            validation_data=data.dataset("val", a["batch"], shuffle=False),
                            epochs=a["epochs"], verbose=0, shuffle=False,  # shuffled rows
                            callbacks=schedule_callbacks(train_cfg, a["epochs"]))
        out[policy] = {"val_accuracy": [float(v) for v in history.history["val_accuracy"]],
                       "seconds": time.perf_counter() - started,
                       "train_images": int(len(train))}
        print(f"  accuracy {policy}: val {out[policy]['val_accuracy']} "
              f"in {out[policy]['seconds']:.0f} s", file=sys.stderr, flush=True)
        keras.backend.clear_session()
    return {"config": a["config"], "size": a["size"], "batch": a["batch"],
            "epochs": a["epochs"], "runs": out}


CHILDREN = {"throughput": child_throughput, "pipeline": child_pipeline,
            "flops": child_flops, "matmul": child_matmul, "accuracy": child_accuracy}


# =========================================================================== parent


def spawn(kind: str, **args) -> dict | None:
    """Runs one part in a fresh process; its result is the last line of its stdout."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(args)],
                          capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    progress = [line for line in done.stderr.splitlines() if line.startswith("  ")]
    for line in progress:
        print(line, flush=True)
    if done.returncode != 0 or not done.stdout.strip():
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        print(f"!! {kind} {args.get('config', '')} failed (exit {done.returncode}):\n{tail}",
              flush=True)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    print(f"  [{kind} {args.get('config', '')} took {result['process_seconds']:.0f} s]",
          flush=True)
    return result


def machine() -> dict:
    from resnet_tuner.devices import cpu_flags, resolve_precision

    text = ""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        pass
    lines = text.splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    mhz = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("cpu MHz")), "")
    flags = cpu_flags()
    return {"cpu": name, "mhz": mhz, "cores": os.cpu_count(),
            "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
            "avx512": sorted(f for f in flags if f.startswith("avx512")),
            "auto_precision": resolve_precision("auto", gpus=[])}


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def print_table(rows, infos, peaks) -> None:
    head = (f"{'config':14s} {'px':>3s} {'batch':>5s} {'precision':15s} {'params':>8s} "
            f"{'MFLOP/img':>9s} {'img/s':>7s} {'±%':>4s} {'GFLOP/s':>7s} {'% peak':>6s} "
            f"{'img/CPU-s':>9s} {'cores':>5s}")
    print(head)
    print("-" * len(head))
    for row in rows:
        info = infos[row["config"], row["size"]]
        spread = (max(row["img_s_runs"]) - min(row["img_s_runs"])) / 2 / row["img_s"] * 100
        print(f"{row['config']:14s} {row['size']:3d} {row['batch']:5d} {row['precision']:15s} "
              f"{info['params']:8,d} {row['mflops']:9.1f} {row['img_s']:7.1f} {spread:4.0f} "
              f"{row['gflop_s']:7.2f} {row['peak_pct']:6.1f} {row['cpu_img_s']:9.1f} "
              f"{row['cores_used']:5.2f}")
    print("MFLOP/img: forward conv + dense (x3 for a training step); GFLOP/s = img/s x 3 x "
          "MFLOP/img / 1000;\n% peak: of the matmul peak in the same dtype "
          f"(float32 {peaks.get('float32', float('nan')):.0f}, bfloat16 "
          f"{peaks.get('bfloat16', float('nan')):.0f} GFLOP/s); ±%: half the range over "
          "repeats;\nimg/CPU-s: images per CPU-second of the process (all threads); cores: "
          "CPU-s per second, i.e. how much of the machine the run got")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a ~2-3 minute version: 2 configs, 28 px, batches 32 and 128")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS))
    parser.add_argument("--sizes", nargs="+", type=int)
    parser.add_argument("--batches", nargs="+", type=int)
    parser.add_argument("--precisions", nargs="+", choices=POLICIES)
    parser.add_argument("--steps", type=int, help="train steps per timed repeat (>= 2)")
    parser.add_argument("--warmup-steps", type=int, help="untimed steps that trace the step")
    parser.add_argument("--repeats", type=int, help="timed repeats per row (the median shown)")
    parser.add_argument("--matmul-sizes", nargs="+", type=int)
    parser.add_argument("--matmul-repeats", type=int)
    parser.add_argument("--pipeline-config", choices=list(CONFIGS))
    parser.add_argument("--pipeline-batches", nargs="*", type=int,
                        help="batch sizes of the pipeline comparison (none: skip it)")
    parser.add_argument("--flops-check", choices=list(CONFIGS),
                        help="the config whose FLOPs are cross-checked with TF's profiler")
    parser.add_argument("--accuracy-epochs", type=int,
                        help="train the fastest config N epochs on Fashion-MNIST per policy "
                             "(0: skip)")
    parser.add_argument("--accuracy-images", type=int, default=0,
                        help="training images of the accuracy check (0: all 54,000)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("child_args", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.child_args))))
        return

    settings = dict(QUICK if args.quick else FULL)
    for key in settings:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if settings["steps"] < 2:
        parser.error("--steps must be at least 2 (the rate is timed from the end of step 1)")
    s = argparse.Namespace(**settings)
    started = time.perf_counter()
    load_start = loadavg()
    box = machine()
    print(f"CPU: {box['cpu']} ({box['cores']} cores, {box['mhz']} MHz); flags: "
          f"{' '.join(box['flags']) or 'none of ' + ' '.join(FLAGS_OF_INTEREST)}")
    print(f"AVX-512: {' '.join(box['avx512']) or 'none'}; "
          f"resolve_precision('auto') here: {box['auto_precision']}")
    print(f"load average at start (1, 5, 15 min): {load_start}")
    print(f"settings: {json.dumps(settings)}\n", flush=True)

    # ---------------------------------------------------------------- matmul peak
    matmul = [spawn("matmul", sizes=s.matmul_sizes, repeats=s.matmul_repeats)]
    for row in matmul[0]["rows"] if matmul[0] else []:
        print(f"matmul {row['dtype']:8s} {row['n']}x{row['n']}: median {row['gflop_s']:6.1f} "
              f"GFLOP/s (best {row['best_gflop_s']:.1f})", flush=True)

    # ---------------------------------------------------------------- FLOPs cross-check
    flops_check = None
    if s.flops_check:
        flops_check = spawn("flops", config=s.flops_check, size=s.sizes[0])
        if flops_check:
            an, pr = flops_check["analytic"], flops_check["profiler"]
            print(f"\nFLOPs/img of {s.flops_check} at {s.sizes[0]} px (forward): analytic "
                  f"conv+dense {an['matmul'] / 1e6:.2f} M (+ elementwise "
                  f"{an['elementwise'] / 1e6:.2f} M); TF profiler Conv2D+MatMul+BiasAdd "
                  f"{pr['matmul'] / 1e6:.2f} M (all ops {pr['total'] / 1e6:.2f} M: "
                  + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in
                              sorted(pr["per_op"].items(), key=lambda kv: -kv[1])) + ")",
                  flush=True)

    # ---------------------------------------------------------------- throughput
    print("\ntraining img/s (steady state, median of repeats):", flush=True)
    rows, infos = [], {}
    for i, name in enumerate(s.configs):
        for size in s.sizes:
            precisions = s.precisions if i % 2 == 0 else s.precisions[::-1]
            result = spawn("throughput", config=name, size=size, batches=s.batches,
                           precisions=precisions, steps=s.steps, warmup_steps=s.warmup_steps,
                           repeats=s.repeats, matmul_size=s.matmul_sizes[0])
            if result:
                infos[name, size] = result["info"]
                rows.extend(result["rows"])
                matmul.append({"rows": result["matmul"], "during": f"{name}@{size}"})

    # ---------------------------------------------------------------- pipeline
    pipeline = None
    if s.pipeline_batches:
        print("\ninput pipelines (float32, steady img/s):", flush=True)
        pipeline = spawn("pipeline", config=s.pipeline_config, size=s.sizes[0],
                         precision="float32", batches=s.pipeline_batches, steps=s.steps,
                         warmup_steps=s.warmup_steps, repeats=s.repeats)

    matmul.append(spawn("matmul", sizes=s.matmul_sizes, repeats=s.matmul_repeats))
    if matmul[-1]:
        print("matmul again after the runs: " + ", ".join(
            f"{r['dtype']} {r['n']} {r['gflop_s']:.1f}" for r in matmul[-1]["rows"])
            + " GFLOP/s", flush=True)
    peaks: dict[str, float] = {}
    seen: dict[str, list[float]] = {}
    for m in matmul:
        for row in m["rows"] if m else []:
            peaks[row["dtype"]] = max(peaks.get(row["dtype"], 0.0), row["gflop_s"])
            seen.setdefault(row["dtype"], []).append(row["gflop_s"])
    print("matmul medians seen (start, next to each training block, end): " + "; ".join(
        f"{d} {min(v):.0f}-{max(v):.0f} GFLOP/s" for d, v in seen.items())
        + "; the peak is the highest", flush=True)

    for row in rows:
        info = infos[row["config"], row["size"]]
        row["mflops"] = info["flops"]["matmul"] / 1e6
        row["gflop_s"] = row["img_s"] * 3 * info["flops"]["matmul"] / 1e9
        peak = peaks.get("bfloat16" if "bfloat16" in row["precision"] else "float32")
        row["peak_pct"] = 100 * row["gflop_s"] / peak if peak else float("nan")

    print("\nconfigs:")
    for name in s.configs:
        cfg = next((infos[k] for k in infos if k[0] == name), None)
        if cfg:
            print(f"  {name:14s} {cfg['model']:32s} {cfg['params']:9,d} params  "
                  f"{CONFIGS[name]['about']}")
    print()
    if rows:
        print_table(rows, infos, peaks)

    # ---------------------------------------------------------------- conclusions
    conclusions: dict = {"best_batch": {}, "bf16_ratio": {}, "epochs_in_30_min": {}}
    print("\nconclusions:")
    for name, size in infos:
        mine = [r for r in rows if r["config"] == name and r["size"] == size]
        for policy in s.precisions:
            cand = [r for r in mine if r["precision"] == policy]
            if cand:
                best = max(cand, key=lambda r: r["img_s"])
                conclusions["best_batch"][f"{name}@{size}/{policy}"] = best["batch"]
        by = {(r["batch"], r["precision"]): r["img_s"] for r in mine}
        ratios = {b: by[b, "mixed_bfloat16"] / by[b, "float32"] for b in s.batches
                  if (b, "mixed_bfloat16") in by and (b, "float32") in by}
        by_cpu = {(r["batch"], r["precision"]): r["cpu_img_s"] for r in mine}
        cpu_ratios = {b: by_cpu[b, "mixed_bfloat16"] / by_cpu[b, "float32"] for b in ratios}
        if ratios:
            conclusions["bf16_ratio"][f"{name}@{size}"] = ratios
            conclusions.setdefault("bf16_ratio_cpu_time", {})[f"{name}@{size}"] = cpu_ratios
        # An epoch of 54,000 training images plus validation on 6,000 (a forward pass:
        # ~1/3 of a training step's cost per image); trial start-up not counted.
        epochs = {}
        for policy in s.precisions:
            cand = [r for r in mine if r["precision"] == policy]
            if cand:
                top = max(cand, key=lambda r: r["img_s"])
                epoch_s = TRAIN_IMAGES / top["img_s"] + VAL_IMAGES / (3 * top["img_s"])
                epochs[policy] = {"batch": top["batch"], "img_s": top["img_s"],
                                  "epoch_s": epoch_s, "epochs": BUDGET_S / epoch_s}
        conclusions["epochs_in_30_min"][f"{name}@{size}"] = epochs
        print(f"  {name:14s} {size}px: fastest batch " + ", ".join(
            f"{p.replace('mixed_', '')} {conclusions['best_batch'].get(f'{name}@{size}/{p}')}"
            for p in s.precisions)
            + ("; bf16/f32 " + " ".join(f"b{b}:{v:.2f}x" for b, v in ratios.items())
               + " (per CPU-s " + " ".join(f"{v:.2f}x" for v in cpu_ratios.values()) + ")"
               if ratios else "")
            + "; 30 min = " + ", ".join(
                f"{e['epochs']:.1f} epochs {p.replace('mixed_', '')} ({e['epoch_s']:.0f} s each)"
                for p, e in epochs.items()))
    all_ratios = [v for r in conclusions["bf16_ratio"].values() for v in r.values()]
    cpu_all = [v for r in conclusions.get("bf16_ratio_cpu_time", {}).values()
               for v in r.values()]
    if all_ratios:
        conclusions["bf16_ratio_median"] = statistics.median(all_ratios)
        conclusions["bf16_ratio_cpu_time_median"] = statistics.median(cpu_all)
        print(f"  mixed_bfloat16 / float32 img/s: median {statistics.median(all_ratios):.2f}x "
              f"(range {min(all_ratios):.2f}-{max(all_ratios):.2f}x over {len(all_ratios)} "
              f"config/size/batch rows); per CPU-second: median {statistics.median(cpu_all):.2f}x "
              f"(range {min(cpu_all):.2f}-{max(cpu_all):.2f}x)")
    if rows:
        best = max(rows, key=lambda r: r["img_s"])
        efficient = max(rows, key=lambda r: r["gflop_s"])
        conclusions["fastest"] = best
        conclusions["most_flops"] = efficient
        for label, r in (("fastest per image", best), ("highest FLOP/s", efficient)):
            print(f"  {label}: {r['config']} {r['size']}px batch {r['batch']} {r['precision']}: "
                  f"{r['img_s']:.0f} img/s x 3 x {r['mflops']:.1f} MFLOP = {r['gflop_s']:.1f} "
                  f"GFLOP/s = {r['peak_pct']:.0f}% of the {r['precision'].replace('mixed_', '')}"
                  f" matmul peak ({100 * r['gflop_s'] / peaks['float32']:.0f}% of float32's)")

    if pipeline:
        prows = pipeline["rows"]
        print("\ninput pipeline (model " f"{s.pipeline_config}, {s.sizes[0]} px, float32):")
        print(f"  {'batch':>5s} {'input':24s} {'img/s':>7s} {'vs one_batch':>12s} "
              f"{'img/CPU-s':>9s} {'vs one_batch':>12s} {'alone img/s':>11s} {'CPU share':>9s}")
        overhead, cpu_overhead, share = {}, {}, {}
        for batch in s.pipeline_batches:
            mine = {r["input"]: r for r in prows if r["batch"] == batch}
            ceiling = mine["one_batch"]["img_s"]
            cpu_ceiling = mine["one_batch"]["cpu_img_s"]
            for label, r in mine.items():
                pct = 100 * (1 - r["img_s"] / ceiling)
                cpu_pct = 100 * (1 - r["cpu_img_s"] / cpu_ceiling)
                overhead[f"{label}@{batch}"] = pct
                cpu_overhead[f"{label}@{batch}"] = cpu_pct
                alone, cpu = f"{'(keras)':>11s}", f"{'':>9s}"
                if r["alone_img_s"]:
                    share[f"{label}@{batch}"] = 100 * ceiling / r["alone_img_s"]
                    alone = f"{r['alone_img_s']:11.0f}"
                    cpu = f"{share[f'{label}@{batch}']:8.1f}%"
                print(f"  {batch:5d} {label:24s} {r['img_s']:7.1f} {-pct:+11.1f}% "
                      f"{r['cpu_img_s']:9.1f} {-cpu_pct:+11.1f}% {alone} {cpu}")
        conclusions["pipeline_overhead_pct"] = overhead
        conclusions["pipeline_cpu_overhead_pct"] = cpu_overhead
        conclusions["pipeline_cpu_share_pct"] = share
        print("  vs one_batch: img/s against training on one in-memory batch (no input work; "
              "negative = slower;\n  within the repeats' spread it is noise). alone: the "
              "pipeline iterated without a model. CPU share: one_batch img/s / alone img/s,\n"
              "  the time the input work would take from training if it did not overlap at all.")

    # ---------------------------------------------------------------- accuracy
    accuracy = None
    if s.accuracy_epochs and rows and FASHION.exists():
        best = max(rows, key=lambda r: r["img_s"])
        print(f"\naccuracy check: {best['config']} {best['size']}px batch {best['batch']}, "
              f"{s.accuracy_epochs} epochs of Fashion-MNIST per policy", flush=True)
        accuracy = spawn("accuracy", config=best["config"], size=best["size"],
                         batch=best["batch"], epochs=s.accuracy_epochs,
                         images=args.accuracy_images, precisions=list(POLICIES))
        if accuracy:
            for policy, run in accuracy["runs"].items():
                print(f"  {policy:15s} val accuracy per epoch "
                      + " ".join(f"{v:.4f}" for v in run["val_accuracy"])
                      + f"  ({run['seconds']:.0f} s, {run['train_images']:,} train images)")
    elif s.accuracy_epochs:
        print(f"\naccuracy check skipped: {FASHION} not found or no throughput rows")

    load_end = loadavg()
    print(f"\nload average at end (1, 5, 15 min): {load_end}; "
          f"wall {time.perf_counter() - started:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps({
        "when": dt.datetime.now().isoformat(timespec="seconds"), "settings": settings,
        "quick": args.quick, "machine": box, "loadavg_start": load_start,
        "loadavg_end": load_end, "matmul": matmul, "peaks_gflop_s": peaks,
        "flops_check": flops_check,
        "configs": {f"{k[0]}@{k[1]}": v for k, v in infos.items()},
        "rows": rows, "pipeline": pipeline, "accuracy": accuracy,
        "conclusions": conclusions}, indent=1, default=str))
    print(f"wrote {RESULTS / 'throughput.json'}")


if __name__ == "__main__":
    main()
