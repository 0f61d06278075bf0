"""Detection data: VOC / COCO / YOLO readers on real and generated files (bad cases included), box
hygiene, bbox-aware augmentation keeping boxes on their objects, splits, batching."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visiontransfer.data.datasets import Skipped
from visiontransfer.data.detection import (
    AnnotationError,
    DetectionDataModule,
    DetectionDataset,
    clean_boxes,
    collate_detection,
    detection_train_transform,
    read_coco,
    read_split_names,
    read_voc,
    read_yolo,
)
from visiontransfer.data.sampling import ResumableLoader, ResumableSampler

GREYSCALE = ("raccoon-150.jpg", "raccoon-152.jpg", "raccoon-161.jpg")


@pytest.fixture(scope="module")
def raccoon_root(raccoon_dir: Path) -> Path:
    return raccoon_dir.parent


def _image(path: Path, width: int, height: int, colour: tuple[int, int, int] = (90, 90, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path)
    return path


def _voc(folder: Path, name: str, objects: list[tuple[str, tuple[float, ...]]], size=(100, 80)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    parts = "".join(
        f"\n  <object>\n    <name>{n}</name>\n    <bndbox>\n      <xmin>{b[0]}</xmin>"
        f"\n      <ymin>{b[1]}</ymin>\n      <xmax>{b[2]}</xmax>\n      <ymax>{b[3]}</ymax>"
        "\n    </bndbox>\n  </object>"
        for n, b in objects
    )
    text = (
        f"<annotation>\n  <filename>{name}.jpg</filename>\n  <size>\n    <width>{size[0]}</width>\n"
        f"    <height>{size[1]}</height>\n    <depth>3</depth>\n  </size>{parts}\n</annotation>\n"
    )
    path = folder / f"{name}.xml"
    path.write_text(text)
    return path


# -- Pascal VOC ---------------------------------------------------------------------------------
def test_read_voc_raccoon(raccoon_root: Path) -> None:
    data = read_voc(str(raccoon_root / "annotations"), str(raccoon_root / "images"))
    assert data.classes == ["raccoon"] and data.category_ids == [1]
    assert len(data.records) == 200
    assert sum(len(r.boxes) for r in data.records) == 217
    for record in data.records:
        assert Path(record.path).is_file()
        assert record.boxes.dtype == np.float32 and record.boxes.shape[1] == 4
        assert record.labels.dtype == np.int64 and set(record.labels.tolist()) == {1}
        assert (record.boxes[:, 2:] > record.boxes[:, :2]).all()
        assert (record.boxes[:, 2] <= record.width).all() and (record.boxes[:, 3] <= record.height).all()
    first = next(r for r in data.records if r.path.endswith("raccoon-1.jpg"))
    assert first.boxes.tolist() == [[81, 88, 522, 408]] and (first.width, first.height) == (650, 417)


def test_voc_clips_drops_and_keeps_negatives(tmp_path: Path) -> None:
    ann, images = tmp_path / "annotations", tmp_path / "images"
    _voc(ann, "a", [("cat", (-5, 10, 50, 90)), ("dog", (10, 10, 10, 40)), ("dog", (20, 20, 60, 60))])
    _voc(ann, "empty", [])
    for name in ("a", "empty"):
        _image(images / f"{name}.jpg", 100, 80)
    with pytest.warns(UserWarning, match=r"1 box\(es\) clipped .*a\.jpg \(1\).*1 box\(es\) dropped .*a\.jpg"):
        data = read_voc(str(ann), str(images))
    assert data.classes == ["cat", "dog"]
    a, empty = data.records
    assert a.boxes.tolist() == [[0, 10, 50, 80], [20, 20, 60, 60]] and a.labels.tolist() == [1, 2]
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)


def test_voc_class_filter_ignores_other_classes(tmp_path: Path) -> None:
    _voc(tmp_path / "ann", "a", [("cat", (1, 1, 20, 20)), ("dog", (5, 5, 30, 30))])
    with pytest.warns(UserWarning, match=r"1 object\(s\) of classes not in --data.classes ignored: 'cat'"):
        data = read_voc(str(tmp_path / "ann"), str(tmp_path), classes=["dog"])
    assert data.records[0].labels.tolist() == [1] and data.records[0].boxes.tolist() == [[5, 5, 30, 30]]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("<annotation>\n  <object>\n    <name>a</name>\n  </objet>\n</annotation>\n", 4, "malformed XML"),
        (
            "<annotation>\n<object>\n<name>a</name>\n<bndbox>\n<xmin>1</xmin><ymin>1</ymin>\n"
            "<ymax>5</ymax>\n</bndbox>\n</object>\n</annotation>\n",
            4,
            "<bndbox> has no <xmax>",
        ),
        (
            "<annotation>\n<object>\n<name>a</name>\n<bndbox>\n<xmin>1</xmin><ymin>1</ymin>\n"
            "<xmax>5</xmax>\n<ymax>five</ymax>\n</bndbox>\n</object>\n</annotation>\n",
            7,
            "<ymax> is 'five', not a number",
        ),
        ("<annotation>\n<object>\n<bndbox/>\n</object>\n</annotation>\n", 2, "<object> has no <name>"),
    ],
    ids=["bad_xml", "missing_field", "not_a_number", "no_name"],
)
def test_voc_malformed_names_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=re.escape(f"{path}:{line}: ") + ".*" + re.escape(message)):
        read_voc([str(path)], str(tmp_path))


# -- COCO ---------------------------------------------------------------------------------------
def _coco(tmp_path: Path) -> dict:
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 11, "file_name": "b.jpg", "width": 60, "height": 90},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [90, 50, 20, 10], "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [0, 0, 100, 80], "iscrowd": 1},
        ],
    }


def test_read_coco(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_coco(tmp_path)))
    with pytest.warns(UserWarning, match=r"clipped .*a\.jpg"):
        data = read_coco(str(path), str(tmp_path))
    assert data.classes == ["cat", "dog"] and data.category_ids == [3, 7]  # ordered by category id
    a, b = data.records
    assert (a.image_id, a.width, a.height) == (10, 100, 80)
    assert a.boxes.tolist() == [[10, 20, 40, 60], [90, 50, 100, 60]]  # xywh → xyxy, clipped; crowd left out
    assert a.labels.tolist() == [1, 2]
    assert b.boxes.shape == (0, 4) and b.path == str(tmp_path / "b.jpg")  # a negative


def test_coco_malformed_names_file_and_line(tmp_path: Path) -> None:
    data = _coco(tmp_path)
    data["annotations"][1]["bbox"] = [90, 50, 20]
    path = tmp_path / "bad.json"
    text = json.dumps(data, indent=2)
    path.write_text(text)
    rows = text.splitlines()
    start = rows.index('  "annotations": [')
    line = [i for i, t in enumerate(rows, 1) if t == "    {" and i > start][1]  # the second annotation
    with pytest.raises(
        AnnotationError, match=rf"{re.escape(str(path))}:{line}: annotations\[1\]: bbox must be 4"
    ):
        read_coco(str(path), str(tmp_path))
    data["annotations"][1]["bbox"] = [1, 2, 3, 4]
    data["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"bad\.json:1: annotations\[0\]: category_id 99 is not in"):
        read_coco(str(path), str(tmp_path))
    path.write_text('{"images": [],\n "annotations": [\n  {"id": 1,}\n ]}')
    with pytest.raises(AnnotationError, match=r"bad\.json:3: invalid JSON"):
        read_coco(str(path), str(tmp_path))


# -- YOLO ---------------------------------------------------------------------------------------
def test_read_yolo_ultralytics_layout(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "train" / "a.jpg", 200, 100)
    _image(tmp_path / "images" / "train" / "neg.png", 50, 50)
    labels = tmp_path / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "a.txt").write_text("1 0.5 0.5 0.5 0.4\n\n0 0.1 0.1 0.3 0.3\n2 0.2 0.2 0.4 0.2 0.4 0.6\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    with pytest.warns(UserWarning, match=r"1 box\(es\) clipped .*a\.jpg"):
        data = read_yolo(str(tmp_path / "images"))
    assert data.classes == ["cat", "dog", "bird"]
    a, neg = data.records
    np.testing.assert_allclose(a.boxes, [[50, 30, 150, 70], [0, 0, 50, 25], [40, 20, 80, 60]], atol=1e-4)
    assert a.labels.tolist() == [2, 1, 3] and (a.width, a.height) == (200, 100)
    assert neg.boxes.shape == (0, 4) and neg.path.endswith("neg.png")


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n", 2, "expected 'class cx cy w h'"),
        ("# comment\n0 0.5 x 0.2 0.2\n", 2, "non-numeric field"),
        (
            "0 0.5 0.5 0.2 0.2\n\n3 0.5 0.5 0.2 0.2\n",
            3,
            "class id '3' is not a valid index (there are 2 classes)",
        ),
        ("1.5 0.5 0.5 0.2 0.2\n", 1, "class id '1.5' is not a valid index"),
    ],
    ids=["fields", "number", "range", "fraction"],
)
def test_yolo_malformed_names_file_and_line(tmp_path: Path, content: str, line: int, message: str) -> None:
    _image(tmp_path / "img" / "a.jpg", 40, 40)
    (tmp_path / "img" / "a.txt").write_text(content)
    with pytest.raises(AnnotationError, match=re.escape(f"{tmp_path / 'img' / 'a.txt'}:{line}: {message}")):
        read_yolo(str(tmp_path / "img"), classes=["cat", "dog"])


def test_clean_boxes() -> None:
    boxes = np.array([[-2, 5, 20, 30], [5, 5, 4, 9], [0, 0, 10, 10], [np.nan, 0, 1, 1], [50, 50, 60, 60]])
    kept, labels, clipped, dropped = clean_boxes(boxes, np.arange(5), 40, 40)
    assert kept.tolist() == [[0, 5, 20, 30], [0, 0, 10, 10]] and labels.tolist() == [0, 2]
    assert (clipped, dropped) == (1, 3)


# -- datamodule ---------------------------------------------------------------------------------
def test_raccoon_split_files(raccoon_root: Path) -> None:
    assert len(read_split_names(str(raccoon_root / "data" / "train_labels.csv"))) == 160
    dm = DetectionDataModule(
        root=str(raccoon_root), train_split="data/train_labels.csv", val_split="data/test_labels.csv",
        image_size=96, batch_size=4, num_workers=0,
    )  # fmt: skip
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert (len(train), len(val), dm.num_classes, dm.classes) == (160, 40, 1, ["raccoon"])
    assert sum(len(r.boxes) for r in train.records) == 173 and sum(len(r.boxes) for r in val.records) == 44
    assert not set(train.paths) & set(val.paths)
    # the train split alone: the rest becomes the validation set
    rest = DetectionDataModule(root=str(raccoon_root), train_split="data/train_labels.csv", num_workers=0)
    rest.setup("fit")
    assert sorted(rest.datasets["val"].paths) == sorted(val.paths)


def test_greyscale_raccoons_become_rgb(raccoon_root: Path) -> None:
    data = read_voc(str(raccoon_root / "annotations"), str(raccoon_root / "images"))
    records = [r for r in data.records if Path(r.path).name in GREYSCALE]
    assert len(records) == 3
    dataset = DetectionDataset(records, detection_train_transform(128, "none"))
    for i in range(3):
        sample = dataset[i]
        assert sample["image"].shape[0] == 3 and max(sample["image"].shape[1:]) == 128
        assert len(sample["boxes"]) == len(records[i].boxes) >= 1


def test_val_fraction_split_and_text_split(tmp_path: Path) -> None:
    for i in range(10):
        _voc(tmp_path / "annotations", f"im{i}", [("cat", (5, 5, 50, 50))])
        _image(tmp_path / "images" / f"im{i}.jpg", 100, 80)
    dm = DetectionDataModule(root=str(tmp_path), val_fraction=0.3, seed=1, num_workers=0)
    dm.setup("fit")
    train, val = dm.datasets["train"].paths, dm.datasets["val"].paths
    assert (len(train), len(val)) == (7, 3) and not set(train) & set(val)
    again = DetectionDataModule(root=str(tmp_path), val_fraction=0.3, seed=1, num_workers=0)
    again.setup("fit")
    assert again.datasets["val"].paths == val
    (tmp_path / "val.txt").write_text("# held out\nim1.jpg\nim2.jpg\n")
    split = DetectionDataModule(root=str(tmp_path), val_split="val.txt", num_workers=0)
    split.setup("fit")
    assert [Path(p).name for p in split.datasets["val"].paths] == ["im1.jpg", "im2.jpg"]
    assert len(split.datasets["train"]) == 8
    (tmp_path / "bad.txt").write_text("im1.jpg\nnope.jpg\n")
    with pytest.raises(ValueError, match=r"--data.val_split=.*bad\.txt.*'nope\.jpg'"):
        DetectionDataModule(root=str(tmp_path), val_split="bad.txt", num_workers=0).setup("fit")


def test_unreadable_image_skipped_and_counted(tmp_path: Path) -> None:
    for i in range(3):
        _voc(tmp_path / "annotations", f"im{i}", [("cat", (5, 5, 50, 50))])
        _image(tmp_path / "images" / f"im{i}.jpg", 100, 80)
    (tmp_path / "images" / "im1.jpg").write_bytes(b"not a jpeg at all")
    data = read_voc(str(tmp_path / "annotations"), str(tmp_path / "images"))
    dataset = DetectionDataset(data.records, detection_train_transform(64, "none"))
    assert isinstance(dataset[1], Skipped)
    batch = collate_detection([dataset[i] for i in range(3)])
    assert len(batch["image"]) == 2 and batch["index"].tolist() == [0, 2]
    assert batch["skipped"][0][0].endswith("im1.jpg")
    assert batch["orig_size"].tolist() == [[80, 100], [80, 100]]


def test_embedded_default_set() -> None:
    dm = DetectionDataModule(image_size=64, synthetic_size=16, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.category_ids == list(range(1, 11))
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["image"]) == 4 and all(img.dtype == torch.uint8 for img in batch["image"])
    for image, target in zip(batch["image"], batch["target"], strict=True):
        boxes, labels = target["boxes"], target["labels"]
        assert len(boxes) >= 1 and labels.min() >= 1 and labels.max() <= 10
        assert (boxes[:, 2:] <= torch.tensor([image.shape[2], image.shape[1]])).all() and (boxes >= 0).all()


def test_bad_arguments_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--data\.format='pascal'"):
        DetectionDataModule(format="pascal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"--data\.augment='crop'"):
        DetectionDataModule(augment="crop")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match=r"no coco annotations found .*--data.annotations"):
        DetectionDataModule(root=str(tmp_path), format="coco").setup("fit")


# -- augmentation keeps boxes on their objects --------------------------------------------------
def _red_box(image: np.ndarray) -> list[float]:
    """Bounding box of the red object: R well above G (neither the black ground nor the grey fill)."""
    red = image[:, :, 0].astype(int) - image[:, :, 1].astype(int) > 50
    ys, xs = np.nonzero(red)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _iou(a: list[float], b: list[float]) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_standard_augmentation_keeps_boxes_on_objects() -> None:
    image = np.zeros((300, 400, 3), np.uint8)
    objects = [(40, 60, 160, 200), (250, 30, 370, 120)]
    image[60:200, 40:160] = (255, 0, 0)
    image[30:120, 250:370] = (0, 0, 255)  # blue: not red, a second box to carry along
    transform = detection_train_transform(160, "standard")
    transform.set_random_state(np.random.default_rng(0), random.Random(0))
    sizes = set()
    for _ in range(40):
        out = transform(image=image, bboxes=np.array(objects, np.float32), labels=np.array([1, 2]))
        assert max(out["image"].shape[:2]) == 160
        boxes, labels = np.asarray(out["bboxes"]), list(out["labels"])
        assert labels == [1, 2]  # bbox-safe crops and zoom-outs lose no box
        assert _iou(list(boxes[0]), _red_box(out["image"])) > 0.9
        sizes.add(round(float(boxes[0][2] - boxes[0][0])))
    assert len(sizes) > 5  # scale and crop did vary


def test_flip_moves_boxes() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[10:50, 20:60] = (255, 0, 0)
    transform = detection_train_transform(200, "flip")
    flipped = 0
    for seed in range(8):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = transform(image=image, bboxes=np.array([[20, 10, 60, 50]], np.float32), labels=np.array([1]))
        np.testing.assert_allclose(out["bboxes"][0], _red_box(out["image"]), atol=1)
        flipped += out["bboxes"][0][0] > 100
    assert 0 < flipped < 8


def test_negative_image_passes_the_pipeline() -> None:
    transform = detection_train_transform(64, "standard")
    out = transform(image=np.zeros((50, 80, 3), np.uint8), bboxes=np.zeros((0, 4)), labels=np.zeros(0))
    assert len(out["bboxes"]) == 0 and max(out["image"].shape[:2]) == 64


# -- batching -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ranks", [1, 2])
def test_grouped_order_gives_single_group_batches_on_every_rank(ranks: int) -> None:
    groups = [0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1]
    dataset = list(range(len(groups)))
    for epoch in range(3):
        shares = []
        for rank in range(ranks):
            sampler = ResumableSampler(dataset, ranks, rank, seed=1, group_ids=groups, batch_size=3)
            sampler.set_epoch(epoch)
            shares.append([index for index, _ in sampler])
        flat = [i for share in shares for i in share]
        assert sorted(set(flat)) == dataset  # every index, padding repeats at most a few
        batches = [share[i : i + 3] for share in shares for i in range(0, len(share), 3)]
        mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
        assert len(mixed) <= ranks  # only the leftovers at the end of the epoch mix
        assert len(batches) - len(mixed) >= (len(groups) // (3 * ranks) - 1) * ranks


def test_grouped_train_loader(raccoon_root: Path) -> None:
    dm = DetectionDataModule(
        root=str(raccoon_root), train_split="data/train_labels.csv", val_split="data/test_labels.csv",
        image_size=64, batch_size=4, num_workers=0, augment="none",
    )  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader)
    group = dm.datasets["train"].group_ids
    assert 0 < sum(group) < len(group)  # the raccoon photos have both orientations
    batches = list(loader.batch_sampler)  # type: ignore[arg-type]
    mixed = [b for b in batches if len({group[index] for index, _ in b}) > 1]
    assert len(mixed) <= 1 and len(batches) == len(loader) >= 39


def test_detection_loader_resumes_mid_epoch_with_the_same_batches(raccoon_root: Path) -> None:
    def datamodule() -> DetectionDataModule:
        dm = DetectionDataModule(
            root=str(raccoon_root), train_split="data/train_labels.csv",
            val_split="data/test_labels.csv", image_size=48, batch_size=8, num_workers=0,
        )  # fmt: skip
        dm.setup("fit")
        return dm

    full = list(datamodule().train_dataloader())
    first = datamodule()
    loader = first.train_dataloader()
    seen = [batch for _, batch in zip(range(5), loader, strict=False)]
    state = first.state_dict()
    resumed = datamodule()
    resumed.load_state_dict(state)
    rest = list(resumed.train_dataloader())
    assert len(seen) + len(rest) == len(full)
    for a, b in zip(seen + rest, full, strict=True):
        assert torch.equal(a["index"], b["index"])
        assert all(torch.equal(x, y) for x, y in zip(a["image"], b["image"], strict=True))  # same crops
        assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(a["target"], b["target"], strict=True))


def test_datamodule_reads_coco_and_yolo(tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    _image(coco / "imgs" / "a.jpg", 100, 80)
    _image(coco / "imgs" / "b.jpg", 60, 90)
    (coco / "instances.json").write_text(json.dumps(_coco(tmp_path)))
    dm = DetectionDataModule(
        format="coco", annotations=str(coco / "instances.json"), images=str(coco / "imgs"),
        val_fraction=0.5, image_size=64, num_workers=0,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="clipped"):
        dm.setup("fit")
    assert (dm.classes, dm.category_ids, dm.num_classes) == (["cat", "dog"], [3, 7], 2)
    assert len(dm.datasets["train"]) == len(dm.datasets["val"]) == 1
    with pytest.raises(ValueError, match=r"needs --data\.images"):
        DetectionDataModule(format="coco", annotations=str(coco / "instances.json")).setup("fit")
    yolo = tmp_path / "yolo"
    for name in ("a", "b"):
        _image(yolo / "images" / f"{name}.jpg", 64, 48)
    (yolo / "labels").mkdir()
    (yolo / "labels" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (yolo / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    dm = DetectionDataModule(root=str(yolo), format="yolo", val_fraction=0.5, image_size=64, num_workers=0)
    dm.setup("fit")
    assert dm.classes == ["cat", "dog"]
    records = dm.datasets["train"].records + dm.datasets["val"].records
    assert sorted(len(r.boxes) for r in records) == [0, 1]
    boxed = next(r for r in records if len(r.boxes))
    assert boxed.labels.tolist() == [2] and boxed.boxes.tolist() == [[16, 12, 48, 36]]
