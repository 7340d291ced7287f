"""`resnet-tuner`: search, export, predict, report and demo from the command line.

Bad arguments and bad input exit with code 2 and a one-line message, never a
traceback. The commands print their own lines and the libraries' only with
`--verbose` (`resnet_tuner.console`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from resnet_tuner import console
from resnet_tuner.cli_args import build_parser, trials_parser

#: When this command started: the module's import when `main` runs as the program (the
#: console script: the interpreter's and our imports count against `--time-budget`), else
#: `main`'s call (a script or test calling `main([...])` imported us long before).
_started = {"at": time.time(), "first": True}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _verbosity(args) -> int:
    """`run_search`'s verbose: 2 with `--verbose` (the libraries talk too), else 1."""
    return 2 if getattr(args, "verbose", False) else 1


def _search_and_export(options, trials_per_process: int = 0, verbose: int = 1,
                       formats=None, **search_kwargs) -> tuple:
    from resnet_tuner.run.processes import run_search_in_processes
    from resnet_tuner.run.rundir import record_timing
    from resnet_tuner.run.search import load_run, run_search

    started = _started["at"]
    if trials_per_process:
        run_search_in_processes(options, trials_per_process, verbose, started=started)
        tuner, data, _ = load_run(options.out, verbose)
    else:
        tuner, data = run_search(options, verbose, started=started, **search_kwargs)
    best = tuner.oracle.get_best_trials(1)
    if options.time_budget and not (best and best[0].score is not None):
        from resnet_tuner.run.options import parse_duration
        from resnet_tuner.run.progress import duration

        raise CLIError(
            f"the time budget ({duration(parse_duration(options.time_budget))}) ran out before a "
            f"trial finished an epoch: {duration(time.time() - started)} went to starting up, "
            "reading the data and the first trial. Rerun with a larger --time-budget: the run "
            "resumes, and the time already spent counts against the new budget.")
    exporting = time.time()
    bundle, metrics = _export(tuner, Path(options.out) / "best", data, formats=formats)
    record_timing(Path(options.out), export=time.time() - exporting)
    if options.mlflow:  # the bundle goes to the best trial's run
        from resnet_tuner.tracking import MlflowLogger, mlflow_experiment

        MlflowLogger(options.mlflow, mlflow_experiment(options)).log_bundle(bundle, tuner)
    return bundle, metrics, time.time() - started


def _export(tuner, to, data, refit: bool = False, formats=None) -> tuple[Path, dict]:
    """Exports the best model; says so for each format the bundle lacks."""
    import warnings

    from resnet_tuner.export import ExportWarning, export_best
    from resnet_tuner.formats import failure_line

    # The converters and runtimes (LiteRT, tf2onnx, OpenVINO) write notices to stderr from C++.
    with warnings.catch_warnings(), console.native_logs_dropped():
        warnings.simplefilter("ignore", ExportWarning)  # printed below, as one line
        bundle = export_best(tuner, to, data=data, refit=refit, formats=formats)
    metrics = json.loads((bundle / "metrics.json").read_text())
    for name, record in metrics.get("formats", {}).items():
        if not record["converted"]:
            print(console.warning_line(failure_line(name, record, str(bundle))),
                  file=sys.stderr)
    return bundle, metrics


def cmd_search(args) -> int:
    from resnet_tuner.run import auth, distribute
    from resnet_tuner.run.options import SearchOptions

    distribute.configure(chief=args.chief, worker=args.worker, worker_id=args.worker_id)
    credentials = auth.Credentials.from_args(args)
    credentials.check(distribute.role())  # before any data is read
    timeouts = {"connect_timeout": args.connect_timeout, "worker_timeout": args.worker_timeout,
                "credentials": credentials}
    options = SearchOptions.from_args(args)
    if distribute.role() == "worker":
        from resnet_tuner.run.search import run_search

        tuner, _ = run_search(options, _verbosity(args), **timeouts)
        print(f"worker {tuner.tuner_id}: the search is over; the chief exports the best model")
        return 0
    per_process = args.trials_per_process if distribute.role() is None else 0
    bundle, metrics, seconds = _search_and_export(options, per_process, _verbosity(args),
                                                  formats=args.formats, **timeouts)
    from resnet_tuner.metrics import accuracy_text

    print(f"best model exported to {bundle}: {accuracy_text(metrics)} ({seconds:.0f} s)")
    return 0


def cmd_demo(args) -> int:
    from resnet_tuner.run.options import DIGITS, SearchOptions

    options = SearchOptions(
        data_dir=DIGITS, out=args.out, space="quick", tuner="random",
        max_trials=args.max_trials, epochs=args.epochs, image_size=32, overwrite=args.overwrite,
    )
    print(f"demo: {options.max_trials} trials of the quick space on scikit-learn's digits "
          f"(32x32), {options.epochs} epochs each; run directory {options.out}")
    bundle, metrics, seconds = _search_and_export(options, trials_per_process=1,
                                                  verbose=_verbosity(args))
    print(f"demo done in {seconds / 60:.1f} min: test accuracy {100 * metrics['accuracy']:.2f} % "
          f"on {metrics['images']} held-out images; bundle in {bundle}")
    return 0


def cmd_export(args) -> int:
    from resnet_tuner.run.search import load_run

    tuner, data, _ = load_run(args.run_dir, _verbosity(args))
    bundle, metrics = _export(tuner, args.to, data, refit=args.refit, formats=args.formats)
    from resnet_tuner.metrics import accuracy_text

    print(f"exported to {bundle}: {accuracy_text(metrics)}")
    return 0


def _image_paths(items: list[str]) -> list[Path]:
    from resnet_tuner.data import IMAGE_EXTENSIONS

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*")
                            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        elif path.is_file():
            paths.append(path)
        else:
            raise CLIError(f"no such image or folder: {item}")
    return paths


def _columns(text: str) -> int:
    """Terminal columns of `text`: wide (CJK) characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    """`text` left-aligned in `width` terminal columns (`f"{text:<width}"` counts characters)."""
    return text + " " * max(0, width - _columns(text))


def cmd_predict(args) -> int:
    from resnet_tuner.export import load_bundle
    from resnet_tuner.predict import predict_files

    bundle = load_bundle(args.bundle)  # a wrong bundle is said before a wrong image path
    rows = predict_files(bundle, _image_paths(args.images), args.top)
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
    else:
        width = max([_columns(r["image"]) for r in rows] + [5])
        print(f"{_pad('image', width)}  {_pad('class', 16)} probability")
        for row in rows:
            if "error" in row:
                print(f"{_pad(row['image'], width)}  skipped: {row['error']}")
            else:
                print(f"{_pad(row['image'], width)}  {_pad(row['class'], 16)} "
                      f"{row['probability']:.4f}")
    return 0 if any("error" not in r for r in rows) else 2


def cmd_report(args) -> int:
    from resnet_tuner.report import write_report

    path = write_report(args.run_dir, args.to)
    print(f"report written to {path}")
    return 0


def cmd_list_trials(args) -> int:
    """`resnet-tuner trials RUN_DIR`: a table, CSV or JSON (no TensorFlow loaded)."""
    from resnet_tuner.run import trials as listing

    rows = listing.read_trials(args.run_dir)
    if args.json:
        print(listing.json_text(rows))
    elif args.csv:
        sys.stdout.write(listing.csv_text(rows))
    else:
        objective, direction = listing.objective_of(args.run_dir)
        better = "higher" if direction == "max" else "lower"
        print(f"{args.run_dir}: best first by {objective} ({better} is better)")
        for line in listing.table_lines(rows, objective, listing.terminal_width(sys.stdout)):
            print(line)
        print(listing.summary_line(rows, listing.disk_usage(args.run_dir)))
    return 0


def cmd_weights(args) -> int:
    """`resnet-tuner weights install FILE...` / `weights list`: ImageNet weights in Keras' cache."""
    from resnet_tuner.model import backbones, weights

    if args.action == "list":
        width = max(map(len, backbones.BACKBONES))
        print(f"ImageNet weights in {weights.keras_cache_dir()}:")
        for name, record in backbones.BACKBONES.items():
            state = "installed" if weights.keras_cache_path(name).is_file() else "missing"
            print(f"  {name:<{width}}  {state:<9}  {record.weights_file}")
        print(f"Each file downloads from {backbones.WEIGHTS_BASE_URL}<file>; offline, "
              "download it elsewhere and run 'resnet-tuner weights install FILE'.")
        return 0
    if args.force and not args.backbone:
        raise CLIError("--force installs an unverified file as --backbone NAME: name it")
    if args.backbone and len(args.files) > 1:
        raise CLIError("--backbone names the backbone of one FILE: give one file")
    refused = 0
    for file in args.files:
        try:
            name, destination = weights.install_weights(file, args.backbone, args.force)
        except weights.UnknownWeightsFileError as err:
            refused += 1
            print(f"resnet-tuner: error: {err.problem}; refused. Expected one of:",
                  file=sys.stderr)
            for line in err.expected:
                print(f"  {line}", file=sys.stderr)
            print("  (--force --backbone NAME installs a file unverified)", file=sys.stderr)
            continue
        checked = "unverified (--force)" if args.force else "MD5 verified"
        print(f"{file}: {backbones.BACKBONES[name].title} ({name}) ImageNet weights, {checked}, "
              f"installed to {destination}")
    return 2 if refused else 0


def cmd_trial_process(args) -> int:
    """One process of a search run in fresh processes (see `run_search_in_processes`)."""
    from resnet_tuner.run.options import SearchOptions
    from resnet_tuner.run.processes import HANDOVER_EXIT
    from resnet_tuner.run.search import run_search

    try:
        options = SearchOptions.from_dict(json.loads(args.options))
        tuner, _ = run_search(options, _verbosity(args), stop_after=args.stop_after,
                              started=args.started, done_at_start=args.done_at_start,
                              summary=False)
    except KeyboardInterrupt:
        return 130  # the parent says so
    return HANDOVER_EXIT if tuner.recycled else 0


COMMANDS = {"search": cmd_search, "export": cmd_export, "predict": cmd_predict,
            "report": cmd_report, "demo": cmd_demo, "_trials": cmd_trial_process,
            "trials": cmd_list_trials, "weights": cmd_weights}
#: Commands that read files only: they run without loading TensorFlow.
LIGHT_COMMANDS = ("trials",)

#: A library message's wording -> the command line's (the fix is a flag there).
_SPLIT_EXAMPLE = re.compile(r"change split \(e\.g\. \(([\d.]+), ([\d.]+), ([\d.]+)\)\)")


def _cli_wording(message: str) -> str:
    return _SPLIT_EXAMPLE.sub(r"pass e.g. --split \1,\2,\3", message)


def main(argv: list[str] | None = None) -> int:
    if not (_started.pop("first", False) and argv is None):
        _started["at"] = time.time()
    argv = sys.argv[1:] if argv is None else list(argv)
    from resnet_tuner.run.processes import TRIALS_COMMAND

    if argv[:1] == [TRIALS_COMMAND]:
        args = trials_parser().parse_args(argv[1:])
    else:
        args = build_parser().parse_args(argv)
    with console.command_output(verbose=args.verbose):
        if args.command in LIGHT_COMMANDS:
            return _run_light(args)
        return _run(args)


def _run_light(args) -> int:
    """`_run` for `LIGHT_COMMANDS`: the same errors, without TensorFlow."""
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `resnet-tuner trials RUN | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python's exit flush must not fail)
        return 0
    except (CLIError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"resnet-tuner: error: {message}", file=sys.stderr)
        return 2


def _run(args) -> int:
    console.load_tensorflow()  # its start-up lines dropped (see resnet_tuner.console)
    from resnet_tuner.model.weights import WeightsUnavailableError
    from resnet_tuner.run.distribute import ChiefUnreachableError
    from resnet_tuner.run.processes import SearchProcessError
    from resnet_tuner.run.rundir import RunInUseError
    from resnet_tuner.space import SpaceError
    from resnet_tuner.tracking import TrackingUnavailableError

    try:
        return COMMANDS[args.command](args)
    except SearchProcessError as err:  # the process printed its error
        return err.code if err.code > 0 else 1
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are saved; run the same command to resume",
              file=sys.stderr)
        return 130
    except (CLIError, SpaceError, ValueError, FileNotFoundError, NotADirectoryError,
            WeightsUnavailableError, ChiefUnreachableError, RunInUseError,
            TrackingUnavailableError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"resnet-tuner: error: {_cli_wording(message)}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if "consecutive" not in str(err):
            raise
        # keras-tuner stopped after too many failed trials; its message lists them.
        print(f"resnet-tuner: error: {str(err).strip()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
