"""A plain script: ResNetHyperModel with keras-tuner's BayesianOptimization, then export_best.

    python examples/bayesian_export.py [FOLDER] [--size 32] [--trials 4] [--epochs 4]

FOLDER holds one subfolder per class. Without it, the example writes
scikit-learn's bundled digits as a folder of PNGs (no download).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import keras_tuner as kt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sample_data import digit_folders  # noqa: E402

from resnet_tuner import ImageFolder, ResNetHyperModel, export_best  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bayesian_"))
    folder = args.folder or digit_folders(work / "digits")

    data = ImageFolder(folder, image_size=args.size, cache_dir=work / "cache")
    hypermodel = ResNetHyperModel("quick", data=data)
    # keras-tuner reads seed=0 as "no seed" (a random one each run): use 1 or more.
    tuner = kt.BayesianOptimization(hypermodel, objective="val_accuracy",
                                    max_trials=args.trials, directory=str(work), seed=1)
    tuner.search(data, epochs=args.epochs, verbose=0)
    bundle = export_best(tuner, work / "best", data=data)
    print(f"best model in {bundle}")
    print((bundle / "MODEL_CARD.md").read_text().split("## Test results")[1][:400])


if __name__ == "__main__":
    main()
