"""The small base every module shares: the backbone (a timm name or a visiontransfer checkpoint /
export), input normalisation, optimizer with warmup + cosine schedule, and the checkpoint block
(a :class:`~visiontransfer.backbones.BackboneSpec`) that ``visiontransfer export`` reads. Heads,
losses and monitors live elsewhere.

Data facts (the image size, a task's classes) reach a module as constructor arguments: the CLI
links them from the datamodule (``link_arguments``), Python users pass them. No module reads
``trainer.datamodule``.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import zipfile
from typing import Any, Literal

import lightning as L
import safetensors.torch
import torch
from timm.models import adapt_input_conv
from torch import Tensor, nn

from visiontransfer.backbones import BackboneSpec, normalization
from visiontransfer.backbones.weights import (
    CHECKPOINT_KEY,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_backbone_file,
    load_weights,
    read_backbone_file,
)
from visiontransfer.color import match_channels
from visiontransfer.errors import ConfigError, MissingPathError, flag, require


class BackboneSystem(L.LightningModule):
    """Base of the pretext and transfer modules.

    Args:
        backbone: Any timm model name (``resnet18``, ``convnext_atto``, ...), or the path of a
            visiontransfer ``.ckpt``, export folder or ``.safetensors`` file to start from (its
            architecture and stem then come from the file; the next four arguments are ignored).
        pretrained: Start from timm's pretrained weights (downloads them: needs internet).
        weights: Start from the weights in this file (continued pretraining, fine-tuning weights
            you have): a timm/PyTorch state dict (``.safetensors``, ``.pth``, ``.pt``, ``.bin``;
            a classifier in it is dropped), or a visiontransfer ``.ckpt`` / export of the same
            architecture. Loaded into the backbone after it is built (stem change included), so
            keys that don't fit are reported by name. ``--model.backbone`` names the timm
            architecture; a file there brings its own weights instead.
        small_input_stem: Remove the stem's early downsampling (for 32–64 px images).
        in_chans: Input channels of the backbone.
        backbone_kwargs: Extra keyword arguments for ``timm.create_model``.
        input_size: Side of the training images; the CLI links it from ``--data.image_size``.
            Recorded in checkpoints and exports (their input size; without it, exports take
            the image size the datamodule saved in the checkpoint).
        optimizer: ``adamw`` or ``sgd`` (with Nesterov momentum).
        lr: Peak learning rate, reached after the warmup.
        weight_decay: Weight decay (not applied to biases and normalisation parameters).
        momentum: SGD momentum (ignored by AdamW).
        warmup_epochs: Epochs of linear warmup (may be fractional).
        min_lr_ratio: Final learning rate of the cosine schedule, as a share of ``lr``.
        channels_last: Keep the backbone and its inputs in channels-last memory layout (faster
            convolutions with mixed precision on recent GPUs).
        compile: Compile the backbone with ``torch.compile`` when fitting starts (in place: the
            weights keep their names in checkpoints and exports).
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        weights: str | None = None,
        small_input_stem: bool = True,
        in_chans: int = 3,
        backbone_kwargs: dict[str, Any] | None = None,
        input_size: int | None = None,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        require(lr > 0, "model", "lr", lr, "must be > 0")
        require(warmup_epochs >= 0, "model", "warmup_epochs", warmup_epochs, "must be >= 0")
        require(input_size is None or input_size >= 1, "model", "input_size", input_size, "must be >= 1")
        check_weight_sources(weights, backbone, pretrained)
        self.backbone, self.backbone_spec = resolve_backbone(
            backbone, pretrained, in_chans, small_input_stem, backbone_kwargs
        )
        if weights is not None:
            self.backbone_spec = start_from_weights(self.backbone, self.backbone_spec, weights)
        self.in_chans = self.backbone_spec.in_chans
        self.input_size = input_size
        self.num_features: int = int(self.backbone.num_features)  # type: ignore[arg-type]
        mean, std = pixel_statistics(self.backbone, self.in_chans)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.warmup_epochs = warmup_epochs
        self.min_lr_ratio = min_lr_ratio
        self.channels_last = channels_last
        self.compile_backbone = compile
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.save_hyperparameters()
        if self.backbone_spec.source is not None:
            self._rebuild_without_the_file()

    def _rebuild_without_the_file(self) -> None:
        """Hyperparameters that rebuild this module's architecture without the file its backbone was
        read from (``load_from_checkpoint`` then needs the checkpoint alone; its weights come from
        there). Where the weights came from stays in the checkpoint block (``source``)."""
        spec = self.backbone_spec
        self.hparams.update(
            backbone=spec.architecture, pretrained=False, weights=None,
            small_input_stem=spec.small_input_stem, in_chans=spec.in_chans,
            backbone_kwargs=dict(spec.backbone_kwargs) or None,
        )  # fmt: skip

    def configure_model(self) -> None:
        if self.compile_backbone and not getattr(self, "_compiled", False):
            self.backbone.compile()
            self._compiled = True

    def checkpoint_spec(self) -> BackboneSpec:
        """The backbone's spec with this module as its provenance (what exports record)."""
        hparams = {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams.items()}
        return self.backbone_spec.replace(
            method=type(self).__name__,
            hyperparameters={k: v for k, v in hparams.items() if not k.startswith("_")},
            image_size=self.input_size,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record how to rebuild the backbone, so ``visiontransfer export`` needs nothing else."""
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_spec().to_dict()

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) uint8`` (or float in 0..255) → float, normalised for the backbone.

        A single-channel backbone (e.g. pretrained by colorization) given RGB images sees their
        CIE L lightness scaled to 0..255 (:func:`~visiontransfer.color.match_channels`).
        """
        normalized = normalize_images(images, self.pixel_mean, self.pixel_std)
        if self.channels_last:
            return normalized.contiguous(memory_format=torch.channels_last)
        return normalized

    def features(self, images: Tensor) -> Tensor:
        """Pooled backbone features ``(B, num_features)`` of raw ``uint8`` images."""
        return self.backbone(self.normalize(images))

    def _param_groups(self) -> list[dict[str, Any]]:
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
        return [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def schedule_steps(self) -> tuple[int, int]:
        """Optimizer steps of the whole fit, and its epochs: what step schedules given in epochs
        (warmups) are converted with, ``steps = epochs_given * total / epochs``."""
        return max(1, int(self.trainer.estimated_stepping_batches)), max(1, int(self.trainer.max_epochs or 1))

    def configure_optimizers(self) -> Any:
        groups = self._param_groups()
        if self.optimizer_name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=self.lr, momentum=self.momentum, nesterov=True
            )
        else:
            opt = torch.optim.AdamW(groups, lr=self.lr)
        total, epochs = self.schedule_steps()
        warmup = min(total - 1, int(self.warmup_epochs * total / epochs))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, total, warmup, self.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def pixel_statistics(model: nn.Module, in_chans: int) -> tuple[Tensor, Tensor]:
    """Mean and std ``(1, C, 1, 1)`` the backbone expects, in the 0..255 range of raw pixels."""
    mean, std = normalization(model, in_chans)
    return torch.tensor(mean).view(1, -1, 1, 1) * 255.0, torch.tensor(std).view(1, -1, 1, 1) * 255.0


def normalize_images(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(B, C, H, W)`` raw pixels (uint8, or float in 0..255) → normalised floats for a backbone of
    ``mean.shape[1]`` channels (RGB for a 1-channel backbone: the CIE L lightness scaled to 0..255)."""
    x = images.float()
    if x.shape[1] != mean.shape[1]:
        x = match_channels(x / 255.0, mean.shape[1]) * 255.0
    return (x - mean) / std


def is_backbone_file(backbone: str) -> bool:
    """Whether ``--model.backbone`` names a file or folder rather than a timm model."""
    return os.path.exists(backbone) or backbone.endswith((".ckpt", ".safetensors")) or os.sep in backbone


def resolve_backbone(
    backbone: str,
    pretrained: bool = False,
    in_chans: int = 3,
    small_input_stem: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
    name: str = "backbone",
) -> tuple[nn.Module, BackboneSpec]:
    """Build a backbone from a timm name, or load one from a visiontransfer file.

    Args:
        name: The model argument that gave ``backbone`` (``--model.{name}`` in errors).

    Returns:
        ``(model, spec)``; a file's spec has ``source`` set to it.

    Raises:
        MissingPathError: a file path that does not exist, naming ``--model.backbone``.
        ConfigError: a file that is no readable visiontransfer backbone, naming the flag.
    """
    option = flag("model", name)
    if not is_backbone_file(backbone):
        spec = BackboneSpec(backbone, in_chans, small_input_stem, dict(backbone_kwargs or {}))
        try:
            return spec.build(pretrained), spec
        except ConfigError as error:  # create_backbone names --model.backbone
            raise ConfigError(str(error).replace(flag("model", "backbone"), option)) from None
    try:
        return load_backbone_file(backbone)
    except FileNotFoundError:
        raise MissingPathError(
            f"{option}={backbone!r} does not exist: give a timm model name, a .ckpt, an export "
            "folder or a .safetensors file"
        ) from None
    except (CorruptCheckpointError, UnsafeCheckpointError, ValueError) as error:
        raise ConfigError(f"{option}={backbone!r}: {' '.join(str(error).split())}") from None


STATE_DICT_KEYS = ("state_dict", "model", "module", "net")
"""Where training scripts keep the weights inside a ``.pth`` checkpoint (timm: ``state_dict``;
MAE, DeiT: ``model``; DINO: the bare state dict or ``teacher``/``student``, which need picking)."""


def read_state_dict_file(path: str) -> dict[str, Tensor]:
    """The tensors of a timm/PyTorch weights file: ``.safetensors``, or a ``.pth``/``.pt``/``.bin``
    state dict (also one wrapped under a key of :data:`STATE_DICT_KEYS`; a ``module.`` prefix of
    DDP training is removed). A visiontransfer ``.ckpt`` or export gives its backbone's weights.
    Read without unpickling anything but tensors and plain containers.

    Raises:
        FileNotFoundError, UnsafeCheckpointError, CorruptCheckpointError: see
            :func:`~visiontransfer.backbones.weights.read_checkpoint`.
    """
    if os.path.isdir(path) or path.endswith(".ckpt"):
        return read_backbone_file(path)[1]
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    try:
        if path.endswith(".safetensors"):
            state: Any = safetensors.torch.load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"it holds pickled objects beyond tensors and plain containers ({str(error).splitlines()[0]}); "
            "save the model's state_dict() alone"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CorruptCheckpointError(f"truncated, or not a weights file ({reason})") from None
    for key in STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CorruptCheckpointError(f"no state dict of tensors in it (top level: {found})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def fit_state_dict(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A timm state dict made to fit ``model`` as timm's own pretrained loading does: the model
    family's ``checkpoint_filter_fn`` (e.g. a ViT's position embedding resampled to its grid), the
    first convolution summed to ``in_chans`` channels, and the classifier dropped (the backbone has
    none). Keys that still don't fit are left for :func:`load_weights` to report."""
    family = sys.modules.get(type(model).__module__)
    filter_fn = getattr(family, "checkpoint_filter_fn", None)
    if callable(filter_fn) and type(model).__module__.startswith("timm.models"):
        state = filter_fn(state, model)
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {}) or {}
    own = model.state_dict()
    first = cfg.get("first_conv")
    for conv in [first] if isinstance(first, str) else list(first or []):
        key = f"{conv}.weight"
        if key in state and key in own and state[key].ndim == 4 and state[key].shape[1] != own[key].shape[1]:
            state = {**state, key: adapt_input_conv(own[key].shape[1], state[key])}
    classifier = cfg.get("classifier")
    heads = [classifier] if isinstance(classifier, str) else list(classifier or [])
    return {k: v for k, v in state.items() if k in own or not any(k.startswith(f"{h}.") for h in heads)}


def check_weight_sources(
    weights: str | None,
    backbone: str,
    pretrained: bool,
    names: tuple[str, str, str] = ("weights", "backbone", "pretrained"),
) -> None:
    """``weights`` is one source of weights too many with a backbone file or ``pretrained`` (checked
    before anything is built or downloaded).

    Args:
        names: The model arguments of the weights, the backbone and ``pretrained`` (for errors).
    """
    if weights is None:
        return
    option, backbone_option, pretrained_option = (flag("model", n) for n in names)
    if is_backbone_file(backbone):
        raise ConfigError(
            f"{option}={weights!r} with {backbone_option}={backbone!r}: the backbone file brings its own "
            f"weights; name its timm architecture in {backbone_option} to load other weights into it"
        )
    if pretrained:
        raise ConfigError(f"{option}={weights!r} with {pretrained_option}=true: choose one source of weights")


def start_from_weights(
    model: nn.Module, spec: BackboneSpec, weights: str, name: str = "weights"
) -> BackboneSpec:
    """Load the weights file given as ``--model.{name}`` into the built ``model``; the spec with
    the file as its source.

    Raises:
        ConfigError: weights that are unreadable or don't fit (missing / unexpected keys and
            shapes named).
        MissingPathError: no such file.
    """
    option = flag("model", name)
    try:
        state = fit_state_dict(model, read_state_dict_file(weights))
        load_weights(model, state, repr(weights))
    except FileNotFoundError:
        raise MissingPathError(
            f"{option}={weights!r} does not exist: give a .safetensors or .pth state dict, a .ckpt or an "
            "export folder"
        ) from None
    except (CorruptCheckpointError, UnsafeCheckpointError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{option}={weights!r}: {' '.join(str(error).split())}") from None
    return spec.replace(source=os.path.abspath(weights))


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
