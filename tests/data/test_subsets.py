"""Stratified validation splits and nested small-label subsets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from visiontransfer.data.subsets import stratified_split, stratified_subset


@pytest.fixture
def labels() -> np.ndarray:
    """Unbalanced classes: 200, 100, 50 and 10 samples, shuffled."""
    counts = [200, 100, 50, 10]
    values = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(123).permutation(values)


def test_split_keeps_class_shares_and_is_disjoint(labels: np.ndarray):
    train, val = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted
    np.testing.assert_array_equal(np.bincount(labels[val]), [40, 20, 10, 2])
    np.testing.assert_array_equal(np.bincount(labels[train]), [160, 80, 40, 8])


def test_split_deterministic_by_seed(labels: np.ndarray):
    first, again = stratified_split(labels, 0.2, seed=5), stratified_split(labels, 0.2, seed=5)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    other = stratified_split(labels, 0.2, seed=6)
    assert not np.array_equal(first[1], other[1])
    np.testing.assert_array_equal(np.bincount(labels[other[1]]), np.bincount(labels[first[1]]))


def test_split_small_classes_keep_one_each_side():
    labels = np.array([0, 1, 1, 2, 2, 2])
    train, val = stratified_split(labels, 0.01, seed=0)
    # Each class with two or more samples gives one to validation and keeps one for training.
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=3), [0, 1, 1])
    np.testing.assert_array_equal(np.bincount(labels[train], minlength=3), [1, 1, 2])
    train, val = stratified_split(labels, 0.99, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[train], minlength=3), [1, 1, 1])


def test_split_single_class_unlabeled_set():
    train, val = stratified_split(np.zeros(20, np.int64), 0.25, seed=0)
    assert (len(train), len(val)) == (15, 5)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_fraction_out_of_range_names_the_parameter(fraction: float):
    with pytest.raises(ValueError, match=rf"^val_fraction={fraction} must be in \(0, 1\)"):
        stratified_split(np.zeros(10, np.int64), fraction)


@pytest.mark.parametrize("per_class", [1, 5, 10, 30])
def test_samples_per_class_exact_counts(labels: np.ndarray, per_class: int):
    chosen = stratified_subset(labels, samples_per_class=per_class, seed=0)
    expected = np.minimum(per_class, [200, 100, 50, 10])
    np.testing.assert_array_equal(np.bincount(labels[chosen]), expected)
    assert len(np.unique(chosen)) == len(chosen)
    assert np.all(np.diff(chosen) > 0)


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.01, [2, 1, 1, 1]), (0.1, [20, 10, 5, 1]), (0.25, [50, 25, 13, 3]), (1.0, [200, 100, 50, 10])],
)
def test_label_fraction_exact_counts(labels: np.ndarray, fraction: float, expected: list[int]):
    chosen = stratified_subset(labels, label_fraction=fraction, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[chosen]), expected)


def test_subsets_are_nested_for_a_fixed_seed(labels: np.ndarray):
    fractions = [0.01, 0.1, 0.5, 1.0]
    sets = [set(stratified_subset(labels, label_fraction=f, seed=3).tolist()) for f in fractions]
    for small, large in itertools.pairwise(sets):
        assert small < large
    assert sets[-1] == set(range(len(labels)))
    per_class = [set(stratified_subset(labels, samples_per_class=k, seed=3).tolist()) for k in (1, 4, 16)]
    assert per_class[0] < per_class[1] < per_class[2]


def test_subsets_deterministic_and_differ_by_seed(labels: np.ndarray):
    first = stratified_subset(labels, samples_per_class=5, seed=1)
    np.testing.assert_array_equal(first, stratified_subset(labels, samples_per_class=5, seed=1))
    assert not np.array_equal(first, stratified_subset(labels, samples_per_class=5, seed=2))


def test_subset_without_budget_is_everything(labels: np.ndarray):
    np.testing.assert_array_equal(stratified_subset(labels), np.arange(len(labels)))


def test_subset_both_budgets_is_an_error(labels: np.ndarray):
    with pytest.raises(ValueError, match=r"samples_per_class or label_fraction, not both"):
        stratified_subset(labels, samples_per_class=2, label_fraction=0.5)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"samples_per_class": 0}, "samples_per_class=0"),
        ({"samples_per_class": -3}, "samples_per_class=-3"),
        ({"label_fraction": 0.0}, "label_fraction=0.0"),
        ({"label_fraction": 1.01}, "label_fraction=1.01"),
        ({"label_fraction": -0.5}, "label_fraction=-0.5"),
    ],
)
def test_subset_out_of_range_names_the_parameter(labels: np.ndarray, kwargs: dict, flag: str):
    with pytest.raises(ValueError, match="^" + flag.replace(".", r"\.")):
        stratified_subset(labels, **kwargs)
