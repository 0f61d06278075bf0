"""Export a trained model and load it back anywhere, safely, in one call.

``visiontransfer export CKPT --out DIR [--format safetensors|onnx|torch-export]`` writes

- ``model.safetensors``: the backbone alone, plain timm state-dict keys (no ``backbone.`` prefix);
  the config below is also stored in the file's metadata, so the file describes itself;
- ``config.json``: timm's Hugging Face layout (``architecture``, ``num_classes``, ``num_features``,
  ``pretrained_cfg`` with input size and normalisation, ``model_args``) plus a ``visiontransfer``
  block (the :class:`~visiontransfer.backbones.BackboneSpec`: stem change, pretext method and its
  hyperparameters, image size, source checkpoint; and the format and version);
- ``hubconf.py``: ``torch.hub.load(DIR, "backbone", source="local")`` with timm and safetensors
  alone. It holds a verbatim copy of :mod:`visiontransfer.backbones.stem`, so the small-image
  stem is rebuilt by the very same code as :func:`load_backbone` runs;
- ``README.md``: the model card (:mod:`visiontransfer.deploy.card`);

and for the checkpoint of a task module (classifier, detector, segmenter) the whole model:

- ``task.safetensors``: its weights beside the backbone's, its class and hyperparameters in the
  metadata (``--format safetensors``: :func:`load_model` rebuilds it in PyTorch);
- ``model.onnx`` (``--format onnx``) or ``model.pt2`` (``--format torch-export``): the network
  from ``(B, 3, H, W)`` uint8 images to the task's outputs, preprocessing included, checked
  against PyTorch on real images before it is kept (:mod:`visiontransfer.deploy.parity`).

A pretext checkpoint (or ``--backbone-only``) deploys the backbone's pooled features in the same
formats. :func:`load_backbone` reads a ``.ckpt``, such a directory or a lone ``.safetensors`` file
and returns a plain timm ``nn.Module``; :func:`load_model` returns the whole model. Nothing is ever
unpickled beyond tensors and plain containers (``torch.load(weights_only=True)``, safetensors).

``visiontransfer.export(ckpt, out, format=...)`` calls :func:`export`: this module is callable
(``visiontransfer.export`` is both the module and the function).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file
from torch import nn

from visiontransfer import __version__
from visiontransfer.backbones import BackboneSpec, FeatureBackbone, normalization, stem
from visiontransfer.backbones.weights import (
    CONFIG,
    FORMAT,
    METADATA_KEY,
    WEIGHTS,
    load_backbone_file,
    read_checkpoint,
    spec_from_checkpoint,
)
from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.deploy import card, facts, graph, hub, parity, runtime, task
from visiontransfer.errors import ConfigError

HUBCONF = "hubconf.py"
CARD = "README.md"
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
    """Write ``model.safetensors``, ``config.json``, ``hubconf.py`` and the model card for a
    checkpoint's backbone.

    Works for the checkpoint of every pretext and transfer module (their backbone lives under
    ``backbone.``). The exported weights are checked to load back before the function returns.

    Args:
        checkpoint_path: A ``.ckpt`` written by ``visiontransfer fit``.
        out_dir: Output folder: created; an existing non-empty one needs ``overwrite``.
        overwrite: Replace the contents of an existing folder.

    Returns:
        The output folder.

    Raises:
        FileNotFoundError, UnsafeCheckpointError, CorruptCheckpointError: see
            :func:`~visiontransfer.backbones.weights.read_checkpoint`.
    """
    checkpoint = read_checkpoint(checkpoint_path)
    spec_from_checkpoint(checkpoint)  # a checkpoint without a backbone fails here, before any folder
    return _export(
        checkpoint, checkpoint_path, out_dir, "safetensors", ExportOptions(overwrite, backbone_only=True)
    )


class ExportOptions(NamedTuple):
    """How :func:`export` writes a folder (its keyword arguments)."""

    overwrite: bool = False
    backbone_only: bool = False
    softmax: bool = False
    images: str | os.PathLike[str] | Sequence[str] | None = None
    report: str | os.PathLike[str] | None = None
    onnx_exporter: str | None = None
    push_to_hub: str | None = None
    private: bool = False


def export(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    format: str = "safetensors",
    *,
    overwrite: bool = False,
    backbone_only: bool = False,
    softmax: bool = False,
    images: str | os.PathLike[str] | Sequence[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    onnx_exporter: str | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
) -> Path:
    """Export a checkpoint's model into a hub-ready folder (see the module doc for the files).

    Args:
        checkpoint: A ``.ckpt`` written by ``visiontransfer fit`` (any pretext or transfer module).
        out: Output folder: created; an existing non-empty one needs ``overwrite``.
        format: ``safetensors`` (weights), ``onnx`` (plus ``model.onnx``) or ``torch-export``
            (plus ``model.pt2``).
        overwrite: Write into an existing folder (files of an earlier export that this one does
            not write, e.g. another format's graph, are removed).
        backbone_only: Deploy the backbone's pooled features, not the task model.
        softmax: A classifier's graph returns probabilities instead of logits.
        images: Real images (a folder, files or a manifest) the graph is checked on; default: some
            of the checkpoint's own data when still on disk, else the embedded set.
        report: Folder (or ``report.md``) of a ``visiontransfer report``: its label-efficiency table
            goes into the model card.
        onnx_exporter: ``dynamo`` (default) or ``torchscript`` (faster to export; detectors always
            use it).
        push_to_hub: Upload the folder to this Hugging Face Hub repository (``owner/name``).
        private: Create that repository private.

    Returns:
        The output folder.

    Raises:
        ConfigError: a foreign or broken checkpoint, an unsupported model / format pair, an output
            folder that exists, a failed upload: one line naming the flag and the fix.
        ExportCheckError: the graph does not reproduce the PyTorch outputs (nothing is written).
    """
    if format not in graph.FORMATS:
        raise ConfigError(f"--format={format!r}: choose one of {', '.join(graph.FORMATS)}")
    options = ExportOptions(
        overwrite, backbone_only, softmax, images, report, onnx_exporter, push_to_hub, private
    )
    return _export(task.read_for_export(checkpoint), checkpoint, out, format, options)


@dataclass
class _Plan:
    """An export with everything checked, before the first file is written."""

    deploy: task.Deployable
    fmt: str
    kind: task.Kind
    exporter: str | None
    images: list[torch.Tensor]
    images_source: str
    report: str | None
    report_png: Path | None
    repo_id: str | None


def _plan(
    checkpoint: dict[str, Any], path: str | os.PathLike[str], fmt: str, options: ExportOptions
) -> _Plan:
    """Check the model / format pair and every option (one line naming the flag), read what the
    export needs: the deployed network, its check images, the report."""
    deploy = task.deployable(checkpoint, path, options.backbone_only, options.softmax)
    graph.check_format(deploy.network, fmt, deploy.module or "a backbone's features")
    exporter = graph.choose_exporter(deploy.network, options.onnx_exporter) if fmt == "onnx" else None
    report, report_png = _read_report(options.report)
    repo_id = hub.check_repo_id(options.push_to_hub) if options.push_to_hub else None
    kind = _kind(deploy)
    if fmt not in graph.GRAPH_FILES:
        if options.images is not None:
            raise ConfigError(
                "--images applies to --format onnx or torch-export (the graph is checked on them)"
            )
        images = parity.load_images([], deploy.image_size, kind, count=2)  # for the signature only
        return _Plan(deploy, fmt, kind, exporter, images, "", report, report_png, repo_id)
    files, where = parity.find_images(options.images, checkpoint)
    images = parity.load_images(files, deploy.image_size, kind)
    return _Plan(deploy, fmt, kind, exporter, images, where, report, report_png, repo_id)


def _export(
    checkpoint: dict[str, Any], path: str | os.PathLike[str], out: str | os.PathLike[str], fmt: str,
    options: ExportOptions,
) -> Path:  # fmt: skip
    """Check everything that can be checked, then write the folder."""
    plan = _plan(checkpoint, path, fmt, options)
    folder = prepare_output(out, options.overwrite)
    deploy, deployment = plan.deploy, _deployment(plan)
    if fmt in graph.GRAPH_FILES:
        deployment.update(_write_graph(plan, folder))
        deployment["files"][fmt] = graph.GRAPH_FILES[fmt]
    else:
        example = parity.example_input(plan.images, deploy.network)
        deployment["signature"] = graph.torch_signature(deploy.network, example)
    config = timm_config(deploy.spec, deploy.backbone)
    config["visiontransfer"].update(deployment=deployment, provenance=_provenance(checkpoint))
    written = {*_write_weights(deploy, folder, config), *deployment["files"].values()}
    if plan.report_png is not None:
        shutil.copyfile(plan.report_png, folder / card.REPORT_PNG)
        written.add(card.REPORT_PNG)
    _remove_stale(folder, written)
    sizes = {name: (folder / name).stat().st_size for name in sorted(written)}
    text = card.model_card(config, os.fspath(out), sizes, plan.report, plan.repo_id)
    atomic_write(folder / CARD, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    if plan.repo_id is not None:
        hub.push_to_hub(folder, plan.repo_id, private=options.private)
    return folder


def _kind(deploy: task.Deployable) -> task.Kind:
    """What the deployed network computes, from its outputs on a blank batch (a backbone: features)."""
    if deploy.module is None:
        return "features"
    blank = torch.zeros((graph.fixed_batch(deploy.network) or 2, 3, deploy.image_size, deploy.image_size),
                        dtype=torch.uint8)  # fmt: skip
    with torch.no_grad():
        return task.output_kind(deploy.network(blank))


def _deployment(plan: _Plan) -> dict[str, Any]:
    """The ``deployment`` block of ``config.json`` before the graph is written."""
    deploy = plan.deploy
    files = {"backbone": WEIGHTS, **({"task": task.TASK_WEIGHTS} if deploy.module else {})}
    return {"task": plan.kind, "module": deploy.module, "format": plan.fmt, "class_names": deploy.class_names,
            "softmax": bool(getattr(deploy.network, "softmax", False)), "files": files}  # fmt: skip


def _write_graph(plan: _Plan, folder: Path) -> dict[str, Any]:
    """Write ``model.onnx`` / ``model.pt2``, checked against PyTorch before it replaces anything:
    its signature, the check's record, the exporter."""
    deploy, fmt = plan.deploy, plan.fmt
    network, example = deploy.network, parity.example_input(plan.images, deploy.network)
    with torch.no_grad():
        names = graph.output_names(network, network(example))
    metadata = {
        "task": plan.kind,
        "module": str(deploy.module),
        "class_names": json.dumps(deploy.class_names),
        "architecture": deploy.spec.architecture,
        "visiontransfer": __version__,
    }
    record: dict[str, Any] = {}

    def write_and_check(tmp: str) -> None:
        if fmt == "onnx":
            import onnx
            import onnxruntime

            graph.write_onnx(network, example, tmp, plan.exporter or "dynamo", metadata)  # type: ignore[arg-type]
            onnx.checker.check_model(tmp)
            loaded: nn.Module = runtime.OnnxModel(tmp)
            record["signature"] = graph.onnx_signature(tmp)
            where = f"onnxruntime {onnxruntime.__version__} (CPU)"
        else:
            program = graph.write_program(network, example, tmp, metadata)
            loaded = runtime.load_program(tmp)
            record["signature"] = graph.program_signature(program, names)
            where = f"torch.export.load (PyTorch {torch.__version__})"
        checked = parity.check(network, loaded, plan.images, plan.kind)
        record["check"] = {"runtime": where, "source": plan.images_source, **checked}

    atomic_write(folder / graph.GRAPH_FILES[fmt], write_and_check)
    return {**record, **({"opset": graph.OPSET, "exporter": plan.exporter} if fmt == "onnx" else {})}


def _write_weights(deploy: task.Deployable, folder: Path, config: dict[str, Any]) -> list[str]:
    """The backbone (``model.safetensors``, the config in its metadata), ``config.json``,
    ``hubconf.py`` and ``task.safetensors``; the backbone is checked to load back."""
    tensors = {k: v.detach().contiguous() for k, v in deploy.backbone.state_dict().items()}
    text = json.dumps(config, indent=2, default=str)
    metadata = {METADATA_KEY: json.dumps(json.loads(text))}
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    atomic_write(folder / CONFIG, lambda tmp: Path(tmp).write_text(text + "\n"))
    atomic_write(folder / HUBCONF, lambda tmp: Path(tmp).write_text(hubconf_source()))
    written = [WEIGHTS, CONFIG, HUBCONF]
    if deploy.module:
        task.save_task_weights(deploy, folder / task.TASK_WEIGHTS)
        written.append(task.TASK_WEIGHTS)
    load_backbone_file(folder)  # the export reads back
    return written


def _provenance(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What the checkpoint records about its run (:mod:`visiontransfer.deploy.facts`)."""
    return {"data": facts.data_description(checkpoint), "metrics": facts.recorded_metrics(checkpoint),
            "pretraining": facts.pretraining(spec_from_checkpoint(checkpoint))}  # fmt: skip


def _read_report(report: str | os.PathLike[str] | None) -> tuple[str | None, Path | None]:
    """``report.md`` of a ``visiontransfer report`` folder (or the file itself), and its figure."""
    if report is None:
        return None, None
    where = Path(report)
    markdown = where / card.REPORT_MD if where.is_dir() else where
    if not markdown.is_file():
        raise ConfigError(
            f"--report={os.fspath(report)!r} holds no {card.REPORT_MD}: give the --out folder of a finished "
            "`visiontransfer report`"
        )
    figure = markdown.with_name(card.REPORT_PNG)
    return markdown.read_text(encoding="utf-8"), figure if figure.is_file() else None


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Remove what an earlier export into the folder wrote and this one did not (another format's
    graph, a task's weights, a report figure): the folder describes one model."""
    ours = {*graph.GRAPH_FILES.values(), task.TASK_WEIGHTS, card.REPORT_PNG}
    for name in ours - keep:
        (folder / name).unlink(missing_ok=True)


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


def load_model(path: str | os.PathLike[str], format: str | None = None) -> nn.Module:
    """The whole model of an export folder, ``.onnx`` / ``.pt2`` file or ``.ckpt``: ``(B, 3, H, W)``
    uint8 images → the task's outputs. See :func:`visiontransfer.deploy.runtime.load_model`."""
    return runtime.load_model(path, format)


class _CallableModule(types.ModuleType):
    """``visiontransfer.export(ckpt, out, format=...)``: once imported, this module is the package's
    ``export`` attribute (Python sets it), so calling the module calls :func:`export`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
