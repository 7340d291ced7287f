"""The 004 seed's workflow: a pre-split train/validation/test folder of many classes.

The post trains ResNet-34 and ResNet-50 on VOC2012 folders split 8:1:1 with
Adam, reports top-1 and top-5 accuracy, resumes from its saved model and plots
the network. Here: ResNet-34 / ResNet-50 style searches (basic vs bottleneck
blocks, [3, 4, 6, 3] depths scaled down by --scale), top-5 accuracy in the
metrics, resume by running the same command again, and a model diagram. Without
the post's bugs: validation and test images are not augmented, and its
Conv -> ReLU -> BN ordering is the paper's Conv -> BN -> ReLU.

    python examples/seed004_voc_resnet.py [ROOT] [--size 32] [--epochs 3] [--trials 2]

ROOT holds train/, validation/ (or val/) and test/ with the same class folders.
Without it, the example writes scikit-learn's bundled digits (10 classes) in
that layout: no download.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import keras
import keras_tuner as kt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sample_data import digit_folders  # noqa: E402

from resnet_tuner import ImageFolder, ResNetHyperModel, build_resnet, export_best  # noqa: E402


def space(scale: float) -> dict:
    """ResNet-34 (basic) and ResNet-50 (bottleneck) at [3, 4, 6, 3], widths times `scale`."""
    return {
        "model": {
            "stem": "cifar",
            "block": ["basic", "bottleneck"],
            "stage_depths": [[3, 4, 6, 3], [1, 1, 1, 1]],
            "stage_widths": [64, 128, 256, 512],
            "width_multiplier": scale,
            "shortcut": ["B", "A"],
        },
        "augment": {"shift": [0.1, 0.0], "flip": ["horizontal", "none"]},  # the post's shift 0.1
        "train": {"optimizer": "adam", "learning_rate": [1e-3, 3e-3], "batch_size": 32},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", help="train/ validation/ test/ folder")
    parser.add_argument("--size", type=int, default=32, help="image size (the post: 224)")
    parser.add_argument("--scale", type=float, default=0.125, help="width multiplier")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--out", default=None, help="run folder; reuse it to resume")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="seed004_"))
    root = args.root or digit_folders(work / "voc_like", presplit=True)
    data = ImageFolder(root, image_size=args.size, cache_dir=work / "cache")
    print(data, "(split as given)" if data.split == "given" else "")

    hypermodel = ResNetHyperModel(space(args.scale), data=data)
    # overwrite=False: running the same command again resumes the saved search,
    # like the post's "load resnet_50.h5 if it exists", but per trial.
    # keras-tuner reads seed=0 as "no seed" (a random one each run): use 1 or more.
    tuner = kt.RandomSearch(hypermodel, objective="val_accuracy", max_trials=args.trials,
                            directory=str(work), project_name="voc", seed=1, overwrite=False)
    tuner.search(data, epochs=args.epochs, verbose=0)
    bundle = export_best(tuner, work / "best", data=data)
    metrics = json.loads((bundle / "metrics.json").read_text())
    print(f"test top-1 {metrics['accuracy']:.3f}, top-5 {metrics.get('top5_accuracy', 'n/a')}")

    best_cfg, _ = hypermodel.configs(tuner.get_best_hyperparameters(1)[0])
    model = build_resnet(best_cfg, data.input_shape, data.num_classes)
    diagram = work / "model.png"
    try:
        keras.utils.plot_model(model, to_file=str(diagram), show_shapes=True)
    except (ImportError, OSError) as err:  # needs pydot and graphviz
        diagram = work / "model_summary.txt"
        with open(diagram, "w") as f:
            model.summary(print_fn=lambda line, **_: f.write(line + "\n"))
        print(f"plot_model unavailable ({type(err).__name__}): wrote the summary instead")
    print(f"model diagram: {diagram}; bundle: {bundle}; run again with --out {work} to resume")


if __name__ == "__main__":
    main()
