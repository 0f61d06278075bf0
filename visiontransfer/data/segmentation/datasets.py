"""Segmentation datasets (image / mask files and the embedded set), their batches, and the colour
palette that draws masks.

A sample is ``{"image": (3, h, w) uint8, "mask": (h, w) int64, "index", "orig_size": (H0, W0)}``:
class indices ``0..C-1``, and the ignore index where a pixel has no label (void, padding). A pair
that can't be used (an unreadable file, a mask of another size than its image, mask values outside
``0..C-1`` and the ignore index) is a :class:`~visiontransfer.data.datasets.Skipped` record naming
the file: the collate function drops it and the datamodule counts it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from visiontransfer.data.datasets import Skipped, reseed, to_chw_tensor
from visiontransfer.data.decode import DEFAULT_MAX_PIXELS, UnreadableImageError, load_rgb
from visiontransfer.data.sampling import SeededIndex
from visiontransfer.data.segmentation.records import MaskedImages, load_mask
from visiontransfer.data.synthetic import SHAPES, render_scene

SegmentationSample = dict[str, Any]

EMBEDDED_CLASSES = ("background", *SHAPES)
"""Classes of the embedded set's masks: 0 the background, ``k + 1`` the pixels of shape ``k``."""


def mask_problem(
    mask: np.ndarray, image_shape: tuple[int, ...], num_classes: int, ignore_index: int
) -> str | None:
    """Why a mask can't be used with its image (None: it can): another size, or values outside
    ``0..num_classes-1`` and ``ignore_index``."""
    if mask.shape[:2] != image_shape[:2]:
        return (
            f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_shape[1]}x{image_shape[0]} "
            "(width x height): they must be the same size"
        )
    bad = np.unique(mask[(mask >= num_classes) & (mask != ignore_index)])
    if bad.size:
        return (
            f"mask values {bad[:5].tolist()} are outside 0..{num_classes - 1} (the classes) and the "
            f"ignore index {ignore_index}: check --data.classes / classes.txt and --data.ignore_index"
        )
    return None


def mask_dtype(num_classes: int, ignore_index: int) -> type[np.unsignedinteger[Any]]:
    """The mask array type augmentation works in: uint8 while every value fits, else uint16."""
    return np.uint8 if max(num_classes - 1, ignore_index) <= 255 else np.uint16


def _sample(image: np.ndarray, mask: np.ndarray, transform: A.Compose, index: int) -> SegmentationSample:
    height, width = image.shape[:2]
    out = transform(image=image, mask=mask)
    return {
        "image": to_chw_tensor(out["image"]),
        "mask": torch.from_numpy(np.ascontiguousarray(out["mask"]).astype(np.int64)),
        "index": index,
        "orig_size": (height, width),
    }


class SegmentationDataset(Dataset[SegmentationSample | Skipped]):
    """Images and their masks, decoded from files.

    Args:
        files: The image and mask paths.
        transform: Mask-aware albumentations pipeline (:mod:`~visiontransfer.data.segmentation.transforms`).
        num_classes: Classes; mask values must be below it or the ignore index.
        ignore_index: Mask value of unlabeled pixels.
        max_pixels: Largest width × height decoded.
    """

    def __init__(
        self,
        files: MaskedImages,
        transform: A.Compose,
        num_classes: int,
        ignore_index: int = 255,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.files = files
        self.transform = transform
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.max_pixels = max_pixels
        self.dtype = mask_dtype(num_classes, ignore_index)

    def __len__(self) -> int:
        return len(self.files)

    def source(self, index: int) -> str:
        """The image file of item ``index``."""
        return self.files.images[index]

    def __getitem__(self, key: int | SeededIndex) -> SegmentationSample | Skipped:
        index = reseed(self.transform, key)
        image_path, mask_path = self.files.images[index], self.files.masks[index]
        try:
            image = load_rgb(image_path, self.max_pixels)
            mask = load_mask(mask_path, self.max_pixels)
        except UnreadableImageError as error:
            return Skipped(error.path, error.reason)
        problem = mask_problem(mask, image.shape, self.num_classes, self.ignore_index)
        if problem is not None:
            return Skipped(mask_path, f"{problem} (image {image_path})")
        return _sample(image, mask.astype(self.dtype, copy=False), self.transform, index)


class SyntheticSegmentationDataset(Dataset[SegmentationSample]):
    """Scenes of the embedded set (:func:`~visiontransfer.data.synthetic.render_scene`) with their
    masks: 0 background, ``k + 1`` for the pixels of an object of shape ``k`` (11 classes).

    Args:
        scenes: Scene numbers served, in order.
        transform: Mask-aware albumentations pipeline.
        image_size: Side the scenes are rendered at.
        seed: Seed of the set.
    """

    def __init__(self, scenes: np.ndarray, transform: A.Compose, image_size: int = 64, seed: int = 0) -> None:
        self.scenes = np.asarray(scenes, dtype=np.int64)
        self.transform = transform
        self.image_size = image_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.scenes)

    def source(self, index: int) -> str:
        """``embedded:N``, the scene number of item ``index``."""
        return f"embedded:{int(self.scenes[index])}"

    def __getitem__(self, key: int | SeededIndex) -> SegmentationSample:
        index = reseed(self.transform, key)
        scene = render_scene(int(self.scenes[index]), self.image_size, len(SHAPES), self.seed)
        return _sample(scene.image, scene.mask, self.transform, index)


def collate_segmentation(
    samples: list[SegmentationSample | Skipped], ignore_index: int = 255
) -> dict[str, Any]:
    """Stack the readable samples, each padded at the bottom and right to the batch's largest size
    (image black, mask ``ignore_index``); list the skipped ones.

    Returns:
        ``{"image": (B, 3, H, W) uint8, "mask": (B, H, W) int64, "index": (B,) int64, "size": (B, 2)
        int64 (height, width of each image before padding), "orig_size": (B, 2) int64 (before
        resizing), "skipped": [(path, reason), ...]}``; B may be 0.
    """
    good = [s for s in samples if not isinstance(s, Skipped)]
    sizes = [tuple(s["mask"].shape) for s in good]
    height, width = (max(h for h, _ in sizes), max(w for _, w in sizes)) if sizes else (0, 0)
    images = [F.pad(s["image"], (0, width - w, 0, height - h)) for s, (h, w) in zip(good, sizes, strict=True)]
    masks = [
        F.pad(s["mask"], (0, width - w, 0, height - h), value=ignore_index)
        for s, (h, w) in zip(good, sizes, strict=True)
    ]
    return {
        "image": torch.stack(images) if good else torch.empty((0, 3, 0, 0), dtype=torch.uint8),
        "mask": torch.stack(masks) if good else torch.empty((0, 0, 0), dtype=torch.int64),
        "index": torch.as_tensor([s["index"] for s in good], dtype=torch.int64),
        "size": torch.as_tensor(sizes, dtype=torch.int64).reshape(-1, 2),
        "orig_size": torch.as_tensor([s["orig_size"] for s in good], dtype=torch.int64).reshape(-1, 2),
        "skipped": [(s.path, s.reason) for s in samples if isinstance(s, Skipped)],
    }


def segmentation_collate(ignore_index: int) -> partial[dict[str, Any]]:
    """:func:`collate_segmentation` padding masks with ``ignore_index`` (picklable, for workers)."""
    return partial(collate_segmentation, ignore_index=ignore_index)


# -- drawing masks ---------------------------------------------------------------------------------
def palette(num_classes: int) -> Tensor:
    """``(num_classes, 3)`` uint8 colours: Pascal VOC's colour map (class 0 black, 1 dark red, 2
    dark green, ...), the one VOC's palette PNGs carry: the bits of the class index, three at a
    time, fill red, green and blue from their top bit down."""
    index = torch.arange(num_classes)
    colours = torch.zeros(num_classes, 3, dtype=torch.long)
    for bit in range(8):
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.to(torch.uint8)


IGNORE_COLOUR = (255, 255, 255)
"""Colour of ignored pixels in drawn masks."""


def colorize(masks: Tensor, num_classes: int) -> Tensor:
    """Class-index masks ``(..., H, W)`` → colour images ``(..., 3, H, W)`` uint8 (:func:`palette`;
    values outside ``0..num_classes-1``, such as the ignore index, white)."""
    colours = torch.cat([palette(num_classes), torch.tensor([IGNORE_COLOUR], dtype=torch.uint8)])
    index = masks.long().clone()
    index[(index < 0) | (index >= num_classes)] = num_classes  # ignore_index and strays
    return colours.to(masks.device)[index].movedim(-1, -3)  # (..., H, W, 3) → (..., 3, H, W)
