"""Deterministic, stratified index subsets: validation splits and small-label training sets.

Both draw one seeded permutation per class and take a prefix of it, so for a fixed seed the
subsets are nested: the 1% set is inside the 10% set, which is inside 100%. That makes a
label-efficiency curve measure the labels, not the luck of the draw.
"""

from __future__ import annotations

import math

import numpy as np


def _class_permutations(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """One seeded permutation of the indices of each class, classes in label order."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and validation, keeping each class's share.

    Every class with at least two samples gives at least one to validation and keeps at least one
    for training.

    Args:
        labels: ``(N,)`` integer class labels.
        val_fraction: Share of each class put in validation, in (0, 1).
        seed: Seed of the draw.

    Returns:
        ``(train indices, val indices)``, each sorted.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
    train, val = [], []
    for perm in _class_permutations(np.asarray(labels), seed + 1):
        n_val = min(max(1, round(val_fraction * len(perm))), len(perm) - 1) if len(perm) > 1 else 0
        val.append(perm[:n_val])
        train.append(perm[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_subset(
    labels: np.ndarray,
    samples_per_class: int | None = None,
    label_fraction: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Pick a class-balanced labeled subset (positions into ``labels``), nested across sizes.

    Give one of ``samples_per_class`` (at most that many per class) or ``label_fraction`` (that
    share of each class, rounded up, at least one); with neither, every index is returned.

    Returns:
        Sorted positions into ``labels``.
    """
    labels = np.asarray(labels)
    if samples_per_class is not None and label_fraction is not None:
        raise ValueError("give either samples_per_class or label_fraction, not both")
    if samples_per_class is None and label_fraction is None:
        return np.arange(len(labels))
    if samples_per_class is not None and samples_per_class < 1:
        raise ValueError(f"samples_per_class={samples_per_class} must be >= 1")
    if label_fraction is not None and not 0.0 < label_fraction <= 1.0:
        raise ValueError(f"label_fraction={label_fraction} must be in (0, 1]")
    chosen = []
    for perm in _class_permutations(labels, seed):
        if samples_per_class is not None:
            count = min(samples_per_class, len(perm))
        else:
            assert label_fraction is not None
            count = max(1, math.ceil(label_fraction * len(perm) - 1e-9))
        chosen.append(perm[:count])
    return np.sort(np.concatenate(chosen))
