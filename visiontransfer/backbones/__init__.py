"""Backbones: any timm model by name, pooled or as a multi-scale feature extractor.

A backbone is ``timm.create_model(name, num_classes=0)``; its width is read from the model
(``num_features``), never listed here. Dense tasks wrap the same model in
:class:`FeatureBackbone`, which calls timm's ``forward_intermediates`` and reads channels and
strides from ``feature_info``. We deliberately don't build timm's ``features_only`` wrapper: it
renames modules for some families (``stem.0`` becomes ``stem_0``), so weights would need key
mapping between the classification and dense forms. Here both forms hold the same plain timm
state dict, so one pretrained checkpoint serves every downstream task.

:class:`BackboneSpec` says how to rebuild a backbone (architecture, input channels, stem change,
timm keyword arguments) and where it came from; checkpoints and exports store it, and every
reader rebuilds through it. Small images: ``small_input_stem=True`` applies
:func:`~visiontransfer.backbones.stem.adapt_stem_for_small_images`.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import nn

from visiontransfer.backbones.stem import adapt_stem_for_small_images, has_patch_embedding_stem
from visiontransfer.errors import ConfigError

__all__ = [
    "BackboneSpec",
    "FeatureBackbone",
    "adapt_stem_for_small_images",
    "check_model_name",
    "create_backbone",
    "normalization",
]

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
    if small_input_stem and has_patch_embedding_stem(model):
        raise ConfigError(
            f"--model.small_input_stem is not supported for {name!r} (its stem is a patch "
            "embedding); set the patch and image size through --model.backbone_kwargs instead, "
            "e.g. {img_size: 32, patch_size: 4}"
        )
    factor = adapt_stem_for_small_images(model) if small_input_stem else 1
    model.stem_factor = factor  # type: ignore[assignment]
    return model


@dataclass(frozen=True)
class BackboneSpec:
    """How to rebuild a backbone, and where its weights came from.

    Checkpoints store it as their ``visiontransfer`` block (:meth:`to_dict`), exports in their
    ``config.json``; :meth:`from_dict` reads both, and the blocks of earlier releases.

    Attributes:
        architecture: The timm model name.
        in_chans: Input channels (1: the backbone sees the CIE L lightness of RGB images).
        small_input_stem: Whether the stem's early downsampling was removed.
        backbone_kwargs: Extra keyword arguments of ``timm.create_model``.
        method: The module that trained the weights (``RotationPrediction``, ``ImageClassifier``...).
        hyperparameters: That module's constructor arguments.
        image_size: Side of the images it was trained on.
        source: The file the weights were read from (a checkpoint, an export).
    """

    architecture: str
    in_chans: int = 3
    small_input_stem: bool = False
    backbone_kwargs: Mapping[str, Any] = field(default_factory=dict)
    method: str | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    source: str | None = None

    def build(self, pretrained: bool = False) -> nn.Module:
        """A backbone of this architecture and stem (timm's pretrained weights on request)."""
        return create_backbone(
            self.architecture, pretrained, self.in_chans, self.small_input_stem, dict(self.backbone_kwargs)
        )

    def architecture_only(self) -> BackboneSpec:
        """The same architecture and stem without the provenance (for random-init baselines)."""
        return BackboneSpec(
            self.architecture, self.in_chans, self.small_input_stem, dict(self.backbone_kwargs)
        )

    def replace(self, **changes: Any) -> BackboneSpec:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (JSON and ``torch.load(weights_only=True)`` safe)."""
        values = dataclasses.asdict(self)
        values["backbone_kwargs"] = dict(self.backbone_kwargs)
        values["hyperparameters"] = dict(self.hyperparameters)
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneSpec:
        """Read :meth:`to_dict`'s output; unknown keys are ignored (``source_checkpoint``, the
        name exports of release 0.1 used, is read as ``source``).

        Raises:
            ValueError: no ``architecture``.
        """
        if not data.get("architecture"):
            raise ValueError(f"a backbone description needs an 'architecture'; got keys {sorted(data)}")
        image_size = data.get("image_size")
        return cls(
            architecture=str(data["architecture"]),
            in_chans=int(data.get("in_chans", 3)),
            small_input_stem=bool(data.get("small_input_stem", False)),
            backbone_kwargs=dict(data.get("backbone_kwargs") or {}),
            method=data.get("method"),
            hyperparameters=dict(data.get("hyperparameters") or {}),
            image_size=None if image_size is None else int(image_size),
            source=data.get("source") or data.get("source_checkpoint"),
        )


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
