"""The small-image stem: remove the early downsampling of a timm model's stem, in place.

A stride-4 stem (7×7/2 conv + max-pool on ResNets, a 4×4/4 patchify conv on ConvNeXt) turns a
32-px CIFAR image into 8×8 before the first stage and ruins accuracy; peers' users fail to
reproduce CIFAR results for this reason. The standard fix: the first convolution gets stride 1 (a
3×3 kernel where it was larger or a patchify kernel) and a pooling layer right after the stem is
removed (with an explicit pad layer that only served it, as in BiT).

This module is the one implementation of that rule. It needs nothing but ``torch`` (no
visiontransfer, no timm import), because ``visiontransfer export`` copies it verbatim into every
exported ``hubconf.py``: ``torch.hub.load`` then runs the very same code as
:func:`visiontransfer.load_backbone`, and the two give identical features.
"""

import math

import torch
from torch import nn

STEM_POOL_NAMES = ("maxpool", "stem.pool", "stem.maxpool", "features.pool0")
"""Module names of a pooling layer that ends a timm stem (ResNet, ResNet-D/BiT, RegNet, DenseNet)."""

PAD_LAYERS = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
"""Explicit padding modules; one named ``pad`` beside a removed stem pool goes too (BiT stems)."""


def first_conv_name(model: nn.Module) -> str | None:
    """The name of the model's first convolution, from timm's ``pretrained_cfg`` (None if unknown)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    first = cfg.get("first_conv")
    return first[0] if isinstance(first, (list, tuple)) else first


def has_patch_embedding_stem(model: nn.Module) -> bool:
    """Whether the model's stem is a patch embedding (ViT-like), which has no stride to remove."""
    first = first_conv_name(model)
    return not first or "patch_embed" in first


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _find(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def remove_conv_stride(conv: nn.Conv2d) -> None:
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


def _remove_stem_pool(model: nn.Module) -> int:
    """Replace the first stem pool found (and its own pad layer) by identities; its stride, or 1."""
    for pool_name in STEM_POOL_NAMES:
        pool = _find(model, pool_name)
        if pool is None:
            continue
        if not isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
            return 1
        stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
        _replace_module(model, pool_name, nn.Identity())
        parent = pool_name.rpartition(".")[0]
        pad_name = f"{parent}.pad" if parent else "pad"
        if isinstance(_find(model, pad_name), PAD_LAYERS):  # it only served the pool: it would grow the map
            _replace_module(model, pad_name, nn.Identity())
        return int(stride)
    return 1


def adapt_stem_for_small_images(model: nn.Module) -> int:
    """Remove the early downsampling of a timm model's stem, in place.

    Args:
        model: A timm model (its ``pretrained_cfg["first_conv"]`` names the first convolution).

    Returns:
        The factor by which the stem's total stride was reduced (e.g. 4 for a ResNet).

    Raises:
        ValueError: ``model`` has a patch-embedding stem (ViT-like) or no strided first conv.
    """
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    arch = cfg.get("architecture", type(model).__name__)
    if has_patch_embedding_stem(model):
        raise ValueError(f"model {arch!r} has a patch-embedding stem: there is no stem stride to remove")
    first = first_conv_name(model)
    assert first is not None
    conv = model.get_submodule(first)
    if not isinstance(conv, nn.Conv2d) or conv.stride[0] == 1:
        raise ValueError(f"model {arch!r}: first conv {first!r} has no stride to remove")
    factor = conv.stride[0]
    remove_conv_stride(conv)
    return factor * _remove_stem_pool(model)
