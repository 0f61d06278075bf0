"""Transfer to semantic segmentation: a backbone (pretext checkpoint, export or timm name) as
multi-scale maps, a dense decoder (FPN-style or DeepLabV3's ASPP), per-pixel cross-entropy with an
ignore index and optional class weights, whole-set IoU metrics and predicted masks.

Papers: FPN — Lin, Dollár, Girshick, He, Hariharan, Belongie, "Feature Pyramid Networks for Object
Detection", CVPR 2017 (its top-down pathway as a segmentation decoder: Kirillov, Girshick, He,
Dollár, "Panoptic Feature Pyramid Networks", CVPR 2019); DeepLabV3 — Chen, Papandreou, Schroff,
Adam, "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017; median frequency
balancing — Eigen & Fergus, ICCV 2015 (as in SegNet, Badrinarayanan, Kendall, Cipolla, PAMI 2017).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from visiontransfer.backbones import FeatureBackbone
from visiontransfer.callbacks.statistics import DataStatistics
from visiontransfer.data.segmentation import colorize
from visiontransfer.decoders import ASPPDecoder, FPNDecoder
from visiontransfer.errors import ConfigError, require
from visiontransfer.imagelog import log_image_grid
from visiontransfer.losses import median_frequency_weights, segmentation_cross_entropy
from visiontransfer.system import normalize_images
from visiontransfer.transfer.base import TransferModule

DecoderName = Literal["fpn", "deeplabv3"]
"""Decoders: ``fpn`` (every level fused top-down), ``deeplabv3`` (ASPP on the deepest map)."""
LOG_IMAGES = 8
"""Validation images shown in the logged grid (image / truth / prediction)."""


def segmentation_scores(confusion: Tensor) -> dict[str, Tensor]:
    """IoU metrics of a confusion matrix (rows: true class, columns: predicted; ignored pixels not
    counted): ``iou`` ``(C,)`` = TP / (TP + FP + FN) per class (NaN for a class neither present nor
    predicted), ``miou`` their mean over the classes that have one, ``pixel_accuracy`` = correct /
    labeled pixels, ``mean_accuracy`` the mean per-class recall (over present classes)."""
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got {tuple(confusion.shape)}")
    matrix = confusion.double()
    hits = matrix.diagonal()
    truth, predicted = matrix.sum(1), matrix.sum(0)
    union = truth + predicted - hits
    iou = torch.where(union > 0, hits / union.clamp_min(1), torch.full_like(hits, float("nan")))
    recall = torch.where(truth > 0, hits / truth.clamp_min(1), torch.full_like(hits, float("nan")))
    total = matrix.sum()
    return {
        "iou": iou,
        "miou": iou.nanmean(),
        "pixel_accuracy": hits.sum() / total if total > 0 else total.new_tensor(float("nan")),
        "mean_accuracy": recall.nanmean(),
    }


class SegmentationNetwork(nn.Module):
    """The segmenter as a plain module for deployment: ``(B, C_in, H, W)`` uint8 images → logits
    ``(B, num_classes, H, W)`` at the input resolution, the backbone's normalisation included (RGB
    for a single-channel backbone: its CIE L lightness). No Lightning; traceable by ``torch.export``.

    Args:
        pyramid: The backbone's multi-scale maps.
        decoder: A decoder of :mod:`visiontransfer.decoders`.
        mean: ``(1, C, 1, 1)`` pixel mean of the backbone, in 0..255.
        std: ``(1, C, 1, 1)`` pixel std, in 0..255.
    """

    mean: Tensor
    std: Tensor
    output_names = ("logits",)
    """The output's name in exported files."""

    def __init__(self, pyramid: FeatureBackbone, decoder: nn.Module, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.pyramid = pyramid
        self.decoder = decoder
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` uint8 → ``(B, num_classes, H, W)`` float logits."""
        x = normalize_images(images, self.mean, self.std)
        return self.decoder(self.pyramid(x), (x.shape[-2], x.shape[-1]))


class SemanticSegmenter(TransferModule):
    """A backbone with a dense decoder, trained on images with per-pixel class masks.

    The backbone comes from a pretext checkpoint, an export folder or a timm name and is read as
    multi-scale maps (:class:`~visiontransfer.backbones.FeatureBackbone`); its weights stay under
    ``backbone.`` (plain timm keys), so ``visiontransfer export`` of a segmenter checkpoint gives the
    fine-tuned backbone. The logits are upsampled bilinearly to the input size. Freezing, BatchNorm
    and layer-wise LR decay are those of :class:`~visiontransfer.transfer.base.TransferModule`; the
    decoder trains at ``lr``.

    Metrics over the whole validation / test set (one confusion matrix, summed over processes under
    DDP; ignored pixels left out): ``miou``, ``pixel_accuracy``, ``mean_accuracy``, and per class
    ``test/iou_<name>``; a grid of image / truth / prediction is saved under the log folder's
    ``images/``. ``predict`` gives each image's class mask at its original size (see
    :class:`~visiontransfer.callbacks.SegmentationWriter`).

    Args:
        num_classes: Classes (at least 2, the ignore index not counted); the CLI links it from
            ``--data.num_classes``.
        decoder: ``fpn`` (Lin et al. 2017) or ``deeplabv3`` (Chen et al. 2017).
        decoder_width: Channels inside the decoder (FPN: 128 by default; ASPP: 256 in the paper).
        out_indices: Backbone levels (timm ``feature_info`` indices) fed to the decoder; default: the
            last four for ``fpn``, the last one for ``deeplabv3``.
        atrous_rates: Dilations of ASPP's three 3×3 branches, in pixels of the deepest map (the
            paper: 6, 12, 18 at stride 16; halve them for every halving of the map).
        dropout: Dropout before the classifier (FPN decoder).
        class_weights: Loss weight of each class (e.g. to lift rare classes), ``median_frequency``
            (measured on the first ``weight_batches`` training batches when fitting starts, kept in
            the checkpoint), or None (all 1).
        weight_batches: Training batches the ``median_frequency`` weights are measured on.
        ignore_index: Mask value of pixels without a label (the datamodule's ``--data.ignore_index``).
        log_images_every_n_epochs: Every n validation epochs, save a grid of up to 8 validation
            images, their truth and the prediction (0: never).
        small_input_stem: Remove the stem's early downsampling (off by default: segmentation images
            are larger than 64 px). A backbone read from a file keeps the stem it was trained with.
        **kwargs: Class names, freezing, backbone and optimizer arguments of
            :class:`~visiontransfer.transfer.base.TransferModule`.
    """

    class_weight: Tensor

    def __init__(
        self,
        num_classes: int,
        decoder: DecoderName = "fpn",
        decoder_width: int | None = None,
        out_indices: tuple[int, ...] | None = None,
        atrous_rates: tuple[int, int, int] = (6, 12, 18),
        dropout: float = 0.1,
        class_weights: list[float] | str | None = None,
        weight_batches: int = 50,
        ignore_index: int = 255,
        log_images_every_n_epochs: int = 1,
        small_input_stem: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, small_input_stem=small_input_stem, **kwargs)
        self._check_args(
            num_classes, decoder, decoder_width, dropout, ignore_index, log_images_every_n_epochs
        )
        self.decoder_name: DecoderName = decoder
        self.ignore_index = ignore_index
        self.log_images_every_n_epochs = log_images_every_n_epochs
        self.weighting = class_weights if isinstance(class_weights, str) else None
        require(weight_batches >= 1, "model", "weight_batches", weight_batches, "must be >= 1")
        self.weight_batches = weight_batches
        self.register_buffer("class_weight", self._initial_weights(class_weights, num_classes))
        levels = len(getattr(self.backbone, "feature_info", []))
        default = tuple(range(max(0, levels - 4), levels)) if decoder == "fpn" else (levels - 1,)
        pyramid = FeatureBackbone(self.backbone, out_indices or default)
        # Not a registered submodule: it wraps self.backbone (the same parameters), whose weights
        # the checkpoint keeps once, under "backbone.".
        self.__dict__["pyramid"] = pyramid
        self.decoder = self._decoder(pyramid, num_classes, decoder_width, atrous_rates, dropout)
        self.metrics = nn.ModuleDict(
            {
                stage: MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)
                for stage in ("val", "test")
            }
        )
        self._masks_checked: set[str] = set()
        self._examples: tuple[Tensor, Tensor, Tensor] | None = None

    @staticmethod
    def _check_args(
        num_classes: int, decoder: str, width: int | None, dropout: float, ignore_index: int, log_every: int
    ) -> None:
        require(num_classes >= 2, "model", "num_classes", num_classes, "must be >= 2")
        if decoder not in ("fpn", "deeplabv3"):
            raise ConfigError(f"--model.decoder={decoder!r}: choose fpn or deeplabv3")
        require(width is None or width >= 8, "model", "decoder_width", width, "must be >= 8")
        require(0 <= dropout < 1, "model", "dropout", dropout, "must be in [0, 1)")
        require(not 0 <= ignore_index < num_classes, "model", "ignore_index", ignore_index,
                f"is a class (0..{num_classes - 1}); use a value outside them, e.g. 255")  # fmt: skip
        require(log_every >= 0, "model", "log_images_every_n_epochs", log_every, "must be >= 0 (0: never)")

    @staticmethod
    def _initial_weights(class_weights: list[float] | str | None, num_classes: int) -> Tensor:
        """The weights given (checked), zeros until measured (``median_frequency``), else ones."""
        if class_weights is None:
            return torch.ones(num_classes)
        if isinstance(class_weights, str):
            if class_weights != "median_frequency":
                raise ConfigError(
                    f"--model.class_weights={class_weights!r}: give a list of {num_classes} weights, "
                    "median_frequency or null"
                )
            return torch.zeros(num_classes)
        if len(class_weights) != num_classes or any(w < 0 for w in class_weights) or not any(class_weights):
            raise ConfigError(
                f"--model.class_weights lists {len(class_weights)} weights for --model.num_classes="
                f"{num_classes}: give one weight >= 0 per class, not all 0"
            )
        return torch.tensor([float(w) for w in class_weights])

    def _decoder(
        self,
        pyramid: FeatureBackbone,
        num_classes: int,
        width: int | None,
        rates: tuple[int, ...],
        dropout: float,
    ) -> nn.Module:
        try:
            if self.decoder_name == "deeplabv3":
                return ASPPDecoder(pyramid.channels[-1], num_classes, rates, width or 256)
            stride = min(pyramid.reductions)  # predict at the finest level's stride, then upsample
            return FPNDecoder(
                pyramid.channels, pyramid.reductions, num_classes, width or 128, stride, dropout
            )
        except ValueError as error:
            raise ConfigError(f"--model.decoder={self.decoder_name}: {error}") from None

    @property
    def pyramid(self) -> FeatureBackbone:
        """The backbone's multi-scale maps (the same weights as ``backbone``)."""
        return self.__dict__["pyramid"]

    # -- forward --------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``(B, num_classes, H, W)`` of ``(B, C, H, W)`` uint8 images."""
        x = self.normalize(images)
        return self.decoder(self.pyramid(x), (images.shape[-2], images.shape[-1]))

    def inference_model(self) -> nn.Module:
        """A copy of the network as a plain eval-mode module (no Lightning), for deployment and
        ``torch.export``: ``(B, 3, H, W)`` uint8 → logits ``(B, num_classes, H, W)``
        (:class:`SegmentationNetwork`)."""
        pyramid = copy.deepcopy(self.pyramid)
        network = SegmentationNetwork(pyramid, copy.deepcopy(self.decoder), self.pixel_mean, self.pixel_std)
        return network.to(self.pixel_mean.device).eval().requires_grad_(False)

    # -- class weights ----------------------------------------------------------------------------
    def configure_callbacks(self) -> list[Callback]:
        """``median_frequency`` weights are measured by
        :class:`~visiontransfer.callbacks.statistics.DataStatistics`."""
        return [DataStatistics(self.weight_batches)] if self.weighting else []

    @property
    def statistics_ready(self) -> bool:
        """No weights to measure, or they are known (measured, or restored from a checkpoint)."""
        return self.weighting is None or bool(self.class_weight.sum() > 0)

    @torch.no_grad()
    def measure_from_batches(self, batches: Iterable[Any]) -> None:
        """Median frequency weights from the masks of training ``batches`` (summed over every process)."""
        counts = torch.zeros(2, self.num_classes, dtype=torch.float64, device=self.device)
        for batch in batches:
            for mask in batch["mask"].to(self.device):
                pixels = torch.bincount(mask[mask != self.ignore_index].flatten(), minlength=self.num_classes)
                counts[0] += pixels[: self.num_classes]
                counts[1] += (pixels[: self.num_classes] > 0) * pixels.sum()
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        if counts[0].sum() == 0:
            raise RuntimeError(
                f"no labeled pixel in the first --model.weight_batches={self.weight_batches} training "
                "batches to measure median frequency weights from; check the masks"
            )
        self.class_weight.copy_(median_frequency_weights(counts[0], counts[1]).to(self.class_weight))
        shown = ", ".join(
            f"{n} {w:.2f}" for n, w in zip(self.class_names, self.class_weight.tolist(), strict=True)
        )
        rank_zero_info(f"SemanticSegmenter: median frequency class weights {shown}")

    # -- steps ----------------------------------------------------------------------------------
    def _check_masks(self, masks: Tensor, stage: str) -> None:
        """Once per stage of a run: the masks' values must be classes of the model or its ignore
        index (a Python user may pass other counts; the CLI links them from the data)."""
        if stage in self._masks_checked or masks.numel() == 0:
            return
        self._masks_checked.add(stage)
        stray = masks[((masks < 0) | (masks >= self.num_classes)) & (masks != self.ignore_index)]
        if stray.numel():
            raise ConfigError(
                f"the masks hold {sorted(set(stray.unique().tolist()))[:5]}, neither a class of "
                f"--model.num_classes={self.num_classes} nor --model.ignore_index={self.ignore_index}: "
                "pass the datamodule's num_classes and ignore_index"
            )

    def on_fit_start(self) -> None:
        self._masks_checked.clear()

    def on_test_start(self) -> None:
        self._masks_checked.clear()

    def loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        """Cross-entropy over the labeled pixels, with the class weights (when any are set)."""
        weights = self.class_weight
        weight = (
            weights if bool((weights != 1).any()) and bool(weights.sum() > 0) else None
        )  # 0: not measured
        return segmentation_cross_entropy(logits, masks, weight, self.ignore_index)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        images, masks = batch["image"], batch["mask"]
        if images.shape[0] == 0:  # every file of the batch was unusable
            return None
        self._check_masks(masks, "train")
        logits = self(images)
        loss = self.loss(logits, masks)
        labeled = masks != self.ignore_index
        accuracy = ((logits.argmax(1) == masks) & labeled).sum() / labeled.sum().clamp_min(1)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        self.log("train/pixel_accuracy", accuracy, batch_size=images.shape[0])
        return loss

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        images, masks = batch["image"], batch["mask"]
        if images.shape[0] == 0:
            return
        self._check_masks(masks, stage)
        logits = self(images)
        self.log(f"{stage}/loss", self.loss(logits, masks), batch_size=images.shape[0], sync_dist=True)
        predicted = logits.argmax(1)  # (B, H, W)
        self._metric(stage).update(predicted, masks)
        if stage == "val" and self._examples is None and self._images_due():
            self._examples = (
                images[:LOG_IMAGES].cpu(),
                masks[:LOG_IMAGES].cpu(),
                predicted[:LOG_IMAGES].cpu(),
            )

    def _metric(self, stage: str) -> MulticlassConfusionMatrix:
        return cast(MulticlassConfusionMatrix, self.metrics[stage])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _epoch_report(self, stage: str) -> None:
        metric = self._metric(stage)
        if self.trainer.sanity_checking:
            metric.reset()
            return
        scores = segmentation_scores(metric.compute())  # the sum over every process
        metric.reset()
        for key in ("miou", "pixel_accuracy", "mean_accuracy"):
            self.log(f"{stage}/{key}", scores[key].float(), prog_bar=key == "miou", sync_dist=False)
        if stage == "test":
            for name, value in zip(self.class_names, scores["iou"].tolist(), strict=True):
                self.log(f"test/iou_{name}", float(value), sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._examples = None

    def on_validation_epoch_end(self) -> None:
        self._epoch_report("val")
        if self._examples is not None:
            images, masks, predicted = self._examples
            self._examples = None
            truth, guess = colorize(masks, self.num_classes), colorize(predicted, self.num_classes)
            log_image_grid(
                self, "val/segmentation", torch.cat([images[:, :3], truth, guess]), nrow=images.shape[0]
            )

    def on_test_epoch_end(self) -> None:
        self._epoch_report("test")

    def _images_due(self) -> bool:
        every, trainer = self.log_images_every_n_epochs, self._trainer
        if not every or trainer is None or trainer.sanity_checking or trainer.global_rank != 0:
            return False
        return (trainer.current_epoch + 1) % every == 0

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """The class mask ``(H0, W0)`` int64 of each image at its original size (the logits of its
        unpadded part upsampled bilinearly), with the dataset ``index``."""
        logits = self(batch["image"]) if batch["image"].shape[0] else batch["image"].new_zeros(0)
        masks = []
        for k, ((height, width), original) in enumerate(
            zip(batch["size"].tolist(), batch["orig_size"].tolist(), strict=True)
        ):
            own = logits[k : k + 1, :, :height, :width]  # (1, C, h, w): the padding cut off
            masks.append(
                F.interpolate(own, size=tuple(original), mode="bilinear", align_corners=False)[0].argmax(0)
            )
        return {"index": batch["index"], "masks": masks}
