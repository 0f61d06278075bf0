"""Clusters: purity and NMI against hand-computed values, and k-means recovering separated groups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from visiontransfer.features.clusters import kmeans, normalized_mutual_information, purity


def test_purity_and_nmi_of_a_hand_example() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    clusters = np.array([0, 0, 1, 1, 2, 2])
    assert purity(labels, clusters) == pytest.approx(5 / 6)
    # I(Y;C) = 2 · (2/6) · ln 2 (the two pure pairs; the split cluster adds nothing);
    # H(Y) = ln 2, H(C) = ln 3: NMI = I / ((H(Y) + H(C)) / 2).
    mutual = 2 * (2 / 6) * math.log(2)
    assert normalized_mutual_information(labels, clusters) == pytest.approx(
        mutual / ((math.log(2) + math.log(3)) / 2)
    )


def test_nmi_bounds_and_unlabeled_rows() -> None:
    labels = np.array([0, 0, 1, 1, -1])
    assert normalized_mutual_information(labels, np.array([5, 5, 2, 2, 0])) == pytest.approx(1.0)  # renamed
    assert normalized_mutual_information(labels, np.array([0, 1, 0, 1, 1])) == pytest.approx(0.0, abs=1e-12)
    assert purity(labels, np.array([0, 1, 0, 1, 1])) == 0.5
    with pytest.raises(ValueError, match="at least one labeled image"):
        purity(np.array([-1, -1]), np.array([0, 1]))


def test_kmeans_recovers_separated_groups() -> None:
    rng = np.random.default_rng(0)
    directions = np.eye(8, dtype=np.float32)[:4] * 10
    labels = rng.integers(4, size=400)
    vectors = directions[labels] + rng.normal(scale=0.5, size=(400, 8)).astype(np.float32)
    centroids, assignment, similarity = kmeans(vectors, 4, seed=0)
    assert centroids.shape == (4, 8) and np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    assert normalized_mutual_information(labels, assignment) == pytest.approx(1.0)
    assert purity(labels, assignment) == 1.0 and similarity.min() > 0.8
    with pytest.raises(ValueError, match="k=401"):
        kmeans(vectors, 401)
