"""A ragged last batch and TensorFlow's oneDNN CPU kernels: the trigger, and what the fix costs.

Reported on TF 2.21.0 / Keras 3.15.1, 2-core AMD EPYC *with AVX-512*: training
a second ResNet in the same process aborts (SIGSEGV or "double free or
corruption") when the training set is not a multiple of the batch size
(1,437 = 44 x 32 + 29 images) and completes with 1,440; it also completes
with TF_ENABLE_ONEDNN_OPTS=0. resnet_tuner now trains on full batches only
(`ResNetHyperModel.fit`, `ImageData.dataset`): the order is reshuffled every
epoch, so every image still takes part.

    python bench/ragged_batch.py --trigger [--images 1437]
        The standalone trigger (what an upstream report needs): a bottleneck
        and then a basic-block ResNet (stem 3x3, depths 3-4-6-3, widths
        8-16-32-64, shortcut B), 3 epochs each, batch 32, in one process.
        Prints the child's exit code (0, or -11 / -6 on the crash).

    python bench/ragged_batch.py
        Training images/s of the basic-block model, each setting in its own
        process, run one after another: ragged last batch (Keras' own
        batching of numpy arrays, the old path), full batches (ours), and the
        ragged path with TF_ENABLE_ONEDNN_OPTS=0 (the other way out).
        Median over epochs 2..N, ratio against the ragged path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _model(block: str):
    from resnet_tuner.config import ResNetConfig, TrainConfig
    from resnet_tuner.model import build_resnet
    from resnet_tuner.training import compile_model

    cfg = ResNetConfig(block=block, stem="cifar", stage_depths=(3, 4, 6, 3),
                       stage_widths=(8, 16, 32, 64), shortcut="B")
    return compile_model(build_resnet(cfg, (32, 32, 3), 10),
                         TrainConfig(optimizer="adam", learning_rate=1e-3), 10)


def _data(images: int):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, images).astype("int32")
    return x, y


def trigger(images: int) -> None:
    """Runs in the child: two models in one process, Keras' own batching."""
    import faulthandler

    import keras

    faulthandler.enable()
    x, y = _data(images)
    for block in ("bottleneck", "basic"):
        model = _model(block)
        model.fit(x, y, epochs=3, batch_size=32, validation_data=(x[:180], y[:180]), verbose=0)
        print(f"{block}: trained", flush=True)
        keras.backend.clear_session()


class _EpochTimes:
    def __init__(self):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):  # noqa: N805
                cb.start = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):  # noqa: N805
                self.seconds.append(time.perf_counter() - cb.start)

        self.seconds: list[float] = []
        self.callback = Timer()


def throughput(images: int, mode: str, epochs: int) -> dict:
    """Runs in the child: trains the basic model, returns seconds per epoch."""
    from resnet_tuner.hypermodel import shuffled_full_batches

    x, y = _data(images)
    model = _model("basic")
    timer = _EpochTimes()
    if mode == "full":
        model.fit(shuffled_full_batches(x, y, 32, seed=0), epochs=epochs, verbose=0,
                  callbacks=[timer.callback])
        seen = (images // 32) * 32
    else:
        model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[timer.callback])
        seen = images
    return {"seconds": timer.seconds, "images_per_epoch": seen}


def _child(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
                               **(env or {})})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trigger", action="store_true", help="run the standalone trigger")
    parser.add_argument("--images", type=int, default=1437)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--_run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._run == "trigger":
        trigger(args.images)
        return
    if args._run:
        print(json.dumps(throughput(args.images, args._run, args.epochs)))
        return
    if args.trigger:
        proc = _child(["--_run", "trigger", "--images", str(args.images)])
        print(proc.stdout, end="")
        print(f"{args.images} images: exit code {proc.returncode}"
              + ("" if proc.returncode == 0 else f"\n{proc.stderr[-2000:]}"))
        return
    import platform

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.images} images, batch 32, {args.epochs} epochs (median of epochs 2..)")
    rows = []
    for label, mode, env in (("ragged last batch (Keras batching)", "ragged", None),
                             ("full batches (resnet_tuner)", "full", None),
                             ("ragged, TF_ENABLE_ONEDNN_OPTS=0", "ragged",
                              {"TF_ENABLE_ONEDNN_OPTS": "0"})):
        proc = _child(["--_run", mode, "--images", str(args.images), "--epochs", str(args.epochs)],
                      env)
        if proc.returncode != 0:
            print(f"{label}: exit code {proc.returncode}\n{proc.stderr[-1500:]}")
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        median = statistics.median(result["seconds"][1:])
        rows.append((label, result["images_per_epoch"] / median))
    base = rows[0][1] if rows else 1.0
    for label, rate in rows:
        print(f"{label:40s} {rate:8.1f} img/s  {rate / base:5.2f}x")


if __name__ == "__main__":
    main()
