"""The closing summary of a run (where it put its checkpoints and logs, its last metrics), and
two small monitors: a step timer and progress ticks for a bar over several runs."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch


class RunSummary(L.Callback):
    """At the end of ``fit``, print the checkpoints, the log folder and the last metrics."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        lines = ["", "visiontransfer run finished."]
        ckpt = trainer.checkpoint_callback
        if ckpt is not None:
            best = getattr(ckpt, "best_model_path", "") or ""
            last = getattr(ckpt, "last_model_path", "") or ""
            lines.append(f"  checkpoints: {getattr(ckpt, 'dirpath', None)}")
            if best:
                lines.append(f"    best: {best}")
            if last and last != best:
                lines.append(f"    last: {last}")
        if log_dir:
            lines.append(f"  logs: {log_dir}")
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1}
        shown = [f"{k}={v:.4f}" for k, v in metrics.items() if math.isfinite(v)]
        if shown:
            lines.append("  metrics: " + ", ".join(shown))
        print("\n".join(lines), flush=True)


class StepTimer(L.Callback):
    """Wall time and images of the training steps after the first ``warmup`` ones (which pay for
    warm-up); on CUDA each boundary waits for the device.

    Args:
        warmup: Untimed steps at the start.
    """

    def __init__(self, warmup: int = 1) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end = 0.0
        self.images = 0
        self.steps = 0

    @staticmethod
    def _sync(trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self._sync(trainer)
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.start is not None:
            self._sync(trainer)
            self.end = time.perf_counter()
            self.steps += 1
            images = batch.get("image") if isinstance(batch, dict) else None
            self.images += len(images) if images is not None else 0

    @property
    def seconds(self) -> float:
        """Wall time of the timed steps."""
        return 0.0 if self.start is None else self.end - self.start

    def seconds_per_image(self) -> float:
        """Measured seconds per training image (0 if no step was timed)."""
        return self.seconds / self.images if self.images else 0.0


class ProgressTicks(L.Callback):
    """Calls ``advance(1)`` after every training step (a progress bar over several runs)."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        self.advance = advance

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.advance(1)
