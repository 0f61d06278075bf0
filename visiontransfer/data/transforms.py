"""Albumentations pipelines (CPU, per sample) chosen by preset name and image size.

Pipelines stop at a ``uint8`` array: conversion to float and normalisation happen batched on the
training device in the module (cheaper to ship ``uint8`` from workers, and the mean/std belong
to the backbone, not to the data).
"""

from __future__ import annotations

import random
from typing import Literal

import albumentations as A
import cv2
import numpy as np

from visiontransfer.errors import ConfigError

Augment = Literal["crop_flip", "flip", "none"]
"""Training presets: ``crop_flip`` (random crop and horizontal flip: padded crop up to 64 px,
random-resized crop above), ``flip`` (resize, centre crop, horizontal flip), ``none`` (as eval)."""

CROP_SCALE = (0.2, 1.0)
"""Area share range of the random-resized crop of ``crop_flip`` above 64 px."""

SMALL_IMAGE_MAX = 64
"""Up to this size, crops use the CIFAR recipe (reflect-pad by 1/8, random crop)."""


def eval_transform(image_size: int) -> A.Compose:
    """Resize the shorter side and centre-crop to ``image_size`` (crop ratio 0.875 above 64 px)."""
    _check_size(image_size)
    short_side = image_size if image_size <= SMALL_IMAGE_MAX else round(image_size / 0.875)
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=short_side, interpolation=cv2.INTER_AREA),
            A.CenterCrop(height=image_size, width=image_size),
        ]
    )


def train_transform(image_size: int, augment: Augment = "crop_flip") -> A.Compose:
    """Training pipeline for ``augment`` at ``image_size`` (see :data:`Augment`)."""
    _check_size(image_size)
    if augment == "none":
        return eval_transform(image_size)
    if augment == "flip":
        return A.Compose([*eval_transform(image_size).transforms, A.HorizontalFlip(p=0.5)])
    if augment != "crop_flip":
        raise ConfigError(f"--data.augment={augment!r}: choose one of crop_flip, flip, none")
    if image_size <= SMALL_IMAGE_MAX:
        pad = image_size + image_size // 8
        steps = [
            A.SmallestMaxSize(max_size=image_size, interpolation=cv2.INTER_AREA),
            A.PadIfNeeded(min_height=pad, min_width=pad, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(height=image_size, width=image_size),
        ]
    else:
        steps = [A.RandomResizedCrop(size=(image_size, image_size), scale=CROP_SCALE)]
    return A.Compose([*steps, A.HorizontalFlip(p=0.5)])


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Give a pipeline one seeded random stream (shared by its steps, so they don't correlate)."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def _check_size(image_size: int) -> None:
    if image_size < 8:
        raise ConfigError(f"--data.image_size={image_size} is too small; use at least 8 pixels")
