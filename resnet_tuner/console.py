"""What the command line shows: its own lines, not the libraries' start-up noise.

A 3-trial `resnet-tuner search` printed 33 to 41 lines, 4 to 8 of them ours
(issue 12): TensorFlow's C++ start-up log in the parent and again in every
trial's process, keras-tuner's `Reloading Tuner from ...` once a trial, TFLite's
deprecation warning and delegate notice, Python warnings with their source
line. `cli.main` runs every command inside `command_output(verbose)`:

* `TF_CPP_MIN_LOG_LEVEL=3` before TensorFlow loads (the trial processes inherit
  it), and the `tensorflow` and `absl` Python loggers at ERROR;
* the C++ lines that level does not reach: absl's "All log messages before
  absl::InitializeLog()" notice and `cudart_stub.cc`'s "Could not find cuda
  drivers" (both written while `import tensorflow` runs, before TensorFlow has
  read its level) and TFLite's "Created TensorFlow Lite XNNPACK delegate" are
  dropped from file descriptor 2 by `native_logs_dropped()`, around the import
  and the export, with the filter the image codecs use
  (`resnet_tuner.data.quiet.quiet_stderr`);
* Python warnings: ours (issued by `resnet_tuner` code) as one line,
  `resnet-tuner: warning: ...`; other libraries' not at all.

keras-tuner's reload line is dropped where the run's tuner is made
(`resnet_tuner.run.tuners.make_tuner`). With `--verbose` none of this applies
and everything shows; a user who sets `TF_CPP_MIN_LOG_LEVEL` gets TensorFlow's
C++ log at that level.

This module loads neither TensorFlow nor Keras: it runs before they load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator

#: TensorFlow's level variable; 3 keeps INFO, WARNING and ERROR lines back.
TF_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
#: Native log lines nobody asked for: absl's C++ format
#: (`I0000 00:00:1795619134.355073   24559 cudart_stub.cc:31] ...`),
#: TensorFlow's older one (`2025-01-01 12:00:00.000000: I tensorflow/...cc:31] ...`),
#: the second line of the CPU-instructions notice, absl's notice before its log
#: is set up and TFLite's delegate notice. Fatal (`F...`) lines are kept: they
#: explain a crash.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWE]\d{4} [\d:.]+ +\d+ [\w./+-]+:\d+\] "
    rb"|\d{4}-\d\d-\d\d [\d:.]+: [IWE] [\w./+-]+:\d+\] "
    rb"|To enable the following instructions: .*rebuild TensorFlow"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate)"
)
#: The Python loggers that repeat TensorFlow's and absl's notices (retracing, saving).
QUIET_LOGGERS = ("tensorflow", "absl")

_dropping = False  # inside a quiet `command_output`, TensorFlow's level being ours


@contextlib.contextmanager
def command_output(verbose: bool) -> Iterator[None]:
    """The command line's output policy for the block (see the module docstring).

    Args:
        verbose: show everything: TensorFlow's C++ log at its own default
            level, every library's Python warnings with their source line.
    """
    global _dropping
    if verbose:
        yield
        return
    user_level = os.environ.get(TF_LEVEL)
    os.environ.setdefault(TF_LEVEL, "3")
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    before = _dropping
    with warnings.catch_warnings():
        warnings.showwarning = _show_ours_only
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        _dropping = user_level in (None, "3")
        try:
            yield
        finally:
            _dropping = before
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def native_logs_dropped() -> Iterator[None]:
    """Drops `NATIVE_LOG_LINE` lines from stderr in the block, under a quiet `command_output`.

    Elsewhere (the Python API, `--verbose`, a `TF_CPP_MIN_LOG_LEVEL` the user
    set) it does nothing.
    """
    if not _dropping:
        yield
        return
    from resnet_tuner.data.quiet import quiet_stderr

    with quiet_stderr(NATIVE_LOG_LINE):
        yield


def load_tensorflow() -> None:
    """Imports TensorFlow and starts its devices with their start-up lines dropped.

    Listing the devices initializes them here, inside the window: CUDA's
    `failed call to cuInit` on a machine with CUDA libraries but no GPU is
    written then, and does not always honour `TF_CPP_MIN_LOG_LEVEL`.
    """
    if "tensorflow" in sys.modules:
        return
    with native_logs_dropped():
        import tensorflow as tf

        tf.config.list_physical_devices()


def warning_line(message: Warning | str) -> str:
    """`resnet-tuner: warning: <message on one line>`."""
    return f"resnet-tuner: warning: {' '.join(str(message).split())}"


def _show_ours_only(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning`: our warnings as one line on stderr, other libraries' not at all.

    "Ours" is decided by the code that called `warnings.warn`, not by the
    frame the warning is attributed to: a library warning may point its
    `stacklevel` at our code (Keras' `shuffle=True was passed` does).
    """
    if not _issued_by_us():
        return
    stream = file or sys.stderr
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        stream.write(warning_line(message) + "\n")
        stream.flush()


def _issued_by_us() -> bool:
    # Frames: this module <- warnings._showwarnmsg <- the caller of warnings.warn.
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") in ("warnings", __name__):
        frame = frame.f_back
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return name == "resnet_tuner" or name.startswith("resnet_tuner.")
