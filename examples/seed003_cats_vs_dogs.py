"""The 003 seed's workflow: binary classification of a cats-vs-dogs style folder.

The post trains its `mini_resnet` (random cv2.flip and gamma 0.4-0.7
augmentation) and a frozen ImageNet ResNet50 with a small head, then we search
around them with the `mini` space. Without its bugs: labels come from the
class folder portably (not `path.split('\\\\')`), images are decoded once, and
validation and test images are never augmented.

    python examples/seed003_cats_vs_dogs.py [FOLDER] [--size 96] [--epochs 3] [--trials 3]
                                            [--weights resnet50_notop.h5]

FOLDER holds one subfolder per class (e.g. dc_2000/train with cat/ and dog/).
Without it, the example makes a two-class folder from scikit-learn's bundled
sample photos (china / flower crops): no download.
ImageNet weights cannot be downloaded offline: pass --weights with the
keras.applications notop file, or the transfer model starts from random weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import keras_tuner as kt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sample_data import two_class_photos  # noqa: E402

from resnet_tuner import (  # noqa: E402
    ImageFolder,
    ResNetConfig,
    ResNetHyperModel,
    TrainConfig,
    build_resnet,
    export_best,
)
from resnet_tuner.model.weights import WeightsUnavailableError, resolve_weights  # noqa: E402
from resnet_tuner.training import compile_model, schedule_callbacks  # noqa: E402


def train(config: ResNetConfig, data, epochs: int, lr: float) -> tuple[float, int]:
    model = build_resnet(config, data.input_shape, data.num_classes)
    train_cfg = TrainConfig(learning_rate=lr, batch_size=50, epochs=epochs)
    compile_model(model, train_cfg, data.num_classes)
    model.fit(data.dataset("train", batch_size=50), validation_data=data.val, epochs=epochs,
              callbacks=schedule_callbacks(train_cfg, epochs), verbose=0)
    _, accuracy = model.evaluate(data.test, verbose=0)
    return accuracy, model.count_params()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="one subfolder per class (default: made here)")
    parser.add_argument("--size", type=int, default=96, help="image size (the post: 224)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--weights", default=None, help="ResNet50 notop weights file")
    parser.add_argument("--out", default=None, help="run folder (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="seed003_"))
    folder = args.folder or two_class_photos(work / "photos")
    data = ImageFolder(folder, image_size=args.size, split=(0.8, 0.1, 0.1), seed=0,
                       cache_dir=work / "cache", batch_size=50)
    print(data, "\nper split:", data.counts)

    mini = ResNetConfig.preset("mini_resnet", flip="both", gamma=(0.4, 0.7))
    accuracy, params = train(mini, data, args.epochs, lr=1e-3)
    print(f"mini_resnet: {params:,} parameters, test accuracy {accuracy:.3f}")

    weights = args.weights or "imagenet"
    try:
        resolve_weights(weights)
    except (WeightsUnavailableError, FileNotFoundError) as err:
        print(f"note: {str(err).splitlines()[0][:200]}...\n      -> training the ResNet50 "
              "transfer model from random weights instead (its accuracy means little)")
        weights = None
    transfer = ResNetConfig(backbone="resnet50", freeze_stages=5, head_hidden=10,
                            binary_head=True, weights=weights)
    accuracy, params = train(transfer, data, args.epochs, lr=1e-3)
    print(f"frozen ResNet50 + head: {params:,} parameters, test accuracy {accuracy:.3f}")

    hypermodel = ResNetHyperModel("mini", data=data)
    # keras-tuner reads seed=0 as "no seed" (a random one each run): use 1 or more.
    tuner = kt.RandomSearch(hypermodel, objective="val_accuracy", max_trials=args.trials,
                            directory=str(work), project_name="mini_search", seed=1)
    tuner.search(data, epochs=args.epochs, verbose=0)
    bundle = export_best(tuner, work / "best", data=data)
    print(f"search over the mini space: best exported to {bundle}")
    print((bundle / "metrics.json").read_text()[:300])


if __name__ == "__main__":
    main()
