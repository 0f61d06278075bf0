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
import math
import numbers
from typing import Any

import timm
import torch
from torch import nn

from visiontransfer.errors import ConfigError

STEM_POOL_NAMES = ("maxpool", "stem.pool", "stem.maxpool", "features.pool0")
"""Module names of a pooling layer that ends a timm stem."""

PAD_LAYERS = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
"""Explicit padding modules; one named ``pad`` beside a removed stem pool goes too (BiT stems)."""

MODEL_SOURCES = ("hf-hub", "hf_hub", "local-dir")
"""Prefixes of timm model names that name a source instead of a registered architecture."""


def check_model_name(name: str) -> None:
    """Raise a ``ValueError`` naming ``name`` and close timm names if timm has no such model."""
    source, _, _ = name.partition(":")
    if source.lower() in MODEL_SOURCES:
        return  # a Hugging Face Hub repo or a local folder: timm reads the architecture from it
    arch, _ = timm.models.split_model_name_tag(name)
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"--model.backbone={name!r} is not a timm model{hint} (timm.list_models('pattern*') lists the names)"
    )


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _remove_conv_stride(conv: nn.Conv2d) -> None:
    """Give ``conv`` stride 1 in place; a kernel larger than 3 or a patchify kernel becomes 3×3.

    The module is changed, not replaced, so it keeps its class (timm's weight-standardized and
    TF-"same" convolutions), its other settings and its state-dict keys (e.g. the ``gain`` of
    ``ScaledStdConv2d``); only the weight's shape changes where the kernel does (that weight is
    then freshly initialised).
    """
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    new_kernel = 3 if kernel > 3 or kernel == stride else kernel  # 7×7/2 or 4×4/4 become 3×3/1
    conv.stride = (1, 1)
    if new_kernel != kernel:
        old_fan_in = conv.weight[0].numel()
        weight = torch.empty(
            conv.out_channels, conv.in_channels // conv.groups, new_kernel, new_kernel,
            dtype=conv.weight.dtype, device=conv.weight.device,
        )  # fmt: skip
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Conv2d's default initialisation
        conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
        conv.kernel_size = (new_kernel, new_kernel)
        scale = getattr(conv, "scale", None)
        if isinstance(scale, float):  # ScaledStdConv2d: gamma / sqrt(fan-in), and fan-in changed
            setattr(conv, "scale", scale * math.sqrt(old_fan_in / weight[0].numel()))  # noqa: B010
    # At stride 1 the padding keeps the spatial size. TF-"same" convolutions (Conv2dSame, ...)
    # have padding 0 and pad in forward() from kernel and stride, which is right as it is.
    dynamic_same = bool(getattr(conv, "same_pad", type(conv).__name__.endswith("Same")))
    if isinstance(conv.padding, str):
        conv.padding = "same"
    elif not dynamic_same:
        conv.padding = tuple((new_kernel - 1) // 2 * d for d in conv.dilation)
        if conv.padding_mode != "zeros":  # nn.Conv2d pads itself from this copy for those modes
            conv._reversed_padding_repeated_twice = [p for p in reversed(conv.padding) for _ in (0, 1)]


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
        raise ConfigError(
            f"--model.small_input_stem is not supported for {arch!r} (its stem is a patch "
            "embedding); set the patch and image size through --model.backbone_kwargs instead, "
            "e.g. {img_size: 32, patch_size: 4}"
        )
    conv = model.get_submodule(first)
    if not isinstance(conv, nn.Conv2d) or conv.stride[0] == 1:
        raise ValueError(f"{arch!r}: first conv {first!r} has no stride to remove")
    factor = conv.stride[0]
    _remove_conv_stride(conv)
    for pool_name in STEM_POOL_NAMES:
        try:
            pool = model.get_submodule(pool_name)
        except AttributeError:
            continue
        if isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
            stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
            factor *= stride
            _replace_module(model, pool_name, nn.Identity())
            parent = pool_name.rpartition(".")[0]
            pad_name = f"{parent}.pad" if parent else "pad"
            try:
                pad = model.get_submodule(pad_name)
            except AttributeError:
                pad = None
            if isinstance(pad, PAD_LAYERS):  # it only served the pool: it would grow the map
                _replace_module(model, pad_name, nn.Identity())
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
            raise ConfigError(f"--model.backbone_kwargs must not set {reserved!r}; it has its own argument")
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
        out_indices = tuple(out_indices)
        if not out_indices:
            raise ValueError(f"out_indices is empty: name at least one of the model's {len(info)} levels")
        bad = [
            i
            for i in out_indices
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not -len(info) <= i < len(info)
        ]
        if bad:
            raise ValueError(
                f"out_indices {bad} invalid: the model has {len(info)} levels, so use integers "
                f"0..{len(info) - 1} (or negative ones, counting from the end)"
            )
        self.model = model
        self.out_indices = tuple(int(i) % len(info) for i in out_indices)
        # forward_intermediates() returns levels in network order, once each: ask for those and
        # hand them back in the order (and with the repeats) of out_indices.
        self._take = sorted(set(self.out_indices))
        self._order = [self._take.index(i) for i in self.out_indices]
        factor = int(getattr(model, "stem_factor", 1))
        self.channels = [int(info[i]["num_chs"]) for i in self.out_indices]
        self.reductions = [max(1, int(info[i]["reduction"]) // factor) for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` → one ``(B, channels[i], H / reductions[i], W / reductions[i])`` map per level."""
        forward_intermediates = self.model.forward_intermediates
        maps = forward_intermediates(x, indices=list(self._take), intermediates_only=True)  # type: ignore[operator]
        return [maps[j] for j in self._order]
