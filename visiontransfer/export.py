"""Export a trained backbone and load it back anywhere, safely, in one call.

``visiontransfer export CKPT --out DIR`` writes

- ``model.safetensors``: the backbone alone, plain timm state-dict keys (no ``backbone.`` prefix);
  the config below is also stored in the file's metadata, so the file describes itself;
- ``config.json``: timm's Hugging Face layout (``architecture``, ``num_classes``, ``num_features``,
  ``pretrained_cfg`` with input size and normalisation, ``model_args``) plus a ``visiontransfer``
  block (the :class:`~visiontransfer.backbones.BackboneSpec`: stem change, pretext method and its
  hyperparameters, image size, source checkpoint; and the format and version);
- ``hubconf.py``: ``torch.hub.load(DIR, "backbone", source="local")`` with timm and safetensors
  alone. It holds a verbatim copy of :mod:`visiontransfer.backbones.stem`, so the small-image
  stem is rebuilt by the very same code as :func:`load_backbone` runs.

:func:`load_backbone` reads a ``.ckpt``, such a directory or a lone ``.safetensors`` file and
returns a plain timm ``nn.Module``. Nothing is ever unpickled beyond tensors and plain containers
(``torch.load(weights_only=True)``, safetensors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from visiontransfer import __version__
from visiontransfer.backbones import BackboneSpec, FeatureBackbone, normalization, stem
from visiontransfer.backbones.weights import (
    CONFIG,
    FORMAT,
    METADATA_KEY,
    WEIGHTS,
    backbone_state_dict,
    load_backbone_file,
    load_weights,
    read_checkpoint,
    spec_from_checkpoint,
)
from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.errors import ConfigError

HUBCONF = "hubconf.py"
STEM_MARKER = "# <<visiontransfer.backbones.stem>>"
"""Where :func:`hubconf_source` puts the stem module's source into the template."""


def timm_config(spec: BackboneSpec, model: nn.Module) -> dict[str, Any]:
    """config.json in timm's layout, with the spec (and format, version) under ``visiontransfer``."""
    mean, std = normalization(model, spec.in_chans)
    size = int(spec.image_size or 224)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    pretrained_cfg = {
        "input_size": [spec.in_chans, size, size],
        "interpolation": cfg.get("interpolation", "bilinear"),
        "crop_pct": cfg.get("crop_pct", 0.875),
        "mean": list(mean),
        "std": list(std),
        "first_conv": cfg.get("first_conv"),
        "classifier": cfg.get("classifier"),
    }
    return {
        "architecture": spec.architecture.split(".")[0],
        "num_classes": 0,
        "num_features": int(getattr(model, "num_features", 0)),
        "pretrained_cfg": pretrained_cfg,
        "model_args": {"in_chans": spec.in_chans, **spec.backbone_kwargs},
        "visiontransfer": {
            "format": FORMAT,
            "version": __version__,
            "stem_factor": int(getattr(model, "stem_factor", 1)),
            **spec.to_dict(),
        },
    }


def hubconf_source() -> str:
    """The exported ``hubconf.py``: the template with :mod:`visiontransfer.backbones.stem` inside."""
    template = Path(__file__).with_name("hubconf_template.py").read_text()
    code = Path(stem.__file__).read_text()
    return template.replace(STEM_MARKER, f"# --- visiontransfer/backbones/stem.py, verbatim ---\n{code}")


def prepare_output(out: str | os.PathLike[str], overwrite: bool, flag: str = "--out") -> Path:
    """The output folder, created; an existing file, or a non-empty folder without ``overwrite``,
    is refused naming ``flag``. With ``overwrite`` the files written replace their namesakes
    (each atomically); other files in the folder are left alone."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag}={os.fspath(out)!r} is a file, not a folder: give a folder to write into")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ConfigError(
            f"{flag}={os.fspath(out)!r} exists and is not empty: choose a new folder, or pass "
            "--overwrite to replace the export in it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_backbone(
    checkpoint_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``hubconf.py`` for a checkpoint's backbone.

    Works for the checkpoint of every pretext and transfer module (their backbone lives under
    ``backbone.``). The exported weights are checked to load back before the function returns.

    Args:
        checkpoint_path: A ``.ckpt`` written by ``visiontransfer fit``.
        out_dir: Output folder: created; an existing non-empty one needs ``overwrite``.
        overwrite: Replace the contents of an existing folder.

    Returns:
        The output folder.
    """
    checkpoint = read_checkpoint(checkpoint_path)
    spec = spec_from_checkpoint(checkpoint).replace(source=os.path.abspath(checkpoint_path))
    model = spec.build()
    load_weights(model, backbone_state_dict(checkpoint["state_dict"]), os.fspath(checkpoint_path))
    out = prepare_output(out_dir, overwrite)
    config = timm_config(spec, model)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    metadata = {METADATA_KEY: json.dumps(config)}
    atomic_write(out / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    atomic_write(out / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    atomic_write(out / HUBCONF, lambda tmp: Path(tmp).write_text(hubconf_source()))
    load_backbone_file(out)  # the export reads back
    return out


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
        CorruptCheckpointError: a truncated file, or one that is no checkpoint.
        ValueError: weights that don't fit the architecture, naming missing and unexpected keys.
    """
    model, _ = load_backbone_file(path)
    if num_classes:
        model.reset_classifier(num_classes)  # type: ignore[operator]
    return FeatureBackbone(model) if features_only else model
