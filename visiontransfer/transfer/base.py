"""The base of the transfer modules: a backbone trained on a labeled downstream task, with the one
freezing, BatchNorm and learning-rate policy that classification, detection and segmentation share.

Stages come from timm (:func:`~visiontransfer.transfer.freezing.backbone_stages`); a module
freezes the first ``frozen_stages`` of them (or trains the last ``trainable_stages``), can release
them from the top during training (``unfreeze_every_n_epochs``), scales the learning rate of each
stage (``layer_decay``) and keeps BatchNorm in train, eval or frozen mode (``bn_mode``). Why the
schedule is a function of the epoch, and frozen gradients are dropped rather than never computed:
see :mod:`~visiontransfer.transfer.freezing` (exact resumes, DDP).

Deployment contract: every task module offers :meth:`TransferModule.inference_model`, a plain
eval-mode ``nn.Module`` (no Lightning) that takes ``(B, 3, H, W)`` uint8 images, as the datamodules
batch them, and returns the task's outputs with the preprocessing included;
``visiontransfer export`` turns it into ONNX or a ``torch.export`` program. Checkpoints of transfer
modules also carry the metrics logged last (:data:`METRICS_KEY`), for model cards.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from visiontransfer.errors import ConfigError, require
from visiontransfer.system import BackboneSystem
from visiontransfer.transfer.freezing import (
    BatchNormMode,
    backbone_stages,
    batchnorm_layers,
    frozen_stage_count,
    layer_decay_scales,
    modules_of_stages,
    set_requires_grad,
    stage_of_parameter,
)

METRICS_KEY = "visiontransfer_metrics"
"""Checkpoint entry with the scalar metrics logged last (``val/top1``...: what the trainer held when
the checkpoint was written), read by ``visiontransfer export`` for the model card."""

Strategy = Literal["finetune", "linear_probe"]
"""``linear_probe``: the whole backbone frozen, BatchNorm statistics kept; ``finetune``: the
backbone trains (as far as ``frozen_stages`` and the schedule allow)."""


class TransferModule(BackboneSystem):
    """A backbone with a task head, trained on a (small) labeled set.

    Args:
        num_classes: Classes of the task; the CLI links it from ``--data.num_classes``.
        class_names: Class names in label order, for per-class metrics, figures and writers; the
            CLI links them from ``--data.classes``. Default: the class indices.
        strategy: ``linear_probe`` (frozen backbone, BatchNorm in eval) or ``finetune``.
        frozen_stages: Stages frozen from the input side (stage 0 is the stem), while fine-tuning.
        trainable_stages: Instead of ``frozen_stages``: how many stages train, counted from the
            output side (None: use ``frozen_stages``).
        unfreeze_every_n_epochs: Gradual unfreezing: start with every stage frozen and release one
            stage from the top every this many epochs, down to ``frozen_stages`` (0: off).
        layer_decay: Layer-wise LR decay: stage ``i`` of ``S`` trains at ``lr * layer_decay ** (S - i)``
            (1: off); the head trains at ``lr``.
        bn_mode: BatchNorm of the trainable backbone: ``train`` (batch statistics), ``eval``
            (running statistics, affine weights train) or ``frozen`` (as eval, affine frozen too;
            for pretrained backbones). Frozen stages always keep theirs in eval.
        **kwargs: Backbone and optimizer arguments of :class:`~visiontransfer.system.BackboneSystem`
            (``backbone`` may be a pretext ``.ckpt``, an export folder or a timm name).
    """

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        strategy: Strategy = "finetune",
        frozen_stages: int = 0,
        trainable_stages: int | None = None,
        unfreeze_every_n_epochs: int = 0,
        layer_decay: float = 1.0,
        bn_mode: BatchNormMode = "train",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(num_classes >= 1, "model", "num_classes", num_classes, "must be >= 1")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"--model.class_names lists {len(class_names)} names for --model.num_classes={num_classes}"
            )
        self.num_classes = num_classes
        self.declared_class_names = list(class_names) if class_names is not None else None
        self.stages = backbone_stages(self.backbone)
        self.strategy = strategy
        self.frozen_stages = self._frozen_stages(strategy, frozen_stages, trainable_stages)
        require(unfreeze_every_n_epochs >= 0, "model", "unfreeze_every_n_epochs", unfreeze_every_n_epochs,
                "must be >= 0")  # fmt: skip
        require(
            0 < layer_decay <= 1, "model", "layer_decay", layer_decay, "must be in (0, 1]; 1 turns it off"
        )
        self.layer_scales = layer_decay_scales(len(self.stages), layer_decay)
        self.unfreeze_every_n_epochs = 0 if strategy == "linear_probe" else unfreeze_every_n_epochs
        self.bn_mode: BatchNormMode = "eval" if strategy == "linear_probe" else bn_mode
        if self.unfreeze_every_n_epochs == 0:  # static freezing: cheaper, nothing changes later
            set_requires_grad(self.backbone, self._frozen_names(self.frozen_stages), False)
        if self.bn_mode == "frozen":
            self._freeze_batchnorm(bool(kwargs.get("pretrained", False)))

    def inference_model(self) -> nn.Module:
        """The trained network as a plain eval-mode ``nn.Module`` for deployment (a copy: this module
        is left as it is): ``(B, 3, H, W)`` uint8 images in, the task's outputs out, preprocessing
        included (normalisation; the CIE L lightness for a single-channel backbone). Task modules
        implement it; ``visiontransfer export --format onnx|torch-export`` exports it.

        Raises:
            NotImplementedError: a task module without one.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no inference_model(): implement it (a plain nn.Module from "
            "(B, 3, H, W) uint8 images to the task's outputs) to export the whole model, or export "
            "its backbone alone (visiontransfer export --backbone-only)"
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The backbone block (see the base), and the metrics logged last (:data:`METRICS_KEY`)."""
        super().on_save_checkpoint(checkpoint)
        if self._trainer is not None:
            checkpoint[METRICS_KEY] = scalar_metrics(self._trainer.callback_metrics)

    @property
    def class_names(self) -> list[str]:
        """The class names given, else the class indices as strings."""
        return self.declared_class_names or [str(i) for i in range(self.num_classes)]

    def _frozen_stages(self, strategy: Strategy, frozen: int, trainable: int | None) -> int:
        """Stages frozen from the input side, from the arguments (checked against the backbone)."""
        count = len(self.stages)
        if strategy == "linear_probe":
            return count
        bounds = f"must be in [0, {count}] (this backbone has {count} stages, stem included)"
        if trainable is not None:
            if frozen:
                raise ConfigError("give --model.frozen_stages or --model.trainable_stages, not both")
            require(0 <= trainable <= count, "model", "trainable_stages", trainable, bounds)
            return count - trainable
        require(0 <= frozen <= count, "model", "frozen_stages", frozen, bounds)
        return frozen

    def _freeze_batchnorm(self, pretrained: bool) -> None:
        for bn in batchnorm_layers([self.backbone]):
            bn.requires_grad_(False)
        if self.backbone_spec.source is None and not pretrained:
            warnings.warn(
                "--model.bn_mode=frozen on a randomly initialised backbone freezes BatchNorm at "
                "its initial values (timm zero-initialises the last one of each residual block, "
                "so those blocks stay off); use bn_mode eval or train",
                stacklevel=3,
            )

    # -- freezing -------------------------------------------------------------------------------
    def _frozen_names(self, count: int) -> list[str]:
        return [name for stage in self.stages[:count] for name in stage]

    def frozen_now(self) -> int:
        """Stages frozen at the current epoch."""
        epoch = self.current_epoch if self._trainer is not None else 0
        return frozen_stage_count(len(self.stages), self.frozen_stages, self.unfreeze_every_n_epochs, epoch)

    def train(self, mode: bool = True) -> TransferModule:
        """Switch to train mode, keeping the BatchNorm of frozen stages (and per ``bn_mode``) in eval."""
        super().train(mode)
        if mode:
            norms = modules_of_stages(self.backbone, self.stages, range(self.frozen_now()))
            if self.bn_mode != "train":
                norms = [self.backbone]
            for bn in batchnorm_layers(norms):
                bn.eval()
        return self

    def on_train_epoch_start(self) -> None:
        self.train()  # the frozen stages may have changed with the epoch
        self.log("train/frozen_stages", float(self.frozen_now()), on_step=False, on_epoch=True)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.unfreeze_every_n_epochs == 0:
            return
        frozen = set(self._frozen_names(self.frozen_now()))
        for name, param in self.backbone.named_parameters():
            if name in frozen:
                param.grad = None  # the optimizer skips it: no update, no decay, no moment change

    def _param_groups(self) -> list[dict[str, Any]]:
        """One group per (stage, decay / no decay), LRs scaled by layer decay; the head at ``lr``."""
        stage_of = stage_of_parameter(self.stages)
        groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
        head_stage = len(self.stages)
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            inner = name.removeprefix("backbone.")
            stage = stage_of.get(inner, head_stage) if name.startswith("backbone.") else head_stage
            no_decay = param.ndim <= 1 or name.endswith(".bias")
            groups.setdefault((stage, no_decay), []).append(param)
        scales = [*self.layer_scales, 1.0]
        return [
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else self.weight_decay,
                "lr": self.lr * scales[stage],
                "stage": stage,
            }
            for (stage, no_decay), params in sorted(groups.items())
        ]


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite scalar entries of a metrics mapping (``trainer.callback_metrics``), as floats."""
    out = {}
    for name, value in sorted(metrics.items()):
        number = value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
        if isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number):
            out[name] = float(number)
    return out
