"""Losses against hand-computed values and their error cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from visiontransfer.losses import info_nce, nt_xent


def test_info_nce_hand_computed() -> None:
    # Two queries, three keys; positives 0 and 2.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    # scores row 0: [1, 0, 0]; row 1: [0, 0, 2]
    expected_0 = -math.log(math.e / (math.e + 1 + 1))
    expected_1 = -math.log(math.e**2 / (1 + 1 + math.e**2))
    loss = info_nce(q, k, temperature=1.0, positives=torch.tensor([0, 2]))
    assert loss.item() == pytest.approx((expected_0 + expected_1) / 2, abs=1e-6)


def test_info_nce_temperature_and_exclude() -> None:
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # temperature 0.5 doubles the scores [1, 0, 1]; excluding key 2 leaves [2, 0].
    loss = info_nce(q, k, 0.5, torch.tensor([0]), exclude=torch.tensor([[False, False, True]]))
    assert loss.item() == pytest.approx(-math.log(math.e**2 / (math.e**2 + 1)), abs=1e-6)


def test_info_nce_default_positives_diagonal() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(5, 3), torch.randn(7, 3)
    assert info_nce(q, k).item() == pytest.approx(F.cross_entropy(q @ k.t(), torch.arange(5)).item())


@pytest.mark.parametrize(
    "q,k,t",
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), 1.0),
        (torch.zeros(3), torch.zeros(2, 3), 1.0),
        (torch.zeros(2, 3), torch.zeros(2, 3), 0.0),
    ],
)
def test_info_nce_errors(q: torch.Tensor, k: torch.Tensor, t: float) -> None:
    with pytest.raises(ValueError):
        info_nce(q, k, t)


def test_nt_xent_matches_explicit_formula() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    t = 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / t
    n = 3
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(math.exp(sim[i, m].item()) for m in range(2 * n) if m != i)
        total += -math.log(math.exp(sim[i, j].item()) / denom)
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / (2 * n), abs=1e-5)


def test_nt_xent_perfect_views_beat_random() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    assert nt_xent(z, z, 0.1) < nt_xent(z, torch.randn(8, 16), 0.1)


def test_nt_xent_errors() -> None:
    with pytest.raises(ValueError):
        nt_xent(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError):
        nt_xent(torch.ones(2, 3), torch.ones(2, 3), temperature=0)
