"""The detection datamodule: finds the annotations of a format under ``--data.root``, reads them,
splits the records and serves them (or the embedded set) in list batches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import albumentations as A
import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from visiontransfer.data.base import ImageDataModule, probe_readable
from visiontransfer.data.detection.coco import read_coco
from visiontransfer.data.detection.datasets import (
    DetectionDataset,
    SyntheticDetectionDataset,
    collate_detection,
)
from visiontransfer.data.detection.records import DetectionAnnotations, DetectionRecord
from visiontransfer.data.detection.splits import select_records
from visiontransfer.data.detection.transforms import (
    DetectionAugment,
    detection_eval_transform,
    detection_train_transform,
)
from visiontransfer.data.detection.voc import read_voc
from visiontransfer.data.detection.yolo import read_yolo
from visiontransfer.data.index import PathTable
from visiontransfer.data.synthetic import SHAPES
from visiontransfer.errors import ConfigError, MissingPathError

AnnotationFormat = Literal["voc", "coco", "yolo"]
"""Annotation formats: Pascal VOC xml (one file per image), COCO json (one file), YOLO txt (one
file per image, normalised ``class cx cy w h``)."""


# -- the datamodule -----------------------------------------------------------------------------
def _first_existing(*candidates: str) -> str | None:
    return next((c for c in candidates if os.path.exists(c)), None)


class DetectionDataModule(ImageDataModule):
    """Images with boxes for object detection, from Pascal VOC, COCO or YOLO annotations.

    With neither ``root`` nor ``annotations`` it serves the embedded procedural set (10 shape
    classes, every shape boxed), so detection runs with no data. Batches are lists (see
    :func:`collate_detection`): images keep their aspect ratio, the longest side resized to
    ``image_size``. Labels are ``1..num_classes`` (0: background; see :mod:`visiontransfer.data.detection`).

    Args:
        root: Dataset folder. ``voc``: ``annotations/`` (or ``Annotations/``) xml files and
            ``images/`` (or ``JPEGImages/``); ``coco``: ``annotations.json`` (or
            ``_annotations.coco.json``, or the one json file in ``annotations/``) and ``images/``;
            ``yolo``: ``images/`` and ``labels/``, class names in ``classes.txt`` or ``data.yaml``.
        format: Annotation format: ``voc``, ``coco`` or ``yolo``.
        images: Image folder, if not the one found under ``root``.
        annotations: VOC xml folder, COCO json file or YOLO label folder, if not under ``root``.
        train_split: Training images: a CSV file (``filename`` column) or text file listing image
            names, or a folder of images. Relative paths are tried from ``root`` too. Default: all
            but a seeded ``val_fraction``.
        val_split: Validation images, as ``train_split``. Default: the images not in
            ``train_split`` if it is given, else a seeded ``val_fraction``.
        test_split: Test images, as ``train_split``; default: none (``test`` uses the validation set).
        val_fraction: Share of the images held out for validation when no split says otherwise.
        classes: Class names in label order; objects of other classes are ignored. Default: all
            classes of the annotations (VOC: sorted names; COCO: by category id; YOLO: its list).
        image_size: Longest side of the images fed to the model, in pixels.
        batch_size: Images per batch per process.
        augment: Training augmentation preset: ``standard``, ``flip`` or ``none``.
        aspect_ratio_grouping: Batch landscape and portrait training images separately (less padding).
        synthetic_size: Number of training images of the embedded set (when no data is given).
        **kwargs: Loader arguments of :class:`~visiontransfer.data.base.ImageDataModule`
            (``num_workers``, ``seed``, ...); ``seed`` also draws the validation split.
    """

    def __init__(
        self,
        root: str | None = None,
        format: AnnotationFormat = "voc",
        images: str | None = None,
        annotations: str | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        val_fraction: float = 0.2,
        classes: list[str] | None = None,
        image_size: int = 320,
        batch_size: int = 4,
        augment: DetectionAugment = "standard",
        aspect_ratio_grouping: bool = True,
        synthetic_size: int = 512,
        **kwargs: Any,
    ) -> None:
        self.augment: DetectionAugment = augment
        super().__init__(
            image_size=image_size, batch_size=batch_size, synthetic_size=synthetic_size, **kwargs
        )
        if format not in ("voc", "coco", "yolo"):
            raise ConfigError(f"--data.format={format!r}: choose one of voc, coco, yolo")
        if not 0 < val_fraction < 1:
            raise ConfigError(f"--data.val_fraction={val_fraction} must be in (0, 1)")
        if classes is not None and len(set(classes)) != len(classes):
            raise ConfigError(f"--data.classes={classes} lists a class twice")
        self.root, self.format, self.images, self.annotations = root, format, images, annotations
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.val_fraction = val_fraction
        self.class_filter = list(classes) if classes is not None else None
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self._data: DetectionAnnotations | None = None
        self._collate = collate_detection
        self.save_hyperparameters()

    def _transforms(self) -> tuple[A.Compose, A.Compose]:
        """The bbox-aware pipelines: the ``augment`` preset for training, the resize for evaluation."""
        train = detection_train_transform(self.image_size, self.augment)
        return train, detection_eval_transform(self.image_size)

    # -- annotations ----------------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """Whether the embedded procedural set is served (no ``root`` nor ``annotations``)."""
        return self.root is None and self.annotations is None

    def _sources(self) -> tuple[str, str]:
        """``(annotations, images)`` locations for the format, from the arguments or ``root``."""
        root = self.root or ""
        if self.root is not None and not os.path.isdir(self.root):
            raise MissingPathError(f"--data.root={self.root!r} does not exist or is not a folder")
        if self.root is None and self.images is None:
            raise ConfigError("--data.annotations without --data.root needs --data.images (the image folder)")
        images = (
            self.images or _first_existing(*(os.path.join(root, d) for d in ("images", "JPEGImages"))) or root
        )
        if self.annotations is not None:
            found: str | None = self.annotations
        elif self.format == "voc":
            found = _first_existing(*(os.path.join(root, d) for d in ("annotations", "Annotations")))
        elif self.format == "coco":
            names = ("annotations.json", "_annotations.coco.json", "instances.json")
            found = _first_existing(*(os.path.join(root, n) for n in names))
            jsons = sorted(Path(root, "annotations").glob("*.json")) if found is None else []
            found = str(jsons[0]) if len(jsons) == 1 else found
        else:
            found = _first_existing(os.path.join(root, "labels")) or ""
        if found is None or (found and not os.path.exists(found)):
            raise MissingPathError(
                f"no {self.format} annotations found for --data.root={self.root!r} "
                f"(--data.format={self.format}); point --data.annotations at them"
            )
        return found, images

    def annotations_data(self) -> DetectionAnnotations:
        """The records and class map of the annotations (read once, cached)."""
        if self._data is None:
            found, images = self._sources()
            if self.format == "voc":
                self._data = read_voc(found, images, self.class_filter)
            elif self.format == "coco":
                self._data = read_coco(found, images, self.class_filter)
            else:
                self._data = read_yolo(images, found or None, self.class_filter)
            if not self._data.records:
                raise ConfigError(f"no images in the {self.format} annotations of --data.root={self.root!r}")
        return self._data

    @property
    def classes(self) -> list[str]:
        """Class names; label ``k`` is ``classes[k - 1]``."""
        return list(SHAPES) if self.embedded else self.annotations_data().classes

    @property
    def num_classes(self) -> int:
        """Number of object classes (the background not counted)."""
        return len(self.classes)

    @property
    def category_ids(self) -> list[int]:
        """Id written for each label in COCO-format detections (the COCO file's own ids)."""
        return list(range(1, len(SHAPES) + 1)) if self.embedded else self.annotations_data().category_ids

    # -- datasets -------------------------------------------------------------------------------
    def _split_path(self, split: str) -> str:
        if os.path.exists(split) or self.root is None:
            return split
        return os.path.join(self.root, split)

    def _voc_image_sets(self) -> dict[str, str]:
        """A VOC root's ``ImageSets/Main/{train,val,test}.txt``, when no split is given (used and said)."""
        splits_given = any(s is not None for s in (self.train_split, self.val_split, self.test_split))
        if self.format != "voc" or self.root is None or splits_given:
            return {}
        main = os.path.join(self.root, "ImageSets", "Main")
        found = {n: os.path.join(main, f"{n}.txt") for n in ("train", "val", "test")}
        found = {n: f for n, f in found.items() if os.path.isfile(f)}
        if "train" in found:
            rank_zero_info(
                f"--data.root={self.root!r}: using its Pascal VOC splits {sorted(found)} from {main} "
                "(give --data.train_split / --data.val_split to choose others)"
            )
            return found
        return {}

    def _splits(self, records: list[DetectionRecord]) -> dict[str, list[DetectionRecord]]:
        """Train / val (/ test) records from the split arguments, a VOC root's ``ImageSets``, or a
        seeded ``val_fraction``."""
        given = {"train": self.train_split, "val": self.val_split, "test": self.test_split}
        given.update(self._voc_image_sets())
        pick = {
            name: select_records(records, self._split_path(split), f"--data.{name}_split")
            for name, split in given.items()
            if split is not None
        }
        if "train" in pick and "val" not in pick:
            taken = {id(r) for r in pick["train"]} | {id(r) for r in pick.get("test", [])}
            rest = [r for r in records if id(r) not in taken]
            if rest:
                pick["val"] = rest
        if "val" not in pick:
            pool = pick.get("train") or [
                r for r in records if id(r) not in {id(t) for t in pick.get("test", [])}
            ]
            order = np.random.default_rng(self.seed).permutation(len(pool))
            n_val = max(1, round(self.val_fraction * len(pool)))
            pick["val"], pick["train"] = [pool[i] for i in order[:n_val]], [pool[i] for i in order[n_val:]]
        pick.setdefault("train", [r for r in records if id(r) not in {id(v) for v in pick["val"]}])
        if not pick["train"]:
            raise ConfigError("no training images left after the validation / test splits")
        return pick

    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        if self.embedded:
            self._setup_synthetic()
            return
        splits = self._splits(self.annotations_data().records)
        where = f"--data.root={self.root!r}" if self.root else f"--data.annotations={self.annotations!r}"
        probe_readable(PathTable("", [r.path for r in splits["train"]]), where, self.max_pixels)
        for name, records in splits.items():
            self.datasets[name] = DetectionDataset(
                records, self._train_tf if name == "train" else self._eval_tf, self.max_pixels
            )
        self.datasets.setdefault("test", self.datasets["val"])
        self.datasets["predict"] = self.datasets["test"]

    def _setup_synthetic(self) -> None:
        n = self.synthetic_size
        n_val = max(16, int(n * self.val_fraction))
        size = self.image_size
        self.datasets["train"] = SyntheticDetectionDataset(np.arange(n), self._train_tf, size, self.seed)
        self.datasets["val"] = SyntheticDetectionDataset(
            np.arange(n, n + n_val), self._eval_tf, size, self.seed
        )
        test = np.arange(n + n_val, n + 2 * n_val)
        self.datasets["test"] = SyntheticDetectionDataset(test, self._eval_tf, size, self.seed)
        self.datasets["predict"] = self.datasets["test"]

    def _group_ids(self, dataset: Dataset[Any]) -> list[int] | None:
        """Landscape / portrait group of each training image when ``aspect_ratio_grouping``."""
        if not self.aspect_ratio_grouping:
            return None
        return list(getattr(dataset, "group_ids", [])) or None

    def record(self, split: str, index: int) -> DetectionRecord | None:
        """The record of item ``index`` of a split (None for the embedded set)."""
        records = getattr(self.datasets.get(split), "records", None)
        return records[index] if records is not None else None

    def image_id(self, split: str, index: int) -> int | None:
        """The COCO ``image_id`` of item ``index`` of a split (None for the embedded set or other formats)."""
        record = self.record(split, index)
        return record.image_id if record is not None else None
