"""Index image files without opening them: folder walks, class-per-folder trees and manifests.

A million paths must index in seconds and stay small in memory, also after the DataLoader forks
its workers: :class:`PathTable` keeps every path in one NumPy byte buffer instead of a million
Python strings (whose reference counts would copy the pages into every worker on first touch).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from visiontransfer.data.decode import IMAGE_EXTENSIONS
from visiontransfer.errors import ConfigError


class PathTable(Sequence[str]):
    """An immutable list of file paths under one root, packed into two NumPy arrays.

    Args:
        root: Directory every relative path is joined to (``""`` for absolute paths).
        paths: The paths, relative to ``root`` or absolute.
    """

    def __init__(self, root: str | os.PathLike[str], paths: Iterable[str]) -> None:
        self.root = os.fspath(root)
        if not isinstance(paths, (list, tuple)):
            paths = list(paths)
        # One joined string and one encode instead of a bytes object per path: building the table
        # costs ~2 bytes per character on top of the input list instead of ~70 bytes per path
        # (a million paths: ~50 MB instead of ~180 MB at the peak).
        joined = "".join(paths)
        data = joined.encode("utf-8", "surrogateescape")
        if len(data) == len(joined):  # every character took one byte: lengths in characters hold
            lengths = np.fromiter(map(len, paths), dtype=np.int64, count=len(paths))
        else:
            lengths = np.fromiter(
                (len(p.encode("utf-8", "surrogateescape")) for p in paths), dtype=np.int64, count=len(paths)
            )
        del joined
        self._offsets = np.zeros(len(paths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._buffer = np.frombuffer(data, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def relative(self, index: int) -> str:
        """The path as stored (relative to :attr:`root`); negative indices count from the end."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} paths")
        start, stop = self._offsets[index], self._offsets[index + 1]
        return self._buffer[start:stop].tobytes().decode("utf-8", "surrogateescape")

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return os.path.join(self.root, self.relative(index))

    def nbytes(self) -> int:
        """Memory held by the table's arrays."""
        return int(self._offsets.nbytes + self._buffer.nbytes)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def scan_images(
    root: str | os.PathLike[str],
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    follow_symlinks: bool = True,
) -> list[str]:
    """List image files below ``root`` recursively, sorted, as paths relative to ``root``.

    Only directory entries are read (``os.scandir``: no file is opened or ``stat``-ed, only each
    folder), so a million files index in seconds. Hidden files and folders (``.name``,
    ``__MACOSX``) are left out; a folder reached twice (through a symbolic link to a folder of the
    tree, or a link loop) is walked once, so no file is listed twice.

    Args:
        root: Folder to walk.
        extensions: Lower-case file endings to keep, with the dot.
        follow_symlinks: Walk into linked folders and keep linked files.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
    """
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise FileNotFoundError(f"image folder {top!r} does not exist or is not a folder")
    found: list[str] = []
    root_stat = os.stat(top)
    seen_dirs = {(root_stat.st_dev, root_stat.st_ino)}
    stack = [""]
    while stack:
        relative_dir = stack.pop()
        try:
            entries = os.scandir(os.path.join(top, relative_dir))
        except PermissionError:
            continue
        folders = []
        with entries:
            for entry in entries:
                name = entry.name
                if _is_hidden(name):
                    continue
                if entry.is_dir(follow_symlinks=follow_symlinks):
                    folders.append(entry)
                elif os.path.splitext(name)[1].lower() in extensions and (
                    follow_symlinks or not entry.is_symlink()
                ):
                    found.append(f"{relative_dir}/{name}" if relative_dir else name)
        # Real folders before links, by name: which copy of a folder reached twice is kept does
        # not depend on the order the file system lists entries in.
        for entry in sorted(folders, key=lambda e: (e.is_symlink(), e.name)):
            try:
                stat = entry.stat()
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) in seen_dirs:
                continue
            seen_dirs.add((stat.st_dev, stat.st_ino))
            stack.append(f"{relative_dir}/{entry.name}" if relative_dir else entry.name)
    found.sort()
    return found


def scan_class_folders(
    root: str | os.PathLike[str], extensions: frozenset[str] = IMAGE_EXTENSIONS
) -> tuple[list[str], np.ndarray, list[str]]:
    """Index a class-per-folder tree ``root/<class>/**/<image>``.

    Returns:
        ``(paths relative to root, labels as int64 array, class names sorted)``.

    Raises:
        FileNotFoundError: ``root`` is missing, has no class sub-folders, or no images in them.
    """
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise FileNotFoundError(f"class folder tree {top!r} does not exist or is not a folder")
    classes = sorted(e.name for e in os.scandir(top) if e.is_dir() and not _is_hidden(e.name))
    if not classes:
        raise FileNotFoundError(
            f"{top!r} has no class sub-folders; a labeled set is laid out as root/<class>/<image>"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = scan_images(os.path.join(top, name), extensions)
        paths.extend(f"{name}/{f}" for f in files)
        labels.extend([label] * len(files))
    if not paths:
        raise FileNotFoundError(f"no image files in the class folders of {top!r}")
    return paths, np.asarray(labels, dtype=np.int64), classes


def read_manifest(path: str | os.PathLike[str]) -> tuple[list[str], list[str] | None]:
    """Read a manifest of image paths, optionally with labels.

    Two formats: a ``.csv`` file with a header holding a ``path`` column and optionally a ``label``
    column, or any other text file with one path per line (blank lines and ``#`` comments are
    skipped). Relative paths are relative to the manifest's folder.

    Returns:
        ``(absolute paths, labels as strings or None)``.

    Raises:
        FileNotFoundError: the manifest is missing.
        ValueError: a malformed manifest, naming the file and line.
    """
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {str(manifest)!r} does not exist")
    base = manifest.parent
    paths: list[str] = []
    labels: list[str] = []
    # utf-8-sig: spreadsheet programs start CSV files with a byte-order mark.
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        if manifest.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            if "path" not in fields:
                raise ConfigError(
                    f"{manifest}:1: CSV manifest needs a header with a 'path' column "
                    f"(and optionally 'label'), got {fields}"
                )
            with_labels = "label" in fields
            for row in reader:
                value = (row.get("path") or "").strip()
                if not value:
                    raise ConfigError(f"{manifest}:{reader.line_num}: empty 'path'")
                paths.append(str(base / value))
                if with_labels:
                    label = (row.get("label") or "").strip()
                    if not label:
                        raise ConfigError(f"{manifest}:{reader.line_num}: empty 'label'")
                    labels.append(label)
            result_labels = labels if with_labels else None
        else:
            for line in handle:
                value = line.strip()
                if value and not value.startswith("#"):
                    paths.append(str(base / value))
            result_labels = None
    if not paths:
        raise ConfigError(f"manifest {str(manifest)!r} lists no image paths")
    return paths, result_labels
