"""Transfer learning: what the frozen-feature cache saves, and what two-phase fine-tuning gains.

Two parts, every measurement in a process of its own (TensorFlow's threads,
traced graphs and memory never carry over), one after another:

**speed** (issue 11's first proof): `--images` photos at 224 px made from
scikit-learn's two sample photos (random 120-240 px crops of china.jpg and
flower.jpg, two classes, JPEG: `examples/_sample_data.two_class_photos`), split
80/10/10 (stratified), decoded once into the image cache before any clock
starts. A ResNet50 backbone with fixed random weights (one `.weights.h5` file
the bench saves: the cost of a forward pass does not depend on the weights, and
every trial loads the same file, as ImageNet weights would be) and the post's
head (global pooling, Dense(10, relu), Dense(1, sigmoid)), no augmentation,
batch 50, `--epochs` epochs:

* `tutorial`: the cats-vs-dogs post's workflow (seed 003): a Python generator
  that reads every JPEG with `cv2.imread` on every epoch, resizes to 224x224,
  flips and gamma-corrects at random and yields float64 batches of 50, into
  `model.fit` with a fully frozen `keras.applications.ResNet50`;
* `uncached` at freeze depth 5 (all stages frozen) and 4 (conv5 trains): one
  `ResNetHyperModel` trial of a `resnet_tuner.RandomSearch` with
  `feature_cache=False`;
* `cached` at depth 5 and 4: two trials, each its own tuner, with
  `feature_cache=` an empty folder: the first computes the frozen stages'
  features once, the second finds them.

Each row is a trial's wall time from `tuner.search` to its return (model
build, fit, validation, checkpoints). Ratios: uncached / cached first trial,
uncached / cached second trial. Targets: depth 5 first trial >= 8x, second
trial >= 20x.

**quality** (its second proof): a scratch ResNet pretrained on Fashion-MNIST
classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat; all their 30,000 train
images minus a stratified tenth, `--pretrain-epochs` epochs of the `fashion`
space's first `[[initial]]` configuration) and exported as a bundle; then
classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) with only
`--per-class` training images per class (validation: a stratified tenth of
their 30,000 train images; test: all their 5,000 official test images), each
system a `RandomSearch` under the same `--budget`:

* `scratch`: the `quick` space (its two `[[initial]]` ResNets first);
* `one_phase`: the bundle as backbone, `freeze_stages` 0-4 (all) searched,
  `head_epochs = 0` (one phase);
* `two_phase`: the same, plus `head_epochs` and `finetune_lr_scale` searched
  (phase 1 trains the head on the frozen backbone, phase 2 unfreezes down to
  `freeze_stages` at the scaled learning rate).

Both transfer systems also search `frozen_batchnorm` (every BatchNorm of
the backbone kept as pretrained). Each first tries one configuration of
published practice (`[[initial]]`: everything unfrozen, Adam 1e-3; two-phase
as fastai's `fine_tune`: the head at 2e-3 for a sixth of the epochs, then all
at half that rate), then the same with `frozen_batchnorm`, then random ones;
the budget's final training trains the best again.

Test accuracy of each system's best model (its bundle's `metrics.json`).
Targets: two-phase >= scratch + 10 points and >= one-phase + 2 points.

Usage:
    python bench/transfer.py                       # both parts
    python bench/transfer.py speed --images 2510 --epochs 10
    python bench/transfer.py speed --systems uncached_d4 cached_d4
    python bench/transfer.py quality --budget 10m   # ~33 min: 4-5 trials a system

Needs Debian's dataset-fashion-mnist package (or Keras' cache) for `quality`.
Writes bench/results/transfer.json (not committed); work files in a temporary
folder (`--work` to keep them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(ROOT / "examples"))

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 224
BATCH = 50
SPLIT = (0.8, 0.1, 0.1)
PRETRAIN_CLASSES, TARGET_CLASSES = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]


# --------------------------------------------------------------------------- speed


def _head_space(weights: str, freeze: int, epochs: int) -> dict:
    return {
        "model": {"backbone": "resnet50", "head_hidden": 10, "dropout": 0.0,
                  "binary_head": True},
        "transfer": {"freeze_stages": freeze, "weights": weights},
        "augment": {"flip": "none"},
        "train": {"optimizer": "adam", "learning_rate": 1e-3, "batch_size": BATCH,
                  "epochs": epochs},
    }


def _image_folder(work: Path):
    from resnet_tuner import ImageFolder

    return ImageFolder(work / "photos", image_size=SIZE, split=SPLIT, seed=0,
                       cache_dir=work / "image_cache", batch_size=BATCH)


def one_weights(work: Path) -> None:
    """Saves the ResNet50 weights every speed trial loads (fixed, random)."""
    import keras

    keras.utils.set_random_seed(0)
    keras.applications.ResNet50(include_top=False, weights=None,
                                input_shape=(SIZE, SIZE, 3)).save_weights(
        str(work / "resnet50_random.weights.h5"))


def one_tutorial(work: Path, epochs: int) -> dict:
    """The post's generator + frozen ResNet50 + head, `fit` for `epochs` epochs."""
    import cv2
    import keras
    import numpy as np

    data = _image_folder(work)
    files = {split: [(work / "photos" / f, label) for f, label in
                     zip(data.split_files(split), data.labels(split), strict=True)]
             for split in ("train", "val")}
    rng = np.random.default_rng(0)

    def generator(items, augment):  # training: full batches; validation: every image
        while True:
            order = rng.permutation(len(items)) if augment else np.arange(len(items))
            for start in range(0, len(order) - (BATCH - 1 if augment else 0), BATCH):
                xs, ys = [], []
                for i in order[start: start + BATCH]:
                    path, label = items[i]
                    image = cv2.resize(cv2.imread(str(path)), (SIZE, SIZE)) / 255.0
                    if augment:
                        image = cv2.flip(image, int(rng.integers(-1, 2)))
                        image = image ** float(rng.choice([0.4, 0.5, 0.6, 0.7]))
                    xs.append(image[..., ::-1])
                    ys.append(label)
                yield np.array(xs), np.array(ys)  # float64, as the post's

    base = keras.applications.ResNet50(include_top=False, weights=None,
                                       input_shape=(SIZE, SIZE, 3))
    base.load_weights(str(work / "resnet50_random.weights.h5"))
    base.trainable = False
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    x = keras.layers.Dense(10, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    started = time.time()
    history = model.fit(generator(files["train"], True),
                        steps_per_epoch=len(files["train"]) // BATCH,
                        validation_data=generator(files["val"], False),
                        validation_steps=-(-len(files["val"]) // BATCH),
                        epochs=epochs, verbose=0)
    return {"seconds": [time.time() - started],
            "val_accuracy": max(history.history["val_accuracy"])}


def one_trials(work: Path, epochs: int, freeze: int, cache: bool, trials: int) -> dict:
    """`trials` one-trial searches of the same configuration, each with its own tuner."""
    from resnet_tuner import RandomSearch, ResNetHyperModel

    data = _image_folder(work)
    space = _head_space(str(work / "resnet50_random.weights.h5"), freeze, epochs)
    feature_cache = work / f"features_{freeze}" if cache else False
    seconds, scores = [], []
    for trial in range(trials):
        hypermodel = ResNetHyperModel(space, data=data, feature_cache=feature_cache)
        tuner = RandomSearch(hypermodel, objective="val_accuracy", max_trials=1, seed=1,
                             directory=str(work / "tuners"), overwrite=True,
                             project_name=f"d{freeze}_{'cached' if cache else 'uncached'}_{trial}")
        started = time.time()
        tuner.search(data, verbose=0)
        seconds.append(time.time() - started)
        scores.append(tuner.oracle.get_best_trials(1)[0].score)
    return {"seconds": seconds, "val_accuracy": max(scores)}


def speed(args, work: Path) -> dict:
    from _sample_data import two_class_photos

    photos = two_class_photos(work / "photos", per_class=args.images // 2, seed=0)
    started = time.time()
    data = _image_folder(work)
    print(f"{len(data.labels('train'))} train / {len(data.labels('val'))} val images of "
          f"{SIZE} px from {photos} (decoded once in {time.time() - started:.1f} s)", flush=True)
    _child(work, "weights")
    runs = {}
    plan = [("tutorial", {}),
            ("uncached_d5", {"freeze": 5, "cache": False, "trials": 1}),
            ("cached_d5", {"freeze": 5, "cache": True, "trials": 2}),
            ("uncached_d4", {"freeze": 4, "cache": False, "trials": 1}),
            ("cached_d4", {"freeze": 4, "cache": True, "trials": 2})]
    for name, kwargs in plan:
        if args.systems and name not in args.systems:
            continue
        runs[name] = _child(work, "tutorial" if name == "tutorial" else "trials",
                            epochs=args.epochs, **kwargs)
        times = ", ".join(f"{s:.1f} s" for s in runs[name]["seconds"])
        print(f"  {name:12s} {times}  (best val accuracy {runs[name]['val_accuracy']:.3f})",
              flush=True)
    ratios = {}
    for depth, target in ((5, (8, 20)), (4, (None, None))):
        plain, cached = runs.get(f"uncached_d{depth}"), runs.get(f"cached_d{depth}")
        if not (plain and cached):
            continue
        first = plain["seconds"][0] / cached["seconds"][0]
        second = plain["seconds"][0] / cached["seconds"][1]
        ratios[f"d{depth}"] = {"first": first, "second": second}
        line = f"depth {depth}: uncached / cached: first trial {first:.1f}x, second {second:.1f}x"
        if target[0]:
            line += (f"  (targets >= {target[0]}x: {'MET' if first >= target[0] else 'MISSED'}, "
                     f">= {target[1]}x: {'MET' if second >= target[1] else 'MISSED'})")
        print(line)
        if "tutorial" in runs:
            print(f"         tutorial / cached: first trial "
                  f"{runs['tutorial']['seconds'][0] / cached['seconds'][0]:.1f}x, second "
                  f"{runs['tutorial']['seconds'][0] / cached['seconds'][1]:.1f}x")
    return {"images": args.images, "epochs": args.epochs, "runs": runs, "ratios": ratios}


# --------------------------------------------------------------------------- quality


def _fashion(classes, per_class=None):
    from resnet_tuner import datasets

    return datasets.fashion_mnist(image_size=28, classes=classes, train_per_class=per_class,
                                  batch_size=128)


def one_pretrain(work: Path, epochs: int) -> dict:
    """A scratch ResNet on classes 0-4, exported as the bundle the transfer systems start from."""
    from resnet_tuner import RandomSearch, ResNetHyperModel, export_best, load_space

    data = _fashion(PRETRAIN_CLASSES)
    first = load_space("fashion").initial[0]
    hypermodel = ResNetHyperModel("fashion", data=data)
    tuner = RandomSearch(hypermodel, objective="val_accuracy", max_trials=1, seed=1,
                         directory=str(work / "tuners"), project_name="pretrain",
                         overwrite=True)
    started = time.time()
    tuner.search(data, epochs=epochs, verbose=0)
    bundle = export_best(tuner, work / "pretrained", data=data)
    metrics = json.loads((bundle / "metrics.json").read_text())
    return {"seconds": time.time() - started, "configuration": first,
            "test_accuracy": metrics.get("test_accuracy", metrics.get("accuracy"))}


def _transfer_space(bundle: Path, two_phase: bool, epochs: int) -> dict:
    train = {"optimizer": "adam", "learning_rate": {"min": 1e-4, "max": 3e-3, "sampling": "log"},
             "batch_size": 16, "epochs": epochs}
    heads = [1]
    if two_phase:
        heads = sorted({max(1, epochs // 6), max(1, epochs // 4), max(1, epochs // 2)})
        train |= {"head_epochs": heads,  # 20 epochs: 3, 5 or 10 of them on the head alone
                  "finetune_lr_scale": {"min": 0.03, "max": 1.0, "sampling": "log"}}
    # Each system first tries a configuration of published practice ([[initial]]); with
    # 2-3 trials a budget, a random draw alone would decide the comparison.
    first = {"freeze_stages": 0, "learning_rate": 1e-3, "head_hidden": 0, "dropout": 0.0,
             "shift": 0.0}
    if two_phase:  # fastai's fine_tune: the head alone first, then all at half its rate
        first |= {"learning_rate": 2e-3, "head_epochs": heads[0], "finetune_lr_scale": 0.5}
    # The same again with the backbone's BatchNorm kept as pretrained (the Keras guide's
    # training=False): 100 images make noisy batch statistics. Both systems try both.
    return {"model": {"backbone": str(bundle), "head_hidden": [0, 128],
                      "dropout": [0.0, 0.3]},
            "initial": [first, first | {"frozen_batchnorm": True}],
            "transfer": {"freeze_stages": {"min": 0, "max": 4},  # stem + 3 stages
                         "frozen_batchnorm": [False, True]},
            "augment": {"flip": "horizontal", "shift": [0.0, 0.1]},
            "train": train}


def one_system(work: Path, system: str, budget: str, per_class: int, epochs: int) -> dict:
    from resnet_tuner import RandomSearch, ResNetHyperModel, export_best

    started = time.time()
    data = _fashion(TARGET_CLASSES, per_class)
    space = ("quick" if system == "scratch" else
             _transfer_space(work / "pretrained", system == "two_phase", epochs))
    hypermodel = ResNetHyperModel(space, data=data)
    tuner = RandomSearch(hypermodel, objective="val_accuracy", max_trials=200, seed=1,
                         directory=str(work / "tuners"), project_name=system, overwrite=True,
                         time_budget=budget)
    tuner.search(data, epochs=epochs, verbose=0)
    bundle = export_best(tuner, work / f"best_{system}", data=data)
    metrics = json.loads((bundle / "metrics.json").read_text())
    best = tuner.oracle.get_best_trials(1)[0]
    return {"seconds": time.time() - started, "trials": len(tuner.oracle.trials),
            "best_val": best.score, "hyperparameters": best.hyperparameters.values,
            "test_accuracy": metrics.get("test_accuracy", metrics.get("accuracy"))}


def quality(args, work: Path) -> dict:
    pre = _child(work, "pretrain", epochs=args.pretrain_epochs)
    print(f"pretrained on classes 0-4: test accuracy {pre['test_accuracy']:.4f} "
          f"({pre['seconds']:.0f} s)", flush=True)
    systems = {}
    for system in ("scratch", "one_phase", "two_phase"):
        if args.systems and system not in args.systems:
            continue
        systems[system] = _child(work, "system", system=system, budget=args.budget,
                                 per_class=args.per_class, epochs=args.trial_epochs)
        r = systems[system]
        print(f"  {system:10s} test {r['test_accuracy']:.4f}  best val {r['best_val']:.4f}  "
              f"{r['trials']} trials  {r['seconds']:.0f} s", flush=True)
    if {"scratch", "one_phase", "two_phase"} <= set(systems):
        two = systems["two_phase"]["test_accuracy"]
        for other, target in (("scratch", 0.10), ("one_phase", 0.02)):
            gain = two - systems[other]["test_accuracy"]
            print(f"two-phase - {other}: {100 * gain:+.2f} points (target >= "
                  f"{100 * target:+.0f}: {'MET' if gain >= target else 'MISSED'})")
    return {"pretrain": pre, "systems": systems, "budget": args.budget,
            "per_class": args.per_class}


# --------------------------------------------------------------------------- plumbing


def _child(work: Path, what: str, **kwargs) -> dict:
    """Runs `one_<what>(work, **kwargs)` in a fresh Python process; returns its result."""
    out = work / f"result_{what}_{time.time_ns()}.json"
    command = [sys.executable, __file__, "_one", what, str(work), str(out), json.dumps(kwargs)]
    subprocess.run(command, check=True)
    return json.loads(out.read_text()) if out.exists() else {}


def _one(what: str, work: str, out: str, kwargs: str) -> None:
    result = globals()[f"one_{what}"](Path(work), **json.loads(kwargs)) or {}
    Path(out).write_text(json.dumps(result, default=str))


def main() -> None:
    if sys.argv[1:2] == ["_one"]:
        return _one(*sys.argv[2:6])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", choices=("speed", "quality", "all"), default="all")
    parser.add_argument("--images", type=int, default=2510,
                        help="photos made (split 80/10/10 stratified: 2,510 gives 2,007 to train "
                             "on)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of a speed trial")
    parser.add_argument("--budget", default="10m",
                        help="wall-clock budget of a quality system (3m leaves 2 trials each)")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--trial-epochs", type=int, default=20,
                        help="epochs of a quality trial (the budget stops what runs over)")
    parser.add_argument("--pretrain-epochs", type=int, default=10,
                        help="epochs of the pretraining on classes 0-4 (3 gave 92.96 %% there "
                             "and a two-phase transfer 2 points behind one-phase; 10: 94.66 %%)")
    parser.add_argument("--systems", nargs="*", help="only these rows (names as printed)")
    parser.add_argument("--work", help="keep work files here (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="transfer_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"date": dt.date.today().isoformat(), "machine": platform.processor() or
              platform.machine(), "cores": os.cpu_count(), "load_start": os.getloadavg()}
    try:
        if args.part in ("speed", "all"):
            result["speed"] = speed(args, work)
        if args.part in ("quality", "all"):
            result["quality"] = quality(args, work)
    finally:
        result["load_end"] = os.getloadavg()
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / "transfer.json"
        previous = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**previous, **result}, indent=1, default=str))
        print(f"load average {result['load_start'][0]:.1f} -> {result['load_end'][0]:.1f}; "
              f"wrote {path}")
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
