"""PretrainDataModule and ClassificationDataModule on real folders, manifests and the embedded set.

No model is needed: the loaders are iterated and every batch goes through
``on_before_batch_transfer`` as Lightning does.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from visiontransfer.data import base
from visiontransfer.data.classification import ClassificationDataModule
from visiontransfer.data.pretrain import PretrainDataModule

QUIET = {"pin_memory": False, "persistent_workers": False}
"""Loader options of every test: no pinning, no workers left behind."""

SUMMARY = "unreadable image file"


def run_loader(dm: L.LightningDataModule, split: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The batches of one pass over a split, each through ``on_before_batch_transfer``."""
    loader = getattr(dm, f"{split}_dataloader")()
    batches = []
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        batches.append(dm.on_before_batch_transfer(batch, 0))
    return batches


def served_paths(dm: L.LightningDataModule, split: str, batches: list[dict[str, Any]]) -> list[str]:
    paths = dm.datasets[split].paths
    return [paths[int(i)] for batch in batches for i in batch["index"]]


def matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


# -- a folder mixing good and broken files -------------------------------------------------------
@pytest.fixture
def mixed_folder(tmp_path: Path, cifar_tree, link_files, image_zoo) -> tuple[Path, list[str], list[str]]:
    """12 CIFAR photos, 17 odd-but-valid files and 7 broken ones: 36 files, 29 readable."""
    root = tmp_path / "mixed"
    cifar_tree(root / "cifar", classes=("cat", "dog", "ship"), per_class=4)
    link_files([c.path for c in image_zoo.valid.values()], root / "odd")
    broken = link_files([c.path for c in image_zoo.broken.values()], root / "broken")
    good = [p for p in root.rglob("*") if p.is_file() and p.parent.name != "broken"]
    return root, sorted(map(str, good)), sorted(map(str, broken))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pretrain_skips_and_counts_broken_files(mixed_folder, num_workers: int):
    root, good, broken = mixed_folder
    assert (len(good), len(broken)) == (29, 7)
    dm = PretrainDataModule(
        root=str(root), val_fraction=0.25, image_size=16, batch_size=9, num_workers=num_workers, **QUIET
    )
    dm.setup("fit")
    assert (len(dm.datasets["train"]), len(dm.datasets["val"])) == (27, 9)  # 3 full training batches
    served = []
    for split in ("train", "val"):
        batches = run_loader(dm, split)
        for batch in batches:
            assert "skipped" not in batch  # taken out before the batch reaches the device
            assert batch["image"].dtype == torch.uint8
            assert batch["image"].shape[1:] == (3, 16, 16)
            assert (batch["label"] == -1).all()
        served += served_paths(dm, split, batches)
    assert sorted(served) == good  # every readable file once, no broken one
    assert dm.skipped_files == broken
    assert set(dm.skip_log.reasons) == set(broken)
    assert all(dm.skip_log.reasons[p] for p in broken)

    with pytest.warns(UserWarning, match=r"skipped 7 unreadable image file\(s\) of 36:") as record:
        dm.teardown("fit")
    summaries = [w for w in record if SUMMARY in str(w.message)]
    assert len(summaries) == 1
    assert "skipped_files" in str(summaries[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.teardown("validate")  # nothing new since: no second warning


def test_skipped_files_written_to_log_dir(mixed_folder, tmp_path: Path):
    root, _, broken = mixed_folder
    dm = PretrainDataModule(root=str(root), val_fraction=0.25, batch_size=64, num_workers=0, **QUIET)
    dm.setup("fit")
    run_loader(dm, "train")
    run_loader(dm, "val")
    trainer = SimpleNamespace(is_global_zero=True, loggers=[], default_root_dir=str(tmp_path / "logs"))
    dm.trainer = trainer  # type: ignore[assignment]
    with pytest.warns(UserWarning, match=SUMMARY):
        dm.teardown("fit")
    lines = (tmp_path / "logs" / "skipped_files.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == broken
    assert all(line.split("\t")[1] for line in lines)


def test_no_broken_files_no_warning(tmp_path: Path, cifar_tree):
    root = cifar_tree(tmp_path / "clean", classes=("cat",), per_class=5)
    dm = PretrainDataModule(root=str(root), val_fraction=0.2, batch_size=2, num_workers=0, **QUIET)
    dm.setup("fit")
    run_loader(dm, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.teardown("fit")
    assert dm.skipped_files == []


# -- folder errors -------------------------------------------------------------------------------
def test_pretrain_empty_folder(tmp_path: Path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    dm = PretrainDataModule(root=str(tmp_path / "empty"), num_workers=0)
    with pytest.raises(
        ValueError, match=rf"no image files found in --data\.root='{re.escape(str(tmp_path))}/empty'"
    ):
        dm.setup("fit")


def test_pretrain_only_unreadable_files(tmp_path: Path, image_zoo, link_files):
    folder = tmp_path / "all_bad"
    link_files([c.path for c in image_zoo.broken.values()], folder)
    dm = PretrainDataModule(root=str(folder), num_workers=0)
    with pytest.raises(
        ValueError, match=rf"no readable image in --data\.root='{re.escape(str(folder))}'"
    ) as caught:
        dm.setup("fit")
    assert "failed to decode" in str(caught.value)


def test_pretrain_missing_folder(tmp_path: Path):
    # Checked when the datamodule is built, before the trainer or any training starts.
    with pytest.raises(FileNotFoundError, match=rf"--data\.root='{re.escape(str(tmp_path))}/nope'"):
        PretrainDataModule(root=str(tmp_path / "nope"), num_workers=0)


def test_pretrain_root_and_manifest_together():
    with pytest.raises(ValueError, match=r"one of --data\.root, --data\.manifest or --data\.shards"):
        PretrainDataModule(root="a", manifest="b.txt")


def test_pretrain_from_text_manifest(tmp_path: Path, cifar_tree):
    cifar_tree(tmp_path / "imgs", classes=("frog", "deer"), per_class=5)
    listed = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "imgs").rglob("*.jpg"))
    (tmp_path / "list.txt").write_text("# pretraining images\n" + "\n".join(listed) + "\n")
    dm = PretrainDataModule(
        manifest=str(tmp_path / "list.txt"),
        val_fraction=0.2,
        image_size=16,
        batch_size=4,
        num_workers=0,
        **QUIET,
    )
    dm.setup("fit")
    assert (len(dm.datasets["train"]), len(dm.datasets["val"])) == (8, 2)
    served = served_paths(dm, "train", run_loader(dm, "train")) + served_paths(
        dm, "val", run_loader(dm, "val")
    )
    assert sorted(served) == sorted(str(tmp_path / p) for p in listed)


def test_argument_errors_name_the_flag():
    with pytest.raises(ValueError, match=r"--data\.batch_size=0"):
        PretrainDataModule(batch_size=0)
    with pytest.raises(ValueError, match=r"--data\.synthetic_size=8"):
        ClassificationDataModule(synthetic_size=8)
    with pytest.raises(ValueError, match=r"--data\.augment='blur'"):
        PretrainDataModule(augment="blur")  # type: ignore[arg-type]


# -- the embedded default set --------------------------------------------------------------------
def embedded_pretrain(**kwargs: Any) -> PretrainDataModule:
    options = {"synthetic_size": 64, "batch_size": 16, "num_workers": 0, **QUIET, **kwargs}
    dm = PretrainDataModule(**options)
    dm.setup("fit")
    return dm


def test_pretrain_embedded_default_is_deterministic():
    first = run_loader(embedded_pretrain(), "val")
    second = run_loader(embedded_pretrain(), "val")
    assert len(first) == len(second) == 4  # 64 validation scenes at least
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["label"], b["label"])


@pytest.mark.parametrize("size", [16, 32, 48])
def test_pretrain_embedded_respects_image_size(size: int):
    dm = embedded_pretrain(image_size=size)
    for split in ("train", "val"):
        batch = run_loader(dm, split, limit=1)[0]
        assert batch["image"].shape == (16, 3, size, size)
        assert batch["image"].dtype == torch.uint8
        assert ((batch["label"] >= 0) & (batch["label"] < 10)).all()
    assert len(dm.datasets["train"]) == 64
    with pytest.raises(RuntimeError, match="no test set"):
        dm.test_dataloader()


# -- reproducibility and worker seeding ----------------------------------------------------------
def first_batches(make: Any, count: int = 2) -> list[dict[str, Any]]:
    L.seed_everything(0)
    dm = make()
    dm.setup("fit")
    return run_loader(dm, "train", limit=count)


def test_two_fresh_datamodules_give_identical_batches_with_workers():
    def make() -> PretrainDataModule:
        return PretrainDataModule(synthetic_size=64, batch_size=8, num_workers=2, **QUIET)

    first, second = first_batches(make), first_batches(make)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["image"], b["image"])


@pytest.fixture
def identical_images(tmp_path: Path) -> Path:
    """20 copies of one picture: any difference between samples is augmentation."""
    picture = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    folder = tmp_path / "same"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(picture).save(folder / f"{i:02d}.png")
    return folder


def test_workers_get_different_augmentation_streams(identical_images: Path, monkeypatch):
    def make() -> PretrainDataModule:
        return PretrainDataModule(
            root=str(identical_images), val_fraction=0.2, batch_size=4, num_workers=2, **QUIET
        )

    # Batch 0 comes from worker 0 and batch 1 from worker 1, in both runs.
    seeded = first_batches(make)
    assert not torch.equal(seeded[0]["image"], seeded[1]["image"])
    assert len({bytes(img.numpy()) for img in seeded[0]["image"]}) > 1
    again = first_batches(make)
    assert torch.equal(seeded[0]["image"], again[0]["image"])
    assert torch.equal(seeded[1]["image"], again[1]["image"])
    # Training samples carry their own seeds (ResumableSampler), so the worker streams don't matter:
    # without per-worker seeding the batches are the same, not copies of each other.
    monkeypatch.setattr(base, "_seed_worker", lambda worker_id: None)
    unseeded = first_batches(make)
    assert torch.equal(unseeded[0]["image"], seeded[0]["image"])
    assert torch.equal(unseeded[1]["image"], seeded[1]["image"])


# -- classification ------------------------------------------------------------------------------
def labeled_dm(**kwargs: Any) -> ClassificationDataModule:
    options = {"image_size": 32, "batch_size": 4, "num_workers": 0, **QUIET, **kwargs}
    return ClassificationDataModule(**options)


def class_of(path: str) -> str:
    return Path(path).parent.name


def assert_labels_match_folders(dm: ClassificationDataModule, split: str) -> None:
    dataset = dm.datasets[split]
    for i in range(len(dataset)):
        assert dm.classes[int(dataset.labels[i])] == class_of(dataset.paths[i])


def test_class_per_folder_tree_carves_stratified_val(tmp_path: Path, cifar_tree):
    root = cifar_tree(tmp_path / "tree", classes=("dog", "airplane", "cat"), per_class=6)
    dm = labeled_dm(root=str(root), val_fraction=1 / 3)
    assert dm.classes == ["airplane", "cat", "dog"]
    assert dm.num_classes == 3
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    np.testing.assert_array_equal(dm.train_label_counts(), [4, 4, 4])
    np.testing.assert_array_equal(np.bincount(val.labels, minlength=3), [2, 2, 2])
    assert not set(train.paths) & set(val.paths)
    assert len(set(train.paths) | set(val.paths)) == 18
    assert "test" not in dm.datasets and dm.datasets["predict"] is val
    assert_labels_match_folders(dm, "train")
    assert_labels_match_folders(dm, "val")
    batch = run_loader(dm, "val", limit=1)[0]
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.uint8
    paths = served_paths(dm, "val", [batch])
    assert [dm.classes[int(y)] for y in batch["label"]] == [class_of(p) for p in paths]


def test_split_folders_cifar_layout(tmp_path: Path, cifar_tree):
    root = tmp_path / "cifar"
    cifar_tree(root / "train", classes=("cat", "dog"), per_class=6)
    cifar_tree(root / "test", classes=("cat", "dog"), per_class=3, split="test")
    dm = labeled_dm(root=str(root), val_fraction=1 / 3)
    assert dm.classes == ["cat", "dog"]  # not ["test", "train"]
    dm.setup("fit")
    train, val, test = (dm.datasets[s] for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (8, 4, 6)
    assert all(p.startswith(str(root / "train")) for p in [*train.paths, *val.paths])
    assert all(p.startswith(str(root / "test")) for p in test.paths)
    assert not set(train.paths) & set(val.paths)
    assert dm.datasets["predict"] is test
    for split in ("train", "val", "test"):
        assert_labels_match_folders(dm, split)
    batches = run_loader(dm, "test")
    assert sum(len(b["label"]) for b in batches) == 6


def test_split_folders_with_val(tmp_path: Path, cifar_tree):
    root = tmp_path / "cifar"
    cifar_tree(root / "train", classes=("cat", "dog"), per_class=5)
    cifar_tree(root / "val", classes=("cat", "dog"), per_class=2, split="test")
    dm = labeled_dm(root=str(root))
    dm.setup("fit")
    np.testing.assert_array_equal(dm.train_label_counts(), [5, 5])  # nothing carved
    assert all(p.startswith(str(root / "val")) for p in dm.datasets["val"].paths)
    assert len(dm.datasets["val"]) == 4


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ({"samples_per_class": 2}, [2, 2, 2]),
        ({"samples_per_class": 9}, [6, 6, 6]),
        ({"label_fraction": 0.5}, [3, 3, 3]),
    ],
)
def test_label_budgets_give_exact_counts_on_the_same_val(tmp_path: Path, cifar_tree, budget, expected):
    root = cifar_tree(tmp_path / "tree", classes=("bird", "frog", "truck"), per_class=8)
    full = labeled_dm(root=str(root), val_fraction=0.25)
    full.setup("fit")
    dm = labeled_dm(root=str(root), val_fraction=0.25, **budget)
    dm.setup("fit")
    np.testing.assert_array_equal(dm.train_label_counts(), expected)
    assert list(dm.datasets["val"].paths) == list(full.datasets["val"].paths)  # same validation images
    assert set(dm.datasets["train"].paths) <= set(full.datasets["train"].paths)
    assert_labels_match_folders(dm, "train")


def test_label_budget_errors_name_the_flags():
    with pytest.raises(ValueError, match=r"--data\.samples_per_class or --data\.label_fraction"):
        ClassificationDataModule(samples_per_class=2, label_fraction=0.5)
    with pytest.raises(ValueError, match=r"--data\.samples_per_class=0"):
        ClassificationDataModule(samples_per_class=0)
    with pytest.raises(ValueError, match=r"--data\.label_fraction=1\.5"):
        ClassificationDataModule(label_fraction=1.5)


def test_csv_manifest_with_labels(tmp_path: Path, cifar_tree):
    cifar_tree(tmp_path / "imgs", classes=("cat", "dog", "ship"), per_class=4)
    names = {"cat": "10", "dog": "2", "ship": "1"}
    rows = [
        f"{p.relative_to(tmp_path)},{names[p.parent.name]}"
        for p in sorted((tmp_path / "imgs").rglob("*.jpg"))
    ]
    (tmp_path / "train.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    dm = labeled_dm(manifest=str(tmp_path / "train.csv"), val_fraction=0.25, batch_size=3)
    assert dm.classes == ["1", "2", "10"]  # numeric labels in numeric order
    dm.setup("fit")
    np.testing.assert_array_equal(dm.train_label_counts(), [3, 3, 3])
    by_name = {v: k for k, v in names.items()}
    for split in ("train", "val"):
        dataset = dm.datasets[split]
        for i in range(len(dataset)):
            assert by_name[dm.classes[int(dataset.labels[i])]] == class_of(dataset.paths[i])
    assert sum(len(b["label"]) for b in run_loader(dm, "train")) == 9


def test_manifest_without_labels_is_an_error(tmp_path: Path):
    (tmp_path / "m.csv").write_text("path\na.jpg\n")
    with pytest.raises(ValueError, match=r"--data\.manifest=.*'label' column"):
        labeled_dm(manifest=str(tmp_path / "m.csv")).setup("fit")


def test_val_root_with_unknown_class_is_an_error(tmp_path: Path, cifar_tree):
    train = cifar_tree(tmp_path / "train", classes=("cat", "dog"), per_class=3)
    val = cifar_tree(tmp_path / "val", classes=("cat", "ship"), per_class=2, split="test")
    dm = labeled_dm(root=str(train), val_root=str(val))
    with pytest.raises(ValueError, match=r"--data\.val_root=.*classes not in the training set: \['ship'\]"):
        dm.setup("fit")


def test_val_root_missing_names_the_flag(tmp_path: Path, cifar_tree):
    train = cifar_tree(tmp_path / "train", classes=("cat", "dog"), per_class=3)
    dm = labeled_dm(root=str(train), val_root=str(tmp_path / "no_such_val"))
    with pytest.raises(FileNotFoundError, match=r"--data\.val_root=.*no_such_val.*does not exist"):
        dm.setup("fit")


def test_classification_folder_errors(tmp_path: Path, image_zoo, link_files):
    with pytest.raises(FileNotFoundError, match=r"--data\.root=.*nope"):
        labeled_dm(root=str(tmp_path / "nope")).setup("fit")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        FileNotFoundError, match=rf"--data\.root=.*{re.escape(str(empty))}.*no class sub-folders"
    ):
        labeled_dm(root=str(empty)).setup("fit")
    (empty / "cat").mkdir()
    with pytest.raises(
        FileNotFoundError, match=rf"no image files in the class folders of '{re.escape(str(empty))}'"
    ):
        labeled_dm(root=str(empty)).setup("fit")
    bad = tmp_path / "bad"
    link_files([c.path for c in image_zoo.broken.values()], bad / "cat")
    with pytest.raises(
        ValueError,
        match=rf"--data\.root='{re.escape(str(bad))}': no readable image in class 'cat' \(7 of its 7 files",
    ):
        labeled_dm(root=str(bad)).setup("fit")


def test_classification_skips_broken_files(tmp_path: Path, cifar_tree, image_zoo, link_files):
    root = cifar_tree(tmp_path / "tree", classes=("cat", "dog"), per_class=4)
    broken = link_files(
        [image_zoo.broken["truncated.jpg"].path, image_zoo.broken["empty.jpg"].path], root / "dog"
    )
    dm = labeled_dm(root=str(root), val_fraction=0.25, batch_size=32)
    dm.setup("fit")
    served = sum(len(b["label"]) for split in ("train", "val") for b in run_loader(dm, split))
    assert served == 8
    assert dm.skipped_files == sorted(map(str, broken))
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image file\(s\) of 10:"):
        dm.teardown("fit")


def test_classification_embedded_default():
    dm = labeled_dm(synthetic_size=64, batch_size=8)
    assert dm.num_classes == 10
    dm.setup("fit")
    for split in ("train", "val", "test"):
        batch = run_loader(dm, split, limit=1)[0]
        assert batch["image"].shape == (8, 3, 32, 32)
        assert batch["image"].dtype == torch.uint8
        assert ((batch["label"] >= 0) & (batch["label"] < 10)).all()
    assert sum(dm.train_label_counts()) == len(dm.datasets["train"])
    assert not set(dm.datasets["train"].scenes) & set(dm.datasets["val"].scenes)
    assert not set(dm.datasets["val"].scenes) & set(dm.datasets["test"].scenes)
    budget = labeled_dm(synthetic_size=64, samples_per_class=1)
    budget.setup("fit")
    np.testing.assert_array_equal(budget.train_label_counts(), np.minimum(1, dm.train_label_counts()))
