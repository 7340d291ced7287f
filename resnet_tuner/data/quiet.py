"""Keeps the image codecs' (and other native libraries') own stderr lines away from the user.

libjpeg prints warnings (`Corrupt JPEG data: ...`) and libpng errors
(`libpng error: ...`) with `fprintf(stderr, ...)` from C, per bad file, and
OpenCV logs `[ERROR:0@0.9] global loadsave.cpp ...` for the same files. A
folder with a few hundred damaged photos would bury the one warning that
matters (`Skipped 312 file(s) ...`), which already lists every file and reason.

`quiet_codecs()` is a re-entrant, thread-safe context: the first thread to
enter points file descriptor 2 at a pipe and silences OpenCV's log; a reader
thread forwards every line to the real stderr *except* the codecs' own; the
last thread to leave restores both. Nothing else written to stderr meanwhile
(Python warnings, a progress line, other libraries) is lost, only delayed
until its line ends (`\\n` or `\\r`); only empty lines are dropped with the
codecs' (see `CODEC_LINE`).

`quiet_stderr(pattern)` is the same filter for other lines a C library writes
by itself: the command line drops TensorFlow's C++ start-up log with it
(`resnet_tuner.console`). Windows nest: inside several, a line any of their
patterns finds is dropped, and every pattern stays applied until the outermost
window ends, so no line slips through because its window closed before the
reader thread saw it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

import cv2

#: Lines the decoders write by themselves: libjpeg(-turbo)'s warnings (jerror.h
#: JWRN_*), libpng's warnings and errors, and OpenCV's image-codec log lines.
#: libjpeg writes a message and its newline in two `write`s, so two threads'
#: messages can interleave into one line holding both plus an empty line:
#: a line is dropped if it holds a codec message anywhere, or is empty.
CODEC_LINE = re.compile(
    rb"^\n$|(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters"
    rb"|Inconsistent progression sequence|Unknown Adobe color transform"
    rb"|Warning: unknown JFIF revision|Application transferred too|Unsupported marker type"
    rb"|libpng (warning|error)"
    rb"|\[ ?(WARN|ERROR|INFO):[^\]]*\] global (loadsave|grfmt_|bitstrm|exif))"
)

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None
_reader: threading.Thread | None = None
#: The patterns of the open windows (a tuple, replaced whole: the reader reads it unlocked).
_patterns: tuple[re.Pattern[bytes], ...] = ()
_cv_depth = 0
_cv_level: int | None = None
# OpenCV 4.x (4.11 is our floor) binds its log level as cv2.getLogLevel /
# cv2.setLogLevel, without the LOG_LEVEL_* names (SILENT is 0); 5.0 moved
# them to cv2.utils.logging.
_cv_logging = getattr(cv2.utils, "logging", cv2)
_CV_LOG_SILENT = getattr(_cv_logging, "LOG_LEVEL_SILENT", 0)


@contextlib.contextmanager
def quiet_codecs() -> Iterator[None]:
    """Drops codec lines from stderr while the block runs (see the module docstring).

    Example:
        >>> with quiet_codecs():
        ...     image = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    """
    with _opencv_log_silenced(), quiet_stderr(CODEC_LINE):
        yield


@contextlib.contextmanager
def quiet_stderr(pattern: re.Pattern[bytes]) -> Iterator[None]:
    """Drops the stderr lines `pattern` finds (`pattern.search(line)`, bytes) while the block runs.

    Everything else written to file descriptor 2 meanwhile, by Python or by C,
    is passed on (see the module docstring).

    Example:
        >>> with quiet_stderr(re.compile(rb"^noise: ")):
        ...     os.write(2, b"noise: dropped\\n")
    """
    _enter(pattern)
    try:
        yield
    finally:
        _leave()


@contextlib.contextmanager
def _opencv_log_silenced() -> Iterator[None]:
    """OpenCV's own log off while the block runs (re-entrant, thread-safe)."""
    global _cv_depth, _cv_level
    with _lock:
        _cv_depth += 1
        if _cv_depth == 1:
            _cv_level = _cv_logging.getLogLevel()
            _cv_logging.setLogLevel(_CV_LOG_SILENT)
    try:
        yield
    finally:
        with _lock:
            _cv_depth -= 1
            if not _cv_depth:
                _cv_logging.setLogLevel(_cv_level)


def _enter(pattern: re.Pattern[bytes]) -> None:
    global _depth, _saved_fd, _reader, _patterns
    with _lock:
        _depth += 1
        if pattern not in _patterns:
            _patterns = (*_patterns, pattern)
        if _depth > 1:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # sys.stderr closed or None
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to hide
            return
        try:
            read_fd, write_fd = os.pipe()
        except OSError:  # out of descriptors: run unfiltered rather than not at all
            os.close(saved)
            return
        os.dup2(write_fd, 2)
        os.close(write_fd)
        _saved_fd = saved
        _reader = threading.Thread(target=_forward, args=(read_fd, saved),
                                   name="resnet_tuner-quiet-stderr", daemon=True)
        _reader.start()


def _leave() -> None:
    global _depth, _saved_fd, _reader, _patterns
    with _lock:
        _depth -= 1
        if _depth:
            return
        if _saved_fd is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()  # Python's buffered text goes through the filter first
            os.dup2(_saved_fd, 2)  # drops the pipe's last write end: the reader sees EOF
            _reader.join()
            os.close(_saved_fd)
            _saved_fd, _reader = None, None
        _patterns = ()


def _forward(read_fd: int, out_fd: int) -> None:
    """Copies lines from the pipe to `out_fd`, dropping those an open window's pattern finds."""
    pending = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, pending = re.split(rb"(?<=[\r\n])", pending + chunk)
            _write(out_fd, b"".join(line for line in lines if not _dropped(line)))
    if pending and not _dropped(pending):
        _write(out_fd, pending)


def _dropped(line: bytes) -> bool:
    return any(pattern.search(line) for pattern in _patterns)


def _write(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except OSError:  # the real stderr went away: nothing more to show
            return
