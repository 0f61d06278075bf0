"""Bad input found on real folders (#15): link loops, VOC split files, silent label problems.

Each case is built for real: symbolic links made with ``os.symlink``, a Pascal VOC tree with
``ImageSets/Main`` of real raccoon photos, class folders of real CIFAR-10 files."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest

from visiontransfer.data import ClassificationDataModule, PretrainDataModule
from visiontransfer.data.detection import DetectionDataModule
from visiontransfer.errors import ConfigError


def test_an_odd_folder_indexes_without_a_crash_and_counts_what_it_leaves_out(
    odd_folder: Path, link_reasons: dict[str, str]
) -> None:
    data = PretrainDataModule(root=str(odd_folder), image_size=16, batch_size=4, num_workers=0)
    with pytest.warns(UserWarning, match=r"entries left out while indexing"):
        data.setup("fit")
    reasons = {os.path.relpath(p, odd_folder): r for p, r in data.skip_log.reasons.items()}
    for link, reason in link_reasons.items():
        assert reason in reasons[link], (link, reasons.get(link))
    paths = [*data.datasets["train"].paths, *data.datasets["val"].paths]  # type: ignore[attr-defined]
    assert len(paths) == len(set(map(os.path.realpath, paths)))  # no file twice through two paths
    assert not any(Path(p).name in ("loop.jpg", "dangling.jpg", "again.png") for p in paths)


def test_a_link_loop_as_a_class_folder_is_left_out(cifar_tree, tmp_path: Path) -> None:
    root = cifar_tree(tmp_path / "tree", classes=("cat", "dog"), per_class=3)
    os.symlink("horse", root / "horse")  # a class "folder" that is a loop
    data = ClassificationDataModule(root=str(root), image_size=32, num_workers=0, val_fraction=0.34)
    with pytest.warns(UserWarning, match="left out while indexing"):
        assert data.classes == ["cat", "dog"]
    assert "unresolvable symbolic link" in data.skip_log.reasons[str(root / "horse")]


@pytest.fixture
def voc_root(raccoon_dir: Path, tmp_path: Path) -> Path:
    """A Pascal VOC layout of 12 raccoon photos with ImageSets/Main/{train,val,test}.txt (ids)."""
    root = tmp_path / "VOC"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    xmls = sorted((raccoon_dir.parent / "annotations").glob("*.xml"))[:12]
    for xml in xmls:
        shutil.copy(xml, root / "Annotations" / xml.name)
        os.symlink(raccoon_dir / f"{xml.stem}.jpg", root / "JPEGImages" / f"{xml.stem}.jpg")
    ids = [x.stem for x in xmls]
    for split, part in (("train", ids[:8]), ("val", ids[8:10]), ("test", ids[10:])):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in part))
    (root / "ImageSets" / "Main" / "raccoon_train.txt").write_text(f"{ids[0]}  1\n{ids[1]} -1\n")
    return root


def test_voc_image_sets_list_ids_without_extension(voc_root: Path) -> None:
    main = voc_root / "ImageSets" / "Main"
    data = DetectionDataModule(
        root=str(voc_root), train_split=str(main / "train.txt"), val_split=str(main / "val.txt"),
        image_size=64, num_workers=0,
    )  # fmt: skip
    data.setup("fit")
    assert len(data.datasets["train"]) == 8 and len(data.datasets["val"]) == 2
    flagged = DetectionDataModule(
        root=str(voc_root), train_split=str(main / "raccoon_train.txt"), num_workers=0
    )
    flagged.setup("fit")
    assert len(flagged.datasets["train"]) == 1  # the id flagged -1 is left out


def test_a_voc_root_uses_its_image_sets_by_default_and_says_so(voc_root: Path, caplog) -> None:
    data = DetectionDataModule(root=str(voc_root), image_size=64, num_workers=0)
    with caplog.at_level("INFO"):
        data.setup("fit")
    assert "using its Pascal VOC splits ['test', 'train', 'val']" in caplog.text
    sizes = {split: len(data.datasets[split]) for split in ("train", "val", "test")}
    assert sizes == {"train": 8, "val": 2, "test": 2}


def test_a_class_folder_with_no_image_is_an_error_naming_it(cifar_tree, tmp_path: Path) -> None:
    root = cifar_tree(tmp_path / "tree", classes=("cat", "dog"), per_class=3)
    (root / "horse").mkdir()
    (root / "horse" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"class\(es\) \['horse'\] have no training image"):
        ClassificationDataModule(root=str(root), num_workers=0, val_fraction=0.34).setup("fit")


def test_a_class_folder_with_no_readable_image_is_an_error_naming_it(
    cifar_tree, image_zoo, tmp_path: Path
) -> None:
    root = cifar_tree(tmp_path / "tree", classes=("cat", "dog"), per_class=3)
    (root / "ship").mkdir()
    for name in ("truncated.jpg", "corrupt.jpg", "empty.jpg"):
        shutil.copy(image_zoo.broken[name].path, root / "ship" / name)
    with pytest.raises(ConfigError, match=r"no readable image in class 'ship' \(3 of its 3 files"):
        ClassificationDataModule(root=str(root), num_workers=0, val_fraction=0.34).setup("fit")


def test_a_label_budget_over_the_class_sizes_is_a_warning_naming_them(cifar_tree, tmp_path: Path) -> None:
    root = cifar_tree(tmp_path / "tree", classes=("cat", "dog", "ship"), per_class=6)
    for extra in sorted((root / "dog").iterdir())[:3]:  # dog keeps 3
        extra.unlink()
    data = ClassificationDataModule(root=str(root), samples_per_class=4, val_fraction=0.2, num_workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data.setup("fit")
    messages = [str(w.message) for w in caught if "samples_per_class" in str(w.message)]
    assert len(messages) == 1
    assert "--data.samples_per_class=4 but 1 of 3 classes have fewer training images" in messages[0]
    assert "dog (2)" in messages[0]  # 3 images, 1 held out for validation
