"""CIE Lab colour conversion as pure torch functions, and the one rule for single-channel backbones.

Colour conversion: sRGB (IEC 61966-2-1, exact piecewise gamma: linear below 0.04045 with slope
1/12.92, power 2.4 above) → linear RGB → CIE XYZ (D65 white) → CIE L*a*b* with the CIE
``f(t)`` (cube root above ``epsilon = 216/24389``, ``(kappa·t + 16)/116`` below, ``kappa =
24389/27``). The RGB→XYZ matrix and the D65 white point are the ones scikit-image uses, so the
two agree to float precision. Everything runs on the input's device and dtype and is
differentiable: the power branches are evaluated on clamped inputs, so gradients stay finite at
0 (no ``0 ** (1/3)`` derivative).

A backbone with one input channel (pretrained by colorization, Zhang et al. 2016) sees the CIE L
lightness of RGB images: :func:`match_channels` is that rule, for every task.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPSILON = 216.0 / 24389.0
"""CIE ``epsilon``: below this ``Y/Yn`` the Lab ``f`` is linear."""
KAPPA = 24389.0 / 27.0
"""CIE ``kappa``: slope of the linear part, ``f(t) = (kappa·t + 16) / 116``."""
D65_WHITE = (0.95047, 1.0, 1.08883)
"""XYZ of the D65 reference white (2° observer), as in scikit-image."""
XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
"""Linear sRGB → XYZ (the matrix scikit-image uses)."""


def _check_image(x: Tensor, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} needs a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} needs a float tensor, got {x.dtype} (divide uint8 images by 255)")


def _mix(x: Tensor, matrix: Tensor) -> Tensor:
    """Apply a 3×3 colour matrix to the channel axis of ``(B, 3, H, W)``.

    Element-wise on purpose: a matmul would run in half precision under mixed-precision autocast.
    """
    channels = x.unbind(1)
    rows = [sum(m * c for m, c in zip(row, channels, strict=True)) for row in matrix]
    return torch.stack(rows, dim=1)  # type: ignore[arg-type]


def _constants(x: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """The RGB→XYZ matrix (or its inverse, taken in float64) and the white, like ``x``."""
    matrix = torch.tensor(XYZ_FROM_RGB, dtype=torch.float64)
    if inverse:
        matrix = torch.linalg.inv(matrix)
    white = torch.tensor(D65_WHITE, dtype=torch.float64).view(1, 3, 1, 1)
    return matrix.to(x.device, x.dtype), white.to(x.device, x.dtype)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB ``(B, 3, H, W)`` float in ``[0, 1]`` → Lab: L in 0..100, a and b roughly -128..127."""
    _check_image(rgb, "rgb_to_lab")
    matrix, white = _constants(rgb)
    linear = torch.where(
        rgb > 0.04045, ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92
    )  # (B, 3, H, W)
    t = _mix(linear, matrix) / white  # XYZ relative to white
    f = torch.where(t > EPSILON, t.clamp_min(EPSILON) ** (1.0 / 3.0), (KAPPA * t + 16.0) / 116.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """Lab ``(B, 3, H, W)`` → sRGB float, clamped to ``[0, 1]`` (out-of-gamut colours clip)."""
    _check_image(lab, "lab_to_rgb")
    rgb_from_xyz, white = _constants(lab, inverse=True)
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=1)  # (B, 3, H, W)
    f_eps = EPSILON ** (1.0 / 3.0)
    t = torch.where(f > f_eps, f**3, (116.0 * f - 16.0) / KAPPA)
    linear = _mix(t * white, rgb_from_xyz).clamp_min(0.0)
    rgb = torch.where(
        linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055, 12.92 * linear
    )
    return rgb.clamp(0.0, 1.0)


L_MAX = 100.0
"""L of white: ``L / L_MAX`` is the lightness in ``[0, 1]``."""


def lightness(rgb: Tensor) -> Tensor:
    """sRGB ``(B, 3, H, W)`` float in ``[0, 1]`` → CIE L ``(B, 1, H, W)`` scaled to ``[0, 1]``."""
    return rgb_to_lab(rgb)[:, :1] / L_MAX


def match_channels(images: Tensor, in_chans: int) -> Tensor:
    """``(B, C, H, W)`` float images in ``[0, 1]`` → what a backbone of ``in_chans`` channels sees.

    RGB images given to a single-channel backbone become their lightness (:func:`lightness`);
    everything else passes unchanged.

    Raises:
        ValueError: ``images`` is not ``(B, C, H, W)``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if in_chans == 1 and images.shape[1] == 3:
        return lightness(images)
    return images
