"""Pretext transforms: pure functions over batched tensors, run on the training device."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

ALLOWED_ROTATIONS = (0, 90, 180, 270)


def check_rotations(rotations: Sequence[int]) -> tuple[int, ...]:
    """Validate a rotation set: distinct multiples of 90 in [0, 360), at least two."""
    values = tuple(int(r) for r in rotations)
    if len(values) < 2 or len(set(values)) != len(values) or any(r not in ALLOWED_ROTATIONS for r in values):
        raise ValueError(
            f"rotations={list(values)}: give at least two distinct angles from "
            f"{list(ALLOWED_ROTATIONS)} (degrees, counter-clockwise)"
        )
    return values


def rotate_batch(images: Tensor, rotations: Sequence[int] = ALLOWED_ROTATIONS) -> tuple[Tensor, Tensor]:
    """Every image in every rotation, with the rotation's index as its label (RotNet).

    Args:
        images: ``(B, C, H, W)`` with ``H == W``.
        rotations: Angles in degrees, counter-clockwise, each a multiple of 90.

    Returns:
        ``(R * B, C, H, W)`` images, rotation-major (the first B are ``rotations[0]``), and
        ``(R * B,)`` int64 labels indexing ``rotations``.
    """
    if images.ndim != 4:
        raise ValueError(f"rotate_batch expects (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(
            f"rotation needs square images, got {images.shape[-2]}x{images.shape[-1]}; "
            "crop them square (--data.image_size)"
        )
    values = check_rotations(rotations)
    rotated = [torch.rot90(images, k=r // 90, dims=(2, 3)) for r in values]  # each (B, C, H, W)
    labels = torch.arange(len(values), device=images.device).repeat_interleave(images.shape[0])
    return torch.cat(rotated), labels


def patch_grid_size(image_size: int, patch_size: int, stride: int) -> int:
    """Patches per side when cutting ``image_size`` pixels into ``patch_size`` patches every ``stride``."""
    if patch_size < 1 or stride < 1:
        raise ValueError(f"patch_size={patch_size} and stride={stride} must be >= 1")
    if patch_size > image_size:
        raise ValueError(f"patch_size={patch_size} is larger than image_size={image_size}")
    return (image_size - patch_size) // stride + 1


def extract_patches(images: Tensor, patch_size: int, stride: int) -> Tensor:
    """Cut images into a grid of (possibly overlapping) square patches.

    Args:
        images: ``(B, C, H, W)`` with ``H == W``.
        patch_size: Side of a patch.
        stride: Step between patches (``stride < patch_size`` overlaps them).

    Returns:
        ``(B, G, G, C, patch_size, patch_size)`` with ``G = (H - patch_size) // stride + 1``;
        ``[:, i, j]`` is the patch whose top-left corner is ``(i * stride, j * stride)``.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"extract_patches needs square (B, C, H, W) images, got {tuple(images.shape)}")
    patch_grid_size(images.shape[-1], patch_size, stride)
    grid = images.unfold(2, patch_size, stride).unfold(3, patch_size, stride)  # (B, C, G, G, P, P)
    return grid.permute(0, 2, 3, 1, 4, 5).contiguous()  # (B, G, G, C, P, P)
