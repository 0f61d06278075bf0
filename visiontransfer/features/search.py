"""Nearest neighbours by cosine similarity, with faiss: exact for small sets, approximate for large.

Rows are L2-normalised, so the inner product is the cosine similarity. Up to
:data:`EXACT_LIMIT` rows the index is exact (``IndexFlatIP``: every query against every row);
above, an inverted-file index (``IndexIVFFlat``, Jégou et al. 2011, as in Johnson et al.,
"Billion-scale similarity search with GPUs", 2019): ``nlist ≈ 4·√N`` k-means cells trained on a
sample, each query scanning the ``nprobe`` nearest cells, which finds nearly all true neighbours
in a fraction of the time. On a machine with GPU faiss the index moves to the GPUs.

An approximate index takes a while to build for millions of rows; :func:`cached_index` keeps it
beside the embeddings (``index-ivf-<nlist>.faiss``) and reuses it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.errors import ConfigError
from visiontransfer.features.store import unit_rows

if TYPE_CHECKING:
    from visiontransfer.features.store import Embeddings

IndexKind = Literal["auto", "exact", "ivf"]
EXACT_LIMIT = 100_000
"""Rows up to which ``auto`` searches exactly."""
ADD_BATCH = 65_536
"""Rows normalised and added to an index at a time (memory stays bounded by the index itself)."""


def _faiss() -> Any:
    """faiss, imported when first needed (its import takes a quarter of a second)."""
    import faiss

    return faiss


def default_nlist(rows: int) -> int:
    """Inverted-file cells for ``rows`` vectors: ``4·√N`` (faiss' guideline), at least 1."""
    return max(1, min(65_536, round(4 * math.sqrt(rows))))


def to_gpus(index: Any) -> Any:
    """The index on every GPU when faiss was built with GPU support and sees one; else as is."""
    faiss = _faiss()
    if hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def build_index(
    vectors: np.ndarray,
    kind: IndexKind = "auto",
    nlist: int | None = None,
    nprobe: int = 32,
    seed: int = 0,
) -> Any:
    """A cosine-similarity index over ``(N, D)`` rows (normalised here, in batches).

    Args:
        vectors: The rows (any float dtype, e.g. a memory-mapped ``embeddings.npy``).
        kind: ``exact``, ``ivf`` (approximate) or ``auto`` (exact up to :data:`EXACT_LIMIT` rows).
        nlist: Cells of the IVF index (default :func:`default_nlist`).
        nprobe: Cells each query scans (IVF).
        seed: Seed of the training sample and of faiss' k-means.
    """
    faiss = _faiss()
    rows, dim = vectors.shape
    if rows == 0:
        raise ValueError("build_index needs at least one row")
    if kind == "exact" or (kind == "auto" and rows <= EXACT_LIMIT):
        index = faiss.IndexFlatIP(dim)
    elif kind in ("ivf", "auto"):
        cells = min(nlist or default_nlist(rows), rows)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = np.sort(np.random.default_rng(seed).permutation(rows)[: min(rows, 64 * cells)])
        index.train(unit_rows(vectors[sample]))
        index.nprobe = min(nprobe, cells)
    else:
        raise ValueError(f"build_index kind={kind!r} must be auto, exact or ivf")
    for start in range(0, rows, ADD_BATCH):
        index.add(unit_rows(vectors[start : start + ADD_BATCH]))
    return to_gpus(index)


def cached_index(embeddings: Embeddings, kind: IndexKind = "auto", nprobe: int = 32) -> Any:
    """:func:`build_index` over saved embeddings; an approximate index is written beside them
    (atomically) the first time and read back afterwards."""
    faiss = _faiss()
    rows = len(embeddings)
    exact = kind == "exact" or (kind == "auto" and rows <= EXACT_LIMIT)
    if exact or embeddings.folder is None:
        return build_index(embeddings.vectors, kind, nprobe=nprobe)
    path = Path(embeddings.folder, f"index-ivf-{default_nlist(rows)}.faiss")
    if path.is_file():
        index = faiss.read_index(os.fspath(path))
        index.nprobe = min(nprobe, index.nlist)
        return to_gpus(index)
    index = build_index(embeddings.vectors, "ivf", nprobe=nprobe)
    on_cpu = faiss.index_gpu_to_cpu(index) if type(index).__name__.startswith("Gpu") else index
    atomic_write(path, lambda temp: faiss.write_index(on_cpu, temp))
    return index


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar rows of each query, best first.

    Returns:
        ``(Q, k)`` similarities (float32) and ``(Q, k)`` row numbers (int64; -1 where an
        approximate index found fewer than ``k``).

    Raises:
        ValueError: ``k`` outside ``[1, rows]``, naming ``k``.
    """
    if not 1 <= k <= index.ntotal:
        raise ValueError(f"k={k} must be between 1 and the {index.ntotal:,} rows searched")
    scores, rows = index.search(unit_rows(queries), k)
    return scores, rows.astype(np.int64)


def check_k(k: int, rows: int, where: str, flag: str = "-k") -> None:
    """``k`` neighbours (or clusters) must fit the ``rows`` of ``where``: a one-line error if not."""
    if k < 1:
        raise ConfigError(f"{flag}={k} must be >= 1")
    if k > rows:
        raise ConfigError(f"{flag}={k} is larger than the {rows:,} images of {where}: give at most {rows}")
