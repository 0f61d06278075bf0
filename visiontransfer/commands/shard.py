"""``visiontransfer shard SRC --out DIR``: pack an image folder into tar shards (see
:mod:`visiontransfer.data.shards`)."""

from __future__ import annotations

import argparse
import json

from visiontransfer.data.shards import write_shards
from visiontransfer.errors import ConfigError


def main(args: list[str]) -> None:
    """``visiontransfer shard SRC --out DIR [--shard-size N] [--labeled]``."""
    parser = argparse.ArgumentParser(
        prog="visiontransfer shard",
        description="Pack an image folder into tar shards (WebDataset layout) plus index.json; "
        "train on them with --data.shards DIR.",
    )
    parser.add_argument("source", help="image folder (read recursively)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--shard-size", type=int, default=10_000, help="samples per shard")
    parser.add_argument("--labeled", action="store_true", help="class-per-folder tree: store labels")
    parser.add_argument("--val-fraction", type=float, default=0.01, help="share held out in val-*.tar")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation choice")
    options = parser.parse_args(args)
    try:
        index = write_shards(
            options.source,
            options.out,
            options.shard_size,
            options.labeled,
            options.val_fraction,
            options.seed,
        )
    except (ConfigError, FileNotFoundError) as error:
        parser.exit(2, f"visiontransfer shard: error: {error}\n")
    summary = json.loads(index.read_text())
    print(
        f"wrote {len(summary['shards'])} + {len(summary['val_shards'])} val shards, "
        f"{summary['samples']:,} + {summary['val_samples']:,} images, index {index}"
    )
    print(f"train on them with: visiontransfer fit --config ... --data.shards {options.out}")
