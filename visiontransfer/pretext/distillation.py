"""Distillation of a frozen teacher backbone into a student of any architecture and size."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.errors import ConfigError, require
from visiontransfer.losses import feature_distillation_loss
from visiontransfer.pretext.augment import SampleRandom, random_hflip, random_resized_crop
from visiontransfer.pretext.base import PretextModule
from visiontransfer.system import (
    check_weight_sources,
    normalize_images,
    pixel_statistics,
    resolve_backbone,
    start_from_weights,
)

Targets = Literal["pooled", "spatial", "both"]
TARGET_NAMES = {"pooled": ("pooled",), "spatial": ("spatial",), "both": ("pooled", "spatial")}


def image_fingerprint(images: Tensor) -> Tensor:
    """``(B,)`` int64 checksum of each ``(C, H, W)`` uint8 image: a weighted sum of its pixels with
    fixed pseudo-random weights (what a cache entry is checked against: another image at the same
    dataset index gets another fingerprint)."""
    flat = images.reshape(images.shape[0], -1).long()  # (B, N)
    weights = torch.randint(1, 2**20, (flat.shape[1],), generator=torch.Generator().manual_seed(0))
    return (flat * weights.to(flat.device)).sum(dim=1)


class TeacherFeatureCache:
    """Teacher targets on disk, one ``.safetensors`` file per training image, keyed by its dataset
    index and checked against the image's fingerprint (:func:`image_fingerprint`).

    Layout: ``folder/teacher.json`` (what produced the features: teacher, targets, input size; a
    folder made for another teacher is refused) and ``folder/<index // 1000>/<index>.safetensors``.
    Each file is written through a temporary file and a rename, so a killed run leaves whole
    entries only and a resumed one reads what was written; a file that fails to read, or belongs to
    another image, is recomputed and replaced. Several processes (DDP) may share a folder.

    Args:
        folder: The cache folder (created).
        description: What the features depend on (compared with ``teacher.json``).
    """

    def __init__(self, folder: str | os.PathLike[str], description: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.description = description
        self.hits = 0
        self.misses = 0

    def open(self) -> None:
        """Create the folder and its ``teacher.json``, or check that it holds this teacher's features."""
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "teacher.json"
        text = json.dumps(self.description, indent=2, sort_keys=True) + "\n"
        if meta.is_file():
            if json.loads(meta.read_text()) != json.loads(text):
                raise ConfigError(
                    f"--model.feature_cache={os.fspath(self.folder)!r} holds the features of another "
                    f"teacher or setting ({meta}); choose a new folder or delete this one"
                )
            return
        atomic_write(meta, lambda tmp: Path(tmp).write_text(text))

    def _path(self, index: int) -> Path:
        return self.folder / f"{index // 1000:06d}" / f"{index}.safetensors"

    def load(self, index: Tensor, fingerprint: Tensor) -> list[dict[str, Tensor] | None]:
        """The cached targets of each image (None where missing, unreadable or of another image)."""
        found: list[dict[str, Tensor] | None] = []
        for i, print_ in zip(index.tolist(), fingerprint.tolist(), strict=True):
            try:
                entry = load_file(self._path(i))
            except (FileNotFoundError, SafetensorError, OSError):
                entry = None
            if entry is not None and int(entry.pop("fingerprint")) != print_:
                entry = None
            found.append(entry)
        self.hits += sum(e is not None for e in found)
        self.misses += sum(e is None for e in found)
        return found

    def store(self, index: Tensor, fingerprint: Tensor, targets: dict[str, Tensor]) -> None:
        """Write the targets ``{name: (B, ...)}`` of each image."""
        for row, (i, print_) in enumerate(zip(index.tolist(), fingerprint.tolist(), strict=True)):
            path = self._path(i)
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors = {k: v[row].detach().cpu().contiguous() for k, v in targets.items()}
            tensors["fingerprint"] = torch.tensor(print_, dtype=torch.int64)
            atomic_write(path, lambda tmp, t=tensors: save_file(t, tmp))  # type: ignore[misc]


def backbone_outputs(model: nn.Module, x: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
    """A timm backbone's pooled features ``(B, D)`` and/or its last feature map ``(B, C, h, w)``
    (timm's ``forward_intermediates``: NCHW for CNNs and ViTs alike) in one forward pass."""
    if "spatial" not in names:
        return {"pooled": model(x)}
    final, maps = model.forward_intermediates(x, indices=1, intermediates_only=False)  # type: ignore[operator]
    out = {"spatial": maps[-1]}
    if "pooled" in names:
        out["pooled"] = model.forward_head(final, pre_logits=True)  # type: ignore[operator]
    return out


def output_widths(model: nn.Module) -> dict[str, int]:
    """Widths of :func:`backbone_outputs`: pooled (timm's ``head_hidden_size``, where a head
    convolution follows the pooling, else ``num_features``) and spatial (the last level's channels)."""
    if not hasattr(model, "forward_intermediates") or not getattr(model, "feature_info", None):
        raise ValueError(
            f"{type(model).__name__} has no forward_intermediates()/feature_info for spatial targets"
        )
    pooled: Any = getattr(model, "head_hidden_size", None) or model.num_features
    info: Any = model.feature_info
    return {"pooled": int(pooled), "spatial": int(info[-1]["num_chs"])}


def resize_map(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(B, C, h, w)`` maps to ``size`` (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


class Distillation(PretextModule):
    """Teach a student backbone to reproduce a frozen teacher's features on unlabeled images.

    Feature distillation in the manner of FitNets (Romero et al., "FitNets: Hints for Thin Deep
    Nets", ICLR 2015: regress the teacher's intermediate maps through a projection) applied to the
    pooled representation as well (as in e.g. Abbasi Koohpayegani et al., "CompRess", NeurIPS
    2020). The teacher is any backbone source: a visiontransfer ``.ckpt`` or export, a timm name
    with weights from a file (``teacher_weights``) or, online, from timm's hub
    (``teacher_pretrained``). Teacher and student see the same view of each image (a random
    resized crop and flip, drawn per image from its seed). The student (``backbone``: any timm
    model) learns the teacher's pooled features and/or its last feature map, through a linear (1×1)
    projection where the widths differ; maps of other sizes are resized to the teacher's.

    Teacher targets can be cached on disk per image (``feature_cache``; see
    :class:`TeacherFeatureCache`): later epochs, and resumed or repeated runs, read them instead of
    running the teacher. A cached target is the teacher's output on the image as the datamodule
    gives it, so the cache needs ``augment_views: false`` here and a deterministic datamodule
    (``--data.augment none``, the pretrain configs' default).

    The teacher's weights are kept in checkpoints (under ``teacher.``), so a checkpoint rebuilds the
    module without the teacher's file; the export holds the student alone.

    Args:
        teacher: The teacher: a timm model name, or a visiontransfer ``.ckpt``, export folder or
            ``.safetensors`` file (its architecture then comes from the file).
        teacher_weights: Weights for a timm-name teacher: a timm/PyTorch state dict on disk
            (``.safetensors``, ``.pth``), as ``--model.weights`` reads them.
        teacher_pretrained: Load timm's pretrained weights for a timm-name teacher (downloads them).
        teacher_small_input_stem: Build a timm-name teacher with the small-image stem.
        teacher_in_chans: Input channels of a timm-name teacher.
        teacher_kwargs: Extra ``timm.create_model`` arguments of a timm-name teacher.
        teacher_image_size: Resize the views to this side for the teacher (e.g. 224 for a teacher
            trained on 224-px images); None: the views' size.
        targets: ``pooled`` features, the last ``spatial`` map, or ``both``.
        metric: ``cosine`` (1 − cosine similarity, per vector) or ``mse`` (feature regression).
        spatial_weight: Weight of the spatial term with ``targets: both``.
        augment_views: Random resized crop and flip of each image (the same view for both networks).
        crop_scale_min: Smallest area share of the random crop.
        feature_cache: Folder caching the teacher's targets per training image (needs
            ``augment_views: false``).
        **kwargs: The student's backbone and optimizer arguments of :class:`PretextModule`.
    """

    teacher_mean: Tensor
    teacher_std: Tensor

    def __init__(
        self,
        teacher: str = "resnet50",
        teacher_weights: str | None = None,
        teacher_pretrained: bool = False,
        teacher_small_input_stem: bool = False,
        teacher_in_chans: int = 3,
        teacher_kwargs: dict[str, Any] | None = None,
        teacher_image_size: int | None = None,
        targets: Targets = "pooled",
        metric: Literal["cosine", "mse"] = "cosine",
        spatial_weight: float = 1.0,
        augment_views: bool = True,
        crop_scale_min: float = 0.2,
        feature_cache: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require(
            targets in TARGET_NAMES, "model", "targets", targets, f"must be one of {sorted(TARGET_NAMES)}"
        )
        require(metric in ("cosine", "mse"), "model", "metric", metric, "must be cosine or mse")
        require(spatial_weight >= 0, "model", "spatial_weight", spatial_weight, "must be >= 0")
        require(0 < crop_scale_min <= 1, "model", "crop_scale_min", crop_scale_min, "must be in (0, 1]")
        require(teacher_image_size is None or teacher_image_size >= 1, "model", "teacher_image_size",
                teacher_image_size, "must be >= 1")  # fmt: skip
        if feature_cache is not None and augment_views:
            raise ConfigError(
                f"--model.feature_cache={feature_cache!r} needs --model.augment_views false: cached "
                "targets are the teacher's features of the un-augmented image"
            )
        self.names = TARGET_NAMES[targets]
        self.teacher = self._build_teacher(
            teacher,
            teacher_weights,
            teacher_pretrained,
            teacher_small_input_stem,
            teacher_in_chans,
            teacher_kwargs,
        )
        self.projections = self._projections()
        self.teacher_image_size = teacher_image_size
        self.metric = metric
        self.spatial_weight = spatial_weight
        self.augment_views = augment_views
        self.crop_scale = (crop_scale_min, 1.0)
        self.cache = (
            None if feature_cache is None else TeacherFeatureCache(feature_cache, self._cache_description())
        )

    def _build_teacher(
        self, name: str, weights: str | None, pretrained: bool, small_stem: bool, in_chans: int,
        kwargs: dict[str, Any] | None,
    ) -> nn.Module:  # fmt: skip
        """The frozen teacher, with its normalisation; hyperparameters rebuild it without its file."""
        check_weight_sources(weights, name, pretrained, ("teacher_weights", "teacher", "teacher_pretrained"))
        model, spec = resolve_backbone(name, pretrained, in_chans, small_stem, kwargs, name="teacher")
        if weights is not None:
            spec = start_from_weights(model, spec, weights, "teacher_weights")
        if spec.source is None and not pretrained:
            warnings.warn(
                f"--model.teacher={name!r} is a random init (no file, --model.teacher_weights or "
                "--model.teacher_pretrained): the student learns random features",
                stacklevel=3,
            )
        self.teacher_spec = spec
        if spec.source is not None:
            self.hparams.update(
                teacher=spec.architecture, teacher_weights=None, teacher_pretrained=False,
                teacher_small_input_stem=spec.small_input_stem, teacher_in_chans=spec.in_chans,
                teacher_kwargs=dict(spec.backbone_kwargs) or None,
            )  # fmt: skip
        mean, std = pixel_statistics(model, spec.in_chans)
        self.register_buffer("teacher_mean", mean, persistent=False)
        self.register_buffer("teacher_std", std, persistent=False)
        return model.eval().requires_grad_(False)

    def _projections(self) -> nn.ModuleDict:
        """Student → teacher width, per target: linear (pooled) or 1×1 convolution (spatial)."""
        try:
            student, teacher = output_widths(self.backbone), output_widths(self.teacher)
        except ValueError as error:
            raise ConfigError(f"--model.targets=spatial: {error}") from None
        layers: dict[str, nn.Module] = {}
        for name in self.names:
            same = student[name] == teacher[name]
            make = nn.Linear if name == "pooled" else lambda a, b: nn.Conv2d(a, b, 1)
            layers[name] = nn.Identity() if same else make(student[name], teacher[name])
        return nn.ModuleDict(layers)

    def _cache_description(self) -> dict[str, Any]:
        """What cached targets depend on: the teacher (architecture, source, a checksum of its
        weights), the targets and the teacher's input size."""
        checksum = float(sum(p.detach().double().sum() for p in self.teacher.parameters()))
        spec = self.teacher_spec.architecture_only().to_dict()
        return {"teacher": spec, "source": self.teacher_spec.source, "weights_checksum": f"{checksum:.10e}",
                "targets": list(self.names), "teacher_image_size": self.teacher_image_size}  # fmt: skip

    def train(self, mode: bool = True) -> Distillation:
        """Train mode for the student; the teacher always stays in eval (BatchNorm statistics kept)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def on_fit_start(self) -> None:
        if self.cache is not None:
            self.cache.open()

    @torch.no_grad()
    def teacher_targets(self, views: Tensor) -> dict[str, Tensor]:
        """The teacher's targets for views in the uint8 range (resized to ``teacher_image_size``)."""
        x = normalize_images(views, self.teacher_mean, self.teacher_std)
        if self.teacher_image_size is not None and x.shape[-1] != self.teacher_image_size:
            size = (self.teacher_image_size, self.teacher_image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return {k: v.float() for k, v in backbone_outputs(self.teacher, x, self.names).items()}

    def cached_targets(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The teacher's targets of a batch's images, from the cache where it has them."""
        assert self.cache is not None
        images, index = batch["image"], batch["index"]
        fingerprint = image_fingerprint(images)
        entries = self.cache.load(index, fingerprint)
        missing = [i for i, e in enumerate(entries) if e is None]
        if missing:
            rows = torch.tensor(missing, device=images.device)
            computed = self.teacher_targets(images[rows].float())
            self.cache.store(index[rows.cpu()], fingerprint[rows.cpu()], computed)
            for j, i in enumerate(missing):
                entries[i] = {k: v[j] for k, v in computed.items()}
        return {
            k: torch.stack([e[k].to(images.device) for e in entries if e is not None]) for k in self.names
        }

    def view(self, batch: dict[str, Any], train: bool) -> Tensor:
        """The view both networks see: a random crop and flip of each image when augmenting in
        training, else the image itself (uint8-range floats)."""
        images = batch["image"]
        if not (self.augment_views and train):
            return images.float()
        generator = SampleRandom.for_batch(batch["index"], self.current_epoch if self._trainer else 0)
        x = random_resized_crop(
            images.float() / 255.0, images.shape[-1], self.crop_scale, generator=generator
        )
        return random_hflip(x, generator=generator) * 255.0

    def _step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        images = batch["image"]
        if images.shape[0] == 0:
            return None
        train = stage == "train"
        views = self.view(batch, train)
        use_cache = self.cache is not None and train
        targets = self.cached_targets(batch) if use_cache else self.teacher_targets(views)
        student = backbone_outputs(self.backbone, self.normalize(views), self.names)
        size = images.shape[0]
        losses = {}
        for name in self.names:
            projected = self.projections[name](student[name])
            if name == "spatial":
                projected = resize_map(projected, tuple(targets[name].shape[-2:]))  # type: ignore[arg-type]
            losses[name] = feature_distillation_loss(projected, targets[name], self.metric)
            self.log(f"{stage}/{name}_loss", losses[name], batch_size=size, sync_dist=not train)
        loss = losses.get("pooled", 0.0) + self.spatial_weight * losses.get("spatial", 0.0)
        assert isinstance(loss, Tensor)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size, sync_dist=not train)
        return loss
