"""Training speed per dtype policy on this machine: is mixed precision worth it here?

Trains the quick space's default model (the one `ResNetHyperModel("quick")`
builds from an empty `HyperParameters`: 3 stages of basic blocks on 64x64
RGB, 10 classes) on a fixed random uint8 set, once per policy per round, each
run in a fresh process (a policy never shares a process, TensorFlow's
thread pools or traced graphs with another). The rounds alternate the
policies, so a neighbour's load on a shared machine falls on all of them.

For each policy it prints the median images/s over every timed epoch of every
round (the first epoch, which traces the graph, is not timed) and the ratio
against float32 in the same command. `resnet_tuner.devices.resolve_precision`
("auto") follows what this measures on CPUs without native bfloat16.

Usage:
    python bench/precision.py                       # 3 rounds x 4 epochs x 3 policies
    python bench/precision.py --rounds 2 --epochs 3 --policies float32 mixed_bfloat16

Writes bench/results/precision.json (not committed).

Measured on one of the project's 2-core AMD EPYCs (AVX2, no AVX-512, no bf16 flags;
TF 2.21, Keras 3.15), `--rounds 2 --epochs 3 --images 128`, shared with other
jobs (absolute img/s low, ratios in the same command):

    float32         median    33.7 img/s  1.00x float32  (Adam)
    mixed_float16   median     8.7 img/s  0.26x float32  (LossScaleOptimizer)
    mixed_bfloat16  median     3.9 img/s  0.11x float32  (Adam)

so `auto` stays float32 on such a CPU. On another (AVX-512 with AVX512_BF16)
bench/throughput.py measured mixed_bfloat16 at 1.16-1.26x float32's img/s
(2026-12-04, loaded machine), where `auto` picks it.
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

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def child(policy: str, epochs: int, images: int, batch: int, size: int) -> dict:
    """Trains once with `policy`; returns the seconds of each epoch."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import keras_tuner as kt
    import numpy as np

    from resnet_tuner import ResNetHyperModel, build_resnet
    from resnet_tuner.training import compile_model

    hm = ResNetHyperModel("quick", input_shape=(size, size, 3), num_classes=10)
    model_cfg, train_cfg = hm.configs(kt.HyperParameters())
    model = build_resnet(model_cfg, (size, size, 3), 10, precision=policy)
    compile_model(model, train_cfg, 10)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, images)

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    timer = Timer()
    model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, shuffle=False,
              callbacks=[timer])
    return {"policy": policy, "model": model.name, "params": model.count_params(),
            "optimizer": type(model.optimizer).__name__, "epoch_seconds": timer.seconds}


def cpu_summary() -> dict:
    from resnet_tuner.devices import BF16_CPU_FLAGS, cpu_flags

    name = ""
    try:
        name = next((line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "")
    except OSError:
        pass
    flags = cpu_flags()
    return {"cpu": name, "cores": os.cpu_count(),
            "bf16_flags": sorted(flags & set(BF16_CPU_FLAGS)),
            "avx512": sorted(f for f in flags if f.startswith("avx512"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="per run, the first untimed")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.epochs, args.images, args.batch, args.size)))
        return

    runs: dict[str, list[dict]] = {p: [] for p in args.policies}
    for round_ in range(args.rounds):
        order = args.policies[round_ % len(args.policies):] + args.policies[
            :round_ % len(args.policies)]
        for policy in order:
            done = subprocess.run(
                [sys.executable, __file__, "--child", policy, "--epochs", str(args.epochs),
                 "--images", str(args.images), "--batch", str(args.batch),
                 "--size", str(args.size)],
                capture_output=True, text=True, check=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            run = json.loads(done.stdout.strip().splitlines()[-1])
            runs[policy].append(run)
            rates = [args.images / s for s in run["epoch_seconds"][1:]]
            print(f"round {round_ + 1} {policy:15s} img/s per epoch: "
                  + ", ".join(f"{r:.0f}" for r in rates), flush=True)

    medians = {p: statistics.median(args.images / s for run in rs
                                    for s in run["epoch_seconds"][1:])
               for p, rs in runs.items()}
    first = next(iter(runs.values()))[0]
    print(f"\n{first['model']} ({first['params']:,} parameters), {args.size}x{args.size} "
          f"uint8, batch {args.batch}, {args.images} images, {args.rounds} rounds x "
          f"{args.epochs - 1} timed epochs")
    base = medians.get("float32")
    for policy, rate in medians.items():
        ratio = f"{rate / base:.2f}x float32" if base else ""
        print(f"{policy:15s} median {rate:7.1f} img/s  {ratio}  "
              f"({runs[policy][0]['optimizer']})")
    from resnet_tuner.devices import resolve_precision

    machine = cpu_summary()
    auto = resolve_precision("auto", gpus=[])
    print(f"CPU: {machine['cpu']}, bf16 flags: {machine['bf16_flags'] or 'none'}; "
          f"'auto' gives {auto} on this CPU")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "precision.json").write_text(json.dumps({
        "when": dt.datetime.now().isoformat(timespec="seconds"), "args": vars(args),
        "machine": machine, "medians": medians, "auto": auto, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
