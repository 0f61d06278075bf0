"""Callbacks the fault-tolerance tests put into real ``visiontransfer fit`` subprocesses."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L
import torch


class KillAt(L.Callback):
    """SIGKILL this process (no clean-up can run) after training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(L.Callback):
    """Send this process ``signal_name`` at training step ``step`` (as a scheduler would)."""

    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step = step
        self.signal_name = signal_name

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.kill(os.getpid(), signal.Signals[self.signal_name])


class PoisonAt(L.Callback):
    """Make the weights NaN before step ``step``, so that its loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class RecordSteps(L.Callback):
    """Append ``step, indices of the batch, loss`` of every training step to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        indices = " ".join(str(int(i)) for i in batch["index"])
        with open(self.path, "a") as handle:
            handle.write(f"{trainer.global_step}\t{indices}\t{float(loss):.6f}\n")
