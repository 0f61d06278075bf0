"""Neighbour search: the exact index agrees with brute force, the approximate one finds nearly all
true neighbours and is cached beside the embeddings, ``k`` is checked against the set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visiontransfer.data.index import PathTable
from visiontransfer.errors import ConfigError
from visiontransfer.features import search
from visiontransfer.features.nearest import nearest
from visiontransfer.features.store import Embeddings, unit_rows


def _clustered(rows: int, dim: int = 16, centres: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim))
    return (means[rng.integers(centres, size=rows)] + 0.3 * rng.normal(size=(rows, dim))).astype(np.float32)


def test_exact_search_is_brute_force_cosine() -> None:
    bank, queries = _clustered(500), _clustered(20, seed=1)
    index = search.build_index(bank * 7.0)  # scale does not matter: rows are normalised
    scores, rows = search.search(index, queries, 5)
    similarity = unit_rows(queries) @ unit_rows(bank).T
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(similarity, expected, axis=1), rtol=1e-5)


def test_the_approximate_index_finds_nearly_all_neighbours_and_is_cached(tmp_path: Path) -> None:
    vectors = _clustered(4000)
    np.save(tmp_path / "embeddings.npy", vectors)
    paths = PathTable("", [f"{i}.jpg" for i in range(4000)])
    rows = np.load(tmp_path / "embeddings.npy", mmap_mode="r")
    embeddings = Embeddings(rows, np.arange(4000), paths, None, [], {}, tmp_path)
    queries = _clustered(200, seed=2)
    _, exact = search.search(search.build_index(vectors, "exact"), queries, 10)
    index = search.cached_index(embeddings, "ivf")
    cached = tmp_path / f"index-ivf-{search.default_nlist(4000)}.faiss"
    assert index.nlist == search.default_nlist(4000) == 253 and cached.is_file()
    _, approximate = search.search(index, queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact, strict=True)])
    assert recall >= 0.9
    again = search.cached_index(embeddings, "ivf")  # read back, not rebuilt
    np.testing.assert_array_equal(search.search(again, queries, 10)[1], approximate)


def test_a_query_in_the_bank_is_not_its_own_neighbour() -> None:
    vectors = _clustered(50)
    paths = [f"/images/{i}.jpg" for i in range(50)]
    bank = Embeddings(vectors, np.arange(50), PathTable("", paths), None, [], {})
    _, rows = nearest(bank, vectors[[3, 7]], 4, query_paths=[paths[3], "/elsewhere/7.jpg"])
    assert 3 not in rows[0] and rows.shape == (2, 4)
    assert rows[1, 0] == 7  # another file with the same pixels is a neighbour


def test_k_must_fit_the_set() -> None:
    with pytest.raises(ConfigError, match=r"^-k=11 is larger than the 10 images of 'bank': give at most 10$"):
        search.check_k(11, 10, "'bank'")
    with pytest.raises(ConfigError, match=r"-k=0 must be >= 1"):
        search.check_k(0, 10, "'bank'")
    with pytest.raises(ValueError, match="k=3 must be between 1 and the 2 rows"):
        search.search(search.build_index(_clustered(2)), _clustered(1), 3)
