"""The decode-once cache: cache keys, parallel decoding into rows, atomic writes, row readers.

A folder's images are decoded once into one `(rows, height, width, 3)` uint8
`.npy` file under `default_cache_dir()`, in a folder named by `cache_key` (the
files' paths, sizes and modification times plus the decode settings). It is
written under a temporary name and renamed when complete, so readers see a
whole cache or none. `open_rows` then serves batches of rows from it: memory
mapped when small, `pread` per batch when larger than `IN_MEMORY_BYTES`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from resnet_tuner.data.decode import ImageError, load_image
from resnet_tuner.data.quiet import quiet_codecs

#: Bumped whenever the cache layout or decoding changes, so old caches are not reused.
#: 3: files are identified by content and refused above `max_pixels`.
CACHE_VERSION = 3
#: Splits up to this size are read into memory once per `dataset()` call and
#: sliced by tf.data (fastest); larger ones stream from the cache by row.
IN_MEMORY_BYTES = 512 * 2**20

#: What to decode and how: `(image_size, resize, min_size, max_pixels)`.
DecodeSettings = tuple[tuple[int, int], str, int, int]


def default_cache_dir() -> Path:
    """`$RESNET_TUNER_CACHE`, else `~/.cache/resnet_tuner`."""
    env = os.environ.get("RESNET_TUNER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resnet_tuner"


def cache_key(files: Sequence[tuple], settings: DecodeSettings) -> str:
    """A hex digest of `(path, size, mtime_ns, ...)` per file plus the decode settings."""
    image_size, resize, min_size, max_pixels = settings
    digest = hashlib.sha256()
    digest.update(
        json.dumps([CACHE_VERSION, list(image_size), resize, min_size, max_pixels]).encode()
    )
    for path, size, mtime_ns, *_ in files:
        digest.update(f"{path}\0{size}\0{mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def decode_all(files: Sequence[tuple], settings: DecodeSettings, cache_dir, verbose):
    """Decodes every file once; returns (images array or cache Path, kept rows, skipped).

    Row `i` of the images holds `files[i]` (`(path, size, mtime_ns, ...)`);
    rows of skipped files stay zero and are never listed by a split. Images
    are written straight to their row (the cache file with `pwrite`), so a
    cold decode of a folder larger than RAM does not hold it in memory either.
    `cache_dir=False` keeps the array in memory instead.
    """
    paths = [f[0] for f in files]
    height, width = settings[0]
    shape = (len(paths), height, width, 3)
    if cache_dir is False:
        array = np.zeros(shape, np.uint8)

        def store(i, image):
            array[i] = image

        kept, skipped = decode_into(paths, settings, store, verbose)
        return array, kept, skipped

    folder = Path(cache_dir).expanduser() if cache_dir not in (None, True) else default_cache_dir()
    entry = folder / f"images-{cache_key(files, settings)}"
    meta_path = entry / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text("utf-8"))
        return entry / "images.npy", meta["kept"], [tuple(s) for s in meta["skipped"]]

    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=folder))
    try:
        header = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, shape)
        offset, row_bytes = header.offset, height * width * 3
        del header  # a sparse file of the right size; rows are written below
        fd = os.open(tmp / "images.npy", os.O_WRONLY)
        try:

            def store(i, image):
                os.pwrite(fd, memoryview(image).cast("B"), offset + i * row_bytes)

            kept, skipped = decode_into(paths, settings, store, verbose)
        finally:
            os.close(fd)
        meta = {"version": CACHE_VERSION, "files": len(paths), "kept": kept, "skipped": skipped}
        (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), "utf-8")
        try:
            os.replace(tmp, entry)  # atomic: readers see a complete cache or none
        except OSError:
            if not meta_path.is_file():  # not a concurrent writer's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry / "images.npy", kept, skipped


def decode_threads() -> int:
    """Threads decoding at once (one per core); peak memory scales with it (see `MAX_PIXELS`)."""
    return os.cpu_count() or 1


def decode_into(paths: Sequence[str], settings: DecodeSettings,
                store: Callable[[int, np.ndarray], None], verbose) -> tuple[list, list]:
    """Decodes `paths` in parallel threads (cv2 releases the GIL), calling `store(i, image)`.

    Returns:
        `(kept row numbers, [(path, reason), ...])`.
    """
    image_size, resize, min_size, max_pixels = settings
    reasons: list[str | None] = [None] * len(paths)
    progress = _Progress(len(paths), enabled=bool(verbose))

    def work(i: int) -> None:
        try:
            store(i, load_image(paths[i], image_size, resize, min_size, max_pixels))
        except ImageError as err:
            reasons[i] = str(err)

    # cv2's own thread pool would compete with ours for the same cores.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with quiet_codecs(), concurrent.futures.ThreadPoolExecutor(decode_threads()) as pool:
            # Bounded windows of work: a million files must not mean a million futures.
            for start in range(0, len(paths), 1024):
                for _ in pool.map(work, range(start, min(len(paths), start + 1024))):
                    progress.update()
    finally:
        cv2.setNumThreads(cv2_threads)
        progress.close()
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    skipped = [(paths[i], reason) for i, reason in enumerate(reasons) if reason is not None]
    return kept, skipped


class _Progress:
    """One stderr line updated in place: count, total and images/s."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled and total > 0
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.2 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            sys.stderr.write(
                f"\rdecoding images {self.done}/{self.total} ({rate:,.0f} images/s)"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------- reading rows


def open_rows(images: np.ndarray | Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function `rows -> uint8 images` over an array or a `.npy` cache file."""
    if not isinstance(images, (str, os.PathLike)):
        return functools.partial(_take, images)
    path = Path(images)
    if path.stat().st_size <= IN_MEMORY_BYTES:
        # Small: map it. Pages come from the OS page cache, shared by every
        # process (trials, distributed workers) reading the same cache.
        return functools.partial(_take, np.load(path, mmap_mode="r"))
    return RowReader(path)


def _take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A copy of `array[rows]`; one block copy when the rows are consecutive (val, test)."""
    rows = np.asarray(rows)
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        # A copy, never a view: TF may reuse a tensor's buffer in place, and a
        # read-only memory map must not be written to.
        return np.array(array[rows[0] : rows[-1] + 1])
    return np.take(array, rows, axis=0)


class RowReader:
    """Reads rows of a `.npy` file with `pread`.

    Used for caches larger than `IN_MEMORY_BYTES`: pages touched through a
    memory map count as this process's resident memory until the kernel
    reclaims them, so one epoch over a mapped 50 GB cache would show 50 GB of
    RSS. `pread` copies only the rows asked for; the page cache stays the
    kernel's. Runs of consecutive rows are read in one call.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        header = np.load(self.path, mmap_mode="r")  # only to read shape, dtype and offset
        self.shape, self.dtype, self.offset = header.shape, header.dtype, header.offset
        del header
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: int | None = None
        self._lock = threading.Lock()

    def _descriptor(self) -> int:
        with self._lock:  # tf.data calls in parallel; open once
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            return self._fd

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        fd = self._descriptor()
        rows = np.asarray(rows, dtype=np.int64)
        # Read in file order (kinder to disks, and consecutive rows coalesce),
        # then put the rows back in the order asked for.
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        start = 0
        while start < len(rows):
            stop = start + 1
            while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                stop += 1
            offset = self.offset + int(rows[start]) * self.row_bytes
            want = (stop - start) * self.row_bytes
            chunk = os.preadv(fd, [memoryview(flat[start:stop]).cast("B")], offset)
            if chunk != want:
                raise OSError(f"Short read from the image cache {self.path}; delete it to rebuild.")
            start = stop
        if np.any(order[1:] < order[:-1]):
            unsorted = np.empty_like(out)
            unsorted[order] = out
            out = unsorted
        return out

    def __getstate__(self):  # picklable for subprocesses: reopen there
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _fd=None, _lock=threading.Lock())

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
