"""``visiontransfer embed --backbone B --root DIR --out OUT``: the pooled features of every image,
chunked and resumable, into files other tools read (see :mod:`visiontransfer.features.extract`)."""

from __future__ import annotations

import argparse
import json

from lightning.pytorch.utilities import rank_zero_only

from visiontransfer.commands.feature_args import bounded, one_line_errors
from visiontransfer.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The ``visiontransfer embed`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="visiontransfer embed",
        description="Embed every image of a folder, manifest or shard set with a backbone: "
        "OUT/embeddings.npy (one row per image), OUT/index.csv (index,path[,label]) and OUT/meta.json. "
        "Written in chunks: run the same command again after a kill and it goes on where it stopped. "
        "Without a source: the embedded set.",
    )
    parser.add_argument(
        "--backbone",
        required=True,
        help="a pretext or transfer .ckpt, an export folder, a .safetensors file or a timm name",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--root", help="image folder, read recursively (a class-per-folder tree gives labels)"
    )
    source.add_argument("--manifest", help="text file of image paths, or CSV with 'path' (and 'label')")
    source.add_argument("--shards", help="folder of tar shards written by `visiontransfer shard`")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--image-size",
        type=bounded(int, 8, "--image-size"),
        default=None,
        help="side of the centre crops (default: the checkpoint's training size, else the timm model's)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images per batch and process (default 64)"
    )
    parser.add_argument(
        "--num-workers", type=int, default=-1, help="loader workers per process (-1: one per core)"
    )
    parser.add_argument("--chunk-size", type=int, default=10_000, help="images per chunk (default 10000)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the rows")
    parser.add_argument(
        "--labels",
        choices=("auto", "none"),
        default="auto",
        help="auto: class folders, a manifest's label column or labeled shards give labels",
    )
    parser.add_argument(
        "--pretrained", action="store_true", help="timm name: timm's pretrained weights (download)"
    )
    parser.add_argument("--small-input-stem", action="store_true", help="timm name: the small-image stem")
    parser.add_argument(
        "--backbone-kwargs",
        type=json.loads,
        default=None,
        help="timm name: JSON keyword arguments of timm.create_model, e.g. '{\"img_size\": 32}'",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of a random-init backbone and the embedded set"
    )
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (default auto)")
    parser.add_argument("--devices", default="1", help="processes sharing the work (default 1; 'auto': all)")
    parser.add_argument("--strategy", default="auto", help="auto, or ddp with several devices")
    parser.add_argument("--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed")
    parser.add_argument("--overwrite", action="store_true", help="replace what OUT holds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(args: list[str]) -> None:
    """Entry point; bad input exits with status 2 and one line naming the flag."""
    parser = build_parser()
    options = parser.parse_args(args)
    from visiontransfer.features.extract import embed

    devices = int(options.devices) if options.devices.isdigit() else options.devices
    with one_line_errors(parser):
        if options.backbone_kwargs is not None and not isinstance(options.backbone_kwargs, dict):
            raise ConfigError(f"--backbone-kwargs={options.backbone_kwargs!r} must be a JSON object")
        result = embed(
            options.backbone,
            options.out,
            root=options.root,
            manifest=options.manifest,
            shards=options.shards,
            image_size=options.image_size,
            batch_size=options.batch_size,
            num_workers=options.num_workers,
            chunk_size=options.chunk_size,
            dtype=options.dtype,
            normalize=options.normalize,
            labels=options.labels,
            pretrained=options.pretrained,
            small_input_stem=options.small_input_stem,
            backbone_kwargs=options.backbone_kwargs,
            seed=options.seed,
            accelerator=options.accelerator,
            devices=devices,
            strategy=options.strategy,
            precision=options.precision,
            overwrite=options.overwrite,
            progress=not options.no_progress,
        )
    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    meta = result.meta
    skipped = f"; {meta['skipped']:,} unreadable files skipped (skipped_files.txt)" if meta["skipped"] else ""
    labels = f", labels of {len(result.classes)} classes" if result.classes else ""
    print(
        f"{len(result):,} images embedded into {options.out}: embeddings.npy ({len(result):,} x {result.dim} "
        f"{meta['plan']['dtype']}), index.csv{labels}, meta.json{skipped}"
    )
    print(f"next: visiontransfer neighbors {options.out} --query IMAGE_OR_FOLDER -k 10")
