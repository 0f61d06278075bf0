"""Lab colour math against scikit-image, and the quantised ab space of Zhang et al. 2016."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visiontransfer.color import D65_WHITE, EPSILON, KAPPA, XYZ_FROM_RGB, lab_to_rgb, rgb_to_lab
from visiontransfer.pretext.lab import (
    ab_bin_centers,
    annealed_mean,
    nearest_bin,
    rebalance_weights,
    smooth_prior,
    soft_encode,
)

skcolor = pytest.importorskip("skimage.color", reason="scikit-image is the Lab reference (dev extra)")


def _random_rgb(seed: int = 0, shape: tuple[int, ...] = (4, 3, 16, 16)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _to_hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).double().numpy()


def _real_pixels(cifar10_dir: Path) -> torch.Tensor:
    """A few CIFAR-10 photos as ``(N, 3, 32, 32)`` float RGB in [0, 1]."""
    files = sorted((cifar10_dir / "test" / "cat").glob("*.jpg"))[:4]
    files += sorted((cifar10_dir / "test" / "ship").glob("*.jpg"))[:4]
    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# Colour conversion ----------------------------------------------------------------------------


def test_rgb_to_lab_matches_skimage_on_random_colours() -> None:
    rgb = _random_rgb()
    ours = rgb_to_lab(rgb)
    assert ours.dtype == torch.float32 and ours.shape == rgb.shape
    np.testing.assert_allclose(_to_hwc(ours), skcolor.rgb2lab(_to_hwc(rgb)), atol=1e-3)


def test_lab_to_rgb_matches_skimage_on_random_colours() -> None:
    lab = skcolor.rgb2lab(_to_hwc(_random_rgb(1)))  # float64 reference Lab of in-gamut colours
    ours = lab_to_rgb(torch.from_numpy(lab).permute(0, 3, 1, 2).float())
    np.testing.assert_allclose(_to_hwc(ours), skcolor.lab2rgb(lab), atol=1e-3)


def test_lab_matches_skimage_on_real_photos(cifar10_dir: Path) -> None:
    rgb = _real_pixels(cifar10_dir)
    reference = skcolor.rgb2lab(_to_hwc(rgb))
    np.testing.assert_allclose(_to_hwc(rgb_to_lab(rgb)), reference, atol=1e-3)
    back = lab_to_rgb(torch.from_numpy(reference).permute(0, 3, 1, 2).float())
    np.testing.assert_allclose(_to_hwc(back), skcolor.lab2rgb(reference), atol=1e-3)
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-4


def test_round_trip_within_1e_4() -> None:
    rgb = _random_rgb(2, (8, 3, 32, 32))
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-4
    corners = torch.tensor(
        [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.float32
    )
    corners = corners.t().reshape(1, 3, 2, 3)
    assert (lab_to_rgb(rgb_to_lab(corners)) - corners).abs().max() < 1e-4


def test_reference_colours_and_constants() -> None:
    assert math.isclose(EPSILON, 0.008856, rel_tol=1e-3) and math.isclose(KAPPA, 903.3, rel_tol=1e-4)
    assert math.isclose(sum(XYZ_FROM_RGB[1]), D65_WHITE[1], rel_tol=1e-6)  # Y of white is 1
    white_black = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    lab = rgb_to_lab(white_black)[0, :, 0]  # (3, 2)
    assert torch.allclose(lab[:, 0], torch.tensor([100.0, 0.0, 0.0]), atol=0.02)
    assert torch.allclose(lab[:, 1], torch.zeros(3), atol=1e-5)


def test_follows_device_and_dtype() -> None:
    rgb = _random_rgb(3, (1, 3, 4, 4)).double()
    assert rgb_to_lab(rgb).dtype == torch.float64 and lab_to_rgb(rgb_to_lab(rgb)).dtype == torch.float64


def test_full_precision_under_autocast() -> None:
    rgb = _random_rgb(4, (1, 3, 8, 8))
    logits = torch.randn(1, ab_bin_centers().shape[0], 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lab = rgb_to_lab(rgb)
        ab = annealed_mean(logits, ab_bin_centers())
    assert lab.dtype == torch.float32 and torch.equal(lab, rgb_to_lab(rgb))
    assert ab.dtype == torch.float32 and torch.allclose(ab, annealed_mean(logits, ab_bin_centers()))


@pytest.mark.parametrize("value", [0.0, 0.04045, 1.0])
def test_gradients_finite_at_edges(value: float) -> None:
    rgb = torch.full((1, 3, 2, 2), value, requires_grad=True)
    rgb_to_lab(rgb).sum().backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all()
    lab = torch.zeros(1, 3, 2, 2, requires_grad=True)  # black: every branch at its threshold
    lab_to_rgb(lab).sum().backward()
    assert lab.grad is not None and torch.isfinite(lab.grad).all()


def test_bad_shapes_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        rgb_to_lab(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="float"):
        rgb_to_lab(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))


# Quantised ab space ---------------------------------------------------------------------------


def test_bins_are_a_sane_in_gamut_grid() -> None:
    centers = ab_bin_centers()
    q = centers.shape[0]
    assert 250 <= q <= 350, f"Q = {q}; Zhang et al. report 313"
    assert centers.dtype == torch.float32 and centers.shape == (q, 2)
    assert torch.equal(centers, centers.round(decimals=-1)), "centres lie on the 10-grid"
    assert centers.abs().max() <= 110
    assert len({tuple(c) for c in centers.tolist()}) == q
    assert torch.equal(ab_bin_centers(10), centers)  # deterministic (and cached)
    assert [0.0, 0.0] in centers.tolist()  # greys
    assert ab_bin_centers(20).shape[0] < q


def _cells_of_all_8bit_colours() -> set[tuple[int, int]]:
    """The 10-grid cells (as centres) hit by the ab of every 8-bit sRGB colour (256³ of them)."""
    level = torch.arange(256, dtype=torch.float64) / 255.0
    linear = torch.where(level > 0.04045, ((level + 0.055) / 1.055) ** 2.4, level / 12.92)
    white = torch.tensor(D65_WHITE, dtype=torch.float64)[:, None]
    matrix = (torch.tensor(XYZ_FROM_RGB, dtype=torch.float64) / white).float()
    linear = linear.float()
    hit = torch.zeros(23 * 23, dtype=torch.bool)
    for red in linear.split(32):  # (32, 256, 256) colours at a time
        t = [m[0] * red[:, None, None] + m[1] * linear[None, :, None] + m[2] * linear for m in matrix]
        fx, fy, fz = (
            torch.where(x > EPSILON, x.clamp_min(EPSILON) ** (1 / 3), KAPPA * x / 116 + 16 / 116) for x in t
        )
        a = torch.round(500 * (fx - fy) / 10).long() + 11
        b = torch.round(200 * (fy - fz) / 10).long() + 11
        hit[(a * 23 + b).flatten()] = True
    index = hit.nonzero().flatten()
    return {(int(i // 23 - 11) * 10, int(i % 23 - 11) * 10) for i in index}


def test_every_8bit_colour_falls_in_a_kept_bin() -> None:
    centers = ab_bin_centers()
    assert _cells_of_all_8bit_colours() == {tuple(c) for c in centers.long().tolist()}


def test_bad_grid_size_names_the_flag() -> None:
    with pytest.raises(ValueError, match=r"^grid_size=1 must be in 5\.\.55"):
        ab_bin_centers(1)


def test_nearest_bin_is_the_closest_centre() -> None:
    centers = ab_bin_centers()
    ab = (torch.rand(2, 2, 5, 7, generator=torch.Generator().manual_seed(0)) - 0.5) * 160
    idx = nearest_bin(ab, centers)
    assert idx.shape == (2, 5, 7) and idx.dtype == torch.long
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    assert torch.equal(idx.flatten(), torch.cdist(flat, centers).argmin(1))
    on_centres = centers[:6].t().reshape(1, 2, 2, 3)
    assert nearest_bin(on_centres, centers).flatten().tolist() == list(range(6))


def test_soft_encode_weights() -> None:
    centers = ab_bin_centers()
    ab = (torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(1)) - 0.5) * 120
    z = soft_encode(ab, centers, k=5, sigma=5.0)
    assert z.shape == (2, centers.shape[0], 4, 4)
    assert torch.allclose(z.sum(1), torch.ones(2, 4, 4))
    assert ((z > 0).sum(1) == 5).all()
    assert (z >= 0).all()
    assert torch.equal(z.argmax(1), nearest_bin(ab, centers))


def test_soft_encode_hand_value_at_a_centre() -> None:
    centers = ab_bin_centers()
    z = soft_encode(torch.zeros(1, 2, 1, 1), centers, k=5, sigma=5.0)[0, :, 0, 0]
    # Grey sits on the (0, 0) centre; its 4 neighbours are 10 away: weights 1 and exp(-100/50).
    near = math.exp(-2.0)
    grey = centers.tolist().index([0.0, 0.0])
    assert math.isclose(float(z[grey]), 1 / (1 + 4 * near), rel_tol=1e-5)
    neighbours = [centers.tolist().index(c) for c in ([10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0])]
    assert torch.allclose(z[neighbours], torch.full((4,), near / (1 + 4 * near)))


@pytest.mark.parametrize(("k", "sigma", "flag"), [(0, 5.0, "k"), (999, 5.0, "k"), (5, 0.0, "sigma")])
def test_soft_encode_bad_arguments(k: int, sigma: float, flag: str) -> None:
    with pytest.raises(ValueError, match=rf"^{flag}="):
        soft_encode(torch.zeros(1, 2, 1, 1), ab_bin_centers(), k=k, sigma=sigma)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        soft_encode(torch.zeros(1, 3, 1, 1), ab_bin_centers())


def test_rebalance_weights() -> None:
    q = 20
    assert torch.allclose(rebalance_weights(torch.full((q,), 3.0)), torch.ones(q))
    prior = torch.rand(q, generator=torch.Generator().manual_seed(0)) ** 4 + 1e-4
    p = prior / prior.sum()
    for lam in (0.0, 0.5, 1.0):
        w = rebalance_weights(prior, lam)
        assert math.isclose(float((p * w).sum()), 1.0, rel_tol=1e-5)
    w = rebalance_weights(prior, 0.5)
    order = p.argsort()  # rarest first: weights decrease
    assert (w[order].diff() < 0).all()
    assert torch.allclose(rebalance_weights(prior, 1.0), torch.ones(q))
    assert torch.allclose(rebalance_weights(prior, 0.0), 1 / (q * p), rtol=1e-4)  # λ = 0: w ∝ 1/p
    hand = torch.tensor([0.75, 0.25])  # λ = 0.5, Q = 2: 1/(0.375+0.25), 1/(0.125+0.25) = 1.6, 2.667
    expected = torch.tensor([1.6, 8 / 3]) / (0.75 * 1.6 + 0.25 * 8 / 3)
    assert torch.allclose(rebalance_weights(hand, 0.5), expected)


def test_rebalance_weights_errors() -> None:
    with pytest.raises(ValueError, match=r"^lam=1\.5 must be in \[0, 1\]"):
        rebalance_weights(torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="non-negative"):
        rebalance_weights(torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(Q,\)"):
        rebalance_weights(torch.ones(2, 2))


def test_smooth_prior() -> None:
    centers = ab_bin_centers()
    grey = centers.tolist().index([0.0, 0.0])
    delta = torch.zeros(centers.shape[0])
    delta[grey] = 5.0
    smoothed = smooth_prior(delta, centers, sigma=5.0)
    assert math.isclose(float(smoothed.sum()), 1.0, rel_tol=1e-6)
    right = centers.tolist().index([10.0, 0.0])
    assert math.isclose(float(smoothed[right] / smoothed[grey]), math.exp(-2.0), rel_tol=1e-5)
    assert smoothed.argmax() == grey
    assert torch.allclose(smooth_prior(delta, centers, sigma=0.0), delta / 5.0)


def test_annealed_mean() -> None:
    centers = ab_bin_centers()
    q = centers.shape[0]
    uniform = annealed_mean(torch.zeros(1, q, 2, 3), centers, temperature=0.38)
    assert uniform.shape == (1, 2, 2, 3)
    assert torch.allclose(uniform, centers.mean(0).view(1, 2, 1, 1).expand(1, 2, 2, 3), atol=1e-4)
    logits = torch.randn(1, q, 1, 1, generator=torch.Generator().manual_seed(0))
    mode = annealed_mean(logits, centers, temperature=1e-3)
    assert torch.allclose(mode[0, :, 0, 0], centers[logits.flatten().argmax()], atol=1e-3)
    mean = annealed_mean(logits, centers, temperature=1.0)[0, :, 0, 0]
    assert torch.allclose(mean, (torch.softmax(logits.flatten(), 0)[:, None] * centers).sum(0), atol=1e-4)
    # T < 1 sharpens: eq. 5 applied to z = softmax(logits) is softmax(logits / T).
    z = torch.softmax(logits.flatten(), 0)
    f_t = torch.exp(torch.log(z) / 0.38) / torch.exp(torch.log(z) / 0.38).sum()
    sharp = annealed_mean(logits, centers, 0.38)[0, :, 0, 0]
    assert torch.allclose(sharp, (f_t[:, None] * centers).sum(0), atol=1e-3)


def test_annealed_mean_errors() -> None:
    centers = ab_bin_centers()
    with pytest.raises(ValueError, match=r"^temperature=0\.0 must be > 0"):
        annealed_mean(torch.zeros(1, centers.shape[0], 1, 1), centers, temperature=0.0)
    with pytest.raises(ValueError, match="Q ="):
        annealed_mean(torch.zeros(1, 3, 1, 1), centers)
