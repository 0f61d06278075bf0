"""Freezing machinery shared by the transfer modules: stages, freeze policies, BatchNorm policy,
gradual unfreezing and layer-wise learning-rate decay.

Stages come from timm's own ``group_matcher`` (``timm.models.group_parameters(model,
model.group_matcher(coarse=True))``), the grouping timm uses for its layer decay: stage 0 is the
stem, then one group per stage (ResNet ``layer1..4``, ConvNeXt ``stages.i``) or per block (ViT).
No parameter-name prefixes are hard-coded here.

Gradual unfreezing is designed around Lightning's ``BackboneFinetuning`` bugs: every parameter is
in the optimizer from the first step, in one parameter group per stage, and whether a stage is
frozen is a pure function of the current epoch. So resuming from a checkpoint restores the right
state by construction (no optimizer groups added later: lightning #21901), and under DDP every
parameter keeps ``requires_grad=True`` so the reducer tracks it from the start; a frozen stage's
gradients are all-reduced as usual and then dropped before the optimizer step on every rank alike
(toggling ``requires_grad`` after DDP has wrapped the model desynchronises ranks: lightning #20340).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from timm.models import group_parameters
from torch import nn

BatchNormMode = Literal["train", "eval", "frozen"]
"""``train``: BatchNorm normalises with batch statistics and updates its running statistics;
``eval``: it uses (and keeps) its running statistics, affine weights still train;
``frozen``: as ``eval`` and its affine weights are frozen too."""


def backbone_stages(model: nn.Module) -> list[list[str]]:
    """Parameter names of each stage of a timm model, from the input side (stem first)."""
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        return [[name for name, _ in model.named_parameters()]]
    groups = group_parameters(model, matcher(coarse=True))
    ordered = [groups[key] for key in sorted(groups)]
    return [names for names in ordered if names]


def stage_of_parameter(stages: list[list[str]]) -> dict[str, int]:
    """Map each parameter name to its stage index."""
    return {name: i for i, names in enumerate(stages) for name in names}


def set_requires_grad(model: nn.Module, names: Iterable[str], flag: bool) -> None:
    """Set ``requires_grad`` on the named parameters."""
    wanted = set(names)
    for name, param in model.named_parameters():
        if name in wanted:
            param.requires_grad_(flag)


def modules_of_stages(model: nn.Module, stages: list[list[str]], indices: Iterable[int]) -> list[nn.Module]:
    """Modules whose parameters all belong to the given stages (to put their norms in eval)."""
    chosen = {name for i in indices for name in stages[i]}
    out = []
    for module_name, module in model.named_modules():
        own = [f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters(recurse=False)]
        if own and all(p in chosen for p in own):
            out.append(module)
    return out


def batchnorm_layers(modules: Iterable[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers among (and inside) ``modules``."""
    found: dict[int, nn.modules.batchnorm._BatchNorm] = {}
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                found[id(sub)] = sub
    return list(found.values())


def frozen_stage_count(num_stages: int, frozen_stages: int, unfreeze_every_n_epochs: int, epoch: int) -> int:
    """How many stages (from the input side) are frozen at ``epoch``.

    With gradual unfreezing every stage starts frozen (only the head trains) and one stage is
    released from the top every ``unfreeze_every_n_epochs`` epochs, down to ``frozen_stages``.
    """
    if unfreeze_every_n_epochs <= 0:
        return frozen_stages
    released = epoch // unfreeze_every_n_epochs
    return max(frozen_stages, num_stages - released)


def layer_decay_scales(num_stages: int, decay: float) -> list[float]:
    """LR multiplier of each stage for layer-wise decay: ``decay ** (num_stages - i)``; the head
    (after the last stage) keeps 1. ``decay=1`` turns it off."""
    if not 0 < decay <= 1:
        raise ValueError(f"decay={decay} must be in (0, 1]; 1 turns it off")
    return [decay ** (num_stages - i) for i in range(num_stages)]
