"""Write a deployed network as a graph: ONNX (``model.onnx``) or a ``torch.export`` program
(``model.pt2``), with a dynamic batch axis, and the image size dynamic where the network takes any.

Which network goes through which exporter:

- classifiers, segmenters and backbones: ``torch.export`` (``torch.onnx.export(dynamo=True)``
  for ONNX), batch dynamic; height and width dynamic unless the network fixes them (a ViT built for
  one image size). ``onnx_exporter="torchscript"`` takes the TorchScript tracer instead (faster to
  export; deprecated by PyTorch since 2.9).
- torchvision's detectors (Faster R-CNN, RetinaNet, FCOS): ONNX through the TorchScript tracer,
  the path torchvision supports (opset 11 or later; here :data:`OPSET`), any image size, one image
  per call. ``torch.export`` cannot capture their postprocessing: ``--format torch-export`` is
  refused for them.

A network states what it needs through optional attributes: ``output_names``, ``batch_size``
(fixed; None: dynamic), ``onnx_exporter`` and ``unsupported_formats`` (format → reason).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from visiontransfer.errors import ConfigError

Format = Literal["safetensors", "onnx", "torch-export"]
FORMATS: tuple[Format, ...] = ("safetensors", "onnx", "torch-export")
"""``--format`` choices: weights only, or with an ONNX graph, or with a ``torch.export`` program."""
GRAPH_FILES = {"onnx": "model.onnx", "torch-export": "model.pt2"}
"""The graph file each format adds to the export folder."""
Exporter = Literal["dynamo", "torchscript"]
EXPORTERS: tuple[Exporter, ...] = ("dynamo", "torchscript")
OPSET = 18
"""ONNX opset of every export (torchvision's detectors need 11 or later; onnxruntime runs 18)."""
INPUT_NAME = "images"
"""Name of the input in exported graphs: ``(B, 3, H, W)`` uint8."""


def check_format(network: nn.Module, fmt: str, what: str) -> None:
    """Refuse an unknown format, or one the network does not support, naming ``--format``."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format={fmt!r}: choose one of {', '.join(FORMATS)}")
    reason = dict(getattr(network, "unsupported_formats", {}) or {}).get(fmt)
    if reason:
        raise ConfigError(f"--format={fmt} does not support {what}: {reason}")


def choose_exporter(network: nn.Module, requested: str | None) -> Exporter:
    """The ONNX exporter: the one the network needs, else ``requested``, else ``dynamo``."""
    needed = getattr(network, "onnx_exporter", None)
    if requested is not None and requested not in EXPORTERS:
        raise ConfigError(f"--onnx-exporter={requested!r}: choose one of {', '.join(EXPORTERS)}")
    if needed and requested and requested != needed:
        raise ConfigError(
            f"--onnx-exporter={requested} does not apply to {type(network).__name__}: it exports "
            f"through {needed} only; drop the flag"
        )
    return needed or requested or "dynamo"


def fixed_batch(network: nn.Module) -> int | None:
    """The batch size a network's graph is fixed to (None: dynamic)."""
    size = getattr(network, "batch_size", None)
    return None if size is None else int(size)


DETECTION_OUTPUTS = ("boxes", "scores", "labels")


def output_names(network: nn.Module, outputs: Any) -> list[str]:
    """The network's ``output_names``, else ``logits`` for one tensor (classifier, segmenter),
    ``boxes, scores, labels`` for three, ``output_<i>`` otherwise."""
    names = getattr(network, "output_names", None)
    count = len(outputs) if isinstance(outputs, tuple | list) else 1
    if names and len(names) == count:
        return list(names)
    if count == 1:
        return ["logits"]
    return list(DETECTION_OUTPUTS) if count == 3 else [f"output_{i}" for i in range(count)]


def takes_other_sizes(network: nn.Module, example: Tensor) -> bool:
    """Whether the network runs on images larger than ``example`` (a ViT with a fixed grid does not)."""
    bigger = torch.zeros(
        (*example.shape[:2], example.shape[2] + 32, example.shape[3] + 32), dtype=example.dtype
    )
    try:
        with torch.no_grad():
            network(bigger[:1] if fixed_batch(network) else bigger)
    except (RuntimeError, ValueError, AssertionError, IndexError):
        return False
    return True


def export_program(network: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of the network on ``example`` ``(B, 3, H, W)``: batch dynamic (unless the
    network fixes it), height and width dynamic where the network allows."""
    batch = None if fixed_batch(network) else torch.export.Dim("batch", min=1)
    shapes = ({0: batch, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO},)
    with torch.no_grad():
        return torch.export.export(network, (example,), dynamic_shapes=shapes, strict=False)


METADATA_FILE = "visiontransfer.json"
"""Name of the record stored inside ``model.pt2`` (``extra_files``); in ``model.onnx`` the same
entries are the model's metadata properties."""


def write_program(
    network: nn.Module, example: Tensor, path: str, metadata: dict[str, str] | None = None
) -> torch.export.ExportedProgram:
    """``model.pt2``: :func:`export_program`'s program, saved by ``torch.export.save`` with
    ``metadata`` as JSON in its extra file :data:`METADATA_FILE`."""
    program = export_program(network, example)
    extra = {METADATA_FILE: json.dumps(metadata or {})}
    with open(path, "wb") as handle:  # a handle: torch.export.save warns on names not ending in .pt2
        torch.export.save(program, handle, extra_files=extra)
    return program


def write_onnx(
    network: nn.Module, example: Tensor, path: str, exporter: Exporter, metadata: dict[str, str] | None = None
) -> None:
    """``model.onnx`` (:data:`OPSET`), input :data:`INPUT_NAME`, outputs named by the network,
    dynamic axes named as :data:`AXIS_NAMES`, ``metadata`` as the model's metadata properties."""
    import onnx

    with torch.no_grad():
        names = output_names(network, network(example))
    with warnings.catch_warnings():  # the tracer's and the deprecation's warnings are not the user's
        warnings.simplefilter("ignore")
        axes: dict[str, str | int] = {}
        if exporter == "dynamo":
            program = export_program(network, example)
            axes = program_axes(program)
            onnx_program = torch.onnx.export(
                program, (example,), input_names=[INPUT_NAME], output_names=names,
                opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
            )  # fmt: skip
            assert onnx_program is not None
            onnx_program.save(path)
        else:
            torch.onnx.export(
                network, (example,), path, input_names=[INPUT_NAME], output_names=names, opset_version=OPSET,
                dynamo=False, dynamic_axes=_dynamic_axes(network, example, names),
            )  # fmt: skip
    model = onnx.load(path)
    rename_axes(model, axes)
    onnx.helper.set_model_props(model, dict(metadata or {}))
    onnx.save(model, path)


AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
"""Names of the dynamic axes of the input (and of the outputs that share them)."""


def program_axes(program: torch.export.ExportedProgram) -> dict[str, str | int]:
    """``torch.export``'s symbol of each axis of the input → its name (:data:`AXIS_NAMES`) when the
    program left it dynamic, or its size when the program specialised it (a ViT built for one image
    size guards ``height == 32``). Axes bound to one symbol (a square-only model) keep the first name."""
    user_inputs = set(program.graph_signature.user_inputs)
    image = next(
        n.meta["val"] for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs
    )
    free = {str(symbol) for symbol in program.range_constraints}
    axes: dict[str, str | int] = {}
    for i, size in enumerate(image.shape):
        if isinstance(size, int) or str(size) in axes:
            continue
        symbols = {str(symbol) for symbol in size.node.expr.free_symbols}
        axes[str(size)] = AXIS_NAMES.get(i, f"axis_{i}") if symbols & free else int(size.node.hint)
    return axes


def rename_axes(model: Any, axes: dict[str, str | int]) -> None:
    """Apply :func:`program_axes` to every input, output and intermediate value of an ONNX
    ``ModelProto`` (whose dynamic axes carry ``torch.export``'s symbols)."""
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            new = axes.get(dim.dim_param) if dim.dim_param else None
            if isinstance(new, int):
                dim.dim_value = new  # clears dim_param (a oneof)
            elif new is not None:
                dim.dim_param = new


def _dynamic_axes(network: nn.Module, example: Tensor, names: Sequence[str]) -> dict[str, dict[int, str]]:
    """The TorchScript tracer's dynamic axes: batch (unless fixed), and height / width where the
    network takes other sizes; a detector's outputs have a dynamic number of detections."""
    axes: dict[int, str] = {} if fixed_batch(network) else {0: "batch"}
    if takes_other_sizes(network, example):
        axes.update({2: "height", 3: "width"})
    with torch.no_grad():
        outputs = network(example)
    dynamic = {INPUT_NAME: axes}
    for name, out in zip(names, outputs if isinstance(outputs, tuple | list) else [outputs], strict=True):
        if fixed_batch(network):  # detections: as many as were found
            dynamic[name] = {0: "detections"}
        else:
            dynamic[name] = {0: "batch", **({2: "height", 3: "width"} if out.ndim == 4 and 2 in axes else {})}
    return dynamic


def torch_signature(network: nn.Module, example: Tensor) -> dict[str, list[dict[str, Any]]]:
    """Names, element types and shapes of the network's input and outputs on ``example``, the
    batch axis named ``batch`` (unless fixed) and a detector's first axis ``detections``."""
    with torch.no_grad():
        outputs = network(example)
    values = list(outputs) if isinstance(outputs, tuple | list) else [outputs]
    fixed = fixed_batch(network)

    def describe(value: Tensor, name: str, first: str) -> dict[str, Any]:
        shape: list[Any] = list(value.shape)
        shape[0] = first
        return {"name": name, "dtype": str(value.dtype).removeprefix("torch."), "shape": shape}

    batch = str(fixed) if fixed else "batch"
    first = "detections" if fixed else "batch"
    names = output_names(network, outputs)
    return {"inputs": [describe(example, INPUT_NAME, batch)],
            "outputs": [describe(v, n, first) for v, n in zip(values, names, strict=True)]}  # fmt: skip


def onnx_signature(path: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """Names, element types and shapes (a name for a dynamic axis) of an ONNX file's inputs and outputs."""
    import onnx

    graph = onnx.load(os.fspath(path), load_external_data=False).graph

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            out.append({"name": value.name, "dtype": dtype, "shape": dims})
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


def program_signature(
    program: torch.export.ExportedProgram, names: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """The same for a ``torch.export`` program (axes as :func:`program_axes` says), outputs named
    ``names``."""
    user_inputs = set(program.graph_signature.user_inputs)
    nodes = list(program.graph.nodes)
    image = next(n.meta["val"] for n in nodes if n.op == "placeholder" and n.name in user_inputs)
    axes = program_axes(program)

    def describe(value: Any, name: str) -> dict[str, Any]:
        dims = [d if isinstance(d, int) else axes.get(str(d), str(d)) for d in value.shape]
        return {"name": name, "dtype": str(value.dtype).removeprefix("torch."), "shape": dims}

    results = next(n for n in nodes if n.op == "output").args[0]
    values = [r.meta["val"] for r in results if hasattr(r, "meta") and "val" in r.meta]
    outputs = [describe(value, name) for value, name in zip(values, names, strict=False)]
    return {"inputs": [describe(image, INPUT_NAME)], "outputs": outputs}
