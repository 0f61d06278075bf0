"""Export a trained backbone and load it back anywhere, safely, in one call.

``visiontransfer export CKPT --out DIR`` writes

- ``model.safetensors``: the backbone alone, plain timm state-dict keys (no ``backbone.`` prefix);
  the config below is also stored in the file's metadata, so the file describes itself;
- ``config.json``: timm's Hugging Face layout (``architecture``, ``num_classes``, ``num_features``,
  ``pretrained_cfg`` with input size and normalisation, ``model_args``) plus a ``visiontransfer``
  block (stem change, pretext method and its hyperparameters, version, source checkpoint);
- ``hubconf.py``: ``torch.hub.load(DIR, "backbone", source="local")`` with timm and safetensors
  alone (it re-applies the small-image stem change itself).

:func:`load_backbone` reads a ``.ckpt``, such a directory or a lone ``.safetensors`` file and
returns a plain timm ``nn.Module``. Nothing is ever unpickled beyond tensors and plain containers
(``torch.load(weights_only=True)``, safetensors).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from visiontransfer import __version__
from visiontransfer.backbones import FeatureBackbone, create_backbone, normalization
from visiontransfer.checkpoint_io import atomic_write

FORMAT = "visiontransfer-backbone/1"
METADATA_KEY = "visiontransfer_config"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds pickled objects beyond tensors and plain containers."""


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a Lightning ``.ckpt`` without unpickling arbitrary objects.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle asks for anything but tensors and plain containers
            (nothing of it runs).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {os.fspath(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"refusing to load {os.fspath(path)!r}: it contains pickled objects that are not plain "
            f"tensors or containers, and unpickling them could run code ({error}). Export it where "
            "it was made, or load it only if you trust its source."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{os.fspath(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def backbone_spec(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """How to rebuild the checkpoint's backbone: architecture, stem, channels, kwargs, method."""
    spec = checkpoint.get("visiontransfer")
    if isinstance(spec, dict):
        return dict(spec)
    hparams = checkpoint.get("hyper_parameters", {})  # checkpoints written before the block existed
    if "backbone" not in hparams:
        raise ValueError("checkpoint has neither a 'visiontransfer' block nor a 'backbone' hyperparameter")
    return {
        "architecture": hparams["backbone"],
        "in_chans": hparams.get("in_chans", 3),
        "small_input_stem": hparams.get("small_input_stem", False),
        "backbone_kwargs": hparams.get("backbone_kwargs") or {},
        "method": None,
        "hyperparameters": {},
    }


def backbone_state_dict(
    state_dict: dict[str, torch.Tensor], prefix: str = "backbone."
) -> dict[str, torch.Tensor]:
    """The backbone's entries of a module state dict, ``prefix`` stripped (plain timm keys)."""
    out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        found = sorted({k.split(".")[0] for k in state_dict})
        raise ValueError(f"no '{prefix}*' keys in the checkpoint; its top-level modules are {found}")
    return out


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """An untrained backbone of the architecture a spec describes."""
    return create_backbone(
        spec["architecture"],
        pretrained=False,
        in_chans=int(spec.get("in_chans", 3)),
        small_input_stem=bool(spec.get("small_input_stem", False)),
        backbone_kwargs=spec.get("backbone_kwargs") or None,
    )


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


def _timm_config(spec: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """config.json in timm's layout, with our block under ``visiontransfer``."""
    in_chans = int(spec.get("in_chans", 3))
    mean, std = normalization(model, in_chans)
    size = int(spec.get("image_size") or 224)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    pretrained_cfg = {
        "input_size": [in_chans, size, size],
        "interpolation": cfg.get("interpolation", "bilinear"),
        "crop_pct": cfg.get("crop_pct", 0.875),
        "mean": list(mean),
        "std": list(std),
        "first_conv": cfg.get("first_conv"),
        "classifier": cfg.get("classifier"),
    }
    return {
        "architecture": spec["architecture"].split(".")[0],
        "num_classes": 0,
        "num_features": int(getattr(model, "num_features", 0)),
        "pretrained_cfg": pretrained_cfg,
        "model_args": {"in_chans": in_chans, **(spec.get("backbone_kwargs") or {})},
        "visiontransfer": {
            "format": FORMAT,
            "version": __version__,
            "small_input_stem": bool(spec.get("small_input_stem", False)),
            "stem_factor": int(getattr(model, "stem_factor", 1)),
            "image_size": size,
            "method": spec.get("method"),
            "hyperparameters": spec.get("hyperparameters", {}),
            "source_checkpoint": spec.get("source_checkpoint"),
        },
    }


def export_backbone(checkpoint_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``hubconf.py`` for a checkpoint's backbone.

    Works for the checkpoint of every pretext and transfer module (their backbone lives under
    ``backbone.``). The exported weights are checked to load back before the function returns.

    Returns:
        The output folder.
    """
    checkpoint = read_checkpoint(checkpoint_path)
    spec = backbone_spec(checkpoint)
    spec["source_checkpoint"] = os.path.abspath(checkpoint_path)
    state = backbone_state_dict(checkpoint["state_dict"])
    model = build_from_spec(spec)
    load_weights(model, state, os.fspath(checkpoint_path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = _timm_config(spec, model)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    metadata = {METADATA_KEY: json.dumps(config)}
    atomic_write(out / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    atomic_write(out / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    hubconf = Path(__file__).with_name("hubconf_template.py").read_text()
    atomic_write(out / "hubconf.py", lambda tmp: Path(tmp).write_text(hubconf))
    return out


def _read_export(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and weights of an exported folder or ``.safetensors`` file."""
    weights = path / WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS} in {os.fspath(path)!r}")
    with safe_open(str(weights), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
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


def _spec_from_config(config: dict[str, Any]) -> dict[str, Any]:
    block = config.get("visiontransfer", {})
    model_args = dict(config.get("model_args", {}))
    in_chans = int(model_args.pop("in_chans", 3))
    return {
        "architecture": config["architecture"],
        "in_chans": in_chans,
        "small_input_stem": bool(block.get("small_input_stem", False)),
        "backbone_kwargs": model_args,
    }


def load_backbone_with_spec(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Like :func:`load_backbone` (pooled model), also returning the spec it was rebuilt from."""
    source = Path(path)
    if source.is_dir() or source.suffix == ".safetensors":
        config, state = _read_export(source)
        spec = _spec_from_config(config)
    elif source.is_file():
        checkpoint = read_checkpoint(source)
        spec = backbone_spec(checkpoint)
        state = backbone_state_dict(checkpoint["state_dict"])
    else:
        raise FileNotFoundError(f"no checkpoint, export folder or .safetensors file at {os.fspath(path)!r}")
    model = build_from_spec(spec)
    load_weights(model, state, os.fspath(path))
    keep = ("architecture", "in_chans", "small_input_stem", "backbone_kwargs")
    return model, {k: spec.get(k) for k in keep}


def load_backbone(
    path: str | os.PathLike[str], features_only: bool = False, num_classes: int = 0
) -> nn.Module:
    """A plain timm model from a visiontransfer ``.ckpt``, an exported folder or a ``.safetensors`` file.

    Args:
        path: The checkpoint, export folder or weights file.
        features_only: Return a :class:`~visiontransfer.backbones.FeatureBackbone` (multi-scale maps).
        num_classes: Give the model a fresh classifier with this many outputs (0: pooled features).

    Raises:
        FileNotFoundError: nothing at ``path``.
        UnsafeCheckpointError: a ``.ckpt`` that would unpickle arbitrary objects.
        ValueError: weights that don't fit the architecture, naming missing and unexpected keys.
    """
    model, _ = load_backbone_with_spec(path)
    if num_classes:
        model.reset_classifier(num_classes)  # type: ignore[operator]
    return FeatureBackbone(model) if features_only else model
