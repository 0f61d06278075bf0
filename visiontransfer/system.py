"""The small base every module shares: the backbone (a timm name or a visiontransfer checkpoint /
export), input normalisation, optimizer with warmup + cosine schedule, and the checkpoint block
(a :class:`~visiontransfer.backbones.BackboneSpec`) that ``visiontransfer export`` reads. Heads,
losses and monitors live elsewhere.

Data facts (the image size, a task's classes) reach a module as constructor arguments: the CLI
links them from the datamodule (``link_arguments``), Python users pass them. No module reads
``trainer.datamodule``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from visiontransfer.backbones import BackboneSpec, normalization
from visiontransfer.backbones.weights import (
    CHECKPOINT_KEY,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_backbone_file,
)
from visiontransfer.color import match_channels
from visiontransfer.errors import ConfigError, MissingPathError, require


class BackboneSystem(L.LightningModule):
    """Base of the pretext and transfer modules.

    Args:
        backbone: Any timm model name (``resnet18``, ``convnext_atto``, ...), or the path of a
            visiontransfer ``.ckpt``, export folder or ``.safetensors`` file to start from (its
            architecture and stem then come from the file; the next four arguments are ignored).
        pretrained: Start from timm's pretrained weights (downloads them: needs internet).
        small_input_stem: Remove the stem's early downsampling (for 32–64 px images).
        in_chans: Input channels of the backbone.
        backbone_kwargs: Extra keyword arguments for ``timm.create_model``.
        input_size: Side of the training images; the CLI links it from ``--data.image_size``.
            Recorded in checkpoints and exports (their input size; without it, exports take
            the image size the datamodule saved in the checkpoint).
        optimizer: ``adamw`` or ``sgd`` (with Nesterov momentum).
        lr: Peak learning rate, reached after the warmup.
        weight_decay: Weight decay (not applied to biases and normalisation parameters).
        momentum: SGD momentum (ignored by AdamW).
        warmup_epochs: Epochs of linear warmup (may be fractional).
        min_lr_ratio: Final learning rate of the cosine schedule, as a share of ``lr``.
        channels_last: Keep the backbone and its inputs in channels-last memory layout (faster
            convolutions with mixed precision on recent GPUs).
        compile: Compile the backbone with ``torch.compile`` when fitting starts (in place: the
            weights keep their names in checkpoints and exports).
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        small_input_stem: bool = True,
        in_chans: int = 3,
        backbone_kwargs: dict[str, Any] | None = None,
        input_size: int | None = None,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        require(lr > 0, "model", "lr", lr, "must be > 0")
        require(warmup_epochs >= 0, "model", "warmup_epochs", warmup_epochs, "must be >= 0")
        require(input_size is None or input_size >= 1, "model", "input_size", input_size, "must be >= 1")
        self.backbone, self.backbone_spec = resolve_backbone(
            backbone, pretrained, in_chans, small_input_stem, backbone_kwargs
        )
        self.in_chans = self.backbone_spec.in_chans
        self.input_size = input_size
        self.num_features: int = int(self.backbone.num_features)  # type: ignore[arg-type]
        mean, std = normalization(self.backbone, self.in_chans)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.warmup_epochs = warmup_epochs
        self.min_lr_ratio = min_lr_ratio
        self.channels_last = channels_last
        self.compile_backbone = compile
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.save_hyperparameters()
        if self.backbone_spec.source is not None:
            self._rebuild_without_the_file()

    def _rebuild_without_the_file(self) -> None:
        """Hyperparameters that rebuild this module's architecture without the file its backbone was
        read from (``load_from_checkpoint`` then needs the checkpoint alone; its weights come from
        there). Where the weights came from stays in the checkpoint block (``source``)."""
        spec = self.backbone_spec
        self.hparams.update(
            backbone=spec.architecture, pretrained=False, small_input_stem=spec.small_input_stem,
            in_chans=spec.in_chans, backbone_kwargs=dict(spec.backbone_kwargs) or None,
        )  # fmt: skip

    def configure_model(self) -> None:
        if self.compile_backbone and not getattr(self, "_compiled", False):
            self.backbone.compile()
            self._compiled = True

    def checkpoint_spec(self) -> BackboneSpec:
        """The backbone's spec with this module as its provenance (what exports record)."""
        hparams = {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams.items()}
        return self.backbone_spec.replace(
            method=type(self).__name__,
            hyperparameters={k: v for k, v in hparams.items() if not k.startswith("_")},
            image_size=self.input_size,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record how to rebuild the backbone, so ``visiontransfer export`` needs nothing else."""
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_spec().to_dict()

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) uint8`` (or float in 0..255) → float, normalised for the backbone.

        A single-channel backbone (e.g. pretrained by colorization) given RGB images sees their
        CIE L lightness scaled to 0..255 (:func:`~visiontransfer.color.match_channels`).
        """
        x = images.float()
        if x.shape[1] != self.in_chans:
            x = match_channels(x / 255.0, self.in_chans) * 255.0
        normalized = (x - self.pixel_mean) / self.pixel_std
        if self.channels_last:
            return normalized.contiguous(memory_format=torch.channels_last)
        return normalized

    def features(self, images: Tensor) -> Tensor:
        """Pooled backbone features ``(B, num_features)`` of raw ``uint8`` images."""
        return self.backbone(self.normalize(images))

    def _param_groups(self) -> list[dict[str, Any]]:
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
        return [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self) -> Any:
        groups = self._param_groups()
        if self.optimizer_name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=self.lr, momentum=self.momentum, nesterov=True
            )
        else:
            opt = torch.optim.AdamW(groups, lr=self.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, int(self.trainer.max_epochs or 1))
        warmup = min(total - 1, int(self.warmup_epochs * total / epochs))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, total, warmup, self.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def is_backbone_file(backbone: str) -> bool:
    """Whether ``--model.backbone`` names a file or folder rather than a timm model."""
    return os.path.exists(backbone) or backbone.endswith((".ckpt", ".safetensors")) or os.sep in backbone


def resolve_backbone(
    backbone: str,
    pretrained: bool = False,
    in_chans: int = 3,
    small_input_stem: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, BackboneSpec]:
    """Build a backbone from a timm name, or load one from a visiontransfer file.

    Returns:
        ``(model, spec)``; a file's spec has ``source`` set to it.

    Raises:
        MissingPathError: a file path that does not exist, naming ``--model.backbone``.
        ConfigError: a file that is no readable visiontransfer backbone, naming the flag.
    """
    if not is_backbone_file(backbone):
        spec = BackboneSpec(backbone, in_chans, small_input_stem, dict(backbone_kwargs or {}))
        return spec.build(pretrained), spec
    try:
        return load_backbone_file(backbone)
    except FileNotFoundError:
        raise MissingPathError(
            f"--model.backbone={backbone!r} does not exist: give a timm model name, a .ckpt, an export "
            "folder or a .safetensors file"
        ) from None
    except (CorruptCheckpointError, UnsafeCheckpointError, ValueError) as error:
        raise ConfigError(f"--model.backbone={backbone!r}: {' '.join(str(error).split())}") from None


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
