"""Bbox-aware augmentation: the training presets and the evaluation resize, every step moving the
boxes with the image."""

from __future__ import annotations

from typing import Literal

import albumentations as A
import cv2

from visiontransfer.data.detection.records import MIN_BOX_SIDE
from visiontransfer.errors import ConfigError

DetectionAugment = Literal["standard", "flip", "none"]
"""Training presets: ``standard`` (a random crop keeping every box or a zoom-out, horizontal flip,
colour jitter), ``flip`` (horizontal flip only), ``none`` (as evaluation: resize only)."""

FILL = (124, 116, 104)
"""Fill of the border a zoom-out adds (the ImageNet mean colour)."""


# -- augmentation -------------------------------------------------------------------------------
def _bbox_params() -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        clip=True,
        min_width=MIN_BOX_SIDE,
        min_height=MIN_BOX_SIDE,
    )


def detection_eval_transform(image_size: int) -> A.Compose:
    """Resize the longest side to ``image_size`` (aspect ratio kept; boxes follow)."""
    if image_size < 32:
        raise ConfigError(f"--data.image_size={image_size} is too small for detection; use at least 32")
    return A.Compose(
        [A.LongestMaxSize(max_size=image_size, interpolation=cv2.INTER_AREA)], bbox_params=_bbox_params()
    )


def detection_train_transform(image_size: int, augment: DetectionAugment = "standard") -> A.Compose:
    """Training pipeline for ``augment`` (see :data:`DetectionAugment`); every step moves the boxes.

    ``standard``: with p=0.5, either a random crop that keeps every box whole (a zoom-in once
    resized) or a zoom-out to 60–100 % on a mean-colour border; then the longest side resized to
    ``image_size``, a horizontal flip and colour jitter.
    """
    resize = detection_eval_transform(image_size).transforms
    if augment == "none":
        steps = list(resize)
    elif augment == "flip":
        steps = [*resize, A.HorizontalFlip(p=0.5)]
    elif augment == "standard":
        zoom = A.OneOf(
            [
                A.BBoxSafeRandomCrop(erosion_rate=0.0),
                A.Affine(
                    scale=(0.6, 1.0), keep_ratio=True, border_mode=cv2.BORDER_CONSTANT, fill=FILL, p=1.0
                ),
            ],
            p=0.5,
        )
        colour = A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8)
        steps = [zoom, *resize, A.HorizontalFlip(p=0.5), colour]
    else:
        raise ConfigError(f"--data.augment={augment!r}: choose one of standard, flip, none")
    return A.Compose(steps, bbox_params=_bbox_params())
