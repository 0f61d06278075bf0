"""The quantised ab space of colourization, as pure torch functions (the colour conversion
itself is :mod:`visiontransfer.color`).

Quantised ab space (Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016, §2.1): a/b
are cut into a grid of ``grid_size`` (10) over ``[-110, 110]`` (bin centres at the multiples of
the grid size); a bin is kept when some colour of the gamut falls into it. We take the gamut to
be every 8-bit sRGB colour (all 256³ values a ``uint8`` image can hold), so every pixel of a
training image lands in a kept bin. This gives Q = 261 bins at grid size 10; Zhang et al. report
313 (their in-gamut set, released as ``pts_in_hull.npy``, is more generous at the gamut's edge
than the exact 8-bit sRGB gamut).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from visiontransfer.color import rgb_to_lab

AB_RANGE = 110.0
"""Half-width of the quantised ab square ``[-110, 110]²`` (Zhang et al.)."""


def _grid_values(grid_size: int) -> Tensor:
    """Bin centres along one axis: the multiples of ``grid_size`` in ``[-110, 110]``."""
    if not 5 <= grid_size <= 55:
        raise ValueError(
            f"grid_size={grid_size} must be in 5..55 (ab units; the paper uses 10): "
            "smaller grids give thousands of bins, larger ones too few colours"
        )
    half = int(AB_RANGE // grid_size)
    return torch.arange(-half, half + 1, dtype=torch.float64) * grid_size


def _srgb_cube_faces(levels: int = 256) -> Tensor:
    """The six faces of the sRGB cube at ``levels`` steps per axis: ``(6, 3, levels, levels)``."""
    steps = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    u, v = torch.meshgrid(steps, steps, indexing="ij")
    faces = []
    for channel in range(3):
        for value in (0.0, 1.0):
            planes = [u, v]
            planes.insert(channel, torch.full_like(u, value))
            faces.append(torch.stack(planes))
    return torch.stack(faces)


@functools.lru_cache(maxsize=8)
def _gamut_centers_cpu(grid_size: int) -> Tensor:
    """In-gamut bin centres ``(Q, 2)`` (float64, CPU): bins hit by some 8-bit sRGB colour.

    The ab footprint of the colour solid is the footprint of its surface (the extremes of
    every line along L lie on the surface), so converting the six faces of the 8-bit cube
    (6·256² colours, a fraction of a second) finds the same bins as all 256³ colours; a test
    checks this. The bins are stable: every hitting colour lies ≥ 0.3 ab units inside its
    bin. Computed on the CPU in float64, so Q and the bin order are the same on every device
    (a checkpoint's ``(Q,)`` prior must load anywhere).
    """
    values = _grid_values(grid_size)
    n = len(values)
    ab = rgb_to_lab(_srgb_cube_faces())[:, 1:].transpose(0, 1).reshape(2, -1)  # (2, 6·256²)
    cell = (torch.round(ab / grid_size).long() + n // 2).clamp(0, n - 1)
    hit = torch.zeros(n * n, dtype=torch.bool)
    hit[cell[0] * n + cell[1]] = True
    a_idx, b_idx = torch.nonzero(hit.view(n, n), as_tuple=True)
    return torch.stack([values[a_idx], values[b_idx]], dim=1)


@functools.lru_cache(maxsize=16)
def _gamut_centers(grid_size: int, device: str) -> Tensor:
    return _gamut_centers_cpu(grid_size).to(device=device, dtype=torch.float32)


def ab_bin_centers(grid_size: int = 10, device: torch.device | str = "cpu") -> Tensor:
    """The Q in-gamut ab bin centres ``(Q, 2)`` float32 (a, b), row-major over (a, b).

    Deterministic; computed once per grid size (a fraction of a second) and cached per device.
    Treat the result as read-only.
    """
    return _gamut_centers(grid_size, str(torch.device(device)))


def _pairwise_sq_dist(points: Tensor, centers: Tensor) -> Tensor:
    """``(N, 2)`` × ``(Q, 2)`` → squared distances ``(N, Q)``."""
    return (points.unsqueeze(1) - centers.unsqueeze(0)).pow(2).sum(-1)


def _flat_ab(ab: Tensor, centers: Tensor, name: str) -> Tensor:
    if ab.ndim != 4 or ab.shape[1] != 2:
        raise ValueError(f"{name} needs ab as (B, 2, H, W), got shape {tuple(ab.shape)}")
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise ValueError(f"{name} needs centers as (Q, 2), got shape {tuple(centers.shape)}")
    return ab.permute(0, 2, 3, 1).reshape(-1, 2).to(centers.dtype)  # (B·H·W, 2)


def nearest_bin(ab: Tensor, centers: Tensor, chunk: int = 32768) -> Tensor:
    """Index of the nearest bin centre of each pixel: ``(B, 2, H, W)`` → ``(B, H, W)`` int64."""
    flat = _flat_ab(ab, centers, "nearest_bin")
    batch, _, height, width = ab.shape
    out = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
    for start in range(0, flat.shape[0], chunk):
        out[start : start + chunk] = _pairwise_sq_dist(flat[start : start + chunk], centers).argmin(1)
    return out.view(batch, height, width)


def soft_encode(ab: Tensor, centers: Tensor, k: int = 5, sigma: float = 5.0, chunk: int = 32768) -> Tensor:
    """Soft targets of the paper: Gaussian weights on each pixel's ``k`` nearest bins.

    Args:
        ab: ``(B, 2, H, W)`` ab values.
        centers: ``(Q, 2)`` bin centres (:func:`ab_bin_centers`).
        k: Nearest centres that get weight (the paper: 5).
        sigma: Std of the Gaussian kernel in ab units (the paper: 5).
        chunk: Pixels processed at once (bounds the ``(chunk, Q)`` distance matrix).

    Returns:
        ``(B, Q, H, W)`` non-negative, summing to 1 over Q, exactly ``k`` non-zeros per pixel.
    """
    flat = _flat_ab(ab, centers, "soft_encode")
    if not 1 <= k <= centers.shape[0]:
        raise ValueError(f"k={k} must be in 1..{centers.shape[0]} (the number of bins)")
    if sigma <= 0:
        raise ValueError(f"sigma={sigma} must be > 0 (ab units; the paper uses 5)")
    out = flat.new_zeros(flat.shape[0], centers.shape[0])  # (B·H·W, Q)
    for start in range(0, flat.shape[0], chunk):
        dist, idx = _pairwise_sq_dist(flat[start : start + chunk], centers).topk(k, dim=1, largest=False)
        # softmax(-d²/2σ²) = Gaussian weights normalised; exact for the nearest, never all-zero.
        out[start : start + chunk].scatter_(1, idx, torch.softmax(-dist / (2 * sigma**2), dim=1))
    batch, _, height, width = ab.shape
    return out.view(batch, height, width, -1).permute(0, 3, 1, 2)  # (B, Q, H, W)


def smooth_prior(prior: Tensor, centers: Tensor, sigma: float = 5.0) -> Tensor:
    """Gaussian-smoothed, normalised colour prior (paper §2.2: ``p̃`` with ``G_σ``, σ = 5).

    Each bin gets ``Σ_r exp(-|c_q - c_r|² / 2σ²) p_r``, then the result is normalised to sum 1.
    ``sigma <= 0`` only normalises.
    """
    if prior.ndim != 1 or prior.shape[0] != centers.shape[0]:
        raise ValueError(f"prior {tuple(prior.shape)} must be (Q,) with Q = {centers.shape[0]} bins")
    prior = prior.to(centers.dtype)
    if sigma > 0:
        kernel = torch.exp(-_pairwise_sq_dist(centers, centers) / (2 * sigma**2))  # (Q, Q)
        prior = kernel @ prior
    return prior / prior.sum().clamp_min(torch.finfo(prior.dtype).tiny)


def rebalance_weights(prior: Tensor, lam: float = 0.5) -> Tensor:
    """Class-rebalancing weights of the paper (eq. 3-4): ``w ∝ ((1 − λ)·p + λ/Q)⁻¹``, ``E_p[w] = 1``.

    Args:
        prior: ``(Q,)`` colour distribution (normalised here; pass the smoothed ``p̃``).
        lam: Mix with the uniform distribution, in ``[0, 1]`` (the paper: 0.5). 1 gives the
            inverse of the uniform distribution (all weights 1); 0 the inverse of the prior.

    Returns:
        ``(Q,)`` weights with ``Σ_q p_q w_q = 1``.
    """
    if prior.ndim != 1 or prior.numel() == 0:
        raise ValueError(f"prior must be a non-empty (Q,) tensor, got shape {tuple(prior.shape)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam} must be in [0, 1] (the paper uses 0.5)")
    if (prior < 0).any() or prior.sum() <= 0:
        raise ValueError("prior must be non-negative with a positive sum")
    p = prior / prior.sum()
    weights = 1.0 / ((1.0 - lam) * p + lam / p.numel())
    return weights / (p * weights).sum()


def annealed_mean(logits: Tensor, centers: Tensor, temperature: float = 0.38) -> Tensor:
    """Annealed mean of the paper (eq. 5): ``(B, Q, H, W)`` logits → ``(B, 2, H, W)`` ab.

    ``f_T(z) = softmax(log z / T)`` then the mean of the bin centres under it; with
    ``z = softmax(logits)`` that is ``softmax(logits / T)``. T = 1 is the mean, T → 0 the mode.
    """
    if logits.ndim != 4 or logits.shape[1] != centers.shape[0]:
        raise ValueError(
            f"annealed_mean needs (B, Q, H, W) logits with Q = {centers.shape[0]}, got {tuple(logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 (the paper uses 0.38)")
    with torch.autocast(logits.device.type, enabled=False):  # full precision under mixed precision
        probs = F.softmax(logits.float() / temperature, dim=1)  # (B, Q, H, W)
        return torch.einsum("bqhw,qc->bchw", probs, centers.float())
