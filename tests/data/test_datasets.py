"""ImageFileDataset, the collate function and the skip log: unreadable files never crash an epoch."""

from __future__ import annotations

import warnings

import albumentations as A
import numpy as np
import pytest
import torch

from visiontransfer.data.datasets import ImageFileDataset, SkipLog, Skipped, collate_samples, to_chw_tensor
from visiontransfer.data.index import PathTable
from visiontransfer.data.transforms import eval_transform


@pytest.fixture
def zoo_dataset(image_zoo) -> tuple[ImageFileDataset, list[str], list[str]]:
    good = [str(case.path) for case in image_zoo.valid.values()]
    bad = [str(case.path) for case in image_zoo.broken.values()]
    assert len(good) > len(bad)
    paths = [p for pair in zip(good[: len(bad)], bad, strict=True) for p in pair] + good[len(bad) :]
    labels = np.arange(len(paths)) % 3
    return ImageFileDataset(PathTable("", paths), labels, eval_transform(16)), good, bad


def test_every_file_gives_a_sample_or_a_skip(zoo_dataset):
    dataset, _, bad = zoo_dataset
    for i in range(len(dataset)):
        item = dataset[i]
        if dataset.paths[i] in bad:
            assert isinstance(item, Skipped)
            assert item.path == dataset.paths[i] and item.reason
        else:
            assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.uint8
            assert item["label"] == i % 3 and item["index"] == i


def test_collate_drops_skipped_and_reports_them(zoo_dataset):
    dataset, good, bad = zoo_dataset
    batch = collate_samples([dataset[i] for i in range(len(dataset))])
    assert batch["image"].shape == (len(good), 3, 16, 16)
    assert batch["image"].dtype == torch.uint8
    assert batch["label"].dtype == torch.int64 and batch["index"].dtype == torch.int64
    assert sorted(dataset.paths[int(i)] for i in batch["index"]) == sorted(good)
    assert batch["label"].tolist() == [int(i) % 3 for i in batch["index"]]
    assert sorted(path for path, _ in batch["skipped"]) == sorted(bad)


def test_collate_of_only_skipped_files_is_an_empty_batch():
    batch = collate_samples([Skipped("a.jpg", "empty"), Skipped("b.jpg", "corrupt")])
    assert batch["image"].shape[0] == 0 and batch["image"].dtype == torch.uint8
    assert batch["label"].shape == (0,) and batch["index"].shape == (0,)
    assert batch["skipped"] == [("a.jpg", "empty"), ("b.jpg", "corrupt")]


def test_unlabeled_files_get_label_minus_one(image_zoo):
    dataset = ImageFileDataset(PathTable("", [str(image_zoo.valid["rgba.png"].path)]), None, A.Compose([]))
    sample = dataset[0]
    assert sample["label"] == -1
    np.testing.assert_array_equal(
        sample["image"].permute(1, 2, 0).numpy(), image_zoo.valid["rgba.png"].expected
    )


def test_label_count_must_match():
    with pytest.raises(ValueError, match="2 labels for 3 paths"):
        ImageFileDataset(PathTable("", ["a", "b", "c"]), np.zeros(2, np.int64), A.Compose([]))


def test_to_chw_tensor():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    tensor = to_chw_tensor(image)
    assert tensor.shape == (3, 2, 3) and tensor.is_contiguous()
    np.testing.assert_array_equal(tensor.permute(1, 2, 0).numpy(), image)


def test_skip_log_counts_each_file_once_and_warns_once():
    log = SkipLog()
    log.add([("b.jpg", "truncated"), ("a.jpg", "empty")])
    log.add([("b.jpg", "other reason")])
    assert log.paths == ["a.jpg", "b.jpg"]
    assert log.reasons["b.jpg"] == "truncated"
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image file\(s\) of 10:") as record:
        log.warn_once(10)
    assert len(record) == 1
    assert "a.jpg: empty" in str(record[0].message) and "b.jpg: truncated" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log.warn_once(10)  # nothing new: silent
    log.add([(f"{i}.jpg", "bad") for i in range(7)])
    with pytest.warns(UserWarning, match=r"(?s)skipped 9 unreadable.*and 4 more"):
        log.warn_once()
