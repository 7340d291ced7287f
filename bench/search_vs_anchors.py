"""Search quality and speed: resnet_tuner against keras-tuner's HyperResNet and fixed baselines.

Same data (scikit-learn's bundled digits at 32x32x3, one stratified split with
a fixed seed), same machine, the same wall-clock budget per system, run one
after another in one command:

* keras-tuner's `HyperResNet` with `RandomSearch` (one-hot labels, as it needs);
* resnet_tuner's `quick` space with Hyperband, and its `cifar` space;
* the 003 seed's `mini_resnet` and a plain CNN (three conv-BN-ReLU-pool layers,
  no residuals), each trained for the whole budget.

For each system it prints trials completed, best validation accuracy, test
accuracy of the best model, time to first reach 95 % and 98 % validation
accuracy and the best model's parameters; then the training images/s of the
best resnet_tuner model and its achieved FLOP/s (forward FLOPs x 3 x images/s)
as a fraction of this machine's float32 matmul FLOP/s, measured at the start.

Usage:
    python bench/search_vs_anchors.py                 # 8 minutes per system
    python bench/search_vs_anchors.py --budget 2 --systems quick,cnn

Writes bench/results/search_vs_anchors.json and .md (not committed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import keras  # noqa: E402
import keras_tuner as kt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from resnet_tuner import (  # noqa: E402
    ResNetConfig,
    ResNetHyperModel,
    TrainConfig,
    build_resnet,
    export_best,
)
from resnet_tuner.run.tuners import make_tuner  # noqa: E402
from resnet_tuner.training import compile_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEMS = ("hyperresnet", "quick", "cifar", "mini_resnet", "cnn")

# Shared, not copied: keras-tuner deep-copies callbacks for every trial.
_CLOCK: dict = {}


class BudgetAndTrace(keras.callbacks.Callback):
    """Stops the current trial and the search at the deadline; logs val accuracy over time."""

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() > _CLOCK["deadline"]:
            self.model.stop_training = True
            oracle = _CLOCK.get("oracle")
            if oracle is not None:  # no new trials after the deadline
                oracle.max_trials = max(1, len(oracle.trials))

    def on_epoch_end(self, epoch, logs=None):
        acc = (logs or {}).get("val_accuracy")
        if acc is not None:
            _CLOCK["trace"].append((time.perf_counter() - _CLOCK["start"], float(acc)))


def start_clock(budget_s: float, oracle=None) -> None:
    now = time.perf_counter()
    _CLOCK.update(start=now, deadline=now + budget_s, trace=[], oracle=oracle)


def time_to(trace, target: float):
    for seconds, acc in trace:
        if acc >= target:
            return round(seconds, 1)
    return None


def matmul_flops(n: int = 2048, repeats: int = 7) -> float:
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    matmul = tf.function(tf.matmul)
    matmul(a, b).numpy()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times))


def forward_flops(model: keras.Model) -> int:
    """Multiply-adds x 2 of every convolution and dense layer (nested models included)."""
    total = 0
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return total


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_tuner": kt.__version__,
    }


# --------------------------------------------------------------------------- systems


def run_resnet_tuner(space: str, budget_s: float, workdir: Path, make_data) -> dict:
    """A Hyperband search over `space`; the clock includes building the data."""
    start_clock(budget_s)
    data = make_data()  # decoding and splitting are part of the measured time
    x_train, y_train = data.arrays("train")
    x_val, y_val = data.arrays("val")
    hm = ResNetHyperModel(space, input_shape=data.input_shape, num_classes=data.num_classes)
    # The product's tuner: Hyperband (max 10 epochs, factor 3) starting from the
    # space's [[initial]] configurations, as `resnet-tuner search` runs it.
    tuner = make_tuner("hyperband", hm, workdir, max_trials=10_000, epochs=10, seed=0,
                       overwrite=True, project_name=space)
    tuner.progress_total = None
    _CLOCK["oracle"] = tuner.oracle
    tuner.search(x_train, y_train, validation_data=(x_val, y_val), verbose=0,
                 callbacks=[BudgetAndTrace()])
    elapsed = time.perf_counter() - _CLOCK["start"]
    best_hp = tuner.get_best_hyperparameters(1)[0]
    best = tuner.get_best_models(1)[0]
    model_cfg, train_cfg = hm.configs(best_hp)
    test_acc = evaluate_exported(tuner, data, workdir / f"{space}_bundle")
    return {
        "trials": sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values()),
        "best_val_accuracy": float(tuner.oracle.get_best_trials(1)[0].score),
        "test_accuracy": test_acc,
        "params": int(best.count_params()),
        "elapsed_s": round(elapsed, 1),
        "trace": list(_CLOCK["trace"]),
        "best_config": model_cfg.to_dict(),
        "best_train": train_cfg.to_dict(),
    }


def evaluate_exported(tuner, data, bundle: Path) -> float:
    """Test accuracy of the exported bundle (the model users ship), from its metrics.json."""
    export_best(tuner, str(bundle), data=data)
    return float(json.loads((bundle / "metrics.json").read_text())["accuracy"])


def train_fixed(model: keras.Model, data, budget_s: float, batch_size: int) -> dict:
    """Trains one model for the whole budget; keeps the weights of its best validation epoch."""
    x_train, y_train = data.arrays("train")
    x_val, y_val = data.arrays("val")
    x_test, y_test = data.arrays("test")
    best = {"acc": -1.0, "weights": None}

    class KeepBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs["val_accuracy"] > best["acc"]:
                best["acc"] = logs["val_accuracy"]
                best["weights"] = model.get_weights()

    start_clock(budget_s)
    history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=10_000,
                        batch_size=batch_size, verbose=0, callbacks=[BudgetAndTrace(), KeepBest()])
    elapsed = time.perf_counter() - _CLOCK["start"]
    model.set_weights(best["weights"])
    test_acc = float(np.mean(model.predict(x_test, verbose=0).argmax(axis=1) == y_test))
    return {
        "trials": 1,
        "epochs": len(history.history["loss"]),
        "best_val_accuracy": float(best["acc"]),
        "test_accuracy": test_acc,
        "params": int(model.count_params()),
        "elapsed_s": round(elapsed, 1),
        "trace": list(_CLOCK["trace"]),
    }


def run_hyperresnet(data, budget_s: float, workdir: Path) -> dict:
    """keras-tuner's built-in ResNet search: float inputs, one-hot labels."""
    x_train, y_train = data.arrays("train")
    x_val, y_val = data.arrays("val")
    x_test, y_test = data.arrays("test")
    onehot = lambda y: keras.utils.to_categorical(y, data.num_classes)  # noqa: E731
    hm = kt.applications.HyperResNet(input_shape=data.input_shape, classes=data.num_classes)
    tuner = kt.RandomSearch(hm, objective="val_accuracy", max_trials=1000, seed=0,
                            directory=str(workdir), project_name="hyperresnet", overwrite=True)
    start_clock(budget_s, tuner.oracle)
    tuner.search(x_train / 255.0, onehot(y_train), validation_data=(x_val / 255.0, onehot(y_val)),
                 epochs=10, verbose=0, callbacks=[BudgetAndTrace()])
    elapsed = time.perf_counter() - _CLOCK["start"]
    best_trials = tuner.oracle.get_best_trials(1)
    result = {
        "trials": sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values()),
        "elapsed_s": round(elapsed, 1),
        "trace": list(_CLOCK["trace"]),
        "best_val_accuracy": None, "test_accuracy": None, "params": None,
    }
    if best_trials and best_trials[0].score is not None:
        best = tuner.get_best_models(1)[0]
        probs = best.predict(x_test / 255.0, verbose=0)
        result.update(
            best_val_accuracy=float(best_trials[0].score),
            test_accuracy=float(np.mean(probs.argmax(axis=1) == y_test)),
            params=int(best.count_params()),
        )
    return result


def plain_cnn(input_shape, num_classes) -> keras.Model:
    """Three conv-BN-ReLU-pool layers, no residuals (AutoKeras' first try)."""
    layers = keras.layers
    inputs = keras.Input(input_shape, dtype="uint8")
    x = layers.Rescaling(1 / 255)(inputs)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.MaxPooling2D()(layers.Activation("relu")(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))


def throughput(model_cfg: ResNetConfig, train_cfg: TrainConfig, data, peak: float) -> dict:
    """Training images/s of a config (second of two epochs) and its achieved FLOP/s."""
    keras.backend.clear_session()
    model = build_resnet(model_cfg, data.input_shape, data.num_classes)
    compile_model(model, train_cfg, data.num_classes)
    x, y = data.arrays("train")
    model.fit(x, y, batch_size=train_cfg.batch_size, epochs=1, verbose=0)  # warm-up / tracing
    times = []
    for _ in range(3):
        t = time.perf_counter()
        model.fit(x, y, batch_size=train_cfg.batch_size, epochs=1, verbose=0)
        times.append(time.perf_counter() - t)
    images_per_s = len(x) / float(np.median(times))
    flops = forward_flops(model)
    achieved = 3 * flops * images_per_s
    return {
        "batch_size": train_cfg.batch_size,
        "images_per_s": round(images_per_s, 1),
        "forward_mflops_per_image": round(flops / 1e6, 2),
        "train_gflops_per_s": round(achieved / 1e9, 1),
        "fraction_of_matmul": round(achieved / peak, 3),
    }


# --------------------------------------------------------------------------- report


def fmt(value, pct=False, unit=""):
    if value is None:
        return "not reached" if unit else "—"
    if pct:
        return f"{100 * value:.1f} %"
    return f"{value:,}" if isinstance(value, int) else f"{value}{unit}"


def markdown(report: dict) -> str:
    lines = [
        f"# search_vs_anchors — {report['date']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['gpus']} GPU; TF {report['machine']['tensorflow']}, "
        f"keras-tuner {report['machine']['keras_tuner']}  ",
        f"float32 matmul: {report['matmul_gflops']:.1f} GFLOP/s; budget per system: "
        f"{report['budget_s'] / 60:g} min; data: digits 32x32x3, splits {report['splits']}",
        "",
        "| system | trials | best val acc | test acc | time to 95 % | time to 98 % | params |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["systems"].items():
        lines.append(
            f"| {name} | {r['trials']} | {fmt(r['best_val_accuracy'], True)} | "
            f"{fmt(r['test_accuracy'], True)} | {fmt(r['time_to_95'], unit=' s')} | "
            f"{fmt(r['time_to_98'], unit=' s')} | {fmt(r['params'])} |"
        )
    if report.get("throughput"):
        t = report["throughput"]
        lines += [
            "",
            f"Best resnet_tuner model ({t['system']}): {t['images_per_s']} training images/s at "
            f"batch {t['batch_size']}, {t['forward_mflops_per_image']} forward MFLOP/image, "
            f"{t['train_gflops_per_s']} GFLOP/s = {100 * t['fraction_of_matmul']:.0f} % of the "
            "measured matmul FLOP/s.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=8.0, help="minutes per system (8)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--seed", type=int, default=0, help="split seed (0)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    budget_s = args.budget * 60

    from resnet_tuner import datasets

    workdir = Path(tempfile.mkdtemp(prefix="rt_bench_"))

    def make_data():
        return datasets.digits(image_size=(32, 32), seed=args.seed)

    print(f"machine: {machine()}", flush=True)
    peak = matmul_flops()
    print(f"float32 matmul: {peak / 1e9:.1f} GFLOP/s", flush=True)
    data = make_data()
    counts = {s: int(len(data.arrays(s)[1])) for s in ("train", "val", "test")}

    results: dict[str, dict] = {}
    for name in systems:
        keras.backend.clear_session()
        keras.utils.set_random_seed(args.seed)
        print(f"\n== {name}: {args.budget:g} min budget", flush=True)
        if name == "hyperresnet":
            r = run_hyperresnet(data, budget_s, workdir)
        elif name in ("quick", "cifar"):
            r = run_resnet_tuner(name, budget_s, workdir, make_data)
        elif name == "mini_resnet":
            cfg = ResNetConfig.preset("mini_resnet", binary_head=False)
            model = compile_model(build_resnet(cfg, data.input_shape, data.num_classes),
                                  TrainConfig(learning_rate=1e-3), data.num_classes)
            r = train_fixed(model, data, budget_s, batch_size=50)
        else:
            model = plain_cnn(data.input_shape, data.num_classes)
            compile_model(model, TrainConfig(learning_rate=1e-3), data.num_classes)
            r = train_fixed(model, data, budget_s, batch_size=64)
        r["time_to_95"] = time_to(r["trace"], 0.95)
        r["time_to_98"] = time_to(r["trace"], 0.98)
        results[name] = r
        print({k: v for k, v in r.items() if k not in ("trace", "best_config", "best_train")},
              flush=True)

    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "machine": machine(),
        "matmul_gflops": peak / 1e9,
        "budget_s": budget_s,
        "splits": counts,
        "systems": results,
    }
    tuned = [s for s in ("quick", "cifar") if s in results]
    if tuned:
        best = max(tuned, key=lambda s: results[s]["best_val_accuracy"])
        r = results[best]
        t = throughput(ResNetConfig.from_dict(r["best_config"]),
                       TrainConfig.from_dict(r["best_train"]), data, peak)
        report["throughput"] = {"system": best, **t}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search_vs_anchors.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / "search_vs_anchors.md").write_text(text)
    print("\n" + text)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
