"""Rotation prediction (RotNet)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from visiontransfer.errors import flag_error
from visiontransfer.heads import MLPHead
from visiontransfer.pretext.base import PretextModule
from visiontransfer.pretext.ops import check_rotations, rotate_batch


class RotationPrediction(PretextModule):
    """Predict which rotation was applied to an image.

    Paper: Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by Predicting Image
    Rotations", ICLR 2018. As in the paper, every image of a batch is shown in all rotations at
    once (the batch grows R-fold), and a classifier on the pooled features predicts the rotation
    with cross-entropy. The rotation set is configurable; the paper found the 4 multiples of 90°
    best.

    Args:
        rotations: Angles in degrees, counter-clockwise, from 0, 90, 180, 270.
        head_hidden_dim: Hidden width of the MLP head (0: a linear head).
        **kwargs: Backbone and optimizer arguments of :class:`PretextModule` (``backbone``,
            ``small_input_stem``, ``lr``, ...), validated there.
    """

    def __init__(
        self,
        rotations: tuple[int, ...] = (0, 90, 180, 270),
        head_hidden_dim: int = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        try:
            self.rotations = check_rotations(rotations)
        except ValueError as error:
            raise flag_error("model", error) from None
        self.head = MLPHead(self.num_features, len(self.rotations), head_hidden_dim)

    def forward(self, images: Tensor) -> Tensor:
        """Rotation logits ``(B, R)`` for ``(B, C, H, W)`` uint8 images."""
        return self.head(self.features(images))

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        images = batch["image"]
        if images.shape[0] == 0:  # every file of the batch was unreadable
            return None
        rotated, labels = rotate_batch(images, self.rotations)
        logits = self(rotated)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        size = rotated.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size, sync_dist=stage != "train")
        self.log(f"{stage}/rot_acc", accuracy, prog_bar=True, batch_size=size, sync_dist=stage != "train")
        return loss
