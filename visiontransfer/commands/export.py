"""``visiontransfer export CKPT --out DIR [--format safetensors|onnx|torch-export]``: a checkpoint's
model in a hub-ready folder: the backbone as safetensors with timm's ``config.json``, ``hubconf.py``
and a model card; for a task module its whole model too, as ONNX or a ``torch.export`` program
checked against PyTorch (see :mod:`visiontransfer.export`)."""

from __future__ import annotations

import argparse

from visiontransfer.backbones.weights import CorruptCheckpointError, UnsafeCheckpointError
from visiontransfer.deploy.graph import EXPORTERS, FORMATS
from visiontransfer.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The ``visiontransfer export`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="visiontransfer export",
        description="Export the model of a visiontransfer checkpoint (any pretext or transfer module) into a "
        "hub-ready folder: backbone weights, timm config, torch.hub entry point, model card, and with "
        "--format onnx / torch-export the whole task model, checked against PyTorch on real images.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="a .ckpt written by visiontransfer fit")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--format",
        default="safetensors",
        choices=FORMATS,
        help="weights only (default), or the whole model as model.onnx (onnxruntime) or model.pt2 "
        "(torch.export.load)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")
    parser.add_argument(
        "--backbone-only",
        action="store_true",
        help="deploy the backbone's pooled features, not the task model",
    )
    parser.add_argument(
        "--softmax", action="store_true", help="a classifier returns probabilities, not logits"
    )
    parser.add_argument(
        "--images",
        help="images the exported graph is checked on (a folder, a file or a manifest); default: some of the "
        "checkpoint's own data when it is still there",
    )
    parser.add_argument(
        "--report", help="folder of a `visiontransfer report`: its label-efficiency table goes into the card"
    )
    parser.add_argument(
        "--onnx-exporter",
        choices=EXPORTERS,
        help="torch.onnx exporter (default dynamo; detectors always use torchscript)",
    )
    parser.add_argument(
        "--push-to-hub", metavar="REPO", help="upload the folder to this Hugging Face Hub repo"
    )
    parser.add_argument("--private", action="store_true", help="create the --push-to-hub repository private")
    return parser


def main(args: list[str]) -> None:
    """Entry point; a bad checkpoint, flag or output folder exits with status 2 and one line."""
    parser = build_parser()
    options = parser.parse_args(args)
    from visiontransfer.deploy.parity import ExportCheckError
    from visiontransfer.export import export

    try:
        out = export(
            options.checkpoint,
            options.out,
            options.format,
            overwrite=options.overwrite,
            backbone_only=options.backbone_only,
            softmax=options.softmax,
            images=options.images,
            report=options.report,
            onnx_exporter=options.onnx_exporter,
            push_to_hub=options.push_to_hub,
            private=options.private,
        )
    except (
        ConfigError,
        CorruptCheckpointError,
        UnsafeCheckpointError,
        ExportCheckError,
        FileNotFoundError,
        ValueError,
    ) as error:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(error).split())}\n")
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    print(f"exported to {out}: {', '.join(files)}")
    print(f'load the model with: visiontransfer.load_model("{out}")')
    print(f'      the backbone: visiontransfer.load_backbone("{out}")')
    print(f'                or: torch.hub.load("{out}", "backbone", source="local")')
    if options.push_to_hub:
        print(f"uploaded to https://huggingface.co/{options.push_to_hub}")
