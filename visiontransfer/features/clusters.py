"""``visiontransfer clusters``: k-means over saved embeddings, and how well clusters match labels.

Spherical k-means (faiss; cosine geometry: rows and centroids L2-normalised) assigns every image
to one of ``k`` clusters. With labels, two scores say how far the clusters follow the classes:

- **purity**: the share of images whose cluster's most common class is their own,
  ``Σ_c max_y n(c, y) / N`` (1 when every cluster holds one class; grows with ``k``);
- **NMI**, normalised mutual information ``I(Y; C) / ((H(Y) + H(C)) / 2)`` (Strehl and Ghosh
  2002, the arithmetic normalisation of scikit-learn's default): 0 for clusters independent of
  the labels, 1 for the labels themselves.

Written: ``clusters.csv`` (each row's cluster and similarity to its centroid), ``clusters.json``
(sizes, purity, NMI) and ``clusters.png`` (the images nearest each centroid, one row per cluster).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.features.figures import grid_figure, save_figure
from visiontransfer.features.search import ADD_BATCH, check_k, to_gpus
from visiontransfer.features.store import Embeddings, unit_rows

CSV_NAME, JSON_NAME, PNG_NAME = "clusters.csv", "clusters.json", "clusters.png"


def contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """``(classes, clusters)`` counts of images per label and cluster (labels < 0 left out)."""
    keep = labels >= 0
    y, c = labels[keep].astype(np.int64), clusters[keep].astype(np.int64)
    table = np.zeros((int(y.max(initial=-1)) + 1, int(c.max(initial=-1)) + 1), dtype=np.int64)
    np.add.at(table, (y, c), 1)
    return table


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Share of (labeled) images in the majority class of their cluster."""
    table = contingency(labels, clusters)
    total = table.sum()
    if total == 0:
        raise ValueError("purity needs at least one labeled image")
    return float(table.max(axis=0).sum() / total)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(labels: np.ndarray, clusters: np.ndarray) -> float:
    """``I(Y; C) / ((H(Y) + H(C)) / 2)`` of labels and clusters (labels < 0 left out); 1 when both
    are a single group."""
    table = contingency(labels, clusters).astype(np.float64)
    total = table.sum()
    if total == 0:
        raise ValueError("normalized_mutual_information needs at least one labeled image")
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    h_y, h_c = _entropy(rows), _entropy(cols)
    if h_y == 0 and h_c == 0:
        return 1.0
    nz = table > 0
    outer = np.outer(rows, cols)[nz]
    mutual = float((table[nz] / total * np.log(table[nz] * total / outer)).sum())
    return max(0.0, mutual / ((h_y + h_c) / 2))


@dataclass
class Clusters:
    """K-means clusters of saved embeddings.

    Attributes:
        embeddings: The clustered embeddings.
        assignment: ``(N,)`` cluster of every row.
        similarity: ``(N,)`` cosine similarity of every row to its centroid.
        centroids: ``(k, D)`` unit centroids.
        purity: Cluster purity against the labels (None without labels).
        nmi: Normalised mutual information with the labels (None without labels).
    """

    embeddings: Embeddings
    assignment: np.ndarray
    similarity: np.ndarray
    centroids: np.ndarray
    purity: float | None
    nmi: float | None

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def sizes(self) -> np.ndarray:
        return np.bincount(self.assignment, minlength=self.k)

    def summary(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "rows": len(self.assignment),
            "purity": self.purity,
            "nmi": self.nmi,
            "sizes": self.sizes().tolist(),
        }

    def write(self, out: str | os.PathLike[str], per_cluster: int = 8, max_pictured: int = 20) -> None:
        """``clusters.csv``, ``clusters.json`` and ``clusters.png`` into ``out``, atomically."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        names = self.embeddings.label_names()

        def write_csv(temp: str) -> None:
            with open(temp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["index", "path", "cluster", "similarity"] + (["label"] if names else []))
                for r in range(len(self.assignment)):
                    row = [
                        int(self.embeddings.index[r]),
                        self.embeddings.paths[r],
                        int(self.assignment[r]),
                        f"{self.similarity[r]:.6f}",
                    ]
                    writer.writerow(row + ([names[r]] if names else []))

        atomic_write(folder / CSV_NAME, write_csv)
        text = json.dumps(self.summary(), indent=1) + "\n"
        atomic_write(folder / JSON_NAME, lambda temp: Path(temp).write_text(text))
        save_figure(self.figure(per_cluster, max_pictured), folder / PNG_NAME)

    def figure(self, per_cluster: int = 8, max_pictured: int = 20):  # type: ignore[no-untyped-def]
        """The ``per_cluster`` images nearest each centroid, one row per cluster (the largest
        ``max_pictured`` clusters), titled with the class when labeled."""
        names = self.embeddings.label_names()
        sizes = self.sizes()
        largest = np.argsort(-sizes, kind="stable")[:max_pictured]
        paths, titles = [], []
        for cluster in largest:
            members = np.flatnonzero(self.assignment == cluster)
            closest = members[np.argsort(-self.similarity[members], kind="stable")[:per_cluster]]
            for position in range(per_cluster):
                row = int(closest[position]) if position < len(closest) else -1
                paths.append(self.embeddings.paths[row] if row >= 0 else "")
                label = names[row] if names and row >= 0 else ""
                first = f"c{int(cluster)} ({sizes[cluster]})" + (f" {label}" if label else "")
                titles.append(first if position == 0 else label)
        score = f"; purity {self.purity:.3f}, NMI {self.nmi:.3f}" if self.nmi is not None else ""
        title = f"k-means, {self.k} clusters: the images nearest each centroid{score}"
        return grid_figure(
            paths,
            ncols=per_cluster,
            titles=titles,
            title=title,
            seed=int(self.embeddings.meta.get("plan", {}).get("seed", 0)),
        )


def kmeans(
    vectors: np.ndarray, k: int, iterations: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherical k-means (faiss) of ``(N, D)`` rows.

    Returns:
        ``(k, D)`` unit centroids, ``(N,)`` assignment and ``(N,)`` cosine similarity to it.
    """
    import faiss

    rows, dim = vectors.shape
    if not 1 <= k <= rows:
        raise ValueError(f"kmeans k={k} must be between 1 and the {rows} rows")
    sample = np.sort(np.random.default_rng(seed).permutation(rows)[: min(rows, 256 * k)])
    trainer = faiss.Kmeans(
        dim,
        k,
        niter=iterations,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=256,
        gpu=hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0,
    )
    trainer.train(unit_rows(vectors[sample]))
    assert trainer.centroids is not None
    centroids = unit_rows(trainer.centroids)
    index = faiss.IndexFlatIP(dim)
    index.add(centroids)
    index = to_gpus(index)
    assignment = np.empty(rows, dtype=np.int64)
    similarity = np.empty(rows, dtype=np.float32)
    for start in range(0, rows, ADD_BATCH):
        scores, nearest = index.search(unit_rows(vectors[start : start + ADD_BATCH]), 1)
        assignment[start : start + len(nearest)] = nearest[:, 0]
        similarity[start : start + len(nearest)] = scores[:, 0]
    return centroids, assignment, similarity


def cluster(
    embeddings: str | Embeddings,
    k: int = 10,
    out: str | None = None,
    iterations: int = 20,
    seed: int = 0,
    per_cluster: int = 8,
    max_pictured: int = 20,
) -> Clusters:
    """K-means clusters of saved embeddings, with purity and NMI when they have labels.

    Args:
        embeddings: A folder written by ``visiontransfer embed``, or its :class:`Embeddings`.
        k: Number of clusters.
        out: Folder for ``clusters.csv``, ``clusters.json`` and ``clusters.png`` (None: nothing).
        iterations: K-means iterations.
        seed: Seed of the training sample and the initial centroids.
        per_cluster: Images per cluster in the picture.
        max_pictured: Clusters in the picture (the largest).

    Raises:
        ConfigError: ``k`` larger than the number of rows.
    """
    emb = embeddings if isinstance(embeddings, Embeddings) else Embeddings.load(embeddings)
    check_k(k, len(emb), repr(os.fspath(emb.folder or "the embeddings")))
    centroids, assignment, similarity = kmeans(emb.vectors, k, iterations, seed)
    pure, nmi = None, None
    if emb.labels is not None and (emb.labels >= 0).any():
        pure, nmi = purity(emb.labels, assignment), normalized_mutual_information(emb.labels, assignment)
    result = Clusters(emb, assignment, similarity, centroids, pure, nmi)
    if out is not None:
        result.write(out, per_cluster, max_pictured)
    return result
