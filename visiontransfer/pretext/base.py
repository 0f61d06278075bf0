"""The base of the pretext modules: :class:`~visiontransfer.system.BackboneSystem` plus the step
plumbing every method shares (each method implements ``_step(batch, stage)``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from visiontransfer.system import BackboneSystem


class PretextModule(BackboneSystem):
    """Base of the self-supervised modules (backbone, normalisation, optimizer; see
    :class:`~visiontransfer.system.BackboneSystem` for the arguments).

    A method implements ``_step(batch, stage) -> loss or None`` (None when the batch is empty,
    i.e. every file in it was unreadable) and logs its metrics under ``{stage}/``; ``features()``
    gives the pooled representation that online monitors, ``predict`` and transfer use.
    """

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        raise NotImplementedError(f"{type(self).__name__} must implement _step(batch, stage)")

    def gather_with_grads(self, x: Tensor) -> tuple[Tensor, int]:
        """Every process's rows of ``x`` ``(N, D)`` → ``(world * N, D)`` with gradients kept, and the
        offset of this process's rows in it (negatives from the global batch, as on one device)."""
        if self._trainer is None or self.trainer.world_size <= 1:
            return x, 0
        gathered = self.all_gather(x, sync_grads=True)  # (world, N, D)
        assert isinstance(gathered, Tensor)
        return gathered.reshape(-1, x.shape[-1]), self.trainer.global_rank * x.shape[0]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Pooled backbone features of each image, with its dataset index."""
        return {"index": batch["index"], "features": self.features(batch["image"])}
