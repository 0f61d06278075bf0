"""Detection datasets (annotated files and the embedded set) and their batches as lists (images
of different sizes)."""

from __future__ import annotations

import warnings
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from visiontransfer.data.datasets import Skipped, reseed, to_chw_tensor
from visiontransfer.data.decode import DEFAULT_MAX_PIXELS, UnreadableImageError, load_rgb
from visiontransfer.data.detection.records import MIN_BOX_SIDE, DetectionRecord, clean_boxes
from visiontransfer.data.sampling import SeededIndex
from visiontransfer.data.synthetic import SHAPES, render_scene

# -- datasets and batching ----------------------------------------------------------------------
DetectionSample = dict[str, Any]


def _sample(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, transform: A.Compose, index: int
) -> DetectionSample:
    """Apply ``transform`` to an image and its boxes: ``{"image": (3, H, W) uint8, "boxes": (N, 4)
    float32, "labels": (N,) int64, "index", "orig_size": (H0, W0)}``."""
    height, width = image.shape[:2]
    out = transform(image=image, bboxes=boxes.reshape(-1, 4), labels=labels)
    new_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    new_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
    keep = (new_boxes[:, 2] - new_boxes[:, 0] >= MIN_BOX_SIDE) & (
        new_boxes[:, 3] - new_boxes[:, 1] >= MIN_BOX_SIDE
    )
    return {
        "image": to_chw_tensor(out["image"]),
        "boxes": torch.from_numpy(new_boxes[keep]),
        "labels": torch.from_numpy(new_labels[keep]),
        "index": index,
        "orig_size": (height, width),
    }


class DetectionDataset(Dataset[DetectionSample | Skipped]):
    """Images with boxes, decoded by :func:`~visiontransfer.data.load_rgb` (unreadable files are
    returned as :class:`~visiontransfer.data.datasets.Skipped`, and reported by the datamodule).

    Args:
        records: The images and their boxes.
        transform: Albumentations pipeline with bbox parameters (:func:`detection_train_transform`).
        max_pixels: Largest width × height decoded.
    """

    def __init__(
        self, records: list[DetectionRecord], transform: A.Compose, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.records = records
        self.transform = transform
        self.max_pixels = max_pixels
        self.paths = [r.path for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def source(self, index: int) -> str:
        """The image file of item ``index``."""
        return self.records[index].path

    @property
    def group_ids(self) -> list[int]:
        """Aspect-ratio group of each image: 0 landscape or square (or unknown), 1 portrait."""
        return [int(bool(r.width and r.height and r.height > r.width)) for r in self.records]

    def __getitem__(self, key: int | SeededIndex) -> DetectionSample | Skipped:
        index = reseed(self.transform, key)
        record = self.records[index]
        try:
            image = load_rgb(record.path, self.max_pixels)
        except UnreadableImageError as error:
            return Skipped(record.path, error.reason)
        height, width = image.shape[:2]
        boxes, labels, clipped, dropped = clean_boxes(record.boxes, record.labels, width, height)
        if clipped or dropped:  # the annotation's size was missing or wrong
            warnings.warn(
                f"{record.path}: {clipped} box(es) clipped and {dropped} dropped to fit the decoded "
                f"{width}x{height} image (annotated size {record.width}x{record.height})",
                stacklevel=2,
            )
        return _sample(image, boxes, labels, self.transform, index)


class SyntheticDetectionDataset(Dataset[DetectionSample]):
    """Scenes of the embedded set (:func:`~visiontransfer.data.synthetic.render_scene`) with their
    boxes: every shape is an object, labels ``1..10``.

    Args:
        scenes: Scene numbers served, in order.
        transform: Albumentations pipeline with bbox parameters.
        image_size: Side the scenes are rendered at.
        seed: Seed of the set.
    """

    def __init__(
        self, scenes: np.ndarray, transform: A.Compose, image_size: int = 320, seed: int = 0
    ) -> None:
        self.scenes = np.asarray(scenes, dtype=np.int64)
        self.transform = transform
        self.image_size = image_size
        self.seed = seed
        self.group_ids = [0] * len(self.scenes)

    def __len__(self) -> int:
        return len(self.scenes)

    def source(self, index: int) -> str:
        """``embedded:N``, the scene number of item ``index``."""
        return f"embedded:{int(self.scenes[index])}"

    def __getitem__(self, key: int | SeededIndex) -> DetectionSample:
        index = reseed(self.transform, key)
        scene = render_scene(int(self.scenes[index]), self.image_size, len(SHAPES), self.seed)
        return _sample(scene.image, scene.boxes, scene.box_labels + 1, self.transform, index)


def collate_detection(samples: list[DetectionSample | Skipped]) -> dict[str, Any]:
    """Batch as lists (images differ in size); list the skipped files in ``batch["skipped"]``.

    Returns:
        ``{"image": [(3, H_i, W_i) uint8], "target": [{"boxes": (N_i, 4) float32, "labels":
        (N_i,) int64}], "index": (B,) int64, "orig_size": (B, 2) int64 (height, width before
        resizing), "skipped": [(path, reason), ...]}``; B may be 0.
    """
    good = [s for s in samples if not isinstance(s, Skipped)]
    return {
        "image": [s["image"] for s in good],
        "target": [{"boxes": s["boxes"], "labels": s["labels"]} for s in good],
        "index": torch.as_tensor([s["index"] for s in good], dtype=torch.int64),
        "orig_size": torch.as_tensor([s["orig_size"] for s in good], dtype=torch.int64).reshape(-1, 2),
        "skipped": [(s.path, s.reason) for s in samples if isinstance(s, Skipped)],
    }
