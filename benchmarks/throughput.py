"""Training throughput of every pretext: model-only ceiling against the full pipeline from JPEGs.

    python benchmarks/throughput.py --backbone resnet18 --image-size 32 --batch-size 64 --repeats 3

For each pretext task, two real Lightning ``fit`` runs of ``--steps`` steps (after ``--warmup``
untimed steps) on the same model, precision and batch:

(a) **ceiling**: uint8 batches already in memory on the device (no decoding, no augmentation);
(b) **pipeline**: ``PretrainDataModule`` over JPEG files on disk (decode, albumentations, workers).

It prints images/s of both and the ratio b/a (1.0: the data pipeline keeps up), medians over
``--repeats`` runs. With ``--decode-on-device`` it adds (c): the same files with JPEG decoding and
the crop moved to the training device (``--data.decode_on_device``: nvJPEG on a GPU), and c/a.
Then the CPU data pipeline alone, per core (one process): our decode +
albumentations preset against the same steps in torchvision v2 (TorchCodec's ``decode_jpeg`` + ``v2``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from visiontransfer.callbacks.summary import StepTimer
from visiontransfer.data import PretrainDataModule
from visiontransfer.data.datasets import collate_samples
from visiontransfer.data.decode import load_rgb
from visiontransfer.data.index import scan_images
from visiontransfer.data.transforms import train_transform
from visiontransfer.pretext import Colorization, ContrastivePatches, RotationPrediction, SimCLR

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "train"


def make_module(method: str, backbone: str, image_size: int) -> L.LightningModule:
    """A pretext module as its config builds it (small-image stem at up to 64 px)."""
    common: dict[str, Any] = {"backbone": backbone, "small_input_stem": image_size <= 64, "lr": 1e-3}
    if method == "rotation":
        return RotationPrediction(**common)
    if method == "colorization":
        return Colorization(prior_batches=1, **common)
    if method == "contrastive_patches":
        patch = max(8, image_size // 4)
        return ContrastivePatches(patch_size=patch, patch_stride=patch // 2, **common)
    return SimCLR(**common)


class InMemory(Dataset[dict[str, Any]]):
    """Random uint8 images held in memory: the ceiling's data costs nothing."""

    def __init__(self, count: int, image_size: int) -> None:
        self.images = torch.randint(0, 256, (count, 3, image_size, image_size), dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": -1, "index": index}


def timed_fit(method: str, data: Any, args: argparse.Namespace) -> float:
    """Images/s of the timed steps of one fit."""
    L.seed_everything(0, verbose=False)
    module = make_module(method, args.backbone, args.image_size)
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
    count = (args.warmup + args.steps + 1) * args.batch_size
    dataset = InMemory(count, args.image_size)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collate_samples)


def pipeline_data(args: argparse.Namespace, on_device: bool = False) -> PretrainDataModule:
    return PretrainDataModule(
        root=str(args.data), image_size=args.image_size, batch_size=args.batch_size,
        num_workers=args.workers, val_fraction=0.01, augment="crop_flip", decode_on_device=on_device,
    )  # fmt: skip


def model_figures(args: argparse.Namespace) -> list[tuple[str, float, float, float | None]]:
    rows = []
    for method in args.methods:
        ceiling = [timed_fit(method, ceiling_loader(args), args) for _ in range(args.repeats)]
        pipeline = [timed_fit(method, pipeline_data(args), args) for _ in range(args.repeats)]
        a, b = statistics.median(ceiling), statistics.median(pipeline)
        c = None
        if args.decode_on_device:
            c = statistics.median(
                [timed_fit(method, pipeline_data(args, on_device=True), args) for _ in range(args.repeats)]
            )
        rows.append((method, a, b, c))
        extra = "" if c is None else f", decode on device {c:.0f} img/s ({c / a:.2f})"
        print(
            f"{method}: ceiling {a:.0f} img/s, pipeline {b:.0f} img/s, ratio {b / a:.2f}{extra}", flush=True
        )
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
        "--methods", nargs="+", default=["rotation", "colorization", "contrastive_patches", "simclr"]
    )
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipeline-images", type=int, default=2000)
    parser.add_argument(
        "--decode-on-device", action="store_true", help="also time (c): JPEG decode and crop on the device"
    )
    parser.add_argument("--skip-models", action="store_true", help="only the per-core pipeline figures")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"no image folder at {args.data}: pass --data")
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    setting = f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, {args.precision}"
    print(f"device: {device}; {setting}")
    rows = [] if args.skip_models else model_figures(args)
    ours, theirs = pipeline_per_core(args)
    head = "| pretext | ceiling a (img/s) | pipeline b (img/s) | b/a |"
    rule = "| --- | --- | --- | --- |"
    if args.decode_on_device:
        head, rule = head + " decode on device c (img/s) | c/a |", rule + " --- | --- |"
    print(f"\n{head}\n{rule}")
    for method, a, b, c in rows:
        extra = "" if c is None else f" {c:.0f} | {c / a:.2f} |"
        print(f"| {method} | {a:.0f} | {b:.0f} | {b / a:.2f} |{extra}")
    print(
        f"\nCPU data pipeline, one process: ours {ours:.0f} img/s, torchvision v2 {theirs:.0f} img/s "
        f"(ratio {ours / theirs:.2f})"
    )
    np.set_printoptions(precision=3)


if __name__ == "__main__":
    main()
