"""The model card (``README.md``) of an export folder, written from its ``config.json`` alone: what
the model is, how it was trained and on what, the metrics its checkpoint recorded, the
label-efficiency table of a ``visiontransfer report`` when one is given, intended use, and the
exact lines that load it (visiontransfer, timm, ``torch.hub``, onnxruntime, ``torch.export``).

The YAML header is the Hugging Face Hub's model-card metadata (``library_name: timm``: the Hub
shows timm's loading snippet; the backbone in ``model.safetensors`` loads with it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from visiontransfer.deploy.graph import GRAPH_FILES, INPUT_NAME

PIPELINE_TAGS = {
    "classification": "image-classification",
    "detection": "object-detection",
    "segmentation": "image-segmentation",
    "features": "image-feature-extraction",
}
"""Hub ``pipeline_tag`` of each kind of deployed network."""
REPORT_MD = "report.md"
"""The report of ``visiontransfer report`` (``--report`` names its folder)."""
REPORT_PNG = "report.png"
"""Its figure, copied beside the card."""


def model_card(
    config: Mapping[str, Any],
    where: str,
    files: Mapping[str, int],
    report: str | None = None,
    repo_id: str | None = None,
) -> str:
    """The card's Markdown.

    Args:
        config: The export's ``config.json`` (timm fields, ``visiontransfer`` block with
            ``deployment`` and ``provenance``).
        where: The export folder as the user named it (used in the loading lines).
        files: Name → size in bytes of the files in the folder.
        report: ``report.md`` of ``visiontransfer report`` (its table and settings are included).
        repo_id: The Hub repository the folder is pushed to (loading lines for it too).
    """
    block = config["visiontransfer"]
    deployment = block.get("deployment", {})
    kind = deployment.get("task", "features")
    sections = [
        _header(block, kind),
        f"# {where.rstrip('/').split('/')[-1]}\n\n{_summary(block, kind)}",
        _model_section(config, deployment),
        _training_section(block),
        _metrics_section(block.get("provenance", {}).get("metrics", {})),
        _report_section(report) if report else "",
        _use_section(block, kind),
        _loading_section(config, where, repo_id),
        _check_section(deployment),
        _files_section(files),
    ]
    return "\n\n".join(s for s in sections if s).rstrip() + "\n"


def _header(block: Mapping[str, Any], kind: str) -> str:
    fmt = block.get("deployment", {}).get("format", "safetensors")
    tags = ["visiontransfer", "timm", PIPELINE_TAGS[kind], *(["onnx"] if fmt == "onnx" else [])]
    return "\n".join(
        [
            "---",
            "library_name: timm",
            f"pipeline_tag: {PIPELINE_TAGS[kind]}",
            "tags:",
            *(f"- {t}" for t in tags),
            "---",
        ]
    )


def _classes(deployment: Mapping[str, Any]) -> list[str]:
    return list(deployment.get("class_names") or [])


def _summary(block: Mapping[str, Any], kind: str) -> str:
    deployment = block.get("deployment", {})
    arch = f"`{block['architecture']}` backbone"
    count = len(_classes(deployment))
    classes = f"{count} class{'' if count == 1 else 'es'}"
    what = {
        "classification": f"An image classifier ({classes}) over a {arch}",
        "detection": f"An object detector ({classes}) over a {arch}",
        "segmentation": f"A semantic segmenter ({classes}) over a {arch}",
        "features": f"A {arch} (pooled features)",
    }[kind]
    trained = f", trained by visiontransfer's `{block['method']}`" if block.get("method") else ""
    earlier = block.get("provenance", {}).get("pretraining") or {}
    start = f" from a backbone pretrained by `{earlier['method']}`" if earlier.get("method") else ""
    fmt = deployment.get("format", "safetensors")
    graph = (
        f" as {'ONNX' if fmt == 'onnx' else 'a torch.export program'} (`{GRAPH_FILES[fmt]}`)"
        if fmt in GRAPH_FILES
        else ""
    )
    return f"{what}{trained}{start}. Exported by visiontransfer {block.get('version', '?')}{graph}."


def _shape(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _model_section(config: Mapping[str, Any], deployment: Mapping[str, Any]) -> str:
    block = config["visiontransfer"]
    stem = (
        "small-image stem (the stem's early downsampling removed)"
        if block.get("small_input_stem")
        else "standard stem"
    )
    size = block.get("image_size")
    rows = [
        (
            "architecture",
            f"`{block['architecture']}` (timm), {stem}, {block.get('in_chans', 3)} input channel(s), "
            f"{config.get('num_features')} features",
        ),
        ("trained on", _trained_size(size, deployment.get("task"))),
    ]
    signature = deployment.get("signature") or {}
    for value in signature.get("inputs", []):
        rows.append(
            (
                f"input `{value['name']}`",
                f"{_shape(value['shape'])} {value['dtype']}, RGB 0..255; normalisation inside the model",
            )
        )
    for value in signature.get("outputs", []):
        rows.append((f"output `{value['name']}`", f"{_shape(value['shape'])} {value['dtype']}"))
    classes = _classes(deployment)
    if classes:
        numbering = " (labels 1..C, 0 is the background)" if deployment.get("task") == "detection" else ""
        rows.append(("classes" + numbering, ", ".join(f"`{c}`" for c in classes)))
    if block.get("in_chans") == 1:
        rows.append(
            ("colour", "the backbone sees the CIE L lightness of RGB images (computed inside the model)")
        )
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"## Model\n\n| | |\n| --- | --- |\n{table}"


def _trained_size(size: int | None, kind: str | None) -> str:
    if not size:
        return "images of an unrecorded size"
    return (
        f"images resized to a longest side of {size} px"
        if kind == "detection"
        else f"{size} × {size} px images"
    )


def _hyperparameters(values: Mapping[str, Any]) -> str:
    shown = sorted((k, v) for k, v in values.items() if v is not None and k != "class_names")
    rows = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, default=str)}" for k, v in shown)
    return "```json\n{\n" + rows + "\n}\n```"


def _data_line(data: Mapping[str, Any] | None) -> str:
    if not data:
        return "not recorded in the checkpoint"
    images = data.get("images") or {}
    counts = ", ".join(f"{split} {count:,}" for split, count in images.items() if split != "predict")
    size = f", {data['image_size']} px" if data.get("image_size") else ""
    images_text = f": {counts} images" if counts else ""
    return f"{data.get('source')} (`{data.get('datamodule')}`{images_text}{size})"


def _training_section(block: Mapping[str, Any]) -> str:
    provenance = block.get("provenance", {})
    lines = ["## Training", ""]
    if block.get("method"):
        lines += [
            f"- method: `{block['method']}`, with these hyperparameters:",
            "",
            _hyperparameters(block.get("hyperparameters") or {}),
            "",
        ]
    lines.append(f"- data: {_data_line(provenance.get('data'))}")
    earlier = provenance.get("pretraining")
    hparams = block.get("hyperparameters") or {}
    if earlier:
        lines.append(
            f"- backbone started from `{earlier['source']}`"
            + (
                f", pretrained by `{earlier['method']}`"
                if earlier.get("method")
                else " (no visiontransfer checkpoint or export there at export time: how it was trained "
                "is not recorded)"
            )
        )
        if earlier.get("method"):
            lines += [
                f"- pretraining data: {_data_line(earlier.get('data'))}",
                "",
                "Pretraining hyperparameters:",
                "",
                _hyperparameters(earlier.get("hyperparameters") or {}),
            ]
    elif hparams.get("pretrained"):
        lines.append("- backbone started from timm's pretrained weights")
    elif block.get("method"):
        lines.append("- backbone started from a random initialisation")
    return "\n".join(lines)


def _held_out_first(item: tuple[str, float]) -> tuple[int, str]:
    """Test metrics first, then validation, then the rest (training)."""
    stage = item[0].split("/")[0]
    return ({"test": 0, "val": 1}.get(stage, 2), item[0])


def _metrics_section(metrics: Mapping[str, Any]) -> str:
    logged, best = metrics.get("logged") or {}, metrics.get("best") or {}
    if not logged and not best:
        return (
            "## Metrics\n\nThe checkpoint records no metrics (it was saved without validation, "
            "or by a pretext module): evaluate the model on your data with `visiontransfer test`."
        )
    when = (
        f" (epoch {metrics.get('epoch')}, step {metrics.get('step')})"
        if metrics.get("step") is not None
        else ""
    )
    lines = ["## Metrics", "", f"Recorded in the checkpoint when it was written{when}:", ""]
    if logged:
        lines += [
            "| metric | value |",
            "| --- | --- |",
            *(f"| `{k}` | {v:.4f} |" for k, v in sorted(logged.items(), key=_held_out_first)),
            "",
        ]
    for monitor, value in best.items():
        lines.append(f"Best `{monitor}` kept by ModelCheckpoint: {value:.4f}.")
    return "\n".join(lines).rstrip()


def _report_section(report: str) -> str:
    """``report.md``'s table and settings (its per-cell commands left out), headings one level down."""
    body = report.split("## Commands")[0]
    lines = [line for line in body.splitlines() if not line.startswith("# ")]
    lines = [("#" + line if line.startswith("## ") else line) for line in lines]
    return "## Label efficiency (`visiontransfer report`)\n\n" + "\n".join(lines).strip()


def _use_section(block: Mapping[str, Any], kind: str) -> str:
    data = _data_line(block.get("provenance", {}).get("data"))
    purpose = {
        "classification": "Classifying images like the ones it was trained on into the classes above.",
        "detection": "Finding the objects of the classes above in images like the ones it was trained on.",
        "segmentation": "Labelling every pixel with one of the classes above, in images like the "
        "training ones.",
        "features": "Pooled image features for retrieval, clustering, kNN or linear probes, and as the "
        "starting point of a transfer (`visiontransfer fit --model.backbone THIS_FOLDER`).",
    }[kind]
    return (
        f"## Intended use and limitations\n\n{purpose} Trained on {data}; how well it does on other "
        "images (another domain, camera, resolution) is unknown: measure it on labelled images of your own "
        "before relying on it. It is a research model, not meant for decisions about people."
    )


def _loading_section(config: Mapping[str, Any], where: str, repo_id: str | None) -> str:
    block = config["visiontransfer"]
    deployment = block.get("deployment", {})
    fmt, kind = deployment.get("format", "safetensors"), deployment.get("task", "features")
    shape = "(1, 3, H, W)" if kind == "detection" else "(B, 3, H, W)"
    outputs = (
        ", ".join(v["name"] for v in (deployment.get("signature") or {}).get("outputs", [])) or "outputs"
    )
    folder = f'"{where}"'
    lines = ["## How to use", ""]
    if repo_id:
        lines += [
            "From the Hub, download the folder first (the lines below then take `folder`):",
            "",
            "```python",
            "from huggingface_hub import snapshot_download",
            "",
            f'folder = snapshot_download("{repo_id}")',
            "```",
            "",
        ]
        folder = "folder"
    lines += [
        "```python",
        "import visiontransfer",
        "",
        f"model = visiontransfer.load_model({folder})  # {shape} uint8 -> {outputs}",
        f"backbone = visiontransfer.load_backbone({folder})  # timm model: normalised float -> "
        f"(B, {config.get('num_features')}) features",
        "```",
        "",
    ]
    timm_name = f"hf-hub:{repo_id}" if repo_id else f"local-dir:{where}"
    if block.get("small_input_stem"):
        lines += [
            "timm alone cannot rebuild this backbone's small-image stem: use `load_backbone` above or "
            "`torch.hub`:",
            "",
        ]
    else:
        lines += [
            "Without visiontransfer (timm and safetensors):",
            "",
            "```python",
            "import timm",
            "",
            f'backbone = timm.create_model("{timm_name}", pretrained=True)  # pooled features',
            "```",
            "",
        ]
    lines += [
        "```python",
        "import torch",
        "",
        f'backbone = torch.hub.load({folder}, "backbone", source="local", trust_repo=True)',
        "```",
    ]
    if fmt in GRAPH_FILES:
        file = GRAPH_FILES[fmt]
        path = f'f"{{folder}}/{file}"' if repo_id else f'"{where.rstrip("/")}/{file}"'
        unpack = outputs if "," in outputs else f"{outputs},"
        run = f'session.run(None, {{"{INPUT_NAME}": images}})'
        code = {
            "onnx": ["import onnxruntime", "", f"session = onnxruntime.InferenceSession({path})",
                     f"{unpack} = {run}  # images: numpy {shape} uint8"],
            "torch-export": ["import torch", "", f"program = torch.export.load({path}).module()",
                             f"{outputs} = program(images)  # images: {shape} uint8 tensor"],
        }[fmt]  # fmt: skip
        lines += ["", "```python", *code, "```"]
    return "\n".join(lines)


def _check_section(deployment: Mapping[str, Any]) -> str:
    check = deployment.get("check")
    if not check:
        return ""
    file = GRAPH_FILES.get(deployment.get("format", ""), "the export")
    runtime = check.get("runtime", "its runtime")
    where = f"{check['images']} images from {check.get('source', '?')}"
    if "max_abs_diff" in check:
        result = (
            f"largest absolute difference to PyTorch {check['max_abs_diff']:.2g} (allowed "
            f"{check['tolerance']:g}), batches of {' and '.join(map(str, check['batches']))}"
        )
    else:
        result = (
            f"{check['detections']} detections matched PyTorch's (boxes within {check['box_tolerance']} px, "
            f"scores within {check['score_tolerance']}); {check['unmatched_at_cutoff']} at the score cut-off"
        )
    return f"## Export check\n\n`{file}` was run in {runtime} on {where}: {result}."


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e5 else f"{count / 1e3:.1f} kB"


def _files_section(files: Mapping[str, int]) -> str:
    meaning = {
        "model.safetensors": "the backbone's weights, plain timm keys",
        "config.json": "timm's config (architecture, input size, mean, std) and visiontransfer's record",
        "hubconf.py": "`torch.hub` entry point (`backbone`)",
        "task.safetensors": "the task's weights beside the backbone (head, pyramid, decoder)",
        "model.onnx": "the whole model, ONNX",
        "model.pt2": "the whole model, `torch.export` program",
        REPORT_PNG: "label-efficiency figure",
        "README.md": "this card",
    }
    rows = [f"| `{name}` | {meaning.get(name, '')} | {_size(size)} |" for name, size in sorted(files.items())]
    return "## Files\n\n| file | what | size |\n| --- | --- | --- |\n" + "\n".join(rows)
