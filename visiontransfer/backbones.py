"""Backbones: any timm model by name, pooled or as a multi-scale feature extractor.

A backbone is ``timm.create_model(name, num_classes=0)``; its width is read from the model
(``num_features``), never listed here. Dense tasks wrap the same model in
:class:`FeatureBackbone`, which calls timm's ``forward_intermediates`` and reads channels and
strides from ``feature_info``. We deliberately don't build timm's ``features_only`` wrapper: it
renames modules for some families (``stem.0`` becomes ``stem_0``), so weights would need key
mapping between the classification and dense forms. Here both forms hold the same plain timm
state dict, so one pretrained checkpoint serves every downstream task.

Small images: a stride-4 stem (7×7/2 conv + max-pool on ResNets, a 4×4/4 patchify conv on
ConvNeXt) turns a 32-px CIFAR image into 8×8 before the first stage and ruins accuracy; peers'
users fail to reproduce CIFAR results for this reason. ``small_input_stem=True`` applies the
standard fix: the first convolution gets stride 1 (a 3×3 kernel where it was larger or a
patchify kernel) and a max-pool right after the stem is removed.
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
from torch import nn

STEM_POOL_NAMES = ("maxpool", "stem.pool", "stem.maxpool")
"""Module names of a pooling layer that ends a timm stem."""


def check_model_name(name: str) -> None:
    """Raise a ``ValueError`` naming ``name`` and close timm names if timm has no such model."""
    arch, _ = timm.models.split_model_name_tag(name)
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"--model.backbone={name!r} is not a timm model{hint} (timm.list_models('pattern*') lists the names)"
    )


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def adapt_stem_for_small_images(model: nn.Module) -> int:
    """Remove the early downsampling of a timm model's stem, in place.

    Returns:
        The factor by which the stem's total stride was reduced (e.g. 4 for a ResNet).

    Raises:
        ValueError: the model has a patch-embedding stem (ViT-like) or no strided first conv.
    """
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {}) or {}
    first = cfg.get("first_conv")
    first = first[0] if isinstance(first, (list, tuple)) else first
    arch = cfg.get("architecture", type(model).__name__)
    if not first or "patch_embed" in first:
        raise ValueError(
            f"--model.small_input_stem is not supported for {arch!r} (its stem is a patch "
            "embedding); set the patch and image size through --model.backbone_kwargs instead, "
            "e.g. {img_size: 32, patch_size: 4}"
        )
    conv = model.get_submodule(first)
    if not isinstance(conv, nn.Conv2d) or conv.stride[0] == 1:
        raise ValueError(f"{arch!r}: first conv {first!r} has no stride to remove")
    factor = conv.stride[0]
    kernel = conv.kernel_size[0]
    if kernel > 3 or kernel == conv.stride[0]:
        kernel = 3  # 7×7/2 or a 4×4/4 patchify conv becomes a plain 3×3/1
    new_conv = nn.Conv2d(
        conv.in_channels, conv.out_channels, kernel, stride=1, padding=kernel // 2,
        groups=conv.groups, bias=conv.bias is not None,
    )  # fmt: skip
    if new_conv.weight.shape == conv.weight.shape:
        new_conv.load_state_dict(conv.state_dict())
    _replace_module(model, first, new_conv)
    for pool_name in STEM_POOL_NAMES:
        try:
            pool = model.get_submodule(pool_name)
        except AttributeError:
            continue
        if isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
            stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
            factor *= stride
            _replace_module(model, pool_name, nn.Identity())
        break
    return factor


def create_backbone(
    name: str,
    pretrained: bool = False,
    in_chans: int = 3,
    small_input_stem: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a timm model without classifier: ``forward(x)`` gives ``(B, num_features)``.

    Args:
        name: Any timm model name (``timm.list_models()``), optionally with a pretrained tag.
        pretrained: Load timm's pretrained weights (downloads them: needs internet).
        in_chans: Input channels (1 for greyscale / the L channel of Lab).
        small_input_stem: Remove the stem's early downsampling for 32–64 px images.
        backbone_kwargs: Extra keyword arguments for ``timm.create_model`` (e.g. ``img_size``,
            ``patch_size``, ``drop_path_rate``).

    Returns:
        The model, with ``num_features`` and ``stem_factor`` (1, or the stride removed).
    """
    check_model_name(name)
    kwargs = dict(backbone_kwargs or {})
    for reserved in ("num_classes", "in_chans", "pretrained", "features_only"):
        if reserved in kwargs:
            raise ValueError(f"--model.backbone_kwargs must not set {reserved!r}; it has its own argument")
    model = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **kwargs)
    factor = adapt_stem_for_small_images(model) if small_input_stem else 1
    model.stem_factor = factor  # type: ignore[assignment]
    return model


def normalization(model: nn.Module, in_chans: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the backbone expects, one value per input channel."""
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {}) or {}
    mean = tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != in_chans:
        mean = (sum(mean) / len(mean),) * in_chans
        std = (sum(std) / len(std),) * in_chans
    return mean, std


class FeatureBackbone(nn.Module):
    """Multi-scale feature maps of a timm model, with its plain state-dict keys under ``model.``.

    Args:
        model: A model from :func:`create_backbone`.
        out_indices: Which ``feature_info`` levels to return; default: the last four.

    Attributes:
        channels: Channels of each returned map.
        reductions: Stride of each returned map relative to the input.
    """

    def __init__(self, model: nn.Module, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(
                f"{type(model).__name__} has no forward_intermediates(); dense tasks need a timm "
                "model that has it (ResNet, ConvNeXt, EfficientNet, RegNet, ViT, ... do)"
            )
        info = list(getattr(model, "feature_info", []))
        if not info:
            raise ValueError(f"{type(model).__name__} has no feature_info to read levels from")
        if out_indices is None:
            out_indices = tuple(range(max(0, len(info) - 4), len(info)))
        bad = [i for i in out_indices if not -len(info) <= i < len(info)]
        if bad:
            raise ValueError(f"out_indices {bad} out of range: the model has {len(info)} levels")
        self.model = model
        self.out_indices = tuple(i % len(info) for i in out_indices)
        factor = int(getattr(model, "stem_factor", 1))
        self.channels = [int(info[i]["num_chs"]) for i in self.out_indices]
        self.reductions = [max(1, int(info[i]["reduction"]) // factor) for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` → one ``(B, channels[i], H / reductions[i], W / reductions[i])`` map per level."""
        return list(
            self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)
        )
