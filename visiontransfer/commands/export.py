"""``visiontransfer export CKPT --out DIR``: the backbone of a checkpoint as safetensors,
``config.json`` and ``hubconf.py`` (see :mod:`visiontransfer.export`)."""

from __future__ import annotations

import argparse

from visiontransfer.backbones.weights import CorruptCheckpointError, UnsafeCheckpointError
from visiontransfer.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The ``visiontransfer export`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="visiontransfer export",
        description="Export the backbone of a visiontransfer checkpoint (any pretext or transfer module).",
    )
    parser.add_argument("checkpoint", help="a .ckpt written by visiontransfer fit")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")
    return parser


def main(args: list[str]) -> None:
    """Entry point; a bad checkpoint or output folder exits with status 2 and one line."""
    parser = build_parser()
    options = parser.parse_args(args)
    from visiontransfer.export import export_backbone

    try:
        out = export_backbone(options.checkpoint, options.out, overwrite=options.overwrite)
    except (
        ConfigError,
        CorruptCheckpointError,
        UnsafeCheckpointError,
        FileNotFoundError,
        ValueError,
    ) as error:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(error).split())}\n")
    print(f"exported backbone to {out}: model.safetensors, config.json, hubconf.py")
    print(f'load it with: visiontransfer.load_backbone("{out}")')
    print(f'          or: torch.hub.load("{out}", "backbone", source="local")')
