"""Mask-aware augmentation: every geometric step moves the mask with the image (nearest-neighbour
interpolation for the mask, so class indices are never blended), and every pixel a step adds
(padding) is the ignore index in the mask.

Evaluation resizes the longest side to ``image_size`` and keeps the aspect ratio (the collate
function pads a batch to one size, the padding ignored); training cuts ``crop_size`` squares out of
the resized image, randomly rescaled by the preset's range.
"""

from __future__ import annotations

from typing import Literal

import albumentations as A
import cv2

from visiontransfer.data.transforms import SMALL_IMAGE_MAX
from visiontransfer.errors import ConfigError

SegmentationAugment = Literal["standard", "flip", "none"]
"""Training presets: ``standard`` (random rescale, random crop, horizontal flip, colour jitter),
``flip`` (random crop and horizontal flip at the evaluation scale), ``none`` (a centre crop at the
evaluation scale)."""

SCALE_RANGE = (0.75, 1.5)
"""Random rescale of ``standard`` above :data:`~visiontransfer.data.transforms.SMALL_IMAGE_MAX` px
(relative to the evaluation scale)."""
SMALL_SCALE_RANGE = (1.0, 1.25)
"""Up to that size images are only enlarged: shrinking a 32–64 px image removes whole objects."""
MIN_SIZE = 16


def segmentation_eval_transform(image_size: int) -> A.Compose:
    """Resize the longest side to ``image_size`` (aspect ratio kept; the mask by nearest neighbour)."""
    if image_size < MIN_SIZE:
        raise ConfigError(
            f"--data.image_size={image_size} is too small for segmentation; use at least {MIN_SIZE}"
        )
    return A.Compose(
        [
            A.LongestMaxSize(
                max_size=image_size, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST
            )
        ]
    )


def segmentation_train_transform(
    image_size: int, crop_size: int, augment: SegmentationAugment = "standard", ignore_index: int = 255
) -> A.Compose:
    """Training pipeline for ``augment`` (see :data:`SegmentationAugment`): ``crop_size`` squares of
    the image resized as for evaluation, padded with black (mask: ``ignore_index``) when smaller."""
    if crop_size < MIN_SIZE:
        raise ConfigError(
            f"--data.crop_size={crop_size} is too small for segmentation; use at least {MIN_SIZE}"
        )
    steps: list[A.BasicTransform] = list(segmentation_eval_transform(image_size).transforms)
    if augment == "standard":
        low, high = SCALE_RANGE if image_size > SMALL_IMAGE_MAX else SMALL_SCALE_RANGE
        steps.append(
            A.RandomScale(
                scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST, p=1.0,
            )
        )  # fmt: skip
    elif augment not in ("flip", "none"):
        raise ConfigError(f"--data.augment={augment!r}: choose one of standard, flip, none")
    pad = A.PadIfNeeded(
        min_height=crop_size,
        min_width=crop_size,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=ignore_index,
    )
    steps.append(pad)
    if augment == "none":
        steps.append(A.CenterCrop(height=crop_size, width=crop_size))
        return A.Compose(steps)
    steps += [A.RandomCrop(height=crop_size, width=crop_size), A.HorizontalFlip(p=0.5)]
    if augment == "standard":
        steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5))
    return A.Compose(steps)
