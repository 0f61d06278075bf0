"""Batched augmentations draw their parameters per sample."""

from __future__ import annotations

import torch

from visiontransfer.pretext import augment


def _batch(n: int = 8) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(1, 3, 32, 32).expand(n, 3, 32, 32).contiguous()


def test_crops_differ_per_sample_and_keep_shape() -> None:
    images = _batch()
    out = augment.random_resized_crop(images, 24, generator=torch.Generator().manual_seed(1))
    assert out.shape == (8, 3, 24, 24)
    distinct = {tuple(o.flatten()[:20].tolist()) for o in out}
    assert len(distinct) == 8, "one crop per batch instead of one per sample"


def test_full_crop_is_identity() -> None:
    images = torch.rand(2, 3, 16, 16)
    out = augment.random_resized_crop(images, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(out, images, atol=1e-5)


def test_flip_some_not_all() -> None:
    images = torch.arange(16.0).view(1, 1, 4, 4).expand(64, 1, 4, 4)
    out = augment.random_hflip(images, generator=torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 3).sum().item()
    assert 10 < flipped < 54


def test_grayscale_and_jitter_ranges() -> None:
    images = _batch(16)
    grey = augment.grayscale(images)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    out = augment.color_jitter(images, p=1.0, generator=torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1
    means = out.mean(dim=(1, 2, 3))
    assert means.unique().numel() == 16, "colour jitter must draw per sample"


def test_blur_smooths() -> None:
    images = torch.zeros(2, 3, 32, 32)
    images[:, :, 16, 16] = 1.0
    out = augment.random_gaussian_blur(images, p=1.0, sigma=(1.5, 1.5))
    assert out[:, :, 16, 16].max() < 0.5 and out[:, :, 16, 17].min() > 0
    assert torch.allclose(out.sum(dim=(2, 3)), images.sum(dim=(2, 3)), atol=1e-4)


def test_simclr_view_reproducible_with_generator() -> None:
    images = _batch(4)
    a = augment.simclr_view(images, 32, generator=torch.Generator().manual_seed(3), blur=True)
    b = augment.simclr_view(images, 32, generator=torch.Generator().manual_seed(3), blur=True)
    assert torch.equal(a, b) and a.shape == images.shape


def test_simclr_view_hue_and_greyscale_options() -> None:
    import pytest

    red = torch.zeros(64, 3, 16, 16)
    red[:, 0] = 0.9

    def rng() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    grey = augment.simclr_view(red, 16, crop_scale=(1.0, 1.0), grayscale_p=1.0, generator=rng())
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    paper = augment.simclr_view(red, 16, (1.0, 1.0), grayscale_p=0.0, generator=rng())  # hue ±0.1 turn
    anyhue = augment.simclr_view(red, 16, (1.0, 1.0), 0.5, hue=0.5, grayscale_p=0.0, generator=rng())
    # red stays the strongest channel under small hue shifts; any hue makes green or blue win often
    assert (paper.mean(dim=(2, 3)).argmax(dim=1) == 0).all()
    assert (anyhue.mean(dim=(2, 3)).argmax(dim=1) != 0).float().mean() > 0.3
    strong = augment.simclr_view(red, 16, jitter_strength=3.0, generator=rng())  # 0.2 s capped at 0.5
    assert strong.shape == red.shape
    with pytest.raises(ValueError, match=r"hue=0\.7"):
        augment.simclr_view(red, 16, hue=0.7)
    with pytest.raises(ValueError, match=r"grayscale_p=1\.5"):
        augment.simclr_view(red, 16, grayscale_p=1.5)
