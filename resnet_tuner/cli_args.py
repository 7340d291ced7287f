"""The `resnet-tuner` command line: every command's arguments (`build_parser`).

What each option means and checks lives with it: `run.options.SearchOptions`
declares the search's options (type, default, help) and adds them here, so
`search`, the Python API and the run directory's resume check read one list.
Argument errors are one line and a pointer to `--help` (`_Parser`), exit code 2.
"""

from __future__ import annotations

import argparse

__all__ = ["build_parser", "trials_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `resnet-tuner search: error: ...` and a pointer to --help.

    argparse prints the whole usage (a dozen lines for `search`) before the one
    line that matters.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\nRun '{self.prog} --help' for usage.\n")


def _positive_int(text: str) -> int:
    from resnet_tuner.run.options import positive_int

    return positive_int(text)


def _non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _formats(text: str) -> tuple[str, ...]:
    """`--formats`: known names, each installable here (checked before any training)."""
    from resnet_tuner.formats import check_formats

    try:
        return check_formats(text)
    except (ValueError, ImportError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_formats(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--formats", type=_formats, default=None, metavar="LIST",
                        help="deployment formats written beside model.keras, comma-separated: "
                             "saved_model, litert, onnx (the onnx extra), openvino (the "
                             "openvino extra), or all (default: saved_model,litert)")


def _common() -> argparse.ArgumentParser:
    """The arguments of every command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' own output: TensorFlow's log, "
                             "keras-tuner's lines, every warning")
    return common


def build_parser() -> argparse.ArgumentParser:
    from resnet_tuner.run import options

    parser = _Parser(
        prog="resnet-tuner",
        description="Find the best ResNet for a folder of images with Keras Tuner, "
                    "and export it as a bundle you can load and serve.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = [_common()]

    search = commands.add_parser(
        "search", parents=common,
        help="search ResNets on an image folder, then export the best",
        description="Search ResNet architectures, augmentation and training settings on "
                    "DATA_DIR (one subfolder per class, or train/ val/ test/), then export "
                    "the best model to OUT/best. Run the same command again to resume.",
    )
    options.add_arguments(search)
    search.add_argument("--trials-per-process", type=_non_negative_int, default=1, metavar="N",
                        help="run trials in fresh processes of N trials each, so memory that "
                             "TensorFlow keeps after a trial is given back (default: 1; 0 runs "
                             "every trial in this process)")
    _add_formats(search)
    cluster = search.add_argument_group(
        "distributed search",
        "Run one chief and any number of workers that share --out (keras-tuner's chief/worker "
        "engine; the KERASTUNER_* environment variables work too). The chief exports the best "
        "model when every trial has ended.",
    )
    cluster.add_argument("--chief", metavar="HOST:PORT",
                         help="serve the search to workers on this address")
    cluster.add_argument("--worker", metavar="HOST:PORT", help="join the chief at this address")
    cluster.add_argument("--worker-id", metavar="ID",
                         help="this worker's unique name (default: host-pid)")
    cluster.add_argument("--connect-timeout", type=_positive_float, default=60.0, metavar="S",
                         help="seconds a worker waits for the chief (default: 60)")
    cluster.add_argument("--worker-timeout", type=_positive_float, default=60.0, metavar="S",
                         help="seconds of silence after which the chief counts a worker as lost "
                              "and gives its trial to another (default: 60)")
    cluster.add_argument("--token-file", metavar="PATH",
                         help="chief and workers: a file holding a shared secret (e.g. openssl "
                              "rand -hex 32 > PATH); the chief serves only workers sending it")
    cluster.add_argument("--tls-cert", metavar="PEM",
                         help="chief: its TLS certificate (workers then need --tls-ca)")
    cluster.add_argument("--tls-key", metavar="PEM",
                         help="chief: the unencrypted private key of --tls-cert")
    cluster.add_argument("--tls-ca", metavar="PEM",
                         help="worker: the CA certificate(s) the chief's certificate must be "
                              "signed by (the chief's own certificate if self-signed)")

    export = commands.add_parser(
        "export", parents=common, help="export the best model of a run again",
        description="Write the export bundle of RUN_DIR's best trial to DIR.",
    )
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--to", required=True, metavar="DIR", help="bundle directory")
    export.add_argument("--refit", action="store_true",
                        help="retrain the best configuration on train+val first")
    _add_formats(export)

    predict = commands.add_parser(
        "predict", parents=common, help="classify images with an exported bundle",
        description="Print the class and probability of each image (files or folders), "
                    "preprocessed the way the bundle's model was trained.",
    )
    predict.add_argument("bundle", metavar="BUNDLE")
    predict.add_argument("images", metavar="IMAGE_OR_DIR", nargs="+")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--top", type=_positive_int, default=1, help="classes per image")

    report = commands.add_parser(
        "report", parents=common, help="write an HTML report of a run",
        description="Write RUN_DIR/report/index.html with plots of the search and the best "
                    "model, and the table of trials.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--to", default=None, help="report folder (default: RUN_DIR/report)")

    trials = commands.add_parser(
        "trials", parents=common, help="list a run's trials, best first (also while it runs)",
        description="Print every trial of RUN_DIR, best first by the run's objective: status "
                    "and failure reason, objective value, epochs, time, parameters and "
                    "hyperparameters. Reads the trial files only, so it works while the "
                    "search runs.",
    )
    trials.add_argument("run_dir", metavar="RUN_DIR")
    trials_format = trials.add_mutually_exclusive_group()
    trials_format.add_argument("--csv", action="store_true",
                               help="CSV: one row per trial, a column per hyperparameter")
    trials_format.add_argument("--json", action="store_true", help="a JSON list of trials")

    weights = commands.add_parser(
        "weights", help="install or list ImageNet weights files (offline use)",
        description="Pretrained backbones load their ImageNet weights from Keras' cache "
                    "($KERAS_HOME/models, default ~/.keras/models) or download them. Without "
                    "internet, download the files elsewhere and install them here.",
    )
    weights_actions = weights.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = weights_actions.add_parser(
        "install", parents=common, help="copy downloaded weights files into Keras' cache",
        description="Identify each FILE by its MD5 among the keras.applications ResNet "
                    "weights files (the _notop .h5 files) and copy it where Keras looks.",
    )
    install.add_argument("files", metavar="FILE", nargs="+")
    install.add_argument("--backbone", metavar="NAME",
                         help="the backbone FILE must be (with --force: is, unverified)")
    install.add_argument("--force", action="store_true",
                         help="install FILE as --backbone NAME without checking its MD5")
    weights_actions.add_parser(
        "list", parents=common, help="each backbone's weights file and whether it is installed",
        description="Each pretrained backbone, its weights file name, and whether it is in "
                    "Keras' cache.",
    )

    demo = commands.add_parser(
        "demo", parents=common,
        help="a real search on the bundled digits dataset (a few minutes on a CPU)",
        description="Search the quick space on scikit-learn's bundled handwritten digits "
                    "(1,797 images, 10 classes), export the best model and print its test "
                    "accuracy.",
    )
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("--max-trials", type=_positive_int, default=4)
    demo.add_argument("--epochs", type=_positive_int, default=8)
    demo.add_argument("--overwrite", action="store_true")

    return parser


def trials_parser() -> argparse.ArgumentParser:
    """Internal: one search process of `run_search_in_processes` (not in the command list)."""
    from resnet_tuner.run.processes import TRIALS_COMMAND

    trials = _Parser(prog=f"resnet-tuner {TRIALS_COMMAND}")
    trials.add_argument("options")
    trials.add_argument("--stop-after", type=int, required=True)
    trials.add_argument("--started", type=float, required=True)
    trials.add_argument("--done-at-start", type=int, required=True)
    trials.add_argument("--verbose", action="store_true")
    trials.set_defaults(command=TRIALS_COMMAND)
    return trials
