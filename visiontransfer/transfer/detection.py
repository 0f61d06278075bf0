"""Transfer to object detection: torchvision's Faster R-CNN, RetinaNet or FCOS on a timm backbone
(from a pretext checkpoint, an export or a timm name) with a feature pyramid, the freeze policies
of :mod:`visiontransfer.transfer.freezing`, COCO mAP, and COCO-format detections.

Papers: Faster R-CNN — Ren, He, Girshick, Sun, "Faster R-CNN: Towards Real-Time Object Detection
with Region Proposal Networks", NeurIPS 2015; RetinaNet — Lin, Goyal, Girshick, He, Dollár,
"Focal Loss for Dense Object Detection", ICCV 2017; FCOS — Tian, Shen, Chen, He, "FCOS: Fully
Convolutional One-Stage Object Detection", ICCV 2019; FPN — Lin, Dollár, Girshick, He, Hariharan,
Belongie, "Feature Pyramid Networks for Object Detection", CVPR 2017.

torchvision's contract, kept here: images go in as float ``[0, 1]`` (the detector's own
``GeneralizedRCNNTransform`` normalises them with the backbone's mean and std, so
:meth:`BackboneSystem.normalize` is not applied as well), boxes are absolute ``xyxy``, and Faster
R-CNN's ``num_classes`` counts the background. The data's labels are ``1..C`` (0: background);
RetinaNet and FCOS have no background class, so their labels are shifted to ``0..C-1`` on the way
in and back on the way out.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Any, Literal, cast

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from visiontransfer.backbones import FeatureBackbone, normalization
from visiontransfer.errors import ConfigError
from visiontransfer.system import BackboneSystem, classes_from_data, run_seeded
from visiontransfer.transfer.freezing import (
    BatchNormMode,
    backbone_stages,
    batchnorm_layers,
    modules_of_stages,
    set_requires_grad,
)
from visiontransfer.transfer.outputs import gather_rows, output_path, write_json

DetectorName = Literal["fasterrcnn", "retinanet", "fcos"]
"""Detectors: ``fasterrcnn`` (two-stage), ``retinanet`` and ``fcos`` (one-stage)."""

DEFAULT_LEVELS = {"fasterrcnn": 4, "retinanet": 3, "fcos": 3}
"""Backbone levels fed to the FPN by default (the last ones): C2–C5 for Faster R-CNN, C3–C5 for
the one-stage detectors (which add P6 and P7), as in the papers."""

DEFAULT_ANCHOR_SCALE = {"fasterrcnn": 8.0, "retinanet": 4.0, "fcos": 1.0}
"""Anchor size per level as a multiple of the level's stride (torchvision's COCO defaults)."""


class TimmFPNBackbone(nn.Module):
    """Multi-scale maps of a timm model with a torchvision FPN on top: the ``backbone`` torchvision's
    detectors take (an ``OrderedDict`` of equally wide maps and an ``out_channels`` attribute).

    Args:
        body: The timm model's multi-scale maps (:class:`~visiontransfer.backbones.FeatureBackbone`).
        out_channels: Width of every pyramid level.
        extra: Extra coarser levels: ``pool`` (max-pooled P6, Faster R-CNN), ``p6p7`` (two strided
            convolutions on P5, RetinaNet / FCOS) or ``none``.
        register_body: Register ``body`` as a submodule. The detector passes False because it
            registers the timm model itself (as ``backbone``): its weights are stored once, under
            the keys ``visiontransfer export`` reads.

    Attributes:
        out_channels: Width of every level.
        strides: Stride of each output level, in output order.
    """

    def __init__(
        self,
        body: FeatureBackbone,
        out_channels: int = 256,
        extra: Literal["pool", "p6p7", "none"] = "pool",
        register_body: bool = True,
    ) -> None:
        super().__init__()
        if any(b <= a for a, b in zip(body.reductions, body.reductions[1:], strict=False)):
            raise ConfigError(
                f"--model.out_indices must name levels of increasing stride for a pyramid; got strides "
                f"{body.reductions}"
            )
        if register_body:
            self.body = body
        else:
            object.__setattr__(self, "body", body)  # a plain reference: not in state_dict / parameters
        extra_block: ExtraFPNBlock | None = {
            "pool": LastLevelMaxPool(),
            "p6p7": LastLevelP6P7(out_channels, out_channels),
            "none": None,
        }[extra]
        self.fpn = FeaturePyramidNetwork(list(body.channels), out_channels, extra_blocks=extra_block)
        self.out_channels = out_channels
        extra_levels = {"pool": 1, "p6p7": 2, "none": 0}[extra]
        last = body.reductions[-1]
        self.strides = [*body.reductions, *(last * 2 ** (k + 1) for k in range(extra_levels))]
        self.level_names = [str(i) for i in range(len(body.channels))]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """``(B, C, H, W)`` → ``{"0": ..., "pool"}`` (or ``"p6", "p7"``), each ``(B, out_channels, h, w)``."""
        maps = self.body(x)
        return self.fpn(OrderedDict(zip(self.level_names, maps, strict=True)))


class ObjectDetector(BackboneSystem):
    """A backbone with an FPN and a torchvision detection head, trained on a (small) labeled set.

    The backbone comes from a pretext checkpoint, an export folder or a timm name; its weights stay
    under ``backbone.`` in the checkpoint (plain timm keys), so ``visiontransfer export`` of a
    detector checkpoint gives the fine-tuned timm backbone.

    Args:
        detector: ``fasterrcnn`` (Ren et al. 2015), ``retinanet`` (Lin et al. 2017) or ``fcos``
            (Tian et al. 2019).
        num_classes: Object classes, the background not counted; default: from the datamodule's
            ``num_classes`` at set-up.
        trainable_stages: Backbone stages trained, counted from the output side (stage 0 is the
            stem, as in :func:`~visiontransfer.transfer.freezing.backbone_stages`); the others are
            frozen. Default: all.
        bn_mode: BatchNorm of the backbone: ``train`` (batch statistics), ``eval`` (running
            statistics, affine weights train) or ``frozen`` (as eval, affine frozen too; for
            pretrained backbones). Frozen stages always keep theirs in eval.
        fpn_channels: Width of the feature pyramid (256 in the papers; smaller is cheaper).
        out_indices: Backbone levels (timm ``feature_info`` indices) fed to the FPN; default: the
            last 4 for Faster R-CNN, the last 3 for RetinaNet / FCOS.
        min_size: Shorter side the detector resizes images to (its ``GeneralizedRCNNTransform``);
            default: the datamodule's ``image_size`` (which already resized the longest side).
        max_size: Longest side cap of that resize; default: ``min_size``.
        anchor_scale: Anchor size per level as a multiple of its stride; default 8 (Faster R-CNN)
            or 4 (RetinaNet, with 3 octave scales). FCOS uses its locations (size = stride) only.
        aspect_ratios: Anchor aspect ratios (height / width); FCOS ignores them.
        detector_kwargs: Extra keyword arguments of the torchvision detector class (e.g.
            ``box_batch_size_per_image``, ``rpn_post_nms_top_n_train``, ``score_thresh``).
        small_input_stem: Remove the stem's early downsampling (off by default: detection images
            are large). A backbone read from a file keeps the stem it was trained with.
        **kwargs: Backbone and optimizer arguments of :class:`~visiontransfer.system.BackboneSystem`
            (``backbone`` may be a pretext ``.ckpt``, an export folder or a timm name).
    """

    def __init__(
        self,
        detector: DetectorName = "fasterrcnn",
        num_classes: int | None = None,
        trainable_stages: int | None = None,
        bn_mode: BatchNormMode = "eval",
        fpn_channels: int = 256,
        out_indices: tuple[int, ...] | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        anchor_scale: float | None = None,
        aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        detector_kwargs: dict[str, Any] | None = None,
        small_input_stem: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(small_input_stem=small_input_stem, **kwargs)
        self._check_args(detector, fpn_channels, anchor_scale, aspect_ratios)
        self.detector_name: DetectorName = detector
        self.label_offset = 0 if detector == "fasterrcnn" else 1  # data labels 1..C → 0..C-1
        self.stages = backbone_stages(self.backbone)
        if trainable_stages is not None and not 0 <= trainable_stages <= len(self.stages):
            raise ConfigError(
                f"--model.trainable_stages={trainable_stages} must be in [0, {len(self.stages)}] "
                f"(this backbone has {len(self.stages)} stages, stem included)"
            )
        self.frozen_stages = 0 if trainable_stages is None else len(self.stages) - trainable_stages
        self.bn_mode: BatchNormMode = bn_mode
        set_requires_grad(self.backbone, [n for s in self.stages[: self.frozen_stages] for n in s], False)
        if bn_mode == "frozen":
            for bn in batchnorm_layers([self.backbone]):
                bn.requires_grad_(False)
            if "source" not in self.backbone_spec and not self.hparams.get("pretrained", False):
                warnings.warn(
                    "--model.bn_mode=frozen on a randomly initialised backbone freezes BatchNorm at "
                    "its initial values (timm zero-initialises the last one of each residual block, "
                    "so those blocks stay off); use bn_mode eval or train",
                    stacklevel=2,
                )
        self.fpn_channels, self.out_indices = fpn_channels, out_indices
        self.min_size, self.max_size = min_size, max_size
        self.anchor_scale = anchor_scale or DEFAULT_ANCHOR_SCALE[detector]
        self.aspect_ratios = tuple(aspect_ratios)
        self.detector_kwargs = dict(detector_kwargs or {})
        in_chans = int(self.backbone_spec["in_chans"])
        self.image_mean, self.image_std = (list(v) for v in normalization(self.backbone, in_chans))
        self.detector: nn.Module | None = None
        self.num_classes: int | None = None
        if num_classes is not None:
            self._build(num_classes)

    @staticmethod
    def _check_args(
        detector: str, fpn_channels: int, anchor_scale: float | None, aspect_ratios: tuple[float, ...]
    ) -> None:
        if detector not in DEFAULT_LEVELS:
            raise ConfigError(f"--model.detector={detector!r}: choose one of {', '.join(DEFAULT_LEVELS)}")
        if fpn_channels < 1:
            raise ConfigError(f"--model.fpn_channels={fpn_channels} must be >= 1")
        if anchor_scale is not None and anchor_scale <= 0:
            raise ConfigError(f"--model.anchor_scale={anchor_scale} must be > 0")
        if detector == "fcos" and anchor_scale not in (None, 1.0):
            raise ConfigError("--model.anchor_scale does not apply to FCOS (its locations have size stride)")
        if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
            raise ConfigError(f"--model.aspect_ratios={aspect_ratios} must be positive numbers")

    # -- building -------------------------------------------------------------------------------
    def _anchors(self, strides: list[int]) -> AnchorGenerator:
        """One anchor size per level, ``anchor_scale × stride`` (RetinaNet: 3 octave scales)."""
        if self.detector_name == "fcos":
            return AnchorGenerator(tuple((float(s),) for s in strides), ((1.0,),) * len(strides))
        octaves = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)) if self.detector_name == "retinanet" else (1.0,)
        sizes = tuple(tuple(self.anchor_scale * s * o for o in octaves) for s in strides)
        return AnchorGenerator(sizes, (self.aspect_ratios,) * len(strides))

    def _build(self, num_classes: int) -> None:
        """Build the pyramid, the anchors and the torchvision detector for ``num_classes`` classes."""
        if num_classes < 1:
            raise ConfigError(f"--model.num_classes={num_classes} must be >= 1 (the background not counted)")
        levels = DEFAULT_LEVELS[self.detector_name]
        info = len(getattr(self.backbone, "feature_info", []))
        out_indices = self.out_indices or tuple(range(max(0, info - levels), info))
        body = FeatureBackbone(self.backbone, out_indices)
        extra: Literal["pool", "p6p7"] = "pool" if self.detector_name == "fasterrcnn" else "p6p7"
        with run_seeded():  # built at set-up: its weights must not depend on what ran before
            pyramid = TimmFPNBackbone(body, self.fpn_channels, extra, register_body=False)
            self.detector = self._detector(pyramid, num_classes)
        self.num_classes = num_classes
        self.hparams["num_classes"] = num_classes
        self.strides = pyramid.strides
        self.metrics = nn.ModuleDict(
            {stage: MeanAveragePrecision(box_format="xyxy", class_metrics=True) for stage in ("val", "test")}
        )

    def _detector(self, pyramid: TimmFPNBackbone, num_classes: int) -> nn.Module:
        """The torchvision detector (its heads, anchors and transform) over ``pyramid``."""
        min_size = self.min_size or 320
        common: dict[str, Any] = {
            "min_size": min_size,
            "max_size": self.max_size or min_size,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            **self.detector_kwargs,
        }
        anchors = self._anchors(pyramid.strides)
        if self.detector_name == "fasterrcnn":
            pool = MultiScaleRoIAlign(pyramid.level_names, output_size=7, sampling_ratio=2)
            detector: nn.Module = FasterRCNN(
                pyramid, num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=pool, **common
            )
        elif self.detector_name == "retinanet":
            detector = RetinaNet(pyramid, num_classes, anchor_generator=anchors, **common)
        else:
            detector = FCOS(pyramid, num_classes, anchor_generator=anchors, **common)
        return detector

    def _set_sizes(self, image_size: int) -> None:
        """Resize to the data's ``image_size`` in the detector unless ``min_size`` was given."""
        if self.min_size is None and self.detector is not None:
            self.min_size = image_size
            self.max_size = self.max_size or image_size
            self.detector.transform.min_size = (image_size,)  # type: ignore[union-attr]
            self.detector.transform.max_size = self.max_size  # type: ignore[union-attr]
            self.hparams["min_size"], self.hparams["max_size"] = self.min_size, self.max_size

    def setup(self, stage: str) -> None:
        num_classes = classes_from_data(self, None if self.detector is None else self.num_classes)
        if num_classes is not None:
            self._build(num_classes)
        datamodule = getattr(self.trainer, "datamodule", None)
        image_size = getattr(datamodule, "image_size", None)
        if image_size is not None:
            self._set_sizes(int(image_size))

    # -- freezing -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> ObjectDetector:
        """Switch to train mode, keeping the BatchNorm of frozen stages (and per ``bn_mode``) in eval."""
        super().train(mode)
        if mode:
            norms = modules_of_stages(self.backbone, self.stages, range(self.frozen_stages))
            if self.bn_mode != "train":
                norms = [self.backbone]
            for bn in batchnorm_layers(norms):
                bn.eval()
        return self

    # -- steps ----------------------------------------------------------------------------------
    def _inputs(self, images: list[Tensor]) -> list[Tensor]:
        """``(3, H, W)`` uint8 images → float ``[0, 1]`` (the detector normalises them itself).

        A single-channel backbone (e.g. pretrained by colorization) gets the CIE L lightness / 100.
        """
        if self.detector is None:
            raise RuntimeError(
                "the detector is built at set-up from the data; pass num_classes to use it before"
            )
        floats = [image.float() / 255.0 for image in images]
        if len(self.image_mean) == 1:
            from visiontransfer.pretext.lab import rgb_to_lab

            floats = [rgb_to_lab(x[None])[0, :1] / 100.0 if x.shape[0] == 3 else x for x in floats]
        return floats

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections of ``(3, H, W)`` uint8 images: per image ``boxes`` ``(N, 4)`` xyxy in that
        image's pixels, ``scores`` ``(N,)`` and ``labels`` ``(N,)`` in ``1..num_classes``."""
        assert self.detector is not None
        was_training = self.training
        self.eval()  # the whole module: the backbone is registered outside the detector
        try:
            outputs = self.detector(self._inputs(images))
        finally:
            self.train(was_training)
        for out in outputs:
            out["labels"] = out["labels"] + self.label_offset
        return outputs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        images = batch["image"]
        if not images:  # every file of the batch was unreadable
            return None
        assert self.detector is not None
        targets = [{"boxes": t["boxes"], "labels": t["labels"] - self.label_offset} for t in batch["target"]]
        losses: dict[str, Tensor] = self.detector(self._inputs(images), targets)
        loss = torch.stack(list(losses.values())).sum()
        size = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=size)
        return loss

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        if not batch["image"]:
            return
        predictions = self(batch["image"])
        self._metric(stage).update(predictions, batch["target"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _metric(self, stage: str) -> MeanAveragePrecision:
        return cast(MeanAveragePrecision, self.metrics[stage])

    def _epoch_report(self, stage: str) -> None:
        metric = self._metric(stage)
        if self.trainer.sanity_checking:
            metric.reset()
            return
        results = metric.compute()
        metric.reset()
        for key in ("map", "map_50", "map_75"):
            self.log(f"{stage}/{key}", results[key].float(), prog_bar=key == "map_50", sync_dist=False)
        if stage == "test":
            names = getattr(getattr(self.trainer, "datamodule", None), "classes", None)
            per_class = results["map_per_class"].reshape(-1).tolist()
            labels = results["classes"].reshape(-1).tolist()
            for label, value in zip(labels, per_class, strict=False):
                name = names[int(label) - 1] if names and 0 < int(label) <= len(names) else str(int(label))
                self.log(f"test/map_{name}", float(value))

    def on_validation_epoch_end(self) -> None:
        self._epoch_report("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_report("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Detections per image in the original image's pixels (``boxes``) and in the network
        input's (``input_boxes``), with ``scores``, ``labels`` and the dataset ``index``."""
        outputs = self(batch["image"]) if batch["image"] else []
        for out, image, orig in zip(outputs, batch["image"], batch["orig_size"].tolist(), strict=True):
            scale_y, scale_x = orig[0] / image.shape[-2], orig[1] / image.shape[-1]
            out["input_boxes"] = out["boxes"]
            out["boxes"] = out["boxes"] * out["boxes"].new_tensor([scale_x, scale_y, scale_x, scale_y])
        return {"index": batch["index"], "detections": outputs}


class DetectionWriter(L.Callback):
    """Write ``predict`` results as COCO-format detections, and optionally images with their boxes
    (under DDP each process draws its own images; rank 0 writes the detections of all).

    ``path`` gets the COCO results list (``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``
    in original pixels, ``score``), loadable with ``pycocotools``' ``COCO.loadRes``; beside it,
    ``<stem>_images.json`` maps the ``image_id`` to files and lists the categories. Image ids are
    the COCO file's own for COCO data, else the index in the predicted set.

    Args:
        path: Output JSON file (relative paths go into the run's log folder).
        draw_dir: Folder for PNGs of the network input with the boxes drawn (relative: in the
            log folder); None: draw nothing.
        draw_threshold: Smallest score drawn.
        max_drawn: Draw at most this many images.
    """

    def __init__(
        self,
        path: str = "detections.json",
        draw_dir: str | None = None,
        draw_threshold: float = 0.5,
        max_drawn: int = 100,
    ) -> None:
        self.path = path
        self.draw_dir = draw_dir
        self.draw_threshold = draw_threshold
        self.max_drawn = max_drawn
        self.rows: list[tuple[int, Tensor, Tensor, Tensor]] = []
        self.drawn = 0
        self._draw_folder: str | None = None

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows, self.drawn = [], 0
        # Resolved here, on every process at once (the log folder is a collective under DDP).
        self._draw_folder = None if self.draw_dir is None else output_path(trainer, self.draw_dir)

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        for k, (index, det) in enumerate(zip(outputs["index"].tolist(), outputs["detections"], strict=True)):
            self.rows.append((index, det["boxes"].cpu(), det["scores"].cpu(), det["labels"].cpu()))
            if self._draw_folder is not None and self.drawn < self.max_drawn:
                self._draw(trainer, index, batch["image"][k].cpu(), det)

    def _draw(self, trainer: L.Trainer, index: int, image: Tensor, det: dict[str, Tensor]) -> None:
        from PIL import Image
        from torchvision.utils import draw_bounding_boxes

        assert self._draw_folder is not None
        names = getattr(trainer.datamodule, "classes", None)  # type: ignore[attr-defined]
        keep = det["scores"] >= self.draw_threshold
        labels = [
            f"{names[int(c) - 1] if names else int(c)} {float(s):.2f}"
            for c, s in zip(det["labels"][keep], det["scores"][keep], strict=True)
        ]
        drawn = draw_bounding_boxes(
            image, det["input_boxes"][keep].cpu(), labels=labels, colors="red", width=2
        )
        folder = self._draw_folder
        os.makedirs(folder, exist_ok=True)
        source = _source_path(trainer, index)
        stem = os.path.splitext(os.path.basename(source))[0] if source else f"image_{index:06d}"
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(os.path.join(folder, f"{stem}.png"))
        self.drawn += 1

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = output_path(trainer, self.path)
        rows = gather_rows(trainer, self.rows)
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        category_ids = list(getattr(datamodule, "category_ids", None) or [])
        names = list(getattr(datamodule, "classes", None) or [])
        results, images = [], {}
        for index, boxes, scores, labels in rows:
            record = datamodule.record("predict", index) if hasattr(datamodule, "record") else None
            image_id = record.image_id if record is not None and record.image_id is not None else index
            images[image_id] = {"id": image_id, "file_name": record.path if record else f"embedded:{index}"}
            for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
                x0, y0, x1, y1 = box
                category = category_ids[label - 1] if 0 < label <= len(category_ids) else label
                bbox = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
                results.append(
                    {"image_id": image_id, "category_id": category, "bbox": bbox, "score": round(score, 5)}
                )
        categories = [{"id": c, "name": n} for c, n in zip(category_ids, names, strict=False)]
        write_json(out, results)
        write_json(
            os.path.splitext(out)[0] + "_images.json",
            {"images": list(images.values()), "categories": categories},
        )
        print(f"{len(results)} detections on {len(images)} images written to {out}")


def _source_path(trainer: L.Trainer, index: int) -> str | None:
    record_of = getattr(trainer.datamodule, "record", None)  # type: ignore[attr-defined]
    record = record_of("predict", index) if record_of else None
    return record.path if record is not None else None
