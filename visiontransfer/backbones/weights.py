"""Read backbone weights from visiontransfer files, safely: checkpoints, export folders, lone
``.safetensors`` files.

Nothing is ever unpickled beyond tensors and plain containers (``torch.load(weights_only=True)``,
safetensors). Every reader returns the weights with the :class:`~visiontransfer.backbones.BackboneSpec`
that rebuilds their architecture; :func:`load_backbone_file` does both steps and checks that the
weights fit. The writer is :mod:`visiontransfer.export`.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from visiontransfer.backbones import BackboneSpec

FORMAT = "visiontransfer-backbone/1"
"""The ``format`` of an export's ``config.json`` block."""
METADATA_KEY = "visiontransfer_config"
"""Key of the config in an exported ``model.safetensors`` file's metadata."""
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CHECKPOINT_KEY = "visiontransfer"
"""Key of the :class:`BackboneSpec` block in a Lightning checkpoint."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds pickled objects beyond tensors and plain containers."""


class CorruptCheckpointError(ValueError):
    """A file that should be a checkpoint is truncated, empty or not a checkpoint at all."""


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Lightning ``.ckpt`` without unpickling arbitrary objects.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle asks for anything but tensors and plain containers
            (nothing of it runs).
        CorruptCheckpointError: the file is empty, truncated, or not a (Lightning) checkpoint.
    """
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise FileNotFoundError(f"checkpoint {where!r} does not exist")
    if os.path.getsize(where) == 0:
        raise CorruptCheckpointError(f"{where!r} is empty, not a checkpoint (an interrupted copy?)")
    try:
        checkpoint = torch.load(where, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error) and "Unsupported global" not in str(error):
            raise CorruptCheckpointError(f"{where!r} is not a checkpoint ({error})") from None
        raise UnsafeCheckpointError(
            f"refusing to load {where!r}: it contains pickled objects that are not plain "
            f"tensors or containers, and unpickling them could run code ({str(error).splitlines()[0]}). "
            "Export it where it was made, or load it only if you trust its source."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CorruptCheckpointError(
            f"{where!r} is truncated or not a checkpoint ({reason}); copy it again, or resume from "
            "an earlier checkpoint"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CorruptCheckpointError(f"{where!r} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def spec_from_checkpoint(checkpoint: dict[str, Any]) -> BackboneSpec:
    """The :class:`BackboneSpec` of a checkpoint's backbone (its block, or for checkpoints
    written before the block existed, its hyperparameters)."""
    block = checkpoint.get(CHECKPOINT_KEY)
    data_size = (checkpoint.get("datamodule_hyper_parameters") or {}).get("image_size")
    if isinstance(block, dict):
        spec = BackboneSpec.from_dict(block)
        missing_size = spec.image_size is None and data_size is not None
        return spec.replace(image_size=data_size) if missing_size else spec
    hparams = checkpoint.get("hyper_parameters", {})
    if "backbone" not in hparams:
        raise CorruptCheckpointError(
            "checkpoint has neither a 'visiontransfer' block nor a 'backbone' hyperparameter"
        )
    return BackboneSpec.from_dict({**hparams, "architecture": hparams["backbone"]}).replace(
        method=None, hyperparameters={}, image_size=data_size
    )


def backbone_state_dict(
    state_dict: dict[str, torch.Tensor], prefix: str = "backbone."
) -> dict[str, torch.Tensor]:
    """The backbone's entries of a module state dict, ``prefix`` stripped (plain timm keys)."""
    out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        found = sorted({k.split(".")[0] for k in state_dict})
        raise ValueError(f"no '{prefix}*' keys in the checkpoint; its top-level modules are {found}")
    return out


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; on a mismatch, name the missing and unexpected keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"weights in {source} don't fit the {type(model).__name__} built for them "
            f"(wrong architecture or stem?): missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}; "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}; "
            f"shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(state, strict=True)


def spec_from_export_config(config: dict[str, Any]) -> BackboneSpec:
    """The spec of an export's ``config.json`` (timm's fields, then visiontransfer's block)."""
    block = dict(config.get("visiontransfer", {}))
    model_args = dict(config.get("model_args", {}))
    in_chans = int(model_args.pop("in_chans", 3))
    return BackboneSpec.from_dict(
        {**block, "architecture": config["architecture"], "in_chans": in_chans, "backbone_kwargs": model_args}
    )


def read_export(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and weights of an exported folder or ``.safetensors`` file."""
    source = Path(path)
    weights = source / WEIGHTS if source.is_dir() else source
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS} in {os.fspath(path)!r}")
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as error:
        raise CorruptCheckpointError(
            f"{os.fspath(weights)!r} is truncated or not a safetensors file ({error})"
        ) from None
    config_file = weights.with_name(CONFIG)
    if METADATA_KEY in metadata:
        config = json.loads(metadata[METADATA_KEY])
    elif config_file.is_file():
        config = json.loads(config_file.read_text())
    else:
        raise ValueError(
            f"{os.fspath(weights)!r} has no visiontransfer config (metadata or {CONFIG} beside it)"
        )
    return config, state


def read_backbone_file(path: str | os.PathLike[str]) -> tuple[BackboneSpec, dict[str, torch.Tensor]]:
    """The spec and the plain timm weights of a checkpoint, export folder or ``.safetensors`` file.

    Raises:
        FileNotFoundError: nothing at ``path``.
        UnsafeCheckpointError, CorruptCheckpointError: see :func:`read_checkpoint`.
    """
    source = Path(path)
    if source.is_dir() or source.suffix == ".safetensors":
        config, state = read_export(source)
        return spec_from_export_config(config), state
    if not source.is_file():
        raise FileNotFoundError(f"no checkpoint, export folder or .safetensors file at {os.fspath(path)!r}")
    checkpoint = read_checkpoint(source)
    return spec_from_checkpoint(checkpoint), backbone_state_dict(checkpoint["state_dict"])


def load_backbone_file(path: str | os.PathLike[str]) -> tuple[nn.Module, BackboneSpec]:
    """The pooled timm model stored in ``path``, with its spec (``source`` set to ``path``)."""
    spec, state = read_backbone_file(path)
    model = spec.build()
    load_weights(model, state, os.fspath(path))
    return model, spec.replace(source=os.path.abspath(path))
