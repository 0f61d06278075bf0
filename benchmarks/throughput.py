"""Training throughput of every pretext: model-only ceiling against the full pipeline from JPEGs.

    python benchmarks/throughput.py --backbone resnet18 --image-size 32 --batch-size 64 --repeats 3

For each pretext task, two real Lightning ``fit`` runs of ``--steps`` steps (after ``--warmup``
untimed steps) on the same model, precision and batch:

(a) **ceiling**: uint8 batches already in memory on the device (no decoding, no augmentation);
(b) **pipeline**: ``PretrainDataModule`` over JPEG files on disk (decode, albumentations, workers).

It prints images/s of both and the ratio b/a (1.0: the data pipeline keeps up), medians over
``--repeats`` runs. With ``--decode-on-device`` it adds (c): the same files with JPEG decoding and
the crop moved to the training device (``--data.decode_on_device``: nvJPEG on a GPU), and c/a.
With ``--compile`` it adds (a) with the backbone compiled (``--model.compile true``) and its ratio
to eager (a); ``--ceiling-only`` skips (b) and (c). Then the CPU data pipeline alone, per core
(one process): our decode + albumentations preset against the same steps in torchvision v2
(TorchCodec's ``decode_jpeg`` + ``v2``); ``--skip-per-core`` leaves it out.

``--data`` is an image folder or a folder of tar shards (``visiontransfer shard``; the per-core
figures need a folder). ``--json FILE`` also writes the figures there, rewritten after each
pretext; a pretext that fails is recorded there with its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from visiontransfer.callbacks.summary import StepTimer
from visiontransfer.data import PretrainDataModule
from visiontransfer.data.decode import load_rgb
from visiontransfer.data.index import scan_images
from visiontransfer.data.shards import INDEX
from visiontransfer.data.transforms import train_transform
from visiontransfer.pretext import DINO, Colorization, ContrastivePatches, RotationPrediction, SimCLR

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "train"


METHODS = ("rotation", "colorization", "contrastive_patches", "simclr", "dino")


def make_module(
    method: str, backbone: str, image_size: int, channels_last: bool = False, compile: bool = False
) -> L.LightningModule:
    """A pretext module as its config builds it (small-image stem at up to 64 px)."""
    common: dict[str, Any] = {"backbone": backbone, "small_input_stem": image_size <= 64, "lr": 1e-3,
                              "channels_last": channels_last, "compile": compile}  # fmt: skip
    if method == "rotation":
        return RotationPrediction(**common)
    if method == "colorization":
        return Colorization(prior_batches=1, **common)
    if method == "contrastive_patches":
        patch = max(8, image_size // 4)
        return ContrastivePatches(patch_size=patch, patch_stride=patch // 2, **common)
    if method == "dino":  # configs/pretrain/dino.yaml's head; 6 local crops (and blur) above 64 px
        big = image_size > 64
        return DINO(out_dim=4096, hidden_dim=2048, bottleneck_dim=256, local_crops=6 if big else 2,
                    blur=big, **common)  # fmt: skip
    return SimCLR(**common)


class InMemory(Dataset[dict[str, Any]]):
    """Whole batches of random uint8 images held in the training device's memory: the ceiling's
    data costs nothing (``distinct`` batches, served in turn)."""

    def __init__(self, batches: int, batch_size: int, image_size: int, distinct: int = 4) -> None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        shape = (batch_size, 3, image_size, image_size)
        self.images = [
            torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
            for _ in range(min(distinct, batches))
        ]
        self.labels = torch.full((batch_size,), -1, dtype=torch.int64, device=device)
        self.batches, self.batch_size, self.device = batches, batch_size, device

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> dict[str, Any]:
        first = index * self.batch_size
        indices = torch.arange(first, first + self.batch_size, device=self.device)
        return {"image": self.images[index % len(self.images)], "label": self.labels, "index": indices}


def timed_fit(method: str, data: Any, args: argparse.Namespace, compile: bool = False) -> float:
    """Images/s of the timed steps of one fit."""
    L.seed_everything(0, verbose=False)
    module = make_module(method, args.backbone, args.image_size, args.channels_last, compile)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        max_steps=args.warmup + args.steps, precision=args.precision, logger=False, devices=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer],
    )  # fmt: skip
    if isinstance(data, DataLoader):
        trainer.fit(module, train_dataloaders=data)
    else:
        trainer.fit(module, datamodule=data)
    return args.steps * args.batch_size / timer.seconds


def ceiling_loader(args: argparse.Namespace) -> DataLoader[Any]:
    dataset = InMemory(args.warmup + args.steps + 1, args.batch_size, args.image_size)
    return DataLoader(dataset, batch_size=None, shuffle=False)


def is_shards(folder: Path) -> bool:
    """Whether ``folder`` holds tar shards (``visiontransfer shard``) rather than image files."""
    return (folder / INDEX).is_file()


def pipeline_data(args: argparse.Namespace, on_device: bool = False) -> PretrainDataModule:
    source = {"shards": str(args.data)} if is_shards(args.data) else {"root": str(args.data)}
    return PretrainDataModule(
        **source, image_size=args.image_size, batch_size=args.batch_size,
        num_workers=args.workers, val_fraction=0.01, augment="crop_flip", decode_on_device=on_device,
    )  # fmt: skip


Row = dict[str, Any]
"""One pretext's figures (images/s): ``ceiling``, ``pipeline``, ``device_decode``, ``compiled``
and their ratios to ``ceiling`` (absent where not measured), or ``error``."""


def method_figures(method: str, args: argparse.Namespace) -> Row:
    def median(make_data: Any, compile: bool = False) -> float:
        return statistics.median(timed_fit(method, make_data(), args, compile) for _ in range(args.repeats))

    a = median(lambda: ceiling_loader(args))
    row: Row = {"ceiling": a}
    if not args.ceiling_only:
        row["pipeline"] = median(lambda: pipeline_data(args))
        row["pipeline_ratio"] = row["pipeline"] / a
        if args.decode_on_device:
            row["device_decode"] = median(lambda: pipeline_data(args, on_device=True))
            row["device_decode_ratio"] = row["device_decode"] / a
    if args.compile:
        row["compiled"] = median(lambda: ceiling_loader(args), compile=True)
        row["compiled_ratio"] = row["compiled"] / a
    return row


def describe_row(method: str, row: Row) -> str:
    if "error" in row:
        return f"{method}: failed: {row['error']}"
    text = f"{method}: ceiling {row['ceiling']:.0f} img/s"
    if "pipeline" in row:
        text += f", pipeline {row['pipeline']:.0f} img/s, ratio {row['pipeline_ratio']:.2f}"
    if "device_decode" in row:
        text += f", decode on device {row['device_decode']:.0f} img/s ({row['device_decode_ratio']:.2f})"
    if "compiled" in row:
        text += f", compiled {row['compiled']:.0f} img/s ({row['compiled_ratio']:.2f})"
    return text


def write_json(path: Path, figures: dict[str, Any]) -> None:
    """Replace ``path`` atomically (a kill leaves the last complete version)."""
    temp = path.with_name(path.name + ".partial")
    temp.write_text(json.dumps(figures, indent=1))
    os.replace(temp, path)


def model_figures(args: argparse.Namespace, figures: dict[str, Any] | None = None) -> dict[str, Row]:
    """Each pretext's figures; with ``--json`` a failure is recorded and the next pretext runs."""
    rows: dict[str, Row] = {}
    for method in args.methods:
        try:
            rows[method] = method_figures(method, args)
        except Exception as error:
            if args.json is None:
                raise
            traceback.print_exc()
            rows[method] = {"error": f"{type(error).__name__}: {error}"}
        print(describe_row(method, rows[method]), flush=True)
        if args.json is not None and figures is not None:
            write_json(args.json, figures)
    return rows


def pipeline_per_core(args: argparse.Namespace) -> tuple[float, float]:
    """Images/s of one process: ours (PIL decode + albumentations) and torchvision v2's (with
    TorchCodec's JPEG decoder, which replaces torchvision's deprecated one)."""
    from torchcodec.decoders import decode_jpeg
    from torchvision.transforms import v2

    root = str(args.data)
    files = [str(Path(root, p)) for p in scan_images(root)[: args.pipeline_images]]
    ours = train_transform(args.image_size, "crop_flip")
    pad = args.image_size // 8
    theirs = v2.Compose(
        [v2.Resize(args.image_size, antialias=True), v2.CenterCrop(args.image_size),
         v2.RandomCrop(args.image_size, padding=pad, padding_mode="reflect"), v2.RandomHorizontalFlip()]
    )  # fmt: skip

    def run_ours() -> None:
        for path in files:
            ours(image=load_rgb(path))

    def run_theirs() -> None:
        for path in files:
            theirs(decode_jpeg(path))

    times: dict[str, list[float]] = {"ours": [], "torchvision": []}
    for _ in range(args.repeats):
        for name, run in (("ours", run_ours), ("torchvision", run_theirs)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return len(files) / statistics.median(times["ours"]), len(files) / statistics.median(times["torchvision"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of JPEG images")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS,
        default=["rotation", "colorization", "contrastive_patches", "simclr"],
    )  # fmt: skip
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    parser.add_argument(
        "--channels-last", action="store_true", help="channels-last layout (--model.channels_last)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipeline-images", type=int, default=2000)
    parser.add_argument(
        "--decode-on-device", action="store_true", help="also time (c): JPEG decode and crop on the device"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time (a) with the backbone compiled (--model.compile)"
    )
    parser.add_argument("--ceiling-only", action="store_true", help="skip (b) and (c): model-only figures")
    parser.add_argument("--skip-models", action="store_true", help="only the per-core pipeline figures")
    parser.add_argument("--skip-per-core", action="store_true", help="leave out the per-core figures")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"no image folder at {args.data}: pass --data")
    per_core = not args.skip_per_core and not is_shards(args.data)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    setting = f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, {args.precision}"
    if args.channels_last:
        setting += ", channels-last"
    print(f"device: {device}; {setting}")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
    figures: dict[str, Any] = {"device": device, "settings": settings, "methods": {}}
    if not args.skip_models:
        figures["methods"] = model_figures(args, figures)
    rows = figures["methods"]
    if per_core:
        ours, theirs = pipeline_per_core(args)
        figures["per_core"] = {"ours": ours, "torchvision_v2": theirs}
    if args.json is not None:
        write_json(args.json, figures)
    print_table(rows, args)
    if per_core:
        print(
            f"\nCPU data pipeline, one process: ours {ours:.0f} img/s, torchvision v2 {theirs:.0f} img/s "
            f"(ratio {ours / theirs:.2f})"
        )
    np.set_printoptions(precision=3)
    if any("error" in row for row in rows.values()):
        sys.exit(1)


def print_table(rows: dict[str, Row], args: argparse.Namespace) -> None:
    columns = [("ceiling", "ceiling a (img/s)", None)]
    if not args.ceiling_only:
        columns.append(("pipeline", "pipeline b (img/s)", "b/a"))
        if args.decode_on_device:
            columns.append(("device_decode", "decode on device c (img/s)", "c/a"))
    if args.compile:
        columns.append(("compiled", "compiled a' (img/s)", "a'/a"))
    head, rule = "| pretext |", "| --- |"
    for _, name, ratio in columns:
        head += f" {name} |" + (f" {ratio} |" if ratio else "")
        rule += " --- |" + (" --- |" if ratio else "")
    print(f"\n{head}\n{rule}")
    for method, row in rows.items():
        if "error" in row:
            print(f"| {method} | failed: {row['error']} |")
            continue
        line = f"| {method} |"
        for key, _, ratio in columns:
            line += f" {row[key]:.0f} |" + (f" {row[key + '_ratio']:.2f} |" if ratio else "")
        print(line)


if __name__ == "__main__":
    main()
