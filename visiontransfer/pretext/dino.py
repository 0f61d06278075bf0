"""DINO: self-distillation with no labels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from visiontransfer.errors import ConfigError, flag, require
from visiontransfer.heads import DINOHead
from visiontransfer.losses import dino_loss
from visiontransfer.pretext.augment import SampleRandom, multi_crop
from visiontransfer.pretext.base import PretextModule
from visiontransfer.pretext.teacher import EMATeacher
from visiontransfer.pretext.vit import check_vit_size, vit_geometry


def linear_warmup(step: float, warmup_steps: float, start: float, end: float) -> float:
    """``start`` at step 0, rising linearly to ``end`` at ``warmup_steps`` and ``end`` after."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * max(0.0, step) / warmup_steps


def default_local_size(global_size: int) -> int:
    """DINO's 96-px local crops of 224-px images, scaled to ``global_size`` and rounded to a
    multiple of 8 (at least 8): 16 px for 32-px images."""
    return max(8, round(global_size * 96 / 224 / 8) * 8)


class DINO(PretextModule):
    """Self-distillation: a student matches a momentum teacher's output distribution across views.

    Paper: Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin, "Emerging Properties in
    Self-Supervised Vision Transformers", ICCV 2021. Each image gives two global crops and
    ``local_crops`` small ones (multi-crop, per-image randomness on the device, BYOL's colour
    augmentations); the student (backbone + :class:`~visiontransfer.heads.DINOHead`) sees every
    crop, the teacher (an :class:`~visiontransfer.pretext.teacher.EMATeacher` of the student) the
    global ones; the student's softmax must match the teacher's centred (running mean ``center``)
    and sharpened (low temperature, warmed up) one on every other view
    (:func:`~visiontransfer.losses.dino_loss`). Works for any timm backbone: ResNets, and ViTs
    (with local crops they need ``dynamic_img_size: true`` in ``backbone_kwargs``).

    Views are drawn per image from its own seed (:class:`~visiontransfer.pretext.augment.SampleRandom`:
    the run's seed, the epoch, the dataset index), so they do not depend on the number of processes,
    and a resumed run sees the same views. Under DDP the center is the mean over the global batch.
    Not kept from the paper: the weight-decay schedule (0.04 → 0.4; the decay here is constant),
    gradient clipping (``--trainer.gradient_clip_val 3.0`` gives it) and the learning-rate scaling
    with the batch size. ``features()`` are the student backbone's pooled features, which export
    takes too.

    Args:
        out_dim: Output dimension K of the head (paper: 65536).
        hidden_dim: Hidden width of the head's MLP (paper: 2048).
        bottleneck_dim: Bottleneck width before the normalised last layer (paper: 256).
        head_layers: Linear layers of the head's MLP (paper: 3).
        local_crops: Local crops per image (paper: 10 with ViT-S, 6 with ResNet-50; 0: global only).
        local_crop_size: Side of the local crops; default 96/224 of the image side, a multiple of 8.
        global_crop_scale: Area share range of the global crops (paper: 0.4–1; wider, e.g. 0.14–1,
            without local crops).
        local_crop_scale: Area share range of the local crops (paper: 0.05–0.4).
        blur: Gaussian blur in the views (paper: yes; off for tiny images).
        student_temperature: Softmax temperature of the student (paper: 0.1).
        teacher_temperature: Teacher temperature after the warm-up (paper: 0.04, 0.07 for long runs).
        warmup_teacher_temperature: Teacher temperature at the start of the warm-up (paper: 0.04).
        teacher_temperature_warmup_epochs: Epochs of the linear warm-up (paper: 30 of 300; 0: off).
        center_momentum: Momentum of the center's running mean (paper: 0.9).
        base_momentum: Teacher EMA momentum at the start, rising to ``final_momentum`` on a cosine
            (paper: 0.996; lower it for short runs).
        final_momentum: Teacher EMA momentum at the end (paper: 1.0).
        freeze_last_layer_epochs: Epochs during which the head's last layer does not train
            (paper: 1; helps against early collapse).
        **kwargs: Backbone and optimizer arguments of :class:`PretextModule`.
    """

    center: Tensor

    def __init__(
        self,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        local_crops: int = 6,
        local_crop_size: int | None = None,
        global_crop_scale: tuple[float, float] = (0.4, 1.0),
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
        blur: bool = True,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: float = 0.04,
        teacher_temperature_warmup_epochs: float = 0.0,
        center_momentum: float = 0.9,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        freeze_last_layer_epochs: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (("student_temperature", student_temperature),
                            ("teacher_temperature", teacher_temperature),
                            ("warmup_teacher_temperature", warmup_teacher_temperature)):  # fmt: skip
            require(value > 0, "model", name, value, "must be > 0")
        require(local_crops >= 0, "model", "local_crops", local_crops, "must be >= 0")
        require(0 <= center_momentum < 1, "model", "center_momentum", center_momentum, "must be in [0, 1)")
        require(0 <= base_momentum <= final_momentum <= 1, "model", "base_momentum", base_momentum,
                f"must be in [0, --model.final_momentum={final_momentum}], final_momentum <= 1")  # fmt: skip
        for name, scale in (("global_crop_scale", global_crop_scale), ("local_crop_scale", local_crop_scale)):
            require(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, "model", name, list(scale),
                    "must be [min, max] with 0 < min <= max <= 1")  # fmt: skip
        require(local_crop_size is None or local_crop_size >= 1, "model", "local_crop_size", local_crop_size,
                "must be >= 1")  # fmt: skip
        self._check_vit(local_crops, local_crop_size)
        self.head = DINOHead(self.num_features, out_dim, hidden_dim, bottleneck_dim, head_layers)
        self.teacher = EMATeacher(nn.Sequential(self.backbone, self.head), base_momentum, final_momentum)
        self.register_buffer("center", torch.zeros(out_dim))
        self.local_crops = local_crops
        self.local_crop_size = local_crop_size
        self.global_crop_scale = (float(global_crop_scale[0]), float(global_crop_scale[1]))
        self.local_crop_scale = (float(local_crop_scale[0]), float(local_crop_scale[1]))
        self.blur = blur
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.teacher_temperature_warmup_epochs = teacher_temperature_warmup_epochs
        self.center_momentum = center_momentum
        self.freeze_last_layer_epochs = freeze_last_layer_epochs

    def _check_vit(self, local_crops: int, local_crop_size: int | None) -> None:
        """A ViT must take the global crops' size, and with local crops, other sizes too."""
        geometry = vit_geometry(self.backbone)
        if geometry is None:
            return
        check_vit_size(geometry, self.input_size, flag("data", "image_size"))
        if local_crops and not geometry.dynamic:
            raise ConfigError(
                f"--model.local_crops={local_crops} needs a ViT that takes other image sizes: add "
                "dynamic_img_size: true to --model.backbone_kwargs (or set --model.local_crops 0)"
            )
        if local_crops and self.input_size is not None:
            size = local_crop_size or default_local_size(self.input_size)
            check_vit_size(geometry, size, flag("model", "local_crop_size"))

    def student(self) -> nn.Module:
        """The network the teacher follows: backbone then head (the same modules, not a copy)."""
        return nn.Sequential(self.backbone, self.head)

    def _steps(self) -> tuple[int, float]:
        """Optimizer steps of the fit, and per epoch (1 before a trainer is attached)."""
        if self._trainer is None:
            return 1, 1.0
        total, epochs = self.schedule_steps()
        return total, total / epochs

    def current_teacher_temperature(self) -> float:
        """The teacher temperature at the current optimizer step (linear warm-up, then constant)."""
        step = self.global_step if self._trainer is not None else 0
        per_epoch = self._steps()[1]
        return linear_warmup(step, self.teacher_temperature_warmup_epochs * per_epoch,
                             self.warmup_teacher_temperature, self.teacher_temperature)  # fmt: skip

    def views(self, batch: dict[str, Any], train: bool) -> tuple[Tensor, Tensor | None]:
        """Global ``(2B, 3, S, S)`` and local ``(N·B, 3, s, s)`` views (uint8-range floats) of a batch,
        drawn per image from its seed (fixed across epochs outside training)."""
        images = batch["image"]
        epoch = self.current_epoch if self._trainer is not None else 0
        generator = SampleRandom.for_batch(batch["index"], epoch, train)
        size = images.shape[-1]
        local_size = self.local_crop_size or default_local_size(size)
        global_views, local_views = multi_crop(
            images.float() / 255.0, size, local_size, self.local_crops, self.global_crop_scale,
            self.local_crop_scale, self.blur, generator,
        )  # fmt: skip
        return global_views * 255.0, None if local_views is None else local_views * 255.0

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        images = batch["image"]
        if images.shape[0] == 0:
            return None
        b = images.shape[0]
        global_views, local_views = self.views(batch, train=stage == "train")
        outputs = [self.head(self.backbone(self.normalize(global_views)))]  # (2B, K)
        if local_views is not None:
            outputs.append(self.head(self.backbone(self.normalize(local_views))))  # (N·B, K)
        student = torch.cat(outputs).view(-1, b, self.center.shape[0])  # (2 + N, B, K)
        teacher = self.teacher(self.normalize(global_views)).view(2, b, -1)  # (2, B, K)
        temperature = self.current_teacher_temperature()
        loss = dino_loss(student, teacher, self.center, self.student_temperature, temperature)
        if stage == "train":
            self._update_center(teacher)
            self.log("train/teacher_temperature", temperature, batch_size=b)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=b, sync_dist=stage != "train")
        return loss

    @torch.no_grad()
    def _update_center(self, teacher: Tensor) -> None:
        """``center ← m · center + (1 − m) · mean of the teacher outputs`` over the global batch."""
        batch_center = teacher.float().mean(dim=(0, 1))
        if self._trainer is not None and self.trainer.world_size > 1:
            batch_center = self.trainer.strategy.reduce(batch_center, reduce_op="mean")
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)

    def on_after_backward(self) -> None:
        """Keep the head's last layer fixed for the first ``freeze_last_layer_epochs``."""
        if self.global_step < self.freeze_last_layer_epochs * self._steps()[1]:
            for param in self.head.last_layer.parameters():
                param.grad = None

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the teacher's move towards the updated student (here rather
        than in ``on_train_batch_end``, which runs after the callbacks' hooks: a checkpoint written
        there must already hold this step's teacher)."""
        super().optimizer_step(*args, **kwargs)
        self.log("train/teacher_momentum", self.teacher.update(self.student(), self._steps()[0]))
