"""Input pipeline throughput: the 003 seed's generator vs Keras vs resnet_tuner (cold and warm).

Builds a folder of JPEGs (random 200-400 px crops of scikit-learn's two bundled
sample photos, three classes), then times one full pass over every image at
224x224 with:

  (a) the 003 seed's generator: tf.data over paths, batches of 50, a Python
      loop of cv2.imread + cv2.resize + random cv2.flip + gamma, float64
      (labels from the class folder, parsed portably);
  (b) keras.utils.image_dataset_from_directory;
  (c) resnet_tuner.ImageFolder on a cold cache (decode + cache + pass);
  (d) resnet_tuner.ImageFolder on a warm cache (open + pass),

and prints images/s, medians over --repeats runs, and the ratios to (a).
Targets: (d) >= 20x (a); (c) >= (b).

Then, in a fresh subprocess, it streams one pass over a synthetic cache twice
the size of a resident-memory budget it sets, and prints the peak RSS growth.

Usage:
    python bench/data_pipeline.py [--images 1200] [--repeats 5]

Writes bench/results/data_pipeline.json (not committed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# Run from a checkout without installing: the package is the repository's.
sys.path.insert(0, str(REPO))
SIZE = 224


def make_folder(root: Path, count: int, seed: int = 0) -> Path:
    """Random crops of the two sample photos; classes: china (top, bottom) and flower."""
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    rng = np.random.default_rng(seed)
    sources = {"china_top": china[: china.shape[0] // 2 + 100],
               "china_bottom": china[china.shape[0] // 2 - 100:], "flower": flower}
    per_class = -(-count // len(sources))
    for name, photo in sources.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        h, w = photo.shape[:2]
        for i in range(per_class):
            side = int(rng.integers(200, min(400, h, w) + 1))
            top = int(rng.integers(0, h - side + 1))
            left = int(rng.integers(0, w - side + 1))
            crop = photo[top: top + side, left: left + side]
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            (root / name / f"{i:05d}.jpg").write_bytes(buf.tobytes())
    return root


def seed_generator_pass(root: Path) -> int:
    """The 003 seed's input pipeline, one epoch (its labels: class folder == 'cat')."""
    import tensorflow as tf

    paths = sorted(str(p) for p in root.glob("*/*.jpg"))
    labels = [int(Path(p).parent.name == "flower") for p in paths]  # portable, not split('\\')
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    dataset = dataset.shuffle(len(paths)).batch(50).prefetch(tf.data.experimental.AUTOTUNE)
    seen = 0
    for batch_path, batch_label in dataset:
        batch_label = batch_label.numpy()
        batch = []
        for path in batch_path.numpy():
            image = cv2.imread(path.decode(), cv2.IMREAD_COLOR)
            image = cv2.resize(image, (SIZE, SIZE))
            flipped = cv2.flip(image, np.random.randint(-1, 2))
            gamma = np.random.choice([0.4, 0.5, 0.6, 0.7])
            batch.append(np.power(flipped / 255.0, gamma))
        seen += len(np.stack(batch, axis=0))
        batch_label.reshape(-1, 1)
    return seen


def keras_pass(root: Path) -> int:
    import keras

    dataset = keras.utils.image_dataset_from_directory(
        root, image_size=(SIZE, SIZE), batch_size=32, verbose=False
    )
    return sum(int(images.shape[0]) for images, _ in dataset)


def ours_pass(root: Path, cache: Path) -> int:
    from resnet_tuner import ImageFolder

    data = ImageFolder(root, image_size=SIZE, cache_dir=cache, verbose=0, batch_size=32)
    return sum(int(images.shape[0]) for split in ("train", "val", "test")
               for images, _ in data.dataset(split))


def timed(fn, *args) -> float:
    start = time.perf_counter()
    n = fn(*args)
    return n / (time.perf_counter() - start)


RSS_CHILD = r"""
import json, os, sys, time
from pathlib import Path
import numpy as np

def rss_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

import tensorflow as tf  # imported before the baseline: its own memory is not ours
from resnet_tuner.data import ImageData
cache = Path(sys.argv[1])
n = np.load(cache, mmap_mode="r").shape[0]
labels = np.arange(n) % 3
index = {"train": np.arange(n), "val": np.arange(0), "test": np.arange(0)}
data = ImageData(cache, labels, [str(i) for i in range(n)], index, ["a", "b", "c"], (224, 224))
next(iter(data.dataset("train", batch_size=32)))  # build the pipeline once
baseline = rss_mb("VmRSS")
seen = sum(int(x.shape[0]) for x, _ in data.dataset("train", batch_size=32))
print(json.dumps({"images": seen, "baseline_mb": baseline, "peak_mb": rss_mb("VmHWM")}))
"""


def streaming_rss(workdir: Path, budget_mb: int) -> dict:
    """Peak RSS while streaming a cache of 2x `budget_mb` in a fresh process."""
    row = SIZE * SIZE * 3
    n = int(2 * budget_mb * 2**20 / row) + 1
    path = workdir / "big" / "images.npy"
    path.parent.mkdir(parents=True)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, SIZE, SIZE, 3))
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (256, SIZE, SIZE, 3), dtype=np.uint8)
    for start in range(0, n, 256):
        stop = min(n, start + 256)
        array[start:stop] = block[: stop - start]
    array.flush()
    del array
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": pythonpath}
    done = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path)], capture_output=True,
                          text=True, env=env, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["cache_mb"] = round(path.stat().st_size / 2**20, 1)
    result["budget_mb"] = budget_mb
    result["growth_mb"] = round(result["peak_mb"] - result["baseline_mb"], 1)
    result["within_budget"] = result["growth_mb"] < budget_mb
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1200, help="JPEGs to make (>= 1000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per pipeline (median)")
    parser.add_argument("--budget-mb", type=int, default=512,
                        help="resident-memory budget for the streaming check (MB)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rt_data_bench_"))
    root = make_folder(workdir / "photos", args.images)
    count = len(list(root.glob("*/*.jpg")))
    print(f"{count} JPEGs (200-400 px crops of sklearn's sample photos) in {root}", flush=True)

    rates: dict[str, list[float]] = {"seed_generator": [], "keras_from_directory": [],
                                     "ours_cold": [], "ours_warm": []}
    for repeat in range(args.repeats):
        cache = workdir / f"cache{repeat}"
        rates["seed_generator"].append(timed(seed_generator_pass, root))
        rates["keras_from_directory"].append(timed(keras_pass, root))
        rates["ours_cold"].append(timed(ours_pass, root, cache))
        rates["ours_warm"].append(timed(ours_pass, root, cache))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()),
              flush=True)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    base = medians["seed_generator"]
    print(f"\nimages/s at {SIZE}x{SIZE}, median of {args.repeats} (ratio to the seed's generator)")
    for name, value in medians.items():
        print(f"  {name:<22} {value:8.0f}   {value / base:6.1f}x")
    warm_ok = medians["ours_warm"] >= 20 * base
    cold_ok = medians["ours_cold"] >= medians["keras_from_directory"]
    print(f"targets: warm >= 20x seed: {'met' if warm_ok else 'MISSED'} "
          f"({medians['ours_warm'] / base:.1f}x); cold >= keras: {'met' if cold_ok else 'MISSED'} "
          f"({medians['ours_cold'] / medians['keras_from_directory']:.2f}x)")

    rss = streaming_rss(workdir, args.budget_mb)
    print(f"\nstreaming {rss['images']} images from a {rss['cache_mb']} MB cache with a "
          f"{rss['budget_mb']} MB budget: RSS {rss['baseline_mb']:.0f} MB before the pass, "
          f"peak {rss['peak_mb']:.0f} MB, growth {rss['growth_mb']} MB "
          f"({'within' if rss['within_budget'] else 'OVER'} budget)")
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "images": count, "size": SIZE, "repeats": args.repeats, "cpus": os.cpu_count(),
        "images_per_s": rates, "median_images_per_s": medians,
        "ratio_to_seed": {k: v / base for k, v in medians.items()},
        "targets": {"warm_ge_20x_seed": warm_ok, "cold_ge_keras": cold_ok},
        "streaming": rss,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_pipeline.json").write_text(json.dumps(report, indent=1))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
