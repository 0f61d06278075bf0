"""``visiontransfer duplicates``: byte-identical files, then near-duplicate pairs by cosine similarity.

1. **Exact**: files of equal size are hashed (BLAKE2b of their bytes; tar shard members too), and
   rows with the same hash are duplicates whatever their names.
2. **Near**: each row's nearest neighbours (faiss, :mod:`~visiontransfer.features.search`) above a
   cosine ``threshold`` are near duplicates: re-encoded, resized, slightly cropped or edited
   copies. Pairs already found by their bytes are not listed again.

Written: ``duplicates.csv`` (``kind,similarity,path_a,path_b,row_a,row_b``, exact pairs first,
then near ones by falling similarity) and ``duplicates.png`` (the most similar pairs side by side).
What counts as near depends on the backbone: look at the picture before removing anything.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.data.shards import _tar_samples
from visiontransfer.errors import ConfigError
from visiontransfer.features.figures import _shard_member, grid_figure, save_figure
from visiontransfer.features.search import IndexKind, cached_index, search
from visiontransfer.features.store import Embeddings

CSV_NAME, PNG_NAME = "duplicates.csv", "duplicates.png"


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def _file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hashes(paths: Sequence[str]) -> dict[int, str]:
    """Hash of the bytes of every row that may have a twin: files sharing their size with
    another (the others can't be identical), and shard members (one pass per shard). Paths that
    are no file (the embedded set) are left out."""
    by_size: dict[int, list[int]] = defaultdict(list)
    in_shards: dict[str, dict[str, int]] = defaultdict(dict)
    for row, path in enumerate(paths):
        member = _shard_member(path)
        if member is not None:
            in_shards[member[0]][member[1]] = row
        elif os.path.isfile(path):
            by_size[os.path.getsize(path)].append(row)
    hashes = {row: _file_digest(paths[row]) for rows in by_size.values() if len(rows) > 1 for row in rows}
    for shard, keys in in_shards.items():
        for key, data, _ in _tar_samples(Path(shard)):
            if key in keys and data is not None:
                hashes[keys[key]] = _digest(data)
    return hashes


def byte_duplicates(paths: Sequence[str]) -> list[list[int]]:
    """Groups (two rows or more, sorted) of rows whose images have the same bytes."""
    groups: dict[str, list[int]] = defaultdict(list)
    for row, digest in sorted(content_hashes(paths).items()):
        groups[digest].append(row)
    return sorted(group for group in groups.values() if len(group) > 1)


def near_duplicates(
    embeddings: Embeddings, threshold: float = 0.95, neighbors: int = 10, index: IndexKind = "auto"
) -> list[tuple[int, int, float]]:
    """``(row_a, row_b, similarity)`` with ``row_a < row_b`` of every pair among each row's
    ``neighbors`` nearest whose cosine similarity is at least ``threshold``, most similar first."""
    rows = len(embeddings)
    k = min(neighbors + 1, rows)  # + the row itself
    faiss_index = cached_index(embeddings, index)
    firsts, seconds, similarities = [], [], []
    for start in range(0, rows, 4096):
        scores, near = search(faiss_index, np.asarray(embeddings.vectors[start : start + 4096]), k)
        own = np.arange(start, start + len(near))[:, None]  # (B, 1)
        keep = (near >= 0) & (near != own) & (scores >= threshold)  # (B, k)
        a = np.broadcast_to(own, near.shape)[keep]
        firsts.append(np.minimum(a, near[keep]))
        seconds.append(np.maximum(a, near[keep]))
        similarities.append(scores[keep])
    a, b, s = (np.concatenate(x) for x in (firsts, seconds, similarities))
    order = np.lexsort((-s, b, a))  # by pair, the highest similarity of each pair first
    a, b, s = a[order], b[order], s[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, s = a[first], b[first], s[first]
    by_similarity = np.lexsort((b, a, -s))
    return [(int(a[i]), int(b[i]), float(s[i])) for i in by_similarity]


@dataclass
class Duplicates:
    """Duplicates among saved embeddings.

    Attributes:
        embeddings: The embeddings searched.
        exact: Groups of rows with byte-identical images.
        near: ``(row_a, row_b, similarity)`` pairs above the threshold, not byte-identical.
        threshold: The cosine similarity threshold of ``near``.
    """

    embeddings: Embeddings
    exact: list[list[int]]
    near: list[tuple[int, int, float]]
    threshold: float

    def pairs(self) -> list[tuple[str, int, int, float]]:
        """``(kind, row_a, row_b, similarity)``: each exact group as pairs with its first row, then
        the near pairs."""
        exact = [("exact", group[0], other, 1.0) for group in self.exact for other in group[1:]]
        return [*exact, *(("near", a, b, s) for a, b, s in self.near)]

    def write(self, out: str | os.PathLike[str], max_pictured: int = 12) -> None:
        """``duplicates.csv`` and ``duplicates.png`` into ``out``, atomically."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        paths = self.embeddings.paths

        def write_csv(temp: str) -> None:
            with open(temp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["kind", "similarity", "path_a", "path_b", "row_a", "row_b"])
                for kind, a, b, s in self.pairs():
                    writer.writerow([kind, f"{s:.6f}", paths[a], paths[b], a, b])

        atomic_write(folder / CSV_NAME, write_csv)
        save_figure(self.figure(max_pictured), folder / PNG_NAME)

    def figure(self, max_pictured: int = 12):  # type: ignore[no-untyped-def]
        """The first ``max_pictured`` pairs of :meth:`pairs`, two pairs per row."""
        pairs = self.pairs()[:max_pictured]
        paths = self.embeddings.paths
        pictured = [paths[r] for _, a, b, _ in pairs for r in (a, b)] or [""]
        titles = [t for kind, _, _, s in pairs for t in (f"{kind} {s:.3f}", "")] or ["no duplicates"]
        title = (
            f"{len(self.exact)} groups of identical files, "
            f"{len(self.near)} pairs with cosine >= {self.threshold}"
        )
        return grid_figure(
            pictured,
            ncols=4 if len(pictured) >= 4 else len(pictured),
            titles=titles,
            title=title,
            seed=int(self.embeddings.meta.get("plan", {}).get("seed", 0)),
        )


def find_duplicates(
    embeddings: str | Embeddings,
    threshold: float = 0.95,
    neighbors: int = 10,
    out: str | None = None,
    by_bytes: bool = True,
    index: IndexKind = "auto",
    max_pictured: int = 12,
) -> Duplicates:
    """Byte-identical images and near-duplicate pairs among saved embeddings.

    Args:
        embeddings: A folder written by ``visiontransfer embed``, or its :class:`Embeddings`.
        threshold: Cosine similarity from which two images are near duplicates, in (0, 1].
        neighbors: Nearest neighbours of each image checked against the threshold.
        out: Folder for ``duplicates.csv`` and ``duplicates.png`` (None: write nothing).
        by_bytes: Also hash the files to find byte-identical ones (reads every file that shares
            its size with another).
        index: ``exact``, ``ivf`` (approximate) or ``auto``.
        max_pictured: Pairs drawn in the picture.
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"--threshold={threshold} must be in (0, 1]")
    if neighbors < 1:
        raise ConfigError(f"--neighbors={neighbors} must be >= 1")
    emb = embeddings if isinstance(embeddings, Embeddings) else Embeddings.load(embeddings)
    exact = byte_duplicates(emb.paths) if by_bytes else []
    group_of = {row: g for g, group in enumerate(exact) for row in group}
    near = [
        p
        for p in near_duplicates(emb, threshold, neighbors, index)
        if p[0] not in group_of or group_of[p[0]] != group_of.get(p[1])
    ]
    result = Duplicates(emb, exact, near, threshold)
    if out is not None:
        result.write(out, max_pictured)
    return result
