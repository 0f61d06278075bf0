"""The embeddings folder: chunks written atomically, finished ones recognised, merged into files that
numpy and the csv module read alone; plans compared on resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from visiontransfer.errors import ConfigError
from visiontransfer.features import store
from visiontransfer.features.store import Chunk, Embeddings

PLAN = {"backbone": "resnet10t", "dtype": "float32", "image_size": 32}


def _chunks() -> list[Chunk]:
    rng = np.random.default_rng(0)
    return [
        Chunk(
            0,
            rng.normal(size=(3, 4)).astype(np.float32),
            np.array([0, 1, 2]),
            ["a", "b", "c"],
            np.array([0, 1, 0]),
        ),
        Chunk(
            1,
            np.zeros((0, 0), np.float32),
            np.zeros(0, np.int64),
            [],
            np.zeros(0, np.int64),
            [("d", "corrupt")],
        ),
        Chunk(2, rng.normal(size=(2, 4)).astype(np.float32), np.array([4, 5]), ["e", "f"], np.array([1, 1])),
    ]


def test_chunks_merge_into_plain_files(tmp_path: Path) -> None:
    store.start(tmp_path, PLAN, overwrite=False)
    chunks = _chunks()
    for chunk in reversed(chunks):  # written in any order, by any rank
        store.write_chunk(tmp_path, chunk, ["cat", "dog"], rank=chunk.number % 2)
    assert store.finished_chunks(tmp_path) == {0, 1, 2}
    meta = store.merge_chunks(tmp_path, 3, {"plan": PLAN, "classes": ["cat", "dog"]})
    assert (
        meta["rows"] == 5 and meta["dim"] == 4 and meta["skipped"] == 1 and meta["written_by_ranks"] == [0, 1]
    )
    # Readable without visiontransfer: numpy and the csv module.
    rows = np.load(tmp_path / "embeddings.npy")
    np.testing.assert_array_equal(rows, np.concatenate([chunks[0].vectors, chunks[2].vectors]))
    with open(tmp_path / "index.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table == [["index", "path", "label"], ["0", "a", "cat"], ["1", "b", "dog"], ["2", "c", "cat"],
                     ["4", "e", "dog"], ["5", "f", "dog"]]  # fmt: skip
    assert (tmp_path / "skipped_files.txt").read_text() == "d\tcorrupt\n"
    assert not (tmp_path / "chunks").exists() and not (tmp_path / "plan.json").exists()
    loaded = Embeddings.load(tmp_path)
    assert len(loaded) == 5 and loaded.dim == 4 and loaded.classes == ["cat", "dog"]
    assert loaded.labels.tolist() == [0, 1, 0, 1, 1] and list(loaded.paths) == ["a", "b", "c", "e", "f"]
    assert loaded.index.tolist() == [0, 1, 2, 4, 5]
    np.testing.assert_allclose(np.linalg.norm(loaded.unit(), axis=1), 1.0, rtol=1e-6)


def test_a_chunk_counts_as_finished_only_with_its_marker(tmp_path: Path) -> None:
    chunk = _chunks()[0]
    store.write_chunk(tmp_path, chunk, None, rank=0)
    # What a kill mid-write leaves: rows and index of chunk 1 without the marker, a temporary file.
    (tmp_path / "chunks" / "chunk-000001.npy").write_bytes(b"partial")
    (tmp_path / "chunks" / ".chunk-000002.json.abc.tmp").write_text("{")
    assert store.finished_chunks(tmp_path) == {0}
    with pytest.raises(RuntimeError, match=r"chunks \[1\] were not written"):
        store.merge_chunks(tmp_path, 2, {"plan": PLAN})
    header = (tmp_path / "chunks" / "chunk-000000.csv").read_text().splitlines()[0]
    assert header == "index,path"  # unlabeled: no label column


def test_the_folder_check_resumes_the_same_plan_and_refuses_others(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    assert store.check_folder(folder, PLAN, False, "--out") == "new"
    store.start(folder, PLAN, overwrite=False)
    assert store.check_folder(folder, PLAN, False, "--out") == "resume"
    other = {**PLAN, "image_size": 64}
    with pytest.raises(
        ConfigError, match=r"--out=.*an unfinished run made with other settings \(image_size 32 -> 64\)"
    ):
        store.check_folder(folder, other, False, "--out")
    assert store.check_folder(folder, other, True, "--out") == "new"
    store.write_chunk(folder, _chunks()[0], None, rank=0)
    store.merge_chunks(folder, 1, {"plan": PLAN})
    assert store.check_folder(folder, PLAN, False, "--out") == "complete"
    with pytest.raises(ConfigError, match="holds embeddings made with other settings"):
        store.check_folder(folder, other, False, "--out")
    (folder / "notes.txt").write_text("mine")
    store.start(folder, other, overwrite=True)  # removes what a run wrote, and only that
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "plan.json"]
    assert json.loads((folder / "plan.json").read_text()) == other


def test_the_folder_check_refuses_a_file_and_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"--out=.*file.* is a file"):
        store.check_folder(tmp_path / "file", PLAN, True, "--out")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        store.check_folder(tmp_path / "photos", PLAN, False, "--out")


def test_loading_a_folder_without_embeddings_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"EMBEDDINGS=.*does not exist"):
        Embeddings.load(tmp_path / "nowhere")
    store.start(tmp_path, PLAN, overwrite=False)
    with pytest.raises(ConfigError, match=r"no finished embeddings .*run the same embed command again"):
        Embeddings.load(tmp_path)
