"""The small base every module shares: the backbone (a timm name or a visiontransfer checkpoint /
export), input normalisation, optimizer with warmup + cosine schedule, and the checkpoint block
that ``visiontransfer export`` reads. Heads, losses and monitors live elsewhere."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from visiontransfer.backbones import create_backbone, normalization
from visiontransfer.errors import ConfigError


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
        if lr <= 0:
            raise ConfigError(f"--model.lr={lr} must be > 0")
        if warmup_epochs < 0:
            raise ConfigError(f"--model.warmup_epochs={warmup_epochs} must be >= 0")
        self.backbone, self.backbone_spec = resolve_backbone(
            backbone, pretrained, in_chans, small_input_stem, backbone_kwargs
        )
        in_chans = int(self.backbone_spec["in_chans"])
        self.num_features: int = int(self.backbone.num_features)  # type: ignore[arg-type]
        mean, std = normalization(self.backbone, in_chans)
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

    def configure_model(self) -> None:
        if self.compile_backbone and not getattr(self, "_compiled", False):
            self.backbone.compile()
            self._compiled = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record how to rebuild the backbone, so ``visiontransfer export`` needs nothing else."""
        checkpoint["visiontransfer"] = checkpoint_block(self, self.backbone_spec)

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) uint8`` (or float in 0..255) → float, normalised for the backbone.

        A single-channel backbone (e.g. pretrained by colorization) given RGB images sees their
        CIE L lightness scaled to 0..255, the input colorization trains it on.
        """
        if images.shape[1] == 3 and self.pixel_mean.shape[1] == 1:
            from visiontransfer.pretext.lab import rgb_to_lab

            images = rgb_to_lab(images.float() / 255.0)[:, :1] * 2.55  # L 0..100 → 0..255
        normalized = (images.float() - self.pixel_mean) / self.pixel_std
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


@contextmanager
def run_seeded() -> Iterator[None]:
    """Draw random numbers from a stream seeded by the run's seed, leaving the global one as it was.

    For weights built at set-up (heads sized from the data), when the global stream depends on what
    ran before (DDP start-up, the sanity check): their initial values then don't.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch.initial_seed())
        yield


def classes_from_data(module: L.LightningModule, configured: int | None) -> int | None:
    """The class count a task module should build its head with at set-up.

    Returns the datamodule's ``num_classes`` when ``configured`` is None (head not built yet),
    else None after checking the two agree.

    Raises:
        ValueError: neither is known, or they disagree (naming ``--model.num_classes``).
    """
    data_classes = getattr(getattr(module.trainer, "datamodule", None), "num_classes", None)
    if configured is None:
        if data_classes is None:
            raise ConfigError("--model.num_classes is not set and the datamodule has no num_classes")
        return int(data_classes)
    if data_classes is not None and int(data_classes) != configured:
        raise ConfigError(
            f"--model.num_classes={configured} but the data has {data_classes} classes; "
            "drop --model.num_classes to take it from the data"
        )
    return None


def is_backbone_file(backbone: str) -> bool:
    """Whether ``--model.backbone`` names a file or folder rather than a timm model."""
    return os.path.exists(backbone) or backbone.endswith((".ckpt", ".safetensors")) or os.sep in backbone


def resolve_backbone(
    backbone: str,
    pretrained: bool = False,
    in_chans: int = 3,
    small_input_stem: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a backbone from a timm name, or load one from a visiontransfer file.

    Returns:
        ``(model, spec)``, ``spec`` saying how to rebuild it (architecture, stem, channels, kwargs).
    """
    if is_backbone_file(backbone):
        from visiontransfer.export import load_backbone_with_spec

        model, spec = load_backbone_with_spec(backbone)
        return model, {**spec, "source": os.path.abspath(backbone)}
    model = create_backbone(backbone, pretrained, in_chans, small_input_stem, backbone_kwargs)
    spec = {
        "architecture": backbone,
        "in_chans": in_chans,
        "small_input_stem": small_input_stem,
        "backbone_kwargs": dict(backbone_kwargs or {}),
    }
    return model, spec


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def checkpoint_block(module: L.LightningModule, spec: dict[str, Any]) -> dict[str, Any]:
    """The ``visiontransfer`` entry of a checkpoint: backbone spec, method, hparams, image size."""
    datamodule = getattr(module._trainer, "datamodule", None) if module._trainer else None
    hparams = {k: list(v) if isinstance(v, tuple) else v for k, v in module.hparams.items()}
    return {
        **spec,
        "method": type(module).__name__,
        "hyperparameters": {k: v for k, v in hparams.items() if not k.startswith("_")},
        "image_size": getattr(datamodule, "image_size", None),
    }
