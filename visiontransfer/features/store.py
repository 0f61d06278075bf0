"""The embeddings folder: rows written chunk by chunk, resumable, merged into plain files.

``visiontransfer embed ... --out DIR`` leaves, readable without visiontransfer::

    DIR/embeddings.npy      (N, D) float32 or float16 rows (numpy.load(..., mmap_mode="r"))
    DIR/index.csv           index,path[,label]: row r of the CSV describes row r of the array
    DIR/meta.json           backbone, image size, source, dtype, normalisation, classes, counts
    DIR/skipped_files.txt   unreadable files, "path<TAB>reason" (only when some were skipped)

``index`` is the image's position in its source (the sorted folder listing, the manifest's line,
the shard sample key); unreadable files have no row. ``label`` is the class name, when the source
has classes.

While it runs, finished chunks sit in ``DIR/chunks/``: ``chunk-000012.npy`` (rows),
``chunk-000012.csv`` (their index, path, label) and last ``chunk-000012.json`` (row count,
skipped files, the rank that wrote it), each written atomically; a chunk is finished when its
``.json`` exists. A killed run keeps its finished chunks, and the same command resumes with the
others. ``DIR/plan.json`` holds the settings the chunks were made with: a run with other settings
is refused instead of mixing rows of two backbones. :func:`merge_chunks` copies the chunks into
the final files one at a time (memory stays flat however many rows), writes ``meta.json`` last
(what marks the folder complete) and removes ``chunks/``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.data.index import PathTable
from visiontransfer.errors import ConfigError, MissingPathError

FORMAT = "visiontransfer-embeddings/1"
VECTORS = "embeddings.npy"
INDEX = "index.csv"
META = "meta.json"
PLAN = "plan.json"
SKIPPED = "skipped_files.txt"
CHUNKS = "chunks"
OUTPUTS = (VECTORS, INDEX, META, PLAN, SKIPPED, CHUNKS)
"""Everything a run writes into its folder (``overwrite`` removes these and nothing else)."""

DTYPES = ("float32", "float16")

# What a batch of :class:`~visiontransfer.features.data.EmbeddingData` carries for the writer, on
# top of the usual ``image``, ``label`` and ``index``:
BATCH_CHUNK = "chunk"
"""The chunk the batch belongs to (a batch never spans two)."""
BATCH_CHUNK_LAST = "chunk_last"
"""Whether it is the chunk's last batch (a chunk's batches arrive in order): the writer then
writes the chunk."""
BATCH_PATHS = "paths"
"""Where each readable image came from."""
BATCH_UNREADABLE = "unreadable"
"""``(path, reason)`` of the batch's unreadable files (``skipped`` is taken by the datamodule's
:class:`~visiontransfer.data.datasets.SkipLog`)."""


@dataclass
class Chunk:
    """The rows of one chunk, ready to be written.

    Attributes:
        number: The chunk's number (its place in the merged file).
        vectors: ``(n, D)`` rows.
        index: ``(n,)`` positions of the images in their source.
        paths: Where each image came from.
        labels: ``(n,)`` class indices (-1: none), or None for an unlabeled source.
        skipped: ``(path, reason)`` of the unreadable files of the chunk.
    """

    number: int
    vectors: np.ndarray
    index: np.ndarray
    paths: list[str]
    labels: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def chunk_path(folder: str | os.PathLike[str], number: int, suffix: str) -> Path:
    """``folder/chunks/chunk-000012.<suffix>``."""
    return Path(folder, CHUNKS, f"chunk-{number:06d}.{suffix}")


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda temp: Path(temp).write_text(json.dumps(data, indent=1) + "\n"))


def _index_header(classes: Sequence[str] | None) -> list[str]:
    return ["index", "path", "label"] if classes else ["index", "path"]


def _index_rows(chunk: Chunk, classes: Sequence[str] | None) -> list[list[Any]]:
    if not classes or chunk.labels is None:
        return [[int(i), p] for i, p in zip(chunk.index, chunk.paths, strict=True)]
    return [
        [int(i), p, classes[int(c)] if c >= 0 else ""]
        for i, p, c in zip(chunk.index, chunk.paths, chunk.labels, strict=True)
    ]


def write_chunk(
    folder: str | os.PathLike[str], chunk: Chunk, classes: Sequence[str] | None, rank: int
) -> None:
    """Write one finished chunk: rows, index, then the ``.json`` marker (each atomically)."""
    Path(folder, CHUNKS).mkdir(parents=True, exist_ok=True)

    def save_rows(temp: str) -> None:
        with open(temp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(chunk.vectors))

    def save_index(temp: str) -> None:
        with open(temp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(_index_header(classes))
            writer.writerows(_index_rows(chunk, classes))

    atomic_write(chunk_path(folder, chunk.number, "npy"), save_rows)
    atomic_write(chunk_path(folder, chunk.number, "csv"), save_index)
    marker = {"rows": len(chunk.index), "skipped": [list(s) for s in chunk.skipped], "rank": rank}
    _write_json(chunk_path(folder, chunk.number, "json"), marker)


def finished_chunks(folder: str | os.PathLike[str]) -> set[int]:
    """Numbers of the chunks whose marker exists (their rows and index were written before it)."""
    chunks = Path(folder, CHUNKS)
    if not chunks.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in chunks.glob("chunk-*.json") if p.stem.split("-")[1].isdigit()}


# -- the plan: what the rows are made of -----------------------------------------------------------
def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in new if old.get(key) != new.get(key)]


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content; None when it does not exist."""
    return json.loads(path.read_text()) if path.is_file() else None


def check_folder(folder: str | os.PathLike[str], plan: dict[str, Any], overwrite: bool, flag: str) -> str:
    """What a run with ``plan`` does with ``folder``, without changing anything in it.

    Returns:
        ``complete`` (the folder holds these embeddings already), ``resume`` (finished chunks of
        this plan are there), or ``new``.

    Raises:
        ConfigError: naming ``flag``, when the folder is a file, holds another plan's rows, or is a
            non-empty folder of something else (all allowed with ``overwrite``, but a file).
    """
    where = Path(folder)
    if where.exists() and not where.is_dir():
        raise ConfigError(
            f"{flag}={os.fspath(folder)!r} is a file: give a folder to write the embeddings into"
        )
    if overwrite or not where.is_dir():
        return "new"
    meta, old_plan = read_json(where / META), read_json(where / PLAN)
    recorded = meta.get("plan") if meta is not None else old_plan
    if recorded is not None:
        changed = _differences(recorded, plan)
        if changed:
            state = "embeddings" if meta is not None else "an unfinished run"
            raise ConfigError(
                f"{flag}={os.fspath(folder)!r} holds {state} made with other settings "
                f"({'; '.join(changed[:4])}): "
                "choose another folder, or pass --overwrite to replace them"
            )
        return "complete" if meta is not None else "resume"
    if any(where.iterdir()):
        raise ConfigError(
            f"{flag}={os.fspath(folder)!r} exists and is not empty: choose a new folder, or pass --overwrite"
        )
    return "new"


def start(folder: str | os.PathLike[str], plan: dict[str, Any], overwrite: bool) -> None:
    """Prepare ``folder`` for a run of ``plan`` (one process): with ``overwrite`` remove what an
    earlier run wrote, then record the plan."""
    where = Path(folder)
    where.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in OUTPUTS:
            target = where / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if read_json(where / PLAN) != plan:
        _write_json(where / PLAN, plan)


# -- merging ---------------------------------------------------------------------------------------
def _chunk_markers(folder: Path, num_chunks: int) -> list[dict[str, Any]]:
    missing = sorted(set(range(num_chunks)) - finished_chunks(folder))
    if missing:
        raise RuntimeError(f"embeddings in {os.fspath(folder)!r}: chunks {missing[:5]} were not written")
    return [json.loads(chunk_path(folder, c, "json").read_text()) for c in range(num_chunks)]


def _shape(path: Path) -> tuple[int, ...]:
    """The shape of a ``.npy`` file, from its header."""
    with open(path, "rb") as handle:
        major, _ = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read(handle)
    return tuple(shape)


def _merge_vectors(folder: Path, num_chunks: int, dtype: str) -> int:
    """Append the chunks' rows to one ``.npy``, one chunk in memory at a time (plain writes, no
    memory map: the pages written are the page cache's, not the process's); returns the width."""
    shapes = [_shape(chunk_path(folder, c, "npy")) for c in range(num_chunks)]
    rows, dim = sum(s[0] for s in shapes), max(s[1] for s in shapes)
    kind = np.dtype(dtype)

    def write(temp: str) -> None:
        with open(temp, "wb") as out:
            header = {
                "descr": np.lib.format.dtype_to_descr(kind),
                "fortran_order": False,
                "shape": (rows, dim),
            }
            np.lib.format.write_array_header_2_0(out, header)
            for c, shape in enumerate(shapes):
                if shape[0]:  # a chunk of unreadable files only has no rows (and may have no width)
                    out.write(
                        np.ascontiguousarray(np.load(chunk_path(folder, c, "npy")), dtype=kind).tobytes()
                    )
            out.flush()
            os.fsync(out.fileno())

    atomic_write(folder / VECTORS, write)
    return dim


def _merge_index(folder: Path, num_chunks: int) -> None:
    def write(temp: str) -> None:
        with open(temp, "w", newline="") as out:
            for c in range(num_chunks):
                with open(chunk_path(folder, c, "csv"), newline="") as part:
                    header = part.readline()
                    if c == 0:
                        out.write(header)
                    shutil.copyfileobj(part, out)

    atomic_write(folder / INDEX, write)


def merge_chunks(folder: str | os.PathLike[str], num_chunks: int, meta: dict[str, Any]) -> dict[str, Any]:
    """Merge every chunk into ``embeddings.npy``, ``index.csv`` and ``skipped_files.txt``, then
    write ``meta.json`` (``meta`` plus the counts) and remove the chunks; returns the meta.

    Raises:
        RuntimeError: a chunk is missing (no process wrote it).
    """
    where = Path(folder)
    markers = _chunk_markers(where, num_chunks)
    rows = sum(int(m["rows"]) for m in markers)
    skipped = [tuple(s) for m in markers for s in m["skipped"]]
    dim = _merge_vectors(where, num_chunks, meta["plan"]["dtype"])
    _merge_index(where, num_chunks)
    if skipped:
        lines = "".join(f"{path}\t{reason}\n" for path, reason in skipped)
        atomic_write(where / SKIPPED, lambda temp: Path(temp).write_text(lines))
    ranks = sorted({int(m["rank"]) for m in markers})
    full = {
        **meta,
        "format": FORMAT,
        "rows": rows,
        "dim": dim,
        "skipped": len(skipped),
        "chunks": num_chunks,
        "written_by_ranks": ranks,
    }
    _write_json(where / META, full)
    shutil.rmtree(where / CHUNKS, ignore_errors=True)
    (where / PLAN).unlink(missing_ok=True)
    return full


# -- reading ---------------------------------------------------------------------------------------
def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``float32`` L2-normalised copy of ``(N, D)`` rows (zero rows stay zero)."""
    x = np.asarray(vectors, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Embeddings:
    """Saved embeddings: what :func:`visiontransfer.embed` returns and :meth:`load` reads back.

    Attributes:
        vectors: ``(N, D)`` rows (memory-mapped from ``embeddings.npy`` when loaded).
        index: ``(N,)`` position of each image in its source.
        paths: Where each image came from (a file path, ``shard.tar:key``, ``embedded:N``).
        labels: ``(N,)`` class indices into :attr:`classes` (-1: unknown), or None (unlabeled).
        classes: Class names (empty for an unlabeled source).
        meta: The content of ``meta.json`` (backbone, image size, source, ...).
        folder: The folder the embeddings live in.
    """

    vectors: np.ndarray
    index: np.ndarray
    paths: PathTable
    labels: np.ndarray | None
    classes: list[str]
    meta: dict[str, Any]
    folder: Path | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        """Features per image."""
        return int(self.vectors.shape[1])

    def unit(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """``float32`` copies of the rows (all, or ``rows``), L2-normalised (cosine geometry)."""
        return unit_rows(self.vectors[slice(None) if rows is None else rows])

    def label_names(self, rows: np.ndarray | None = None) -> list[str] | None:
        """Class name of each row (``""`` when unknown), or None for an unlabeled set."""
        if self.labels is None or not self.classes:
            return None
        picked = self.labels if rows is None else self.labels[rows]
        return [self.classes[int(c)] if c >= 0 else "" for c in picked]

    @classmethod
    def load(cls, folder: str | os.PathLike[str], flag: str = "EMBEDDINGS") -> Embeddings:
        """Read a folder written by ``visiontransfer embed``.

        Raises:
            MissingPathError: no such folder.
            ConfigError: the folder holds no finished embeddings (naming ``flag``).
        """
        where = Path(folder)
        if not where.is_dir():
            raise MissingPathError(
                f"{flag}={os.fspath(folder)!r} does not exist: give a folder written by "
                "`visiontransfer embed`"
            )
        meta = read_json(where / META)
        if meta is None:
            hint = " (an unfinished run: run the same embed command again to finish it)"
            unfinished = hint if (where / PLAN).is_file() else ""
            raise ConfigError(f"{flag}={os.fspath(folder)!r} holds no finished embeddings{unfinished}")
        vectors = np.load(where / VECTORS, mmap_mode="r")
        index, paths, names = read_index(where / INDEX)
        classes = list(meta.get("classes") or [])
        labels = None
        if names is not None:
            lookup = {name: i for i, name in enumerate(classes)}
            labels = np.asarray([lookup.get(n, -1) for n in names], dtype=np.int64)
        if len(index) != len(vectors):
            raise ConfigError(
                f"{flag}={os.fspath(folder)!r}: {INDEX} has {len(index)} rows for {len(vectors)} vectors"
            )
        return cls(vectors, index, PathTable("", paths), labels, classes, meta, where)


def read_index(path: Path) -> tuple[np.ndarray, list[str], list[str] | None]:
    """``index.csv``: positions, paths and label names (None without a label column)."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        labeled = "label" in header
        index, paths, names = [], [], []
        for row in reader:
            index.append(int(row[0]))
            paths.append(row[1])
            if labeled:
                names.append(row[2])
    return np.asarray(index, dtype=np.int64), paths, names if labeled else None
