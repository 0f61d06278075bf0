"""Transfer to image classification: a backbone from a pretext checkpoint, an export or a timm
name, a fresh head, and the freeze policies of :mod:`visiontransfer.transfer.freezing`."""

from __future__ import annotations

import csv
import os
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.errors import ConfigError
from visiontransfer.heads import MLPHead
from visiontransfer.imagelog import log_folder
from visiontransfer.system import BackboneSystem, classes_from_data, run_seeded
from visiontransfer.transfer.freezing import (
    BatchNormMode,
    backbone_stages,
    batchnorm_layers,
    frozen_stage_count,
    layer_decay_scales,
    modules_of_stages,
    set_requires_grad,
    stage_of_parameter,
)
from visiontransfer.transfer.outputs import gather_rows, output_path


class ImageClassifier(BackboneSystem):
    """A backbone with a new classification head, trained on a (small) labeled set.

    Freeze policies (see :mod:`~visiontransfer.transfer.freezing`): ``strategy=linear_probe``
    freezes the whole backbone and keeps its BatchNorm in eval; ``finetune`` trains everything,
    optionally with the first ``frozen_stages`` stages frozen, gradual unfreezing
    (``unfreeze_every_n_epochs``), layer-wise learning-rate decay (``layer_decay``) and a
    BatchNorm policy (``bn_mode``).

    Args:
        num_classes: Classes; default: read from the datamodule (``num_classes``) at set-up.
        head: ``linear`` or ``mlp`` (one hidden layer).
        head_hidden_dim: Hidden width of the MLP head.
        dropout: Dropout before the last layer of the head.
        strategy: ``linear_probe`` (frozen backbone) or ``finetune``.
        frozen_stages: Stages frozen from the input side (stage 0 is the stem), while fine-tuning.
        unfreeze_every_n_epochs: Gradual unfreezing: start with every stage frozen and release one
            stage from the top every this many epochs (0: off).
        layer_decay: Layer-wise LR decay: stage ``i`` of ``S`` trains at ``lr * layer_decay ** (S - i)``
            (1: off).
        bn_mode: BatchNorm of the trainable backbone: ``train``, ``eval`` or ``frozen``.
        label_smoothing: Label smoothing of the cross-entropy.
        **kwargs: Backbone and optimizer arguments of :class:`~visiontransfer.system.BackboneSystem`
            (``backbone`` may be a pretext ``.ckpt``, an export folder or a timm name).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        head: Literal["linear", "mlp"] = "linear",
        head_hidden_dim: int = 512,
        dropout: float = 0.0,
        strategy: Literal["finetune", "linear_probe"] = "finetune",
        frozen_stages: int = 0,
        unfreeze_every_n_epochs: int = 0,
        layer_decay: float = 1.0,
        bn_mode: BatchNormMode = "train",
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.stages = backbone_stages(self.backbone)
        if not 0 <= frozen_stages <= len(self.stages):
            raise ConfigError(
                f"--model.frozen_stages={frozen_stages} must be in [0, {len(self.stages)}] "
                f"(this backbone has {len(self.stages)} stages, stem included)"
            )
        if unfreeze_every_n_epochs < 0:
            raise ConfigError(f"--model.unfreeze_every_n_epochs={unfreeze_every_n_epochs} must be >= 0")
        self.layer_scales = layer_decay_scales(len(self.stages), layer_decay)
        self.strategy = strategy
        self.frozen_stages = len(self.stages) if strategy == "linear_probe" else frozen_stages
        self.unfreeze_every_n_epochs = 0 if strategy == "linear_probe" else unfreeze_every_n_epochs
        self.bn_mode: BatchNormMode = "eval" if strategy == "linear_probe" else bn_mode
        self.head_kind, self.head_hidden_dim, self.dropout = head, head_hidden_dim, dropout
        self.label_smoothing = label_smoothing
        self.head: nn.Module | None = None
        if num_classes is not None:
            self._build_head(num_classes)
        if self.unfreeze_every_n_epochs == 0:  # static freezing: cheaper, nothing changes later
            set_requires_grad(self.backbone, self._frozen_names(self.frozen_stages), False)
        if self.bn_mode == "frozen":
            for bn in batchnorm_layers([self.backbone]):
                bn.requires_grad_(False)

    # -- head and metrics -----------------------------------------------------------------------
    def _build_head(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ConfigError(f"--model.num_classes={num_classes} must be >= 2")
        hidden = self.head_hidden_dim if self.head_kind == "mlp" else 0
        with run_seeded():  # built at set-up: its weights must not depend on what ran before
            self.head = MLPHead(self.num_features, num_classes, hidden, self.dropout)
        self.num_classes = num_classes
        self.hparams["num_classes"] = num_classes
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

    def setup(self, stage: str) -> None:
        num_classes = classes_from_data(self, None if self.head is None else self.num_classes)
        if num_classes is not None:
            self._build_head(num_classes)

    # -- freezing -------------------------------------------------------------------------------
    def _frozen_names(self, count: int) -> list[str]:
        return [name for stage in self.stages[:count] for name in stage]

    def frozen_now(self) -> int:
        """Stages frozen at the current epoch."""
        epoch = self.current_epoch if self._trainer is not None else 0
        return frozen_stage_count(len(self.stages), self.frozen_stages, self.unfreeze_every_n_epochs, epoch)

    def train(self, mode: bool = True) -> ImageClassifier:
        """Switch to train mode, keeping the BatchNorm of frozen stages (and per ``bn_mode``) in eval."""
        super().train(mode)
        if mode:
            frozen = range(self.frozen_now())
            norms = modules_of_stages(self.backbone, self.stages, frozen)
            if self.bn_mode != "train":
                norms = [self.backbone]
            for bn in batchnorm_layers(norms):
                bn.eval()
        return self

    def on_train_epoch_start(self) -> None:
        self.train()  # the frozen stages may have changed with the epoch
        self.log("train/frozen_stages", float(self.frozen_now()), on_step=False, on_epoch=True)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.unfreeze_every_n_epochs == 0:
            return
        frozen = set(self._frozen_names(self.frozen_now()))
        for name, param in self.backbone.named_parameters():
            if name in frozen:
                param.grad = None  # the optimizer skips it: no update, no decay, no moment change

    def _param_groups(self) -> list[dict[str, Any]]:
        """One group per (stage, decay / no decay), LRs scaled by layer decay; the head at ``lr``."""
        stage_of = stage_of_parameter(self.stages)
        groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
        head_stage = len(self.stages)
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            inner = name.removeprefix("backbone.")
            stage = stage_of.get(inner, head_stage) if name.startswith("backbone.") else head_stage
            no_decay = param.ndim <= 1 or name.endswith(".bias")
            groups.setdefault((stage, no_decay), []).append(param)
        scales = [*self.layer_scales, 1.0]
        return [
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else self.weight_decay,
                "lr": self.lr * scales[stage],
                "stage": stage,
            }
            for (stage, no_decay), params in sorted(groups.items())
        ]

    # -- steps ----------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)`` of ``(B, C, H, W)`` uint8 images."""
        if self.head is None:
            raise RuntimeError("the head is built at set-up from the data; pass num_classes to use it before")
        return self.head(self.features(images))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        images, labels = batch["image"], batch["label"]
        if images.shape[0] == 0:
            return None
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
        names = getattr(getattr(self.trainer, "datamodule", None), "classes", None) or [
            str(i) for i in range(self.num_classes)
        ]
        if stage == "test":
            for name, value in zip(names, per_class.tolist(), strict=False):
                self.log(f"test/acc_{name}", float(value))
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


def save_confusion_matrix(
    module: L.LightningModule, tag: str, matrix: Tensor, names: list[str]
) -> str | None:
    """Render a confusion matrix (rows: true, columns: predicted) to PNG in the log folder."""
    if module.trainer.logger is None:  # no logger, no log folder: don't write into the cwd
        return None
    log_dir = log_folder(module.trainer)  # rank zero only: not the collective trainer.log_dir
    if not log_dir:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{tag}, epoch {module.current_epoch}")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    folder = os.path.join(log_dir, "images")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{tag}_epoch{module.current_epoch:03d}.png")
    atomic_write(path, lambda temp: fig.savefig(temp, dpi=100, format="png"))
    plt.close(fig)
    return path


class PredictionWriter(L.Callback):
    """Write ``predict`` results as CSV: path, predicted class, probability (one row per image,
    gathered from every process under DDP).

    Args:
        path: Output CSV file (relative paths go into the run's log folder).
    """

    def __init__(self, path: str = "predictions.csv") -> None:
        self.path = path
        self.rows: list[tuple[int, int, float]] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        for i, p, c in zip(
            outputs["index"].tolist(), outputs["pred"].tolist(), outputs["prob"].tolist(), strict=True
        ):
            self.rows.append((i, p, c))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = output_path(trainer, self.path)
        rows = gather_rows(trainer, self.rows)
        if not trainer.is_global_zero:
            return
        datamodule = getattr(trainer, "datamodule", None)
        dataset = getattr(datamodule, "datasets", {}).get("predict")
        paths = getattr(dataset, "paths", None)
        scenes = getattr(dataset, "scenes", None)
        names = getattr(datamodule, "classes", None)
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)

        def write(temp: str) -> None:
            with open(temp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "predicted_class", "probability"])
                for index, pred, prob in rows:
                    scene = int(scenes[index]) if scenes is not None else index
                    where = paths[index] if paths is not None else f"embedded:{scene}"
                    writer.writerow([where, names[pred] if names else pred, f"{prob:.6f}"])

        atomic_write(out, write)
        print(f"predictions written to {out}")
