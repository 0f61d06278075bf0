"""Helpers the DDP tests load into ``visiontransfer fit`` subprocesses by ``class_path``."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from visiontransfer.pretext import SimCLR


class SaveState(L.Callback):
    """At the end of training, rank 0 saves the weights and every step's loss to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        # The loss of the global batch: the mean of the processes' (equal-sized) batch losses.
        self.losses.append(float(trainer.strategy.reduce(loss.detach(), reduce_op="mean")))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            weights = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
            torch.save({"weights": weights, "losses": self.losses}, self.path)


class FrozenBatchNorm(L.Callback):
    """Hold every BatchNorm layer in eval mode: per-sample computation, so one process and two
    compute the same (on GPUs ``--trainer.sync_batchnorm true`` does it for training mode;
    SyncBatchNorm does not run on CPU)."""

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for module in pl_module.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


class FixedViewsSimCLR(SimCLR):
    """SimCLR with deterministic views (the image and its mirror): its random views come from each
    process's own stream, so only fixed views make one process and two comparable."""

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        x = images.float()
        return x, x.flip(-1)
