"""What an export deploys, rebuilt from a checkpoint alone: the task module (found by the class name
its checkpoint block records, built from its hyperparameters, weights from the checkpoint) and the
plain network it serves (:meth:`~visiontransfer.transfer.base.TransferModule.inference_model`).
Pretext checkpoints, and any checkpoint with ``backbone_only``, deploy the backbone's pooled
features (:class:`FeatureNetwork`).

The weights of a task module beside its backbone (head, pyramid, decoder) go to
``task.safetensors``; its class and hyperparameters are stored in that file's metadata, as plain
JSON, so :func:`module_from_export` rebuilds the module without unpickling anything.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

import visiontransfer.pretext
import visiontransfer.transfer
from visiontransfer.backbones import BackboneSpec
from visiontransfer.backbones.weights import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    backbone_state_dict,
    load_weights,
    read_checkpoint,
    spec_from_checkpoint,
)
from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.errors import ConfigError
from visiontransfer.system import is_backbone_file, normalize_images, pixel_statistics
from visiontransfer.transfer.base import TransferModule

TASK_WEIGHTS = "task.safetensors"
"""The task module's weights beside the backbone's (which stay in ``model.safetensors``)."""
TASK_METADATA_KEY = "visiontransfer_task"
"""Key of the module's class name and hyperparameters in ``task.safetensors``'s metadata."""

Kind = Literal["classification", "detection", "segmentation", "features"]
"""What a deployed network computes, read from its outputs (:func:`output_kind`)."""

CKPT = "CKPT"
"""How errors name the checkpoint argument (``visiontransfer export CKPT``)."""


class FeatureNetwork(nn.Module):
    """A backbone as a plain module for deployment: ``(B, 3, H, W)`` uint8 images → pooled features
    ``(B, num_features)``, the backbone's normalisation included (RGB for a single-channel
    backbone: its CIE L lightness).

    Args:
        backbone: The pooled timm model.
        in_chans: Its input channels.
    """

    mean: Tensor
    std: Tensor
    output_names = ("features",)

    def __init__(self, backbone: nn.Module, in_chans: int) -> None:
        super().__init__()
        self.backbone = backbone
        mean, std = pixel_statistics(backbone, in_chans)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` uint8 → ``(B, num_features)``."""
        return self.backbone(normalize_images(images, self.mean, self.std))


@dataclass
class Deployable:
    """A checkpoint's model, ready to export.

    Attributes:
        network: The plain eval-mode network (``(B, 3, H, W)`` uint8 in).
        backbone: The timm backbone with the checkpoint's weights (``model.safetensors``).
        spec: The checkpoint's backbone spec (``source``: the checkpoint).
        module: The task module's class name (None: the backbone's features are deployed).
        hyperparameters: The task module's constructor arguments (rebuild it with them).
        task_state: The task module's weights beside the backbone's.
        class_names: The classes of the task, in label order.
    """

    network: nn.Module
    backbone: nn.Module
    spec: BackboneSpec
    module: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    task_state: dict[str, Tensor] = field(default_factory=dict)
    class_names: list[str] | None = None

    @property
    def image_size(self) -> int:
        """Side of the images the model was trained on (224 when the checkpoint has none)."""
        return int(self.spec.image_size or 224)


def read_for_export(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A visiontransfer checkpoint, read safely; other files get one line naming ``CKPT`` and the fix.

    Raises:
        ConfigError: no such file, a checkpoint of another framework (a bare state dict, a
            non-Lightning pickle, a Lightning checkpoint of another project), or a broken file.
    """
    where = os.fspath(path)
    try:
        checkpoint = read_checkpoint(where)
        spec_from_checkpoint(checkpoint)
    except FileNotFoundError:
        raise ConfigError(
            f"{CKPT}={where!r} does not exist: give the .ckpt a visiontransfer fit wrote"
        ) from None
    except UnsafeCheckpointError:
        raise ConfigError(
            f"{CKPT}={where!r} is a pickle of Python objects (torch.save of a whole model, or another "
            "framework's checkpoint), not a visiontransfer checkpoint; nothing of it was run: export the "
            ".ckpt a visiontransfer fit wrote (runs/<experiment>/version_N/checkpoints/last.ckpt)"
        ) from None
    except CorruptCheckpointError as error:
        raise ConfigError(f"{CKPT}={where!r}: {_foreign(where) or ' '.join(str(error).split())}") from None
    return checkpoint


def _foreign(path: str) -> str | None:
    """Why a file that loads safely is no visiontransfer checkpoint (None: it does not load)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    fix = "export the .ckpt a visiontransfer fit wrote (runs/<experiment>/version_N/checkpoints/last.ckpt)"
    if isinstance(content, dict) and content and all(isinstance(v, Tensor) for v in content.values()):
        return (
            f"a bare state dict of {len(content)} tensors (torch.save(model.state_dict()), e.g. of "
            f"torchvision or timm), not a visiontransfer checkpoint: {fix}; to fine-tune from these "
            "weights, pass the file as --model.weights"
        )
    if isinstance(content, dict) and "state_dict" in content:
        return (
            "a Lightning checkpoint of another project (no 'visiontransfer' block, no 'backbone' "
            f"hyperparameter): {fix}"
        )
    return f"a {type(content).__name__}, not a checkpoint: {fix}"


def task_class(method: str | None) -> type[TransferModule] | None:
    """The transfer module class a checkpoint block names (None: not a transfer module)."""
    found = getattr(visiontransfer.transfer, method or "", None)
    return found if isinstance(found, type) and issubclass(found, TransferModule) else None


def build_module(
    cls: type[TransferModule], hyperparameters: dict[str, Any], spec: BackboneSpec
) -> TransferModule:
    """``cls(**hyperparameters)`` with a randomly initialised backbone of ``spec`` (the weights
    come next), in eval mode: never timm's download, nor the file the backbone once came from."""
    # LightningCLI records the class as ``_class_path`` (and jsonargparse its own ``__...__`` keys).
    arguments = {k: v for k, v in hyperparameters.items() if not k.startswith("_")}
    arguments.update({k: v for k, v in (("pretrained", False), ("weights", None)) if k in arguments})
    if is_backbone_file(str(arguments.get("backbone", ""))):  # checkpoints of earlier releases
        kwargs = dict(spec.backbone_kwargs) or None
        arguments.update(
            backbone=spec.architecture,
            small_input_stem=spec.small_input_stem,
            in_chans=spec.in_chans,
            backbone_kwargs=kwargs,
        )
    with warnings.catch_warnings():  # e.g. bn_mode=frozen on a random init: the weights come next
        warnings.simplefilter("ignore")
        module = cls(**arguments)
    return module.eval()


def load_module_weights(module: TransferModule, state: dict[str, Tensor], source: str) -> None:
    """Load a module's full state dict strictly; a mismatch is one line naming the keys."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:600]
        raise ConfigError(
            f"{source}: the weights don't fit the {type(module).__name__} its hyperparameters build "
            f"({reason}); was the checkpoint written by another visiontransfer version?"
        ) from None


def deployable(
    checkpoint: dict[str, Any],
    path: str | os.PathLike[str],
    backbone_only: bool = False,
    softmax: bool = False,
) -> Deployable:
    """The model a checkpoint read by :func:`read_for_export` deploys.

    Args:
        checkpoint: The checkpoint.
        path: Its file (recorded as the source).
        backbone_only: Deploy the backbone's pooled features even for a transfer checkpoint.
        softmax: A classifier returns probabilities instead of logits.

    Raises:
        ConfigError: a module visiontransfer does not know (without ``backbone_only``), or one
            without an inference model.
    """
    spec = spec_from_checkpoint(checkpoint).replace(source=os.path.abspath(path))
    cls = task_class(spec.method)
    if backbone_only or cls is None:
        if not backbone_only and spec.method and not _is_pretext(spec.method):
            raise ConfigError(
                f"{CKPT}={os.fspath(path)!r} was written by {spec.method}, which is not a module of "
                "visiontransfer.transfer: pass --backbone-only to export its backbone"
            )
        backbone = spec.build()
        load_weights(backbone, backbone_state_dict(checkpoint["state_dict"]), os.fspath(path))
        return Deployable(FeatureNetwork(backbone, spec.in_chans).eval(), backbone, spec)
    hyperparameters = dict(checkpoint.get("hyper_parameters", {}))
    module = build_module(cls, hyperparameters, spec)
    load_module_weights(module, checkpoint["state_dict"], f"{CKPT}={os.fspath(path)!r}")
    return _from_module(module, spec, hyperparameters, softmax)


def _is_pretext(method: str) -> bool:
    return isinstance(getattr(visiontransfer.pretext, method, None), type)


def _from_module(
    module: TransferModule, spec: BackboneSpec, hyperparameters: dict[str, Any], softmax: bool
) -> Deployable:
    if softmax and "softmax" not in inspect.signature(module.inference_model).parameters:
        raise ConfigError(f"--softmax applies to classifiers, not to {type(module).__name__}")
    try:
        network = module.inference_model(softmax=True) if softmax else module.inference_model()  # type: ignore[call-arg]
    except NotImplementedError as error:
        raise ConfigError(str(error)) from None
    task_state = {k: v for k, v in module.state_dict().items() if not k.startswith("backbone.")}
    return Deployable(
        network, module.backbone, spec, type(module).__name__, hyperparameters, task_state, module.class_names
    )


def output_kind(outputs: Any) -> Kind:
    """What a network computes, from its outputs on a batch: ``(B, D)`` features or logits, a
    ``(B, C, H, W)`` map, or ``(boxes, scores, labels)``."""
    if isinstance(outputs, tuple | list) and len(outputs) == 3:
        return "detection"
    if isinstance(outputs, Tensor) and outputs.ndim == 4:
        return "segmentation"
    if isinstance(outputs, Tensor) and outputs.ndim == 2:
        return "classification"
    shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
    raise ValueError(
        f"a deployed network returns (B, D), (B, C, H, W) or (boxes, scores, labels); got {shape}"
    )


def save_task_weights(deploy: Deployable, path: str | os.PathLike[str]) -> None:
    """``task.safetensors``: the module's weights beside the backbone's, its class and
    hyperparameters in the metadata (JSON)."""
    metadata = {
        TASK_METADATA_KEY: json.dumps({"module": deploy.module, "hyperparameters": deploy.hyperparameters})
    }
    tensors = {k: v.detach().contiguous() for k, v in deploy.task_state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def module_from_export(
    folder: str | os.PathLike[str], spec: BackboneSpec, backbone: dict[str, Tensor]
) -> TransferModule:
    """The task module of an export folder, from ``task.safetensors``, the backbone's spec and weights."""
    weights = Path(folder, TASK_WEIGHTS)
    with safe_open(str(weights), framework="pt", device="cpu") as handle:
        record = json.loads((handle.metadata() or {})[TASK_METADATA_KEY])
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
    cls = task_class(record["module"])
    if cls is None:
        raise ConfigError(f"{weights}: {record['module']!r} is not a module of visiontransfer.transfer")
    module = build_module(cls, record["hyperparameters"], spec)
    load_module_weights(module, {**state, **{f"backbone.{k}": v for k, v in backbone.items()}}, str(weights))
    return module
