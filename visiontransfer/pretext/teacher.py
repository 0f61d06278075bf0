"""A momentum (EMA) teacher: a copy of the student whose weights follow the student's by an
exponential moving average (BYOL, Grill et al. 2020; MoCo, He et al. 2020; DINO, Caron et al. 2021).

The momentum rises from ``base_momentum`` to ``final_momentum`` on a cosine over the optimizer
steps of the fit (:func:`cosine_momentum`). The teacher is a submodule, so its weights and its
position in the schedule (the ``updates`` buffer) are in every checkpoint: a run resumed after
SIGKILL continues with the same teacher and the same momenta. Under DDP every process holds a
teacher and updates it after each optimizer step from its student, which DDP keeps identical on
every process, so the teachers stay identical too (their BatchNorm statistics, buffers of the
wrapped module, are broadcast from rank 0 with the student's at every step).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA momentum at optimizer step ``step`` of ``total_steps``, rising on a cosine from ``base``
    to ``final`` (BYOL eq. 3): ``m = final − (final − base) · (cos(π · step / total_steps) + 1) / 2``.

    Raises:
        ValueError: ``0 <= base <= final <= 1``, ``total_steps >= 1`` and ``step >= 0`` don't hold.
    """
    if not 0.0 <= base <= final <= 1.0:
        raise ValueError(f"base={base} and final={final} must satisfy 0 <= base <= final <= 1")
    if total_steps < 1 or step < 0:
        raise ValueError(f"step={step} must be >= 0 and total_steps={total_steps} >= 1")
    progress = min(step, total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class EMATeacher(nn.Module):
    """A frozen copy of ``student`` that follows it: ``θ_t ← m · θ_t + (1 − m) · θ_s`` after every
    optimizer step, with ``m`` from :func:`cosine_momentum`.

    Only parameters are averaged; the teacher's buffers (BatchNorm statistics) come from its own
    forward passes, as in DINO's reference code. No gradient reaches the teacher.

    Args:
        student: The module to follow (a ``nn.Sequential(backbone, head)`` for instance); copied
            now, so the teacher starts equal to the student.
        base_momentum: Momentum of the first update (BYOL: 0.996; DINO: 0.996).
        final_momentum: Momentum of the last update (1.0: the teacher freezes as training ends).

    Attributes:
        module: The teacher network.
        updates: How many updates were made (a buffer: saved in and restored from checkpoints).
    """

    updates: Tensor

    def __init__(self, student: nn.Module, base_momentum: float = 0.996, final_momentum: float = 1.0) -> None:
        super().__init__()
        cosine_momentum(0, 1, base_momentum, final_momentum)  # validates them
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.module = copy.deepcopy(student).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def momentum(self, total_steps: int) -> float:
        """The momentum of the next update."""
        return cosine_momentum(int(self.updates), total_steps, self.base_momentum, self.final_momentum)

    @torch.no_grad()
    def update(self, student: nn.Module, total_steps: int) -> float:
        """One EMA step towards ``student`` (the module given at construction, or one of the same
        structure); returns the momentum used. Call it once per optimizer step, from the module's
        ``optimizer_step`` after the step (not ``on_train_batch_end``, which runs after the
        callbacks': a checkpoint written there must hold this step's teacher).

        Raises:
            ValueError: ``student`` has other parameters than the teacher.
        """
        ours: list[Tensor] = list(self.module.parameters())
        theirs: list[Tensor] = list(student.parameters())
        if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours, theirs, strict=False)):
            raise ValueError("the student's parameters don't match the teacher's (another structure?)")
        m = self.momentum(total_steps)
        torch._foreach_lerp_(ours, [p.detach() for p in theirs], 1.0 - m)  # θ_t + (1 − m)(θ_s − θ_t)
        self.updates += 1
        return m

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The teacher's outputs (no gradients)."""
        with torch.no_grad():
            return self.module(*args, **kwargs)
