"""Transfer to image classification: a backbone from a pretext checkpoint, an export or a timm
name, a fresh head, and the freeze policies of :class:`~visiontransfer.transfer.base.TransferModule`."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from visiontransfer.errors import ConfigError, require
from visiontransfer.heads import MLPHead
from visiontransfer.imagelog import save_confusion_matrix
from visiontransfer.system import normalize_images
from visiontransfer.transfer.base import TransferModule


class ClassificationNetwork(nn.Module):
    """The classifier as a plain module for deployment: ``(B, 3, H, W)`` uint8 images → logits
    ``(B, num_classes)`` (or their softmax), the backbone's normalisation included (RGB for a
    single-channel backbone: its CIE L lightness). No Lightning; exportable to ONNX and by
    ``torch.export`` with a dynamic batch (and image size, where the backbone takes any).

    Args:
        backbone: The pooled timm model.
        head: The classification head, ``(B, num_features)`` → ``(B, num_classes)``.
        mean: ``(1, C, 1, 1)`` pixel mean of the backbone, in 0..255.
        std: ``(1, C, 1, 1)`` pixel std, in 0..255.
        softmax: Return class probabilities instead of logits.

    Attributes:
        output_names: The output's name in exported files (``logits`` or ``probabilities``).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self, backbone: nn.Module, head: nn.Module, mean: Tensor, std: Tensor, softmax: bool = False
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        self.softmax = softmax
        self.output_names = ("probabilities",) if softmax else ("logits",)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` uint8 → ``(B, num_classes)`` float logits (probabilities with ``softmax``)."""
        logits = self.head(self.backbone(normalize_images(images, self.mean, self.std)))
        return logits.softmax(dim=1) if self.softmax else logits


class ImageClassifier(TransferModule):
    """A backbone with a new classification head, trained on a (small) labeled set.

    Freeze policies (see :class:`~visiontransfer.transfer.base.TransferModule`):
    ``strategy=linear_probe`` freezes the whole backbone and keeps its BatchNorm in eval;
    ``finetune`` trains everything, optionally with the first ``frozen_stages`` stages frozen,
    gradual unfreezing (``unfreeze_every_n_epochs``), layer-wise learning-rate decay
    (``layer_decay``) and a BatchNorm policy (``bn_mode``).

    Args:
        num_classes: Classes (at least 2); the CLI links it from ``--data.num_classes``.
        head: ``linear`` or ``mlp`` (one hidden layer).
        head_hidden_dim: Hidden width of the MLP head.
        dropout: Dropout before the last layer of the head.
        label_smoothing: Label smoothing of the cross-entropy.
        **kwargs: Class names, freezing, backbone and optimizer arguments of
            :class:`~visiontransfer.transfer.base.TransferModule` (``backbone`` may be a pretext
            ``.ckpt``, an export folder or a timm name).
    """

    def __init__(
        self,
        num_classes: int,
        head: Literal["linear", "mlp"] = "linear",
        head_hidden_dim: int = 512,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        require(num_classes >= 2, "model", "num_classes", num_classes, "must be >= 2")
        self.label_smoothing = label_smoothing
        self.head = MLPHead(self.num_features, num_classes, head_hidden_dim if head == "mlp" else 0, dropout)
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{name}": metric
                for stage in ("val", "test")
                for name, metric in (
                    ("top1", MulticlassAccuracy(num_classes, top_k=1, average="micro")),
                    ("top5", MulticlassAccuracy(num_classes, top_k=top5, average="micro")),
                    ("per_class", MulticlassAccuracy(num_classes, average=None)),
                    ("confusion", MulticlassConfusionMatrix(num_classes)),
                )
            }
        )
        self._labels_checked: set[str] = set()
        self.last_confusion: dict[str, Tensor] = {}
        """The confusion matrix of the last validation or test epoch (rows: true), by stage."""

    # -- steps ----------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)`` of ``(B, C, H, W)`` uint8 images."""
        return self.head(self.features(images))

    def inference_model(self, softmax: bool = False) -> ClassificationNetwork:
        """A copy of the classifier as a plain eval-mode module (:class:`ClassificationNetwork`):
        ``(B, 3, H, W)`` uint8 → logits ``(B, num_classes)``, or probabilities with ``softmax``."""
        backbone, head = copy.deepcopy((self.backbone, self.head))
        network = ClassificationNetwork(backbone, head, self.pixel_mean, self.pixel_std, softmax)
        return network.to(self.pixel_mean.device).eval().requires_grad_(False)

    def _check_labels(self, labels: Tensor, stage: str) -> None:
        """Once per stage of a run: the data's labels must fit the head (a Python user may pass
        the wrong count; the CLI links it from the data)."""
        if stage in self._labels_checked or labels.numel() == 0:
            return
        self._labels_checked.add(stage)
        top = int(labels.max())
        if top >= self.num_classes or int(labels.min()) < 0:
            raise ConfigError(
                f"--model.num_classes={self.num_classes} but the data has label {top}: pass the "
                "datamodule's num_classes (the CLI links it from --data.num_classes)"
            )

    def on_fit_start(self) -> None:
        self._labels_checked.clear()

    def on_test_start(self) -> None:
        self._labels_checked.clear()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        images, labels = batch["image"], batch["label"]
        if images.shape[0] == 0:
            return None
        self._check_labels(labels, "train")
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(1) == labels).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        self.log("train/top1", accuracy, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        images, labels = batch["image"], batch["label"]
        if images.shape[0] == 0:
            return
        self._check_labels(labels, stage)
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=images.shape[0], sync_dist=True)
        for name in ("top1", "top5"):
            metric = self._metric(stage, name)
            metric(logits, labels)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "top1", batch_size=images.shape[0])
        self._metric(stage, "per_class").update(logits, labels)
        self._metric(stage, "confusion").update(logits, labels)

    def _metric(self, stage: str, name: str) -> Metric:
        metric = self.metrics[f"{stage}_{name}"]
        assert isinstance(metric, Metric)
        return metric

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _epoch_report(self, stage: str) -> None:
        per_class = self._metric(stage, "per_class").compute()
        confusion = self._metric(stage, "confusion").compute()
        names = self.class_names
        if stage == "test":
            for name, value in zip(names, per_class.tolist(), strict=False):
                self.log(f"test/acc_{name}", float(value))
        self.last_confusion[stage] = confusion.cpu()
        if self.trainer.is_global_zero:
            save_confusion_matrix(self, f"{stage}_confusion", confusion.cpu(), names)
        self._metric(stage, "per_class").reset()
        self._metric(stage, "confusion").reset()

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._epoch_report("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_report("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Predicted class and its probability for each image, with its dataset index."""
        probs = self(batch["image"]).softmax(dim=1)
        confidence, predicted = probs.max(dim=1)
        return {"index": batch["index"], "pred": predicted, "prob": confidence}
