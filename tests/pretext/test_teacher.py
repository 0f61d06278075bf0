"""The momentum (EMA) teacher: the schedule, the update rule and its position in checkpoints (one
update per optimizer step in a real fit: tests/pretext/test_dino.py; identical teachers under DDP:
tests/test_ddp.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from visiontransfer.pretext.teacher import EMATeacher, cosine_momentum


def test_cosine_momentum_hand_computed() -> None:
    assert cosine_momentum(0, 100, 0.9) == pytest.approx(0.9)
    assert cosine_momentum(50, 100, 0.9) == pytest.approx(0.95)  # half-way on the cosine
    assert cosine_momentum(25, 100, 0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    assert cosine_momentum(100, 100, 0.9) == pytest.approx(1.0)
    assert cosine_momentum(150, 100, 0.9) == pytest.approx(1.0)  # past the end: final
    assert cosine_momentum(50, 100, 0.9, final=0.9) == pytest.approx(0.9)  # constant


@pytest.mark.parametrize(
    "step,total,base,final,match",
    [(0, 0, 0.9, 1.0, "total_steps=0"), (-1, 10, 0.9, 1.0, "step=-1"), (0, 10, 1.1, 1.0, "base=1.1"),
     (0, 10, 0.99, 0.9, "base=0.99")],
)  # fmt: skip
def test_cosine_momentum_errors(step: int, total: int, base: float, final: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cosine_momentum(step, total, base, final)


def _student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_update_is_the_ema_of_the_parameters() -> None:
    student = _student()
    teacher = EMATeacher(student, base_momentum=0.5, final_momentum=1.0)
    start = [p.detach().clone() for p in teacher.module.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(start, student.parameters(), strict=True))
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    momentum = teacher.update(student, total_steps=4)  # step 0 of 4: the base momentum
    assert momentum == pytest.approx(0.5)
    for t, s, t0 in zip(teacher.module.parameters(), student.parameters(), start, strict=True):
        torch.testing.assert_close(t, 0.5 * t0 + 0.5 * s)
    assert int(teacher.updates) == 1
    assert teacher.momentum(4) == pytest.approx(1 - 0.5 * (math.cos(math.pi / 4) + 1) / 2)


def test_teacher_gives_no_gradients_and_structure_must_match() -> None:
    student = _student()
    teacher = EMATeacher(student)
    out = teacher(torch.randn(5, 3))
    assert out.shape == (5, 2) and not out.requires_grad
    with pytest.raises(ValueError, match="don't match"):
        teacher.update(nn.Sequential(nn.Linear(3, 4)), 10)


def test_weights_and_schedule_position_are_in_the_state_dict() -> None:
    student = _student()
    teacher = EMATeacher(student, base_momentum=0.9)
    with torch.no_grad():
        student[0].weight.mul_(3.0)
    for _ in range(3):
        teacher.update(student, total_steps=10)
    state = teacher.state_dict()
    assert int(state["updates"]) == 3
    restored = EMATeacher(_student(), base_momentum=0.9)
    restored.load_state_dict(state)
    assert restored.momentum(10) == teacher.momentum(10) == pytest.approx(cosine_momentum(3, 10, 0.9))
    for a, b in zip(restored.module.parameters(), teacher.module.parameters(), strict=True):
        assert torch.equal(a, b)
