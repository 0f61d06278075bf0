"""Batched pretext augmentations with per-sample randomness, on the batch's device.

Every function takes float images ``(B, C, H, W)`` in [0, 1] and draws its parameters per sample
(torchvision v2 transforms draw one set per call, so a batch would share one crop and one colour
change: useless for contrastive views). They run on the GPU when the batch is there, so the CPU
only decodes; on a CPU machine they are ordinary tensor ops. Randomness comes from ``generator``:
torch's global RNG (None, seeded by ``seed_everything``), a ``torch.Generator``, or a
:class:`SampleRandom`, which draws every sample's numbers from that sample's own seed, so a view
depends only on the image, its seed and the epoch: not on the batch it is in, the number of
processes, or where a run was resumed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import roi_align

# ITU-R BT.601 luma, as torchvision's rgb_to_grayscale.
LUMA = (0.299, 0.587, 0.114)


class SampleRandom:
    """Random numbers per sample, each sample from its own seeded stream (numpy's PCG64).

    Sample ``i``'s draws depend only on ``(*keys, index[i])``, so the augmentation of an image is
    the same whichever batch, process or resumed run it lands in. The functions of this module
    accept it as their ``generator``; each of their draws takes the next number of every stream.

    Args:
        index: ``(B,)`` dataset index of each sample.
        keys: Further non-negative integers mixed into every seed (a base seed, the epoch, ...).
    """

    def __init__(self, index: Tensor | Sequence[int], *keys: int) -> None:
        if any(k < 0 for k in keys):
            raise ValueError(f"keys={list(keys)} must be >= 0")
        self._streams = [np.random.default_rng([*keys, int(i)]) for i in index]

    @classmethod
    def for_batch(cls, index: Tensor, epoch: int, train: bool = True) -> SampleRandom:
        """The streams of a batch: seeded by the run's seed (``PL_GLOBAL_SEED``, which
        ``seed_everything`` sets; 0 without it), the epoch (training) or a fixed key (evaluation:
        the same views every time), and each sample's dataset index."""
        base = int(os.environ.get("PL_GLOBAL_SEED", 0)) % 2**32
        return cls(index, base, 0, epoch) if train else cls(index, base, 1)

    def __len__(self) -> int:
        return len(self._streams)

    def uniform(self, count: int, like: Tensor) -> Tensor:
        """``(B, count)`` uniforms in [0, 1): the next ``count`` numbers of every sample's stream,
        on ``like``'s device and dtype."""
        table = np.stack([s.random(count) for s in self._streams]) if self._streams else np.zeros((0, count))
        return torch.from_numpy(table).to(device=like.device, dtype=like.dtype)


RandomSource = torch.Generator | SampleRandom | None
"""Where the functions of this module draw their numbers (see the module docstring)."""


def _rand(n: int, like: Tensor, generator: RandomSource) -> Tensor:
    if isinstance(generator, SampleRandom):
        if n != len(generator):
            raise ValueError(f"a batch of {n} images with a SampleRandom of {len(generator)} samples")
        return generator.uniform(1, like)[:, 0]
    return torch.rand(n, device=like.device, generator=generator, dtype=like.dtype)


def _uniform(n: int, low: float, high: float, like: Tensor, generator: RandomSource) -> Tensor:
    return low + (high - low) * _rand(n, like, generator)


def _with_probability(p: float, changed: Tensor, images: Tensor, generator: RandomSource) -> Tensor:
    """``changed`` for each image with probability ``p``, else the image unchanged."""
    apply = (_rand(images.shape[0], images, generator) < p).view(-1, 1, 1, 1)
    return torch.where(apply, changed, images)


def random_resized_crop(
    images: Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: RandomSource = None,
) -> Tensor:
    """A random crop per image (area share in ``scale``, aspect in ``ratio``), resized to ``size``.

    Bilinear resampling by ``roi_align`` with adaptive sampling (several samples per output pixel
    when shrinking, so downscaled crops are averaged rather than aliased).

    Returns:
        ``(B, C, size, size)``.
    """
    b, _, h, w = images.shape
    area = _uniform(b, scale[0], scale[1], images, generator) * h * w
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), images, generator)
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect).clamp(1.0, float(w))
    ch = torch.sqrt(area / aspect).clamp(1.0, float(h))
    x0 = _rand(b, images, generator) * (w - cw)
    y0 = _rand(b, images, generator) * (h - ch)
    batch_idx = torch.arange(b, device=images.device, dtype=images.dtype)
    boxes = torch.stack([batch_idx, x0, y0, x0 + cw, y0 + ch], dim=1)  # (B, 5): idx, x0, y0, x1, y1
    return roi_align(images, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def random_hflip(images: Tensor, p: float = 0.5, generator: RandomSource = None) -> Tensor:
    """Mirror each image left-right with probability ``p``."""
    return _with_probability(p, images.flip(-1), images, generator)


def grayscale(images: Tensor) -> Tensor:
    """Luma of RGB images, repeated to 3 channels: ``(B, 3, H, W)``."""
    weights = images.new_tensor(LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True).expand_as(images)


def random_grayscale(images: Tensor, p: float = 0.2, generator: RandomSource = None) -> Tensor:
    """Drop the colour of each image with probability ``p``."""
    return _with_probability(p, grayscale(images), images, generator)


def _rotate_hue(images: Tensor, angle: Tensor) -> Tensor:
    """Rotate hue by ``angle`` radians per image, in the YIQ plane (a linear approximation of
    HSV hue rotation that keeps luma)."""
    to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, images)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)


def color_jitter(
    images: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
    generator: RandomSource = None,
) -> Tensor:
    """Per-image brightness, contrast, saturation and hue changes (SimCLR), with probability ``p``.

    Factors are drawn uniformly from ``[1 - s, 1 + s]``; hue shifts from ``[-hue, hue]`` of a turn.
    Applied in a fixed order (torchvision shuffles the order; the difference is minor).
    """
    b = images.shape[0]
    out = images * _uniform(b, 1 - brightness, 1 + brightness, images, generator).view(-1, 1, 1, 1)
    mean = grayscale(out).mean(dim=(1, 2, 3), keepdim=True)
    c = _uniform(b, 1 - contrast, 1 + contrast, images, generator).view(-1, 1, 1, 1)
    out = (mean + c * (out - mean)).clamp(0, 1)
    s = _uniform(b, 1 - saturation, 1 + saturation, images, generator).view(-1, 1, 1, 1)
    grey = grayscale(out)
    out = (grey + s * (out - grey)).clamp(0, 1)
    if hue > 0:
        out = _rotate_hue(out, _uniform(b, -hue, hue, images, generator) * 2 * math.pi).clamp(0, 1)
    return _with_probability(p, out, images, generator)


def random_gaussian_blur(
    images: Tensor,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    generator: RandomSource = None,
) -> Tensor:
    """Blur each image with probability ``p`` by a Gaussian of a random sigma (kernel 10% of side)."""
    b, c, h, w = images.shape
    radius = max(1, int(0.05 * min(h, w)))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    sig = _uniform(b, sigma[0], sigma[1], images, generator).view(-1, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sig) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K)
    k = kernel.repeat_interleave(c, dim=0)  # (B*C, K): one kernel per image channel
    x = images.reshape(1, b * c, h, w)
    x = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(b * c, 1, 1, -1), groups=b * c)
    x = torch.nn.functional.conv2d(x, k.view(b * c, 1, -1, 1), groups=b * c)
    return _with_probability(p, x.view(b, c, h, w), images, generator)


def simclr_view(
    images: Tensor,
    size: int,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    jitter_strength: float = 0.5,
    blur: bool = False,
    generator: RandomSource = None,
    hue: float | None = None,
    grayscale_p: float = 0.2,
) -> Tensor:
    """One SimCLR view: random resized crop, flip, colour jitter (p 0.8), greyscale (p
    ``grayscale_p``, paper 0.2), optionally blur (p 0.5; the paper blurs on ImageNet, not CIFAR).

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1].
        size: Output side.
        crop_scale: Area share range of the crop.
        jitter_strength: ``s`` of the paper: brightness/contrast/saturation 0.8 s, hue 0.2 s.
        blur: Apply Gaussian blur.
        generator: Random source.
        hue: Largest hue shift, in turns (0.5: any hue); None: the paper's ``0.2 s`` (at most 0.5).
        grayscale_p: Probability of a greyscale view.

    Raises:
        ValueError: ``hue`` outside [0, 0.5] or ``grayscale_p`` outside [0, 1].
    """
    s = jitter_strength
    hue = min(0.2 * s, 0.5) if hue is None else hue
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue={hue} must be in [0, 0.5] (a share of a full turn)")
    if not 0 <= grayscale_p <= 1:
        raise ValueError(f"grayscale_p={grayscale_p} must be in [0, 1]")
    view = random_resized_crop(images, size, crop_scale, generator=generator)
    view = random_hflip(view, generator=generator)
    view = color_jitter(view, 0.8 * s, 0.8 * s, 0.8 * s, hue, p=0.8, generator=generator)
    view = random_grayscale(view, p=grayscale_p, generator=generator)
    if blur:
        view = random_gaussian_blur(view, p=0.5, generator=generator)
    return view


def random_solarize(
    images: Tensor, p: float = 0.2, threshold: float = 0.5, generator: RandomSource = None
) -> Tensor:
    """Invert the pixels above ``threshold`` (``x -> 1 - x``) of each image with probability ``p``
    (BYOL, DINO)."""
    return _with_probability(p, torch.where(images >= threshold, 1.0 - images, images), images, generator)


def byol_view(
    images: Tensor,
    size: int,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    blur_p: float = 1.0,
    solarize_p: float = 0.0,
    generator: RandomSource = None,
) -> Tensor:
    """One view of the BYOL recipe (Grill et al. 2020), which DINO uses for its crops: random
    resized crop, flip, colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1;
    p 0.8), greyscale (p 0.2), Gaussian blur (p ``blur_p``), solarisation (p ``solarize_p``).

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1].
        size: Output side.
        crop_scale: Area share range of the crop.
        blur_p: Blur probability (BYOL: 1.0 and 0.1 for its two views; 0 turns blur off).
        solarize_p: Solarisation probability (BYOL: 0 and 0.2).
        generator: Random source.
    """
    view = random_resized_crop(images, size, crop_scale, generator=generator)
    view = random_hflip(view, generator=generator)
    view = color_jitter(view, 0.4, 0.4, 0.2, 0.1, p=0.8, generator=generator)
    view = random_grayscale(view, p=0.2, generator=generator)
    if blur_p > 0:
        view = random_gaussian_blur(view, p=blur_p, generator=generator)
    if solarize_p > 0:
        view = random_solarize(view, p=solarize_p, generator=generator)
    return view


def multi_crop(
    images: Tensor,
    global_size: int,
    local_size: int,
    local_crops: int,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
    blur: bool = True,
    generator: RandomSource = None,
) -> tuple[Tensor, Tensor | None]:
    """DINO's multi-crop views (Caron et al. 2021, after SwAV): two global crops (BYOL's two
    augmentations: blur p 1.0 / 0.1, solarisation p 0 / 0.2) and ``local_crops`` small crops
    (blur p 0.5), each drawn per image.

    Args:
        images: ``(B, 3, H, W)`` float in [0, 1].
        global_size: Side of the global crops.
        local_size: Side of the local crops.
        local_crops: Number of local crops (0: global crops only).
        global_scale: Area share range of the global crops.
        local_scale: Area share range of the local crops.
        blur: Gaussian blur (off for tiny images, as for CIFAR in SimCLR).
        generator: Random source.

    Returns:
        ``(2B, 3, global_size, global_size)`` global views (view-major: the first B are the first
        view) and ``(local_crops · B, 3, local_size, local_size)`` local views (None without).
    """
    first = byol_view(images, global_size, global_scale, 1.0 if blur else 0.0, 0.0, generator)
    second = byol_view(images, global_size, global_scale, 0.1 if blur else 0.0, 0.2, generator)
    locals_ = [
        byol_view(images, local_size, local_scale, 0.5 if blur else 0.0, 0.0, generator)
        for _ in range(local_crops)
    ]
    return torch.cat([first, second]), torch.cat(locals_) if locals_ else None
