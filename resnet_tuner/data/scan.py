"""Scanning an image folder: class folders, pre-split layouts, files, manifests.

The result is a plan, `{"class_names", "files", "class_dirs", "split_dirs",
"split"}`, whose `files` are `Candidate`s: every image file to decode, with
the size and modification time that key the decode-once cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from resnet_tuner.data.decode import IMAGE_EXTENSIONS
from resnet_tuner.data.splits import SPLITS

VAL_DIR_NAMES = ("val", "validation")


def _is_hidden(name: str) -> bool:
    # ".DS_Store", "._photo.jpg" (macOS resource forks), ".git", Windows' thumbnails.
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini", "__MACOSX")


#: A file to decode: (path, size in bytes, mtime in ns, label, given split or None).
Candidate = tuple[str, int, int, int, "str | None"]


def _scan_class_dirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and not _is_hidden(e.name))


def _scan_files(class_dir: Path, skipped: list) -> list[tuple[str, int, int]]:
    """Image files under `class_dir` (recursively, sorted), with size and mtime for the cache key.

    `os.scandir` instead of `Path.rglob`: warm loads scan the whole folder to
    compute the cache key, so the scan is on the hot path of every run.
    """
    files = []
    with os.scandir(class_dir) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if _is_hidden(entry.name):
                skipped.append((entry.path, "hidden file"))
            elif entry.is_dir():
                files += _scan_files(Path(entry.path), skipped)
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                suffix = os.path.splitext(entry.name)[1] or "none"
                skipped.append((entry.path, f"not an image file extension ({suffix})"))
            else:
                try:
                    stat = entry.stat()
                except OSError as err:  # e.g. a dangling symlink
                    skipped.append((entry.path, f"unreadable ({err.strerror or err})"))
                    continue
                files.append((entry.path, stat.st_size, stat.st_mtime_ns))
    return files


def presplit_folders(root: Path) -> dict[str, Path] | None:
    """`train/` plus `val/` or `validation/` and/or `test/` -> the split folders found."""
    with os.scandir(root) as entries:
        names = {e.name.lower(): Path(e.path) for e in entries if e.is_dir()}
    if "train" not in names:
        return None
    found = {"train": names["train"]}
    val = next((names[n] for n in VAL_DIR_NAMES if n in names), None)
    if val is not None:
        found["val"] = val
    if "test" in names:
        found["test"] = names["test"]
    return found if len(found) > 1 else None


def plan_from_folder(root: Path, skipped: list) -> dict[str, Any]:
    """What to load from a folder: class names, `Candidate`s, class and split folders.

    Files that cannot be candidates (hidden, wrong extension, outside a class
    folder) are appended to `skipped` with the reason.
    """
    presplit = presplit_folders(root)
    files: list[Candidate] = []
    if presplit:
        class_sets = {s: [p.name for p in _scan_class_dirs(d)] for s, d in presplit.items()}
        class_names = sorted(set().union(*class_sets.values()))
        for s, names in class_sets.items():
            missing = sorted(set(class_names) - set(names))
            if missing:
                raise ValueError(
                    f"Class folder(s) {missing} are missing from the {s!r} split "
                    f"({presplit[s]}); train, val and test need the same classes."
                )
        for s, folder in presplit.items():
            for label, name in enumerate(class_names):
                files += [(*f, label, s) for f in _scan_files(folder / name, skipped)]
        class_dirs = {n: [presplit[s] / n for s in presplit] for n in class_names}
    else:
        dirs = _scan_class_dirs(root)
        with os.scandir(root) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_file() and not _is_hidden(entry.name):
                    skipped.append((entry.path, "not in a class folder"))
        class_names = [d.name for d in dirs]
        for label, d in enumerate(dirs):
            files += [(*f, label, None) for f in _scan_files(d, skipped)]
        class_dirs = {d.name: [d] for d in dirs}
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise ValueError(
            f"{root} needs at least two class subfolders (root/<class>/<images>, or "
            f"train/ val/ test/ each with class subfolders); found {found}."
        )
    return {"class_names": class_names, "files": files, "class_dirs": class_dirs,
            "split_dirs": presplit or {}, "split": "given" if presplit else None}


def plan_from_manifest(root: Path, manifest: str | os.PathLike | dict) -> dict[str, Any]:
    """The same plan as `plan_from_folder`, listing exactly a manifest's files and splits."""
    if not isinstance(manifest, dict):
        manifest = json.loads(Path(manifest).read_text("utf-8"))
    class_names = list(manifest["class_names"])
    lookup = {name: i for i, name in enumerate(class_names)}
    files: list[Candidate] = []
    for s in SPLITS:
        for rel, name in manifest["files"][s]:
            path = root / rel
            try:
                stat = path.stat()
            except OSError:
                stat = None
            if stat is None or not path.is_file():
                raise FileNotFoundError(
                    f"The manifest lists {rel!r} ({s} split) but {path} does not exist; the "
                    "folder changed since the manifest was written. Start a new run."
                )
            files.append((str(path), stat.st_size, stat.st_mtime_ns, lookup[name], s))
    # Files the first load found but could not use (in no split): listed again, so the
    # decode cache's key (its files in order) is the first load's; gone ones are dropped.
    unused = set()
    for rel, name in manifest.get("unused", ()):
        path = root / rel
        if path.is_file() and name in lookup:
            stat = path.stat()
            files.append((str(path), stat.st_size, stat.st_mtime_ns, lookup[name], None))
            unused.add(str(path))
    split = manifest.get("split")
    return {"class_names": class_names, "files": _in_scan_order(root, files), "split": split,
            "unused": unused,
            "class_dirs": {n: [root] for n in class_names},
            # A run without a test split (test fraction 0) lists no test files.
            "split_dirs": {s: root for s in SPLITS if s != "test" or manifest["files"][s]}}


def _in_scan_order(root: Path, files: list[Candidate]) -> list[Candidate]:
    """A manifest's files in the order `plan_from_folder` lists them.

    The decode-once cache is keyed by its files in order (rows are stored in
    it), so a run reloaded from its manifest (a resume, the export) finds the
    first load's cache instead of decoding the folder again. `plan_from_folder`
    lists files by split folder (a pre-split folder), then class, then name at
    each level; a manifest lists them split by split, each split in that same
    order, so the splits' own orders do not change.
    """
    presplit = presplit_folders(root) if root.is_dir() else None
    rank = {folder.name: i for i, folder in enumerate(presplit.values())} if presplit else None

    def key(candidate: Candidate):
        parts = Path(os.path.relpath(candidate[0], root)).parts
        if rank is not None:  # <split folder>/<class>/...
            return (rank.get(parts[0], len(rank)), candidate[3], parts[2:])
        return (0, candidate[3], parts[1:])  # <class>/...

    return sorted(files, key=key)
