"""Run an exported model: :func:`load_model` gives a callable ``nn.Module`` from ``(B, 3, H, W)``
uint8 images to the task's outputs, whichever file holds it.

- ``model.onnx`` (or any ``.onnx`` file): :class:`OnnxModel`, onnxruntime on the CPU (or the
  providers given) behind the PyTorch call convention;
- ``model.pt2`` (or any ``.pt2``): the ``torch.export`` program's module;
- ``task.safetensors`` beside ``model.safetensors``: the task module rebuilt in PyTorch, its
  inference network; a backbone export alone: its pooled features;
- a ``.ckpt``: the same, straight from the checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from visiontransfer.backbones.weights import CONFIG, load_backbone_file, read_export, spec_from_export_config
from visiontransfer.deploy.graph import FORMATS, GRAPH_FILES
from visiontransfer.deploy.task import (
    TASK_WEIGHTS,
    FeatureNetwork,
    deployable,
    module_from_export,
    read_for_export,
)
from visiontransfer.errors import ConfigError


class OnnxModel(nn.Module):
    """An ONNX file run by onnxruntime, called like the PyTorch network it was exported from:
    a tensor in, a tensor (or a tuple of them) out, on the CPU.

    Args:
        path: The ``.onnx`` file.
        providers: onnxruntime execution providers (default: the CPU).
        threads: Intra-op threads (0: onnxruntime's default, one per core).
    """

    def __init__(
        self, path: str | os.PathLike[str], providers: Sequence[str] | None = None, threads: int = 0
    ) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.path = os.fspath(path)
        self.session = onnxruntime.InferenceSession(
            self.path, options, providers=list(providers or ["CPUExecutionProvider"])
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = tuple(output.name for output in self.session.get_outputs())

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Run the graph on ``images`` (any device: copied to the CPU)."""
        outputs = self.session.run(None, {self.input_name: images.detach().cpu().numpy()})
        tensors = tuple(torch.from_numpy(output) for output in outputs)
        return tensors[0] if len(tensors) == 1 else tensors


def load_program(path: str | os.PathLike[str]) -> nn.Module:
    """The module of a ``torch.export`` program (``.pt2``); no visiontransfer needed to run it."""
    with open(path, "rb") as handle:  # a handle: any file name (a temporary one while it is checked)
        return torch.export.load(handle).module()


def load_model(path: str | os.PathLike[str], format: str | None = None) -> nn.Module:
    """The model of an export folder, graph file or checkpoint, as a callable ``nn.Module``:
    ``(B, 3, H, W)`` uint8 images → the task's outputs (logits, ``(boxes, scores, labels)``, maps).

    Args:
        path: An export folder, a ``.onnx`` / ``.pt2`` file, or a ``.ckpt``.
        format: For a folder: ``onnx``, ``torch-export`` or ``safetensors`` (rebuilt in PyTorch);
            default: the format it was exported with.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ConfigError: a format the folder does not hold, or a file that is no export.
    """
    where = Path(path)
    if where.suffix == ".onnx" and where.is_file():
        return OnnxModel(where)
    if where.suffix == ".pt2" and where.is_file():
        return load_program(where)
    if where.is_file():
        return deployable(read_for_export(where), where).network
    if not where.is_dir():
        raise FileNotFoundError(f"no export folder, .onnx, .pt2 or .ckpt file at {os.fspath(path)!r}")
    chosen = format or str(_deployment(where).get("format", "safetensors"))
    if chosen not in FORMATS:
        raise ConfigError(f"format={chosen!r}: choose one of {', '.join(FORMATS)}")
    if chosen in GRAPH_FILES:
        graph = where / GRAPH_FILES[chosen]
        if not graph.is_file():
            raise ConfigError(
                f"format={chosen!r}: {os.fspath(where)!r} holds no {graph.name}; export the model with "
                f"--format {chosen} (or load it with format='safetensors')"
            )
        return OnnxModel(graph) if chosen == "onnx" else load_program(graph)
    return torch_model(where)


def torch_model(folder: Path) -> nn.Module:
    """The export rebuilt in PyTorch: the task module's inference network, else the backbone's features."""
    if (folder / TASK_WEIGHTS).is_file():
        config, backbone = read_export(folder)
        module = module_from_export(folder, spec_from_export_config(config), backbone)
        softmax = bool(_deployment(folder).get("softmax"))
        return module.inference_model(softmax=True) if softmax else module.inference_model()  # type: ignore[call-arg]
    model, spec = load_backbone_file(folder)
    return FeatureNetwork(model.eval(), spec.in_chans).eval()


def _deployment(folder: Path) -> dict[str, Any]:
    """The ``deployment`` block of an export's ``config.json`` (empty for older exports)."""
    config_file = folder / CONFIG
    if not config_file.is_file():
        return {}
    config = json.loads(config_file.read_text())
    return dict(config.get("visiontransfer", {}).get("deployment", {}))
