"""BYOL: bootstrap your own latent, over the momentum teacher."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from visiontransfer.errors import require
from visiontransfer.heads import MLPHead
from visiontransfer.losses import feature_distillation_loss
from visiontransfer.pretext.augment import SampleRandom, byol_view
from visiontransfer.pretext.base import PretextModule
from visiontransfer.pretext.teacher import EMATeacher


class BYOL(PretextModule):
    """Predict a momentum teacher's projection of one view from another view, without negatives.

    Paper: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
    NeurIPS 2020. The online network (backbone, projector, predictor: MLPs with batch norm) sees two
    views of each image (BYOL's asymmetric augmentations, drawn per image from its seed); the
    target network, an :class:`~visiontransfer.pretext.teacher.EMATeacher` of backbone and
    projector, sees the other view; the loss is ``2 − 2 · cos(prediction, target projection)``,
    symmetrised over the two views (twice :func:`~visiontransfer.losses.feature_distillation_loss`
    with the cosine metric).

    Args:
        projection_dim: Output width of projector and predictor (paper: 256).
        hidden_dim: Hidden width of projector and predictor (paper: 4096).
        crop_scale_min: Smallest area share of a random crop (paper: 0.08).
        blur: Gaussian blur in the views (paper: p 1.0 and 0.1; off for tiny images).
        base_momentum: Teacher EMA momentum at the start, rising to 1 on a cosine (paper: 0.996;
            lower it for short runs).
        **kwargs: Backbone and optimizer arguments of :class:`PretextModule`.
    """

    def __init__(
        self,
        projection_dim: int = 256,
        hidden_dim: int = 4096,
        crop_scale_min: float = 0.08,
        blur: bool = True,
        base_momentum: float = 0.996,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(0 < crop_scale_min <= 1, "model", "crop_scale_min", crop_scale_min, "must be in (0, 1]")
        require(0 <= base_momentum <= 1, "model", "base_momentum", base_momentum, "must be in [0, 1]")
        self.projector = MLPHead(self.num_features, projection_dim, hidden_dim)
        self.predictor = MLPHead(projection_dim, projection_dim, hidden_dim)
        self.teacher = EMATeacher(self.online(), base_momentum, 1.0)
        self.crop_scale = (crop_scale_min, 1.0)
        self.blur = blur

    def online(self) -> nn.Module:
        """Backbone then projector (the modules themselves): what the teacher follows."""
        return nn.Sequential(self.backbone, self.projector)

    def views(self, batch: dict[str, Any], train: bool) -> Tensor:
        """Both views ``(2B, 3, H, W)`` (uint8-range floats), drawn per image from its seed."""
        images = batch["image"]
        epoch = self.current_epoch if self._trainer is not None else 0
        generator = SampleRandom.for_batch(batch["index"], epoch, train)
        x, size = images.float() / 255.0, images.shape[-1]
        first = byol_view(x, size, self.crop_scale, 1.0 if self.blur else 0.0, 0.0, generator)
        second = byol_view(x, size, self.crop_scale, 0.1 if self.blur else 0.0, 0.2, generator)
        return torch.cat([first, second]) * 255.0

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        b = batch["image"].shape[0]
        if b == 0:
            return None
        views = self.normalize(self.views(batch, train=stage == "train"))
        predictions = self.predictor(self.projector(self.backbone(views)))  # (2B, P)
        targets = self.teacher(views).roll(b, dims=0)  # (2B, P): row i holds the other view's
        loss = 2.0 * feature_distillation_loss(predictions, targets, "cosine")
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=b, sync_dist=stage != "train")
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the teacher's move towards the updated online network."""
        super().optimizer_step(*args, **kwargs)
        self.log("train/teacher_momentum", self.teacher.update(self.online(), self.schedule_steps()[0]))
