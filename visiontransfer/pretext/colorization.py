"""Colorization: predict the colours (ab of Lab) of an image from its lightness (L)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from visiontransfer.backbones import FeatureBackbone
from visiontransfer.callbacks.statistics import DataStatistics
from visiontransfer.color import L_MAX, lab_to_rgb, rgb_to_lab
from visiontransfer.decoders import FPNDecoder
from visiontransfer.errors import ConfigError
from visiontransfer.imagelog import log_image_grid
from visiontransfer.losses import AB_LOSS_SCALE, colorization_class_loss, colorization_regression_loss
from visiontransfer.pretext.base import PretextModule
from visiontransfer.pretext.lab import (
    ab_bin_centers,
    annealed_mean,
    nearest_bin,
    rebalance_weights,
    smooth_prior,
    soft_encode,
)

PRIOR_SMOOTHING_SIGMA = 5.0
"""Std (ab units) of the Gaussian that smooths the empirical colour prior (the paper: 5)."""
LOG_IMAGES = 8
"""Validation images shown in the logged grid."""


class ColorizationDecoder(FPNDecoder):
    """The colorization decoder: :class:`~visiontransfer.decoders.FPNDecoder` (the one FPN-style
    top-down decoder, also the segmenter's) without dropout, its width named as the CLI flag.

    Args:
        channels: Channels of each input map, finest first (``FeatureBackbone.channels``).
        reductions: Stride of each input map relative to the image (``FeatureBackbone.reductions``).
        out_channels: Output channels (2 for ab regression, Q for bin logits).
        width: Channels inside the decoder (``--model.decoder_width``).
        output_stride: Stride of the output relative to the image (1: full resolution).
    """

    def __init__(
        self,
        channels: Sequence[int],
        reductions: Sequence[int],
        out_channels: int,
        width: int = 128,
        output_stride: int = 1,
    ) -> None:
        if width < 8 or out_channels < 1:
            raise ConfigError(f"--model.decoder_width={width} must be >= 8 (and out_channels >= 1)")
        super().__init__(channels, reductions, out_channels, width=width, output_stride=output_stride)


def _check_args(
    loss: str,
    grid_size: int,
    soft_k: int,
    soft_sigma: float,
    rebalance_lambda: float,
    temperature: float,
    prior_batches: int,
    output_stride: int,
    decoder_levels: int,
    log_images_every_n_epochs: int,
) -> None:
    checks = [
        (loss in ("classification", "regression"),
         f"--model.loss={loss!r} must be classification (the paper) or regression"),
        (5 <= grid_size <= 55,
         f"--model.grid_size={grid_size} must be in 5..55 (ab units; the paper uses 10)"),
        (soft_k >= 1, f"--model.soft_k={soft_k} must be >= 1 (the paper uses 5)"),
        (soft_sigma > 0, f"--model.soft_sigma={soft_sigma} must be > 0 (the paper uses 5)"),
        (0 <= rebalance_lambda <= 1,
         f"--model.rebalance_lambda={rebalance_lambda} must be in [0, 1] (the paper uses 0.5)"),
        (temperature > 0, f"--model.temperature={temperature} must be > 0 (the paper uses 0.38)"),
        (prior_batches >= 1, f"--model.prior_batches={prior_batches} must be >= 1"),
        (output_stride in (1, 2, 4), f"--model.output_stride={output_stride} must be 1, 2 or 4"),
        (decoder_levels >= 1,
         f"--model.decoder_levels={decoder_levels} must be >= 1 (1: the deepest map only, as the paper)"),
        (log_images_every_n_epochs >= 0,
         f"--model.log_images_every_n_epochs={log_images_every_n_epochs} must be >= 0 (0: never)"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


class Colorization(PretextModule):
    """Colourize greyscale images: the backbone sees the L channel and predicts a and b.

    Paper: Zhang, Isola, Efros, "Colorful Image Colorization", ECCV 2016. Images are converted
    to CIE Lab; the backbone gets L only and a decoder predicts ab per pixel, either as a
    distribution over Q quantised ab bins trained with the class-rebalanced multinomial
    cross-entropy of soft-encoded targets (``classification``, the paper's method; colours are
    read out with the annealed mean, T = 0.38), or as ab directly with a smooth L1 loss
    (``regression``, the paper's baseline). The colour prior behind the rebalancing weights is
    measured on the training data when fitting starts (``prior_batches`` batches) and is kept
    in the checkpoint (buffer ``ab_prior``), so a resumed run does not measure it again.

    The backbone input is ``(L / 100 − m) / s`` with the backbone's mean and std averaged over
    RGB (ImageNet: m = 0.449, s = 0.226): about zero mean and unit variance on photos, and the
    input a timm ``in_chans=1`` model with pretrained weights expects of a grey image.
    ``features(images)`` takes ``uint8`` RGB and does the same, so online monitors see the
    input the backbone was trained on.

    Multi-GPU: parameters the dense decoder does not use (e.g. ConvNeXt's ``head.norm``, only
    used by the pooled features) get no gradient; with DDP use
    ``--trainer.strategy=ddp_find_unused_parameters_true`` for such backbones.

    Args:
        loss: ``classification`` (the paper) or ``regression`` (smooth L1 on ab / 110).
        grid_size: Side of the ab bins, in ab units (the paper: 10, giving Q = 261 bins here).
        soft_k: Nearest bins each pixel's soft target spreads over (the paper: 5).
        soft_sigma: Std of the soft target's Gaussian, in ab units (the paper: 5).
        rebalance_lambda: Mix of the colour prior with the uniform one before inverting it
            into class weights (the paper: 0.5; 1 disables rebalancing).
        temperature: Annealed-mean temperature for reading colours out of the bin
            distribution (the paper: 0.38; 1 is the mean, → 0 the mode).
        prior_batches: Training batches read at the start of fitting to measure the colour
            prior (classification only).
        decoder_width: Channels inside the decoder.
        decoder_levels: How many of the backbone's deepest feature maps the decoder fuses (at
            most the model's number of levels). The paper predicts from the deepest layer only
            (1); every shallower map added gives the decoder a shortcut to local colour cues
            that bypasses the deep layers, whose pooled features are what transfer uses. On
            32-px CIFAR (ResNet-18, default stem, 5,000 images, 3 epochs) 1, 2 and 3 levels
            gave linear-probe top-1 0.237, 0.244 and 0.251 against 0.196 for 4 and 0.170 for
            a random init; the default, 2, keeps the decoder multi-scale and cheap.
        output_stride: Resolution of the prediction relative to the input (1, 2 or 4); the
            loss compares it with the area-downsampled true ab, and predicted colours are
            upsampled bilinearly for the colour error and the images (the paper uses 4).
        log_images_every_n_epochs: Every n validation epochs, save a grid of grey input /
            predicted / true colours for up to 8 validation images (0: never).
        **kwargs: Backbone and optimizer arguments of :class:`PretextModule` (``backbone``,
            ``small_input_stem``, ``lr``, ...), validated there. ``in_chans`` is always 1.
    """

    ab_prior: Tensor
    ab_centers: Tensor

    def __init__(
        self,
        loss: Literal["classification", "regression"] = "classification",
        grid_size: int = 10,
        soft_k: int = 5,
        soft_sigma: float = 5.0,
        rebalance_lambda: float = 0.5,
        temperature: float = 0.38,
        prior_batches: int = 50,
        decoder_width: int = 128,
        decoder_levels: int = 2,
        output_stride: int = 2,
        log_images_every_n_epochs: int = 1,
        **kwargs: Any,
    ) -> None:
        _check_args(
            loss, grid_size, soft_k, soft_sigma, rebalance_lambda, temperature, prior_batches,
            output_stride, decoder_levels, log_images_every_n_epochs,
        )  # fmt: skip
        if kwargs.pop("in_chans", 1) != 1:
            raise ConfigError("--model.in_chans must be 1 (or unset): the colorization backbone sees only L")
        super().__init__(in_chans=1, **kwargs)
        centers = ab_bin_centers(grid_size)  # (Q, 2)
        if soft_k > centers.shape[0]:
            raise ConfigError(f"--model.soft_k={soft_k} must be <= {centers.shape[0]} (the number of bins)")
        self.loss_type = loss
        self.soft_k = soft_k
        self.soft_sigma = soft_sigma
        self.rebalance_lambda = rebalance_lambda
        self.temperature = temperature
        self.prior_batches = prior_batches
        self.log_images_every_n_epochs = log_images_every_n_epochs
        self.register_buffer("ab_centers", centers.clone(), persistent=False)
        self.register_buffer("ab_prior", torch.zeros(centers.shape[0]))  # saved in checkpoints
        levels = len(getattr(self.backbone, "feature_info", []))
        if decoder_levels > levels > 0:  # no levels at all: FeatureBackbone says so
            raise ConfigError(
                f"--model.decoder_levels={decoder_levels} must be <= {levels}, the number of "
                f"feature levels of --model.backbone={self.backbone_spec.architecture}"
            )
        pyramid = FeatureBackbone(self.backbone, tuple(range(-decoder_levels, 0)))  # the deepest maps
        # Not a registered submodule: it only wraps self.backbone (same parameters), and the
        # state dict keeps one copy of the backbone under "backbone.".
        self.__dict__["pyramid"] = pyramid
        out_channels = centers.shape[0] if loss == "classification" else 2
        self.decoder = ColorizationDecoder(
            pyramid.channels, pyramid.reductions, out_channels, decoder_width, output_stride
        )
        self._examples: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def num_bins(self) -> int:
        """Q, the number of in-gamut ab bins."""
        return int(self.ab_centers.shape[0])

    @property
    def prior_ready(self) -> bool:
        """Whether ``ab_prior`` holds a measured distribution (it sums to 1, not 0)."""
        return bool(self.ab_prior.sum() > 0)

    def _lab_and_input(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``uint8`` RGB ``(B, 3, H, W)`` → Lab ``(B, 3, H, W)`` and the backbone input ``(B, 1, H, W)``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Colorization needs RGB images (B, 3, H, W), got {tuple(images.shape)}")
        lab = rgb_to_lab(images.float() / 255.0)
        return lab, self.normalize(lab[:, :1] * (255.0 / L_MAX))  # L 0..100 → 0..255, as normalize takes

    def _decode(self, x: Tensor) -> Tensor:
        stride = self.decoder.output_stride
        size = (max(1, x.shape[-2] // stride), max(1, x.shape[-1] // stride))
        return self.decoder(self.__dict__["pyramid"](x), size)

    def forward(self, images: Tensor) -> Tensor:
        """``uint8`` RGB ``(B, 3, H, W)`` → bin logits ``(B, Q, h, w)`` or ab ``(B, 2, h, w)``."""
        return self._decode(self._lab_and_input(images)[1])

    def predict_ab(self, output: Tensor) -> Tensor:
        """Decoder output → ab ``(B, 2, h, w)``: annealed mean of the bins, or the scaled regression."""
        if self.loss_type == "classification":
            return annealed_mean(output, self.ab_centers, self.temperature)
        return output * AB_LOSS_SCALE

    def class_weights(self) -> Tensor:
        """Rebalancing weight ``(Q,)`` of each bin, from the smoothed prior (all 1 without one)."""
        if not self.prior_ready:
            rank_zero_warn("Colorization: no colour prior measured yet (ab_prior is empty); no rebalancing")
            return torch.ones_like(self.ab_prior)
        prior = smooth_prior(self.ab_prior, self.ab_centers, PRIOR_SMOOTHING_SIGMA)
        return rebalance_weights(prior, self.rebalance_lambda)

    def compute_loss(self, output: Tensor, true_ab: Tensor) -> Tensor:
        """Loss of the decoder output against the true ab, downsampled to the output's size."""
        if true_ab.shape[-2:] != output.shape[-2:]:
            true_ab = F.interpolate(true_ab, size=output.shape[-2:], mode="area")
        if self.loss_type == "regression":
            return colorization_regression_loss(output * AB_LOSS_SCALE, true_ab)
        targets = soft_encode(true_ab, self.ab_centers, self.soft_k, self.soft_sigma)  # (B, Q, h, w)
        pixel_weights = self.class_weights()[targets.argmax(dim=1)]  # (B, h, w)
        return colorization_class_loss(output, targets, pixel_weights)

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        images = batch["image"]
        if images.shape[0] == 0:  # every file of the batch was unreadable
            return None
        lab, x = self._lab_and_input(images)
        output = self._decode(x)
        loss = self.compute_loss(output, lab[:, 1:])
        size = images.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size, sync_dist=stage != "train")
        if stage == "train":
            return loss
        with torch.no_grad():
            pred_ab = F.interpolate(
                self.predict_ab(output), size=lab.shape[-2:], mode="bilinear", align_corners=False
            )  # (B, 2, H, W)
            error = (pred_ab - lab[:, 1:]).abs().mean()
        self.log(f"{stage}/ab_mae", error, prog_bar=True, batch_size=size, sync_dist=True)
        if stage == "val" and self._examples is None and self._images_due():
            self._examples = (
                lab[:LOG_IMAGES, :1].cpu(),
                pred_ab[:LOG_IMAGES].cpu(),
                images[:LOG_IMAGES].cpu(),
            )
        return loss

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Name the flag when a checkpoint's decoder fuses another number of levels than this one."""
        state = checkpoint.get("state_dict", {})
        saved = len({key.split(".")[2] for key in state if key.startswith("decoder.laterals.")})
        if saved and saved != len(self.decoder.laterals):
            raise ConfigError(
                f"the checkpoint's colorization decoder fuses {saved} feature levels, this model "
                f"{len(self.decoder.laterals)}: pass --model.decoder_levels={saved} (checkpoints "
                "made before that flag existed used 4)"
            )

    # Colour prior -----------------------------------------------------------------------------

    def configure_callbacks(self) -> list[Callback]:
        """The colour prior is measured by :class:`~visiontransfer.callbacks.statistics.DataStatistics`."""
        return [DataStatistics(self.prior_batches)] if self.loss_type == "classification" else []

    @property
    def statistics_ready(self) -> bool:
        """No prior is needed (regression), or it is known (measured, or restored on resume)."""
        if self.loss_type == "classification" and self.prior_ready:
            rank_zero_info("Colorization: colour prior restored from the checkpoint; not measured again")
        return self.loss_type != "classification" or self.prior_ready

    def measure_from_batches(self, batches: Iterable[Any]) -> None:
        """Measure the colour prior from training ``batches`` (summed over every DDP process)."""
        counts = self.count_ab_bins(batches)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")  # all ranks' pixels
        total = int(counts.sum())
        if total == 0:
            raise RuntimeError(
                f"no readable image in the first --model.prior_batches={self.prior_batches} training "
                "batches to measure the colour prior from; check the training data"
            )
        self.ab_prior.copy_(counts.double().div(total).to(self.ab_prior))
        used = int((counts > 0).sum())
        rank_zero_info(f"Colorization: colour prior from {total} pixels; {used} of {self.num_bins} bins seen")

    @torch.no_grad()
    def count_ab_bins(self, batches: Iterable[Any]) -> Tensor:
        """Histogram ``(Q,)`` int64 of the nearest ab bin of every pixel of ``batches``' images."""
        counts = torch.zeros(self.num_bins, dtype=torch.long, device=self.device)
        for batch in batches:
            images = batch["image"] if isinstance(batch, dict) else batch[0]
            if images.shape[0] == 0:
                continue
            lab = rgb_to_lab(images.to(self.device).float() / 255.0)
            bins = nearest_bin(lab[:, 1:], self.ab_centers)  # (B, H, W)
            counts += torch.bincount(bins.flatten(), minlength=self.num_bins)
        return counts

    # Image grid -------------------------------------------------------------------------------

    def _images_due(self) -> bool:
        every = self.log_images_every_n_epochs
        trainer = self._trainer
        if not every or trainer is None or trainer.sanity_checking or trainer.global_rank != 0:
            return False
        return (trainer.current_epoch + 1) % every == 0

    def on_validation_epoch_start(self) -> None:
        self._examples = None

    def on_validation_epoch_end(self) -> None:
        if self._examples is None:
            return
        lightness, pred_ab, images = self._examples
        self._examples = None
        grey = lab_to_rgb(torch.cat([lightness, torch.zeros_like(pred_ab)], dim=1))
        colour = lab_to_rgb(torch.cat([lightness, pred_ab], dim=1))
        rows = torch.cat([grey, colour, images.float() / 255.0])  # (3·N, 3, H, W)
        log_image_grid(self, "val/colorization", rows, nrow=lightness.shape[0])
