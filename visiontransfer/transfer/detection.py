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

Deployment (:meth:`ObjectDetector.inference_model`, :class:`DetectionNetwork`): one ``(1, 3, H, W)``
uint8 image → ``boxes``, ``scores``, ``labels``, which torchvision's detectors export to ONNX
through the TorchScript tracer (opset 11 or later; any image size, a batch of one image: their
postprocessing is a Python loop over images). Their postprocessing (batched NMS over a
data-dependent number of boxes) is beyond ``torch.export``.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from typing import Any, ClassVar, Literal, cast

import torch
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.poolers import LevelMapper, _convert_to_roi_format, _filter_input, _setup_scales

from visiontransfer.backbones import FeatureBackbone, normalization
from visiontransfer.color import match_channels
from visiontransfer.errors import ConfigError, require
from visiontransfer.transfer.base import TransferModule
from visiontransfer.transfer.freezing import BatchNormMode

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


# -- RoIAlign on CPU -----------------------------------------------------------------------------
def _axis_taps(start: Tensor, end: Tensor, pooled: int, ratio: int, length: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel indices and weights along one axis of torchvision's RoIAlign (``aligned=False``, a fixed
    ``sampling_ratio``), as its CPU kernel computes them: ``(R, pooled, 2 * ratio)`` each, the low and
    high neighbour of every sample point of every bin (weight 0 for points outside ``[-1, length]``).

    ``start``, ``end`` and ``length`` are per RoI (in the level's pixels, ``length`` its map size).
    """
    size = (end - start).clamp(min=1.0)
    bin_size = (size / pooled)[:, None, None]
    bins = torch.arange(pooled, dtype=start.dtype, device=start.device)[None, :, None]
    samples = (torch.arange(ratio, dtype=start.dtype, device=start.device) + 0.5)[None, None, :]
    pos = start[:, None, None] + bins * bin_size + samples * bin_size / ratio  # (R, pooled, ratio)
    length = length[:, None, None]
    inside = ((pos >= -1.0) & (pos <= length)).to(pos.dtype)
    pos = pos.clamp(min=0.0)
    low = pos.long()
    last = length.long() - 1
    at_end = low >= last
    low = torch.where(at_end, last, low)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low.to(pos.dtype))
    high = torch.where(at_end, low, low + 1)
    index = torch.stack([low, high], -1).flatten(-2)
    weight = torch.stack([(1.0 - frac) * inside, frac * inside], -1).flatten(-2)
    return index, weight


class _SparseRoIAlign(torch.autograd.Function):
    """``pooled = A @ features`` with ``A`` the CSR matrix of RoIAlign's bilinear weights (the same
    number of terms in every row); the gradient is ``A^T @ grad``, another CSR product. Both run on
    every core, unlike torchvision's CPU RoIAlign (a serial loop over RoIs, whose backward recomputes
    the weights for every channel)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, features: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]
    ) -> Tensor:
        per_row = cols.numel() // shape[0]
        crow = torch.arange(0, cols.numel() + 1, per_row, dtype=torch.int64, device=cols.device)
        ctx.save_for_backward(cols, values)
        ctx.shape, ctx.per_row = shape, per_row
        return _csr(crow, cols, values, shape) @ features

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        cols, values = ctx.saved_tensors
        order = torch.argsort(cols, stable=True)  # the transpose: entries sorted by feature pixel
        crow = torch.zeros(ctx.shape[1] + 1, dtype=torch.int64, device=cols.device)
        crow[1:] = torch.bincount(cols, minlength=ctx.shape[1]).cumsum(0)
        transposed = _csr(crow, order // ctx.per_row, values[order], (ctx.shape[1], ctx.shape[0]))
        return transposed @ grad.contiguous(), None, None, None


def _csr(crow: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state", once a process
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def sparse_roi_align(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    scales: list[float],
    output_size: tuple[int, int],
    sampling_ratio: int,
) -> Tensor:
    """torchvision's multi-scale RoIAlign (``aligned=False``, ``sampling_ratio > 0``) as one sparse
    matrix product over all pyramid levels.

    Args:
        features: ``(B, C, H_l, W_l)`` maps of the levels.
        rois: ``(R, 5)``: image index, then ``x1, y1, x2, y2`` in input pixels.
        levels: ``(R,)`` level of each RoI (index into ``features``).
        scales: Spatial scale of each level (1 / stride).
        output_size: ``(height, width)`` of the pooled maps.
        sampling_ratio: Sample points per bin along each axis.

    Returns:
        ``(R, C, *output_size)``, in the dtype of ``features`` (computed in float32 at lower precisions).
    """
    dtype = features[0].dtype
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    batch, channels = features[0].shape[:2]
    device = rois.device
    heights = torch.tensor([f.shape[-2] for f in features], device=device)
    widths = torch.tensor([f.shape[-1] for f in features], device=device)
    sizes = [batch * f.shape[-2] * f.shape[-1] for f in features]
    offsets = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))], device=device)
    scale = torch.tensor(scales, dtype=compute, device=device)[levels]
    boxes = rois[:, 1:].to(compute) * scale[:, None]
    height, width = heights[levels], widths[levels]
    ys, weight_y = _axis_taps(boxes[:, 1], boxes[:, 3], output_size[0], sampling_ratio, height.to(compute))
    xs, weight_x = _axis_taps(boxes[:, 0], boxes[:, 2], output_size[1], sampling_ratio, width.to(compute))
    base = offsets[levels] + rois[:, 0].long() * height * width  # first pixel of each RoI's image map
    # (R, out_h, out_w, taps_y, taps_x): the feature pixel and weight of every term of every bin
    pixel = (base[:, None, None, None, None] + ys[:, :, None, :, None] * width[:, None, None, None, None]
             + xs[:, None, :, None, :])  # fmt: skip
    weight = weight_y[:, :, None, :, None] * weight_x[:, None, :, None, :] / sampling_ratio**2
    num_rows = rois.shape[0] * output_size[0] * output_size[1]
    flat = torch.cat([f.to(compute).permute(0, 2, 3, 1).reshape(-1, channels) for f in features])
    with torch.autocast(device.type, enabled=False):
        pooled = _SparseRoIAlign.apply(flat, pixel.reshape(-1), weight.reshape(-1), (num_rows, sum(sizes)))
    pooled = pooled.view(rois.shape[0], *output_size, channels).permute(0, 3, 1, 2)
    return pooled.to(dtype)


class CPUMultiScaleRoIAlign(MultiScaleRoIAlign):
    """:class:`torchvision.ops.MultiScaleRoIAlign` whose pooling on CPU is :func:`sparse_roi_align`:
    the same numbers (up to float rounding) on every core, several times faster forward and backward
    (torchvision's CPU RoIAlign is a serial loop over RoIs on one core, and its backward recomputes
    the bilinear weights for every channel: with Faster R-CNN's 512 sampled RoIs per image it took
    half of a training step of ``configs/transfer/detect_fasterrcnn.yaml`` on 2 cores). Elsewhere
    (CUDA, tracing for ONNX export, ``torch.compile``, an adaptive ``sampling_ratio``) it is
    torchvision's."""

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        exporting = torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
        on_cpu = all(f.device.type == "cpu" for f in features)
        if exporting or not on_cpu or self.sampling_ratio <= 0 or not any(len(b) for b in boxes):
            return super().forward(x, boxes, image_shapes)
        scales: list[float] | None = getattr(self, "scales", None)
        mapper: LevelMapper | None = getattr(self, "map_levels", None)
        if scales is None or mapper is None:  # from the first batch, as torchvision's
            scales, mapper = _setup_scales(features, image_shapes, self.canonical_scale, self.canonical_level)
            self.scales, self.map_levels = scales, mapper  # type: ignore[has-type]
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            levels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        else:
            levels = mapper(boxes)
        return sparse_roi_align(features, rois, levels, scales, self.output_size, self.sampling_ratio)


def detector_inputs(images: list[Tensor] | Tensor, in_chans: int) -> list[Tensor]:
    """``(3, H, W)`` uint8 images → float ``[0, 1]`` (the detector normalises them itself).

    A single-channel backbone (e.g. pretrained by colorization) gets the CIE L lightness
    (:func:`~visiontransfer.color.match_channels`).
    """
    return [match_channels(image[None].float() / 255.0, in_chans)[0] for image in images]


class DetectionNetwork(nn.Module):
    """The detector as a plain module for deployment: one ``(1, 3, H, W)`` uint8 image →
    ``boxes`` ``(N, 4)`` xyxy in the image's pixels, ``scores`` ``(N,)`` and ``labels`` ``(N,)`` in
    ``1..num_classes``, after the detector's own resize, normalisation, score threshold and NMS.
    No Lightning.

    Args:
        backbone: The timm model (registered here: the pyramid refers to it without owning it).
        detector: The torchvision detector over that backbone's pyramid.
        in_chans: Input channels of the backbone (1: it sees the CIE L lightness).
        label_offset: Added to the detector's labels (1 for the detectors without a background class).

    Attributes:
        output_names: Names of the outputs in exported files.
        batch_size: Images per call (1: torchvision's postprocessing loops over images in Python,
            so an exported graph holds the batch size it was traced with).
        onnx_exporter: ONNX is written by the TorchScript tracer, the one torchvision supports.
        unsupported_formats: Export formats this network does not support, with the reason.
    """

    output_names = ("boxes", "scores", "labels")
    batch_size = 1
    onnx_exporter = "torchscript"
    unsupported_formats: ClassVar[dict[str, str]] = {
        "torch-export": "torch.export cannot capture torchvision's detection postprocessing (batched NMS "
        "over a data-dependent number of boxes); use --format onnx"
    }

    def __init__(self, backbone: nn.Module, detector: nn.Module, in_chans: int, label_offset: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.detector = detector
        self.in_chans = in_chans
        self.label_offset = label_offset

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(1, 3, H, W)`` uint8 → ``(boxes (N, 4), scores (N,), labels (N,))``."""
        if images.shape[0] != 1:
            raise ValueError(
                f"images: a detection network takes one image (1, 3, H, W), got {tuple(images.shape)}"
            )
        out = self.detector(detector_inputs(images, self.in_chans))[0]
        return out["boxes"], out["scores"], out["labels"] + self.label_offset


class ObjectDetector(TransferModule):
    """A backbone with an FPN and a torchvision detection head, trained on a (small) labeled set.

    The backbone comes from a pretext checkpoint, an export folder or a timm name; its weights stay
    under ``backbone.`` in the checkpoint (plain timm keys), so ``visiontransfer export`` of a
    detector checkpoint gives the fine-tuned timm backbone. Freezing, BatchNorm and layer-wise LR
    policies are those of :class:`~visiontransfer.transfer.base.TransferModule` (here BatchNorm
    defaults to ``eval``: detection batches are small).

    Args:
        num_classes: Object classes, the background not counted; the CLI links it from
            ``--data.num_classes``.
        detector: ``fasterrcnn`` (Ren et al. 2015), ``retinanet`` (Lin et al. 2017) or ``fcos``
            (Tian et al. 2019).
        bn_mode: BatchNorm of the backbone: ``train``, ``eval`` or ``frozen`` (see the base).
        fpn_channels: Width of the feature pyramid (256 in the papers; smaller is cheaper).
        out_indices: Backbone levels (timm ``feature_info`` indices) fed to the FPN; default: the
            last 4 for Faster R-CNN, the last 3 for RetinaNet / FCOS.
        min_size: Shorter side the detector resizes images to (its ``GeneralizedRCNNTransform``);
            default: ``input_size`` (the datamodule already resized the longest side to it), else 320.
        max_size: Longest side cap of that resize; default: ``min_size``.
        anchor_scale: Anchor size per level as a multiple of its stride; default 8 (Faster R-CNN)
            or 4 (RetinaNet, with 3 octave scales). FCOS uses its locations (size = stride) only.
        aspect_ratios: Anchor aspect ratios (height / width); FCOS ignores them.
        detector_kwargs: Extra keyword arguments of the torchvision detector class (e.g.
            ``box_batch_size_per_image``, ``rpn_post_nms_top_n_train``, ``score_thresh``).
        small_input_stem: Remove the stem's early downsampling (off by default: detection images
            are large). A backbone read from a file keeps the stem it was trained with.
        **kwargs: Class names, freezing (``trainable_stages``, ``frozen_stages``...), backbone and
            optimizer arguments of :class:`~visiontransfer.transfer.base.TransferModule`.
    """

    def __init__(
        self,
        num_classes: int,
        detector: DetectorName = "fasterrcnn",
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
        self._check_args(detector, fpn_channels, anchor_scale, aspect_ratios)
        super().__init__(
            num_classes=num_classes, bn_mode=bn_mode, small_input_stem=small_input_stem, **kwargs
        )
        self.detector_name: DetectorName = detector
        self.label_offset = 0 if detector == "fasterrcnn" else 1  # data labels 1..C → 0..C-1
        self.fpn_channels, self.out_indices = fpn_channels, out_indices
        self.min_size = min_size or self.input_size or 320
        self.max_size = max_size or self.min_size
        self.anchor_scale = anchor_scale or DEFAULT_ANCHOR_SCALE[detector]
        self.aspect_ratios = tuple(aspect_ratios)
        self.detector_kwargs = dict(detector_kwargs or {})
        self.image_mean, self.image_std = (list(v) for v in normalization(self.backbone, self.in_chans))
        self._build(num_classes)

    @staticmethod
    def _check_args(
        detector: str, fpn_channels: int, anchor_scale: float | None, aspect_ratios: tuple[float, ...]
    ) -> None:
        if detector not in DEFAULT_LEVELS:
            raise ConfigError(f"--model.detector={detector!r}: choose one of {', '.join(DEFAULT_LEVELS)}")
        require(fpn_channels >= 1, "model", "fpn_channels", fpn_channels, "must be >= 1")
        require(
            anchor_scale is None or anchor_scale > 0, "model", "anchor_scale", anchor_scale, "must be > 0"
        )
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
        levels = DEFAULT_LEVELS[self.detector_name]
        info = len(getattr(self.backbone, "feature_info", []))
        out_indices = self.out_indices or tuple(range(max(0, info - levels), info))
        body = FeatureBackbone(self.backbone, out_indices)
        extra: Literal["pool", "p6p7"] = "pool" if self.detector_name == "fasterrcnn" else "p6p7"
        pyramid = TimmFPNBackbone(body, self.fpn_channels, extra, register_body=False)
        self.detector = self._detector(pyramid, num_classes)
        self.strides = pyramid.strides
        self.metrics = nn.ModuleDict(
            {stage: MeanAveragePrecision(box_format="xyxy", class_metrics=True) for stage in ("val", "test")}
        )

    def _detector(self, pyramid: TimmFPNBackbone, num_classes: int) -> nn.Module:
        """The torchvision detector (its heads, anchors and transform) over ``pyramid``."""
        common: dict[str, Any] = {
            "min_size": self.min_size,
            "max_size": self.max_size,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            **self.detector_kwargs,
        }
        anchors = self._anchors(pyramid.strides)
        if self.detector_name == "fasterrcnn":
            pool = CPUMultiScaleRoIAlign(pyramid.level_names, output_size=7, sampling_ratio=2)
            detector: nn.Module = FasterRCNN(
                pyramid, num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=pool, **common
            )
        elif self.detector_name == "retinanet":
            detector = RetinaNet(pyramid, num_classes, anchor_generator=anchors, **common)
        else:
            detector = FCOS(pyramid, num_classes, anchor_generator=anchors, **common)
        return detector

    # -- steps ----------------------------------------------------------------------------------
    def _inputs(self, images: list[Tensor]) -> list[Tensor]:
        """``(3, H, W)`` uint8 images → float ``[0, 1]`` (:func:`detector_inputs`)."""
        return detector_inputs(images, self.in_chans)

    def inference_model(self) -> DetectionNetwork:
        """A copy of the detector as a plain eval-mode module (:class:`DetectionNetwork`): one
        ``(1, 3, H, W)`` uint8 image → ``boxes``, ``scores``, ``labels`` (in ``1..num_classes``)."""
        backbone, detector = copy.deepcopy((self.backbone, self.detector))  # one memo: the pyramid
        network = DetectionNetwork(backbone, detector, self.in_chans, self.label_offset)  # keeps its body
        return network.to(self.pixel_mean.device).eval().requires_grad_(False)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections of ``(3, H, W)`` uint8 images: per image ``boxes`` ``(N, 4)`` xyxy in that
        image's pixels, ``scores`` ``(N,)`` and ``labels`` ``(N,)`` in ``1..num_classes``."""
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
            names = self.class_names
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
