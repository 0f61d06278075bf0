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


def _resolves_to(entry: os.DirEntry[str]) -> tuple[bool, bool, str | None]:
    """``(is_dir, is_file, problem)`` of an entry, following links; ``problem`` says why a link
    leads nowhere (a loop, a dangling or unreadable target), else None."""
    try:
        if entry.is_dir():
            return True, False, None
        if entry.is_file():
            return False, True, None
    except OSError as error:  # ELOOP and the like, raised by the stat behind a link
        return False, False, f"unresolvable symbolic link ({error.strerror or error})"
    if entry.is_symlink():
        return False, False, "dangling symbolic link (its target does not exist)"
    return False, False, None  # a socket, a device, ...


class _Walk:
    """State of one :func:`scan_images` walk: folders seen, files reached through links, skips."""

    def __init__(self, top: str, follow: bool, skipped: list[tuple[str, str]] | None) -> None:
        self.top, self.follow, self.skipped = top, follow, skipped
        self.real_top = os.path.join(os.path.realpath(top), "")
        root = os.stat(top)
        self.seen_dirs = {(root.st_dev, root.st_ino)}
        self.linked_files: set[str] = set()  # real paths of files reached through a link

    def skip(self, relative: str, reason: str) -> None:
        if self.skipped is not None:
            self.skipped.append((os.path.join(self.top, relative), reason))

    def new_folder(self, entry: os.DirEntry[str], relative: str) -> bool:
        """Whether a folder is walked: not one reached before (a link loop, or a second link)."""
        try:
            stat = entry.stat()
        except OSError as error:
            self.skip(relative, f"unreadable folder ({error.strerror or error})")
            return False
        if (stat.st_dev, stat.st_ino) in self.seen_dirs:
            if entry.is_symlink():
                self.skip(relative, "symbolic link to a folder already walked (a loop or a second link)")
            return False
        self.seen_dirs.add((stat.st_dev, stat.st_ino))
        return True

    def new_linked_file(self, path: str, relative: str) -> bool:
        """A file reached through a link is listed once, and not when its target is in the tree."""
        real = os.path.realpath(path)
        if real.startswith(self.real_top) or real in self.linked_files:
            self.skip(relative, f"the same file as {real} (reached through a symbolic link)")
            return False
        self.linked_files.add(real)
        return True


def scan_images(
    root: str | os.PathLike[str],
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    follow_symlinks: bool = True,
    skipped: list[tuple[str, str]] | None = None,
) -> list[str]:
    """List image files below ``root`` recursively, sorted, as paths relative to ``root``.

    Only directory entries are read (``os.scandir``: no file is opened, and only folders and
    symbolic links are ``stat``-ed), so a million files index in seconds. Hidden files and
    folders (``.name``, ``__MACOSX``) are left out. Symbolic links are followed, but every file
    is listed once: a folder reached twice (a link loop, a link to an ancestor or a sibling) is
    walked once, a link to a file of the tree is left out, and so is a second link to the same
    outside file. Links that lead nowhere (loops, dangling or unreadable targets) are left out.
    What was left out for those reasons is appended to ``skipped`` as ``(path, reason)``.

    Args:
        root: Folder to walk.
        extensions: Lower-case file endings to keep, with the dot.
        follow_symlinks: Walk into linked folders and keep linked files.
        skipped: If given, receives ``(path, reason)`` of each link or folder left out.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
    """
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise FileNotFoundError(f"image folder {top!r} does not exist or is not a folder")
    walk = _Walk(top, follow_symlinks, skipped)
    found: list[str] = []
    stack = [("", False)]  # (folder relative to top, reached through a link)
    while stack:
        relative_dir, via_link = stack.pop()
        found += _scan_folder(walk, relative_dir, via_link, extensions, stack)
    found.sort()
    return found


def _scan_folder(
    walk: _Walk, relative_dir: str, via_link: bool, extensions: frozenset[str], stack: list[tuple[str, bool]]
) -> list[str]:
    """The image files of one folder; its sub-folders to walk are pushed on ``stack``."""
    try:
        entries = sorted(os.scandir(os.path.join(walk.top, relative_dir)), key=lambda e: e.name)
    except OSError:  # unreadable (permissions) or vanished while walking
        return []
    files, folders = [], []
    for entry in entries:
        name = entry.name
        if _is_hidden(name):
            continue
        relative = f"{relative_dir}/{name}" if relative_dir else name
        link = entry.is_symlink()
        if link and not walk.follow:
            continue
        is_dir, is_file, problem = _resolves_to(entry) if link else (entry.is_dir(), True, None)
        if is_dir:
            folders.append(entry)
        elif problem is not None:  # a loop or a dangling link: maybe a folder, maybe an image
            walk.skip(relative, problem)
        elif os.path.splitext(name)[1].lower() not in extensions:
            continue
        elif is_file and (not (link or via_link) or walk.new_linked_file(entry.path, relative)):
            files.append(relative)
    # Real folders before links: which copy of a folder reached twice is kept does not depend
    # on the order the file system lists entries in.
    for entry in sorted(folders, key=lambda e: (e.is_symlink(), e.name)):
        relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
        if walk.new_folder(entry, relative):
            stack.append((relative, via_link or entry.is_symlink()))
    return files


def scan_class_folders(
    root: str | os.PathLike[str],
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    skipped: list[tuple[str, str]] | None = None,
) -> tuple[list[str], np.ndarray, list[str]]:
    """Index a class-per-folder tree ``root/<class>/**/<image>`` (links as :func:`scan_images`
    treats them; what it leaves out goes to ``skipped``). A class folder without images is a
    class with no images (label counts of 0), for the caller to refuse or warn about.

    Returns:
        ``(paths relative to root, labels as int64 array, class names sorted)``.

    Raises:
        FileNotFoundError: ``root`` is missing, has no class sub-folders, or no images in them.
    """
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise FileNotFoundError(f"class folder tree {top!r} does not exist or is not a folder")
    classes = []
    for entry in sorted(os.scandir(top), key=lambda e: e.name):
        is_dir, _, problem = _resolves_to(entry)
        if problem is not None and skipped is not None:
            skipped.append((entry.path, problem))
        if is_dir and not _is_hidden(entry.name):
            classes.append(entry.name)
    if not classes:
        raise FileNotFoundError(
            f"{top!r} has no class sub-folders; a labeled set is laid out as root/<class>/<image>"
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = scan_images(os.path.join(top, name), extensions, skipped=skipped)
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
