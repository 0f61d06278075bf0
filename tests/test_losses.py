"""Losses against hand-computed values and their error cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from visiontransfer.losses import (
    dino_loss,
    feature_distillation_loss,
    info_nce,
    masked_patch_mse,
    nt_xent,
)


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


# -- DINO, MAE, distillation ---------------------------------------------------------------------
def test_dino_loss_hand_computed() -> None:
    # K = 2, B = 1, two views. Teacher view 0 -> softmax [1/4, 3/4], view 1 -> [1/2, 1/2];
    # student view 0 -> [1/2, 1/2], view 1 -> [3/4, 1/4]. Pairs (t0, s1) and (t1, s0).
    teacher = torch.tensor([[[0.0, math.log(3.0)]], [[0.0, 0.0]]])
    student = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]]])
    pair_01 = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    pair_10 = math.log(2.0)
    loss = dino_loss(student, teacher, torch.zeros(2), student_temperature=1.0, teacher_temperature=1.0)
    assert loss.item() == pytest.approx((pair_01 + pair_10) / 2, abs=1e-6)


def test_dino_loss_centering_sharpening_and_local_views() -> None:
    # Centering by the teacher's own logits makes both teacher targets uniform; with a third
    # (local) student view there are 4 pairs: (0, 1), (0, 2), (1, 0), (1, 2).
    teacher = torch.tensor([[[0.0, math.log(3.0)]], [[0.0, math.log(3.0)]]])
    student = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]], [[0.0, math.log(3.0)]]])
    center = torch.tensor([0.0, math.log(3.0)])
    uniform_vs_3_1 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    expected = (uniform_vs_3_1 + uniform_vs_3_1 + math.log(2.0) + uniform_vs_3_1) / 4
    loss = dino_loss(student, teacher, center, 1.0, 1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # Sharpening: teacher temperature 0.5 squares the odds, [1/4, 3/4] -> [1/10, 9/10].
    one = dino_loss(student[:2], teacher[:1], torch.zeros(2), 1.0, 0.5)  # the pair (t0, s1)
    assert one.item() == pytest.approx(-(0.1 * math.log(0.75) + 0.9 * math.log(0.25)), abs=1e-6)


@pytest.mark.parametrize(
    "student,teacher,center,kwargs,match",
    [
        (torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), {}, "needs"),
        (torch.zeros(2, 1, 3), torch.zeros(3, 1, 3), torch.zeros(3), {}, "teacher views"),
        (torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), torch.zeros(3), {}, "Vs >= 2"),
        (torch.zeros(2, 1, 3), torch.zeros(2, 1, 3), torch.zeros(4), {}, "center"),
        (
            torch.zeros(2, 1, 3),
            torch.zeros(2, 1, 3),
            torch.zeros(3),
            {"teacher_temperature": 0},
            "teacher_temperature=0",
        ),
        (
            torch.zeros(2, 1, 3),
            torch.zeros(2, 1, 3),
            torch.zeros(3),
            {"student_temperature": -1},
            "student_temperature=-1",
        ),
    ],
)
def test_dino_loss_errors(
    student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, kwargs: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        dino_loss(student, teacher, center, **kwargs)


def test_masked_patch_mse_hand_computed() -> None:
    pred = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 3.0], [5.0, 5.0]]])
    # Patch 0 normalised: mean 2, unbiased variance 2 -> [-1, 1] / sqrt(2 + eps): squared mean 1 / (2 + eps).
    # Patch 1 is flat: normalised to 0, so its error against 0 is 0.
    eps = 1e-6
    only_first = masked_patch_mse(pred, target, torch.tensor([[1.0, 0.0]]), eps=eps)
    assert only_first.item() == pytest.approx(1 / (2 + eps), rel=1e-6)
    both = masked_patch_mse(pred, target, torch.tensor([[1.0, 1.0]]), eps=eps)
    assert both.item() == pytest.approx(0.5 / (2 + eps), rel=1e-6)
    raw = masked_patch_mse(pred, target, torch.tensor([[1.0, 0.0]]), normalize_target=False)
    assert raw.item() == pytest.approx((1 + 9) / 2)
    # Visible patches don't count: a wrong prediction there changes nothing.
    pred_visible_wrong = pred.clone()
    pred_visible_wrong[0, 1] = 100.0
    assert masked_patch_mse(pred_visible_wrong, target, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(
        only_first.item()
    )
    assert masked_patch_mse(pred, target, torch.zeros(1, 2)).item() == 0.0


def test_masked_patch_mse_errors() -> None:
    with pytest.raises(ValueError, match="one"):
        masked_patch_mse(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), torch.ones(1, 2))
    with pytest.raises(ValueError, match="mask"):
        masked_patch_mse(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), torch.ones(1, 3))
    with pytest.raises(ValueError, match="P=1"):
        masked_patch_mse(torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="eps=0"):
        masked_patch_mse(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), torch.ones(1, 2), eps=0)


def test_feature_distillation_loss_hand_computed() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[1.0, 1.0], [0.0, 5.0]])  # cosines 1/sqrt(2) and 1
    cosine = feature_distillation_loss(student, teacher, "cosine")
    assert cosine.item() == pytest.approx((1 - 1 / math.sqrt(2) + 0.0) / 2, abs=1e-6)
    mse = feature_distillation_loss(student, teacher, "mse")
    assert mse.item() == pytest.approx((0 + 1 + 0 + 9) / 4)
    # Maps: one vector per location along dim 1; (B=1, D=2, H=1, W=2) holds the two rows above.
    maps = feature_distillation_loss(student.t().reshape(1, 2, 1, 2), teacher.t().reshape(1, 2, 1, 2))
    assert maps.item() == pytest.approx(cosine.item(), abs=1e-6)


def test_feature_distillation_loss_gradient_reaches_student_only() -> None:
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    feature_distillation_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None


def test_feature_distillation_loss_errors() -> None:
    with pytest.raises(ValueError, match="one"):
        feature_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one"):
        feature_distillation_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="metric='l1'"):
        feature_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), "l1")
