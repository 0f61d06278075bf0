"""``visiontransfer neighbors``: the images of saved embeddings most similar to query images.

The queries (an image, a folder, or saved embeddings) are embedded exactly as the bank was (same
backbone, image size and settings: :func:`~visiontransfer.features.extract.embed_like`), searched
in a faiss index over the bank (:mod:`~visiontransfer.features.search`), and written as
``neighbors.csv`` (one row per query and rank) and ``neighbors.png`` (each query, then its
neighbours with their similarity; with labels, green where a neighbour has the query's class).
A query that is itself in the bank (the same path) is not its own neighbour.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.errors import ConfigError, MissingPathError
from visiontransfer.features.figures import grid_figure, save_figure
from visiontransfer.features.search import IndexKind, cached_index, check_k, search
from visiontransfer.features.store import Embeddings
from visiontransfer.visualize import RIGHT, WRONG

CSV_NAME = "neighbors.csv"
PNG_NAME = "neighbors.png"


@dataclass
class Neighbors:
    """The ``k`` nearest bank images of each query, best first.

    Attributes:
        bank: The searched embeddings.
        query_paths: Where each query image came from.
        query_labels: The queries' class names (None when unlabeled).
        rows: ``(Q, k)`` bank rows (-1: an approximate search found fewer).
        scores: ``(Q, k)`` cosine similarities.
    """

    bank: Embeddings
    query_paths: list[str]
    query_labels: list[str] | None
    rows: np.ndarray
    scores: np.ndarray

    @property
    def k(self) -> int:
        return int(self.rows.shape[1])

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """``query,rank,neighbor,similarity,row`` (and ``query_label,label``), atomically."""
        names = self.bank.label_names()
        labeled = self.query_labels is not None and names is not None
        header = ["query", "rank", "neighbor", "similarity", "row"] + (
            ["query_label", "label"] if labeled else []
        )

        def write(temp: str) -> None:
            with open(temp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                for q, query in enumerate(self.query_paths):
                    for rank, (row, score) in enumerate(zip(self.rows[q], self.scores[q], strict=True), 1):
                        if row < 0:
                            continue
                        line = [query, rank, self.bank.paths[int(row)], f"{score:.6f}", int(row)]
                        if labeled:
                            assert self.query_labels is not None and names is not None
                            line += [self.query_labels[q], names[int(row)]]
                        writer.writerow(line)

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, write)
        return target

    def figure(self, max_queries: int = 8):  # type: ignore[no-untyped-def]
        """One row per query (at most ``max_queries``): the query, then its neighbours titled with
        their similarity (and class, green when the query's)."""
        names = self.bank.label_names()
        paths: list[str] = []
        titles: list[str] = []
        colors: list[str] = []
        for q in range(min(max_queries, len(self.query_paths))):
            truth = self.query_labels[q] if self.query_labels is not None else None
            paths.append(self.query_paths[q])
            titles.append(f"query: {truth}" if truth else "query")
            colors.append("black")
            for row, score in zip(self.rows[q], self.scores[q], strict=True):
                label = names[int(row)] if names is not None and row >= 0 else None
                paths.append(self.bank.paths[int(row)] if row >= 0 else "")
                titles.append(f"{score:.2f}" + (f" {label}" if label else ""))
                colors.append(
                    "black" if truth is None or label is None else RIGHT if label == truth else WRONG
                )
        title = f"{self.k} nearest neighbours of each query (cosine similarity)"
        return grid_figure(
            paths,
            ncols=self.k + 1,
            titles=titles,
            colors=colors,
            title=title,
            seed=int(self.bank.meta["plan"].get("seed", 0)),
        )


def nearest(
    bank: Embeddings,
    queries: np.ndarray,
    k: int,
    index: IndexKind = "auto",
    query_paths: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(Q, k)`` similarities and bank rows of the nearest neighbours of ``(Q, D)`` queries.

    With ``query_paths``, a bank row with the query's own path is left out (the query is in
    the bank): ``k + 1`` are searched and that one dropped.
    """
    check_k(k, len(bank), repr(os.fspath(bank.folder or "the embeddings")))
    extra = 1 if query_paths is not None and k < len(bank) else 0
    scores, rows = search(cached_index(bank, index), queries, k + extra)
    if not extra:
        return scores[:, :k], rows[:, :k]
    assert query_paths is not None
    keep_scores, keep_rows = np.empty((len(rows), k), np.float32), np.empty((len(rows), k), np.int64)
    for q, path in enumerate(query_paths):
        own = np.asarray([r >= 0 and bank.paths[int(r)] == path for r in rows[q]])
        order = np.flatnonzero(~own)[:k] if own.any() else np.arange(k)
        keep_scores[q], keep_rows[q] = scores[q, order], rows[q, order]
    return keep_scores, keep_rows


def _embed_queries(
    bank: Embeddings, query: str, backbone: str | None, batch_size: int, workers: int
) -> Embeddings:
    """The query image or folder embedded like the bank, in memory."""
    from visiontransfer.features.extract import embed_like

    if not os.path.exists(query):
        raise MissingPathError(f"--query={query!r} does not exist: give an image file or a folder of images")
    with tempfile.TemporaryDirectory(prefix="vt-queries-") as temp:
        source = {"root": query}
        if os.path.isfile(query):
            manifest = Path(temp, "query.txt")
            manifest.write_text(os.path.abspath(query) + "\n")
            source = {"manifest": str(manifest)}
        made = embed_like(
            bank,
            str(Path(temp, "embeddings")),
            backbone=backbone,
            batch_size=batch_size,
            num_workers=workers,
            progress=False,
            **source,
        )
        made.vectors = np.array(made.vectors)  # off the temporary file
    return made


def neighbors(
    embeddings: str | Embeddings,
    query: str | Embeddings,
    k: int = 10,
    out: str | None = None,
    index: IndexKind = "auto",
    backbone: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    max_pictured: int = 8,
) -> Neighbors:
    """The ``k`` nearest images of saved embeddings to each query image.

    Args:
        embeddings: A folder written by ``visiontransfer embed``, or its :class:`Embeddings`.
        query: An image file or a folder of images (embedded like the bank), or embeddings.
        k: Neighbours per query.
        out: Folder for ``neighbors.csv`` and ``neighbors.png`` (None: write nothing).
        index: ``exact``, ``ivf`` (approximate) or ``auto`` (exact up to 100,000 rows).
        backbone: Where the bank's backbone is now, if it moved.
        batch_size: Images per batch when embedding the queries.
        num_workers: DataLoader workers when embedding the queries.
        max_pictured: Queries drawn in the picture.

    Raises:
        ConfigError: ``k`` larger than the bank, a missing query, the bank's backbone gone.
    """
    bank = embeddings if isinstance(embeddings, Embeddings) else Embeddings.load(embeddings)
    check_k(k, len(bank), repr(os.fspath(bank.folder or "the embeddings")))
    queries = (
        query
        if isinstance(query, Embeddings)
        else _embed_queries(bank, query, backbone, batch_size, num_workers)
    )
    if len(queries) == 0:
        raise ConfigError(f"--query={query!r} holds no readable image")
    if queries.dim != bank.dim:
        raise ConfigError(f"the queries have {queries.dim} features per image, the embeddings {bank.dim}")
    paths = list(queries.paths)
    scores, rows = nearest(bank, np.asarray(queries.vectors), k, index, paths)
    result = Neighbors(bank, paths, queries.label_names(), rows, scores)
    if out is not None:
        result.write_csv(Path(out, CSV_NAME))
        save_figure(result.figure(max_pictured), Path(out, PNG_NAME))
    return result
