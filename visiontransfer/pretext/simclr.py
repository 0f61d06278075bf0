"""SimCLR: contrastive learning of two augmented views."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from visiontransfer.errors import require
from visiontransfer.heads import MLPHead
from visiontransfer.losses import nt_xent
from visiontransfer.pretext.augment import simclr_view
from visiontransfer.pretext.base import PretextModule


class SimCLR(PretextModule):
    """Make two augmented views of an image agree, against every other image of the batch.

    Paper: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020. Two views per image (random resized crop, flip, colour
    jitter, greyscale, blur on large images), a 2-layer projection MLP, and the NT-Xent loss over
    the 2N views of the batch. Views are made batched on the training device with per-image
    randomness (:mod:`visiontransfer.pretext.augment`). Under DDP the projections of every
    process are gathered, so negatives come from the global batch, as in the paper.

    Args:
        projection_dim: Output width of the projection head.
        projection_hidden_dim: Hidden width of the projection head.
        temperature: NT-Xent temperature (paper: 0.5 on CIFAR-10, 0.1 on ImageNet).
        crop_scale_min: Smallest area share of a random crop.
        jitter_strength: Colour jitter strength ``s`` (paper: 0.5 on CIFAR-10, 1.0 on ImageNet).
        blur: Gaussian blur in the views (paper: on ImageNet, not on CIFAR).
        hue: Largest hue shift of the colour jitter, in turns (0.5: any hue); None: the paper's
            ``0.2 * jitter_strength``. Where object colour carries no meaning (the embedded set),
            0.5 stops the views from being matched by their colours.
        grayscale_p: Probability of a greyscale view (paper: 0.2).
        **kwargs: Backbone and optimizer arguments of :class:`PretextModule`.
    """

    def __init__(
        self,
        projection_dim: int = 128,
        projection_hidden_dim: int = 512,
        temperature: float = 0.5,
        crop_scale_min: float = 0.08,
        jitter_strength: float = 0.5,
        blur: bool = False,
        hue: float | None = None,
        grayscale_p: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(hue is None or 0 <= hue <= 0.5, "model", "hue", hue, "must be in [0, 0.5] turns, or null")
        require(0 <= grayscale_p <= 1, "model", "grayscale_p", grayscale_p, "must be in [0, 1]")
        require(temperature > 0, "model", "temperature", temperature, "must be > 0")
        require(0 < crop_scale_min <= 1, "model", "crop_scale_min", crop_scale_min, "must be in (0, 1]")
        self.projection = MLPHead(self.num_features, projection_dim, projection_hidden_dim)
        self.temperature = temperature
        self.crop_scale = (crop_scale_min, 1.0)
        self.jitter_strength = jitter_strength
        self.blur = blur
        self.hue = hue
        self.grayscale_p = grayscale_p

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Two augmented views ``(B, 3, H, W)`` (uint8 range floats) of a uint8 batch."""
        x = images.float() / 255.0
        size = images.shape[-1]
        v1, v2 = (
            simclr_view(
                x,
                size,
                self.crop_scale,
                self.jitter_strength,
                self.blur,
                generator,
                self.hue,
                self.grayscale_p,
            )
            for _ in range(2)
        )
        return v1 * 255.0, v2 * 255.0

    def project(self, views: Tensor) -> Tensor:
        """Projections ``(B, projection_dim)`` of views in the uint8 range."""
        return self.projection(self.backbone(self.normalize(views)))

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        images = batch["image"]
        if images.shape[0] == 0:
            return None
        generator = None
        if stage != "train":  # the same views every validation epoch
            generator = torch.Generator(device=images.device).manual_seed(int(batch["index"][0]))
        v1, v2 = self.views(images, generator)
        z1, z2 = self.project(v1), self.project(v2)
        loss = nt_xent(self.gather_with_grads(z1)[0], self.gather_with_grads(z2)[0], self.temperature)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=images.shape[0], sync_dist=stage != "train")
        return loss
