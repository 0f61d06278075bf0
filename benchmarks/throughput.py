"""Training throughput of every pretext (and of classification fine-tuning and detection): model-only
ceiling against the full pipeline from JPEGs.

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

``--task classification`` times fine-tuning instead (``configs/transfer/finetune.yaml``'s
``ImageClassifier`` on a class-per-folder tree, e.g. CIFAR-10's ``train/``); ``--task detection``
a detector (``configs/transfer/detect_fasterrcnn.yaml``'s ``ObjectDetector``: ResNet-18, FPN 256,
torchvision's Faster R-CNN sampling) on a Pascal VOC folder (default: the raccoon set), where (a)
is the same real batches decoded once and held in memory, and (b) ``DetectionDataModule`` with
its workers. Every row also gives steps/s and how many cores the main process kept busy
(``main_cpu``: its CPU time over wall time; the loader workers are other processes).
``--profile N`` adds one profiled fit (torch.profiler, the main process, the timed steps of (b),
or of (a) with ``--ceiling-only``) and prints the N ops that took the most time, with their share.

    python benchmarks/throughput.py --task detection --data VOC_ROOT --image-size 256 --batch-size 4 \
        --steps 10 --repeats 3 --profile 10

Issue #21, measured here (2 CPU cores; the command above with ``--steps 8 --warmup 2 --repeats 1``
alternated 3 times, medians, on a Pascal VOC folder of 160 raccoon photos resized to 640x480 with 13
boxes each, the real one and jittered copies). ``--roi-align torchvision`` puts back torchvision's
own CPU RoIAlign, the pooling before the fix: a serial loop over RoIs whose backward recomputes the
bilinear weights for every channel, half of every step (main process 1.46 cores busy). With the
sparse-matrix RoIAlign of ``visiontransfer.transfer.detection.CPUMultiScaleRoIAlign`` (the same
numbers, on every core):

| Faster R-CNN, 256 px, batch 4 | (a) steps/s | main cores | (b) fit steps/s | main cores |
| --- | --- | --- | --- | --- |
| torchvision's RoIAlign (before) | 0.358 | 1.46 | 0.336 | 1.46 |
| sparse RoIAlign (after) | 0.718 | 1.97 | 0.656 | 1.89 |

After the fix a step's time goes to the convolutions (backbone, 256-wide FPN and RPN head: ~36 %),
the box head's first layer (512 RoIs per image x 12544 inputs: ~36 %), copies (~8 %) and NMS (~3 %);
the loader keeps up (b/a ~1). ``benchmarks/detect_raccoon.py`` trains a cheaper detector (FPN 64,
64 RoIs and 300 proposals per image, 320 px): ~0.5 s a step before and after, the README's raccoon
figure. The pretext tasks and classification fine-tuning (ResNet-18 at 32 px, batch 128) were
already using both cores (1.96-1.99), ~80 % of their time in convolutions, forward and backward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import MultiScaleRoIAlign

from visiontransfer.callbacks.summary import StepTimer
from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.data import ClassificationDataModule, PretrainDataModule
from visiontransfer.data.decode import load_rgb
from visiontransfer.data.detection import DetectionDataModule
from visiontransfer.data.index import scan_images
from visiontransfer.data.shards import INDEX
from visiontransfer.data.transforms import train_transform
from visiontransfer.pretext import DINO, Colorization, ContrastivePatches, RotationPrediction, SimCLR
from visiontransfer.transfer import ImageClassifier, ObjectDetector
from visiontransfer.transfer.detection import DetectorName

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_DATA = SHARED_DATA / "cifar10" / "train"
DEFAULT_DETECTION_DATA = SHARED_DATA / "raccoon"


METHODS = ("rotation", "colorization", "contrastive_patches", "simclr", "dino")
TASKS = ("pretext", "classification", "detection")
DETECTORS = ("fasterrcnn", "retinanet", "fcos")


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


def make_classifier(args: argparse.Namespace, num_classes: int) -> L.LightningModule:
    """``configs/transfer/finetune.yaml``'s classifier (a timm backbone, small-image stem at up to 64 px)."""
    return ImageClassifier(
        num_classes=num_classes, backbone=args.backbone, input_size=args.image_size,
        small_input_stem=args.image_size <= 64, strategy="finetune", layer_decay=0.7, bn_mode="train",
        optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup_epochs=1, channels_last=args.channels_last,
    )  # fmt: skip


def make_detector(detector: str, args: argparse.Namespace, num_classes: int) -> ObjectDetector:
    """``configs/transfer/detect_fasterrcnn.yaml``'s detector, its input size linked from the data as
    the CLI does; ``--roi-align torchvision`` puts back torchvision's own RoI pooling."""
    module = ObjectDetector(
        num_classes=num_classes, detector=cast(DetectorName, detector), backbone=args.backbone,
        input_size=args.image_size, small_input_stem=False, bn_mode="eval", fpn_channels=args.fpn_channels,
        optimizer="sgd", lr=0.02, weight_decay=1e-4, momentum=0.9, warmup_epochs=1,
    )  # fmt: skip
    heads = getattr(module.detector, "roi_heads", None)
    if heads is not None and args.roi_align == "torchvision":
        pool = heads.box_roi_pool
        heads.box_roi_pool = MultiScaleRoIAlign(pool.featmap_names, pool.output_size, pool.sampling_ratio)
    return module


class InMemory(Dataset[dict[str, Any]]):
    """Whole batches of random uint8 images held in the training device's memory: the ceiling's
    data costs nothing (``distinct`` batches, served in turn)."""

    def __init__(
        self, batches: int, batch_size: int, image_size: int, distinct: int = 4, num_classes: int = 0
    ) -> None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        shape = (batch_size, 3, image_size, image_size)
        self.images = [
            torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
            for _ in range(min(distinct, batches))
        ]
        labels = torch.arange(batch_size, device=device) % num_classes if num_classes else None
        self.labels = labels if labels is not None else torch.full((batch_size,), -1, device=device)
        self.batches, self.batch_size, self.device = batches, batch_size, device

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> dict[str, Any]:
        first = index * self.batch_size
        indices = torch.arange(first, first + self.batch_size, device=self.device)
        return {"image": self.images[index % len(self.images)], "label": self.labels, "index": indices}


class Rates(StepTimer):
    """:class:`StepTimer` that also reads the main process's CPU time over the timed steps."""

    def __init__(self, warmup: int) -> None:
        super().__init__(warmup)
        self.cpu_start = self.cpu_end = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        started = self.start is not None
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self.start is not None and not started:
            self.cpu_start = time.process_time()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:  # fmt: skip
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.start is not None:
            self.cpu_end = time.process_time()

    def figures(self, batch_size: int) -> dict[str, float]:
        """``images`` and ``steps`` per second, and ``main_cpu`` (cores the main process kept busy)."""
        seconds = self.seconds
        images = self.images or self.steps * batch_size
        return {"images": images / seconds, "steps": self.steps / seconds,
                "main_cpu": (self.cpu_end - self.cpu_start) / seconds}  # fmt: skip


class Profiled(L.Callback):
    """torch.profiler over the training steps after the first ``warmup`` (the main process)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.profiler: torch.profiler.profile | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        if trainer.global_step == self.warmup and self.profiler is None:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)

    def top_ops(self, count: int) -> list[dict[str, Any]]:
        """The ``count`` ops with the most self CPU time: name, milliseconds, share of the total."""
        if self.profiler is None:
            return []
        events = [e for e in self.profiler.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
        return [{"op": e.key, "ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total,
                 "calls": e.count} for e in events[:count]]  # fmt: skip


def timed_fit(
    make_module: Any, data: Any, args: argparse.Namespace, callback: L.Callback | None = None
) -> dict[str, float]:
    """Images/s, steps/s and main-process cores of the timed steps of one fit."""
    L.seed_everything(0, verbose=False)
    module = make_module()
    timer = Rates(args.warmup)
    trainer = L.Trainer(
        max_steps=args.warmup + args.steps, precision=args.precision, logger=False, devices=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer, *([callback] if callback else [])],
    )  # fmt: skip
    if isinstance(data, DataLoader):
        trainer.fit(module, train_dataloaders=data)
    else:
        trainer.fit(module, datamodule=data)
    return timer.figures(args.batch_size)


def ceiling_loader(args: argparse.Namespace, num_classes: int = 0) -> DataLoader[Any]:
    batches = args.warmup + args.steps + 1
    dataset = InMemory(batches, args.batch_size, args.image_size, num_classes=num_classes)
    return DataLoader(dataset, batch_size=None, shuffle=False)


class Held(Dataset[Any]):
    """Batches already collated, served in turn (the detection ceiling: real batches, decoded once)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Any:
        return self.batches[index]


def detection_data(args: argparse.Namespace, workers: int | None = None) -> DetectionDataModule:
    """``configs/transfer/detect_fasterrcnn.yaml``'s datamodule over ``--data`` (``--data-format``)."""
    return DetectionDataModule(
        root=str(args.data), format=args.data_format, image_size=args.image_size, batch_size=args.batch_size,
        augment="standard", num_workers=args.workers if workers is None else workers,
    )  # fmt: skip


def held_batches(data: DetectionDataModule, count: int) -> DataLoader[Any]:
    """The first ``count`` training batches of ``data`` (cycled if it has fewer), in memory."""
    data.setup("fit")
    loader, batches = data.train_dataloader(), list[Any]()
    while len(batches) < count:
        before = len(batches)
        batches.extend(batch for _, batch in zip(range(count - len(batches)), loader, strict=False))
        if len(batches) == before:
            raise SystemExit(f"no training batches in {data.root}")
    return DataLoader(Held(batches), batch_size=None, shuffle=False)


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
"""One pretext's (or the classifier's, or a detector's) figures (images/s): ``ceiling``,
``pipeline``, ``device_decode``, ``compiled`` and their ratios to ``ceiling`` (absent where not
measured), each with ``<key>_steps`` (steps/s) and ``<key>_main_cpu`` (cores the main process kept
busy); ``profile`` (``--profile``: the top ops); or ``error``."""


def task_figures(name: str, args: argparse.Namespace) -> Row:
    """One row: a pretext (``--task pretext``), the classifier, or a detector (``name``)."""
    if args.task == "detection":
        classes = detection_data(args, workers=0)
        num_classes = classes.num_classes

        def module(compile: bool = False) -> L.LightningModule:
            return make_detector(name, args, num_classes)

        def ceiling() -> Any:
            return held_batches(detection_data(args, workers=0), args.warmup + args.steps + 1)

        def pipeline(on_device: bool = False) -> Any:
            return detection_data(args)

    elif args.task == "classification":
        data = ClassificationDataModule(root=str(args.data), image_size=args.image_size, batch_size=2)
        data.setup("fit")
        num_classes = data.num_classes

        def module(compile: bool = False) -> L.LightningModule:
            return make_classifier(args, num_classes)

        def ceiling() -> Any:
            return ceiling_loader(args, num_classes)

        def pipeline(on_device: bool = False) -> Any:
            return ClassificationDataModule(
                root=str(args.data), image_size=args.image_size, batch_size=args.batch_size,
                num_workers=args.workers, augment="crop_flip",
            )  # fmt: skip

    else:

        def module(compile: bool = False) -> L.LightningModule:
            return make_module(name, args.backbone, args.image_size, args.channels_last, compile)

        def ceiling() -> Any:
            return ceiling_loader(args)

        def pipeline(on_device: bool = False) -> Any:
            return pipeline_data(args, on_device)

    def median(make_data: Any, compile: bool = False) -> dict[str, float]:
        runs = [timed_fit(lambda: module(compile), make_data(), args) for _ in range(args.repeats)]
        return {key: statistics.median(run[key] for run in runs) for key in runs[0]}

    def add(row: Row, key: str, figures: dict[str, float]) -> None:
        row.update({key: figures["images"], f"{key}_steps": figures["steps"],
                    f"{key}_main_cpu": figures["main_cpu"]})  # fmt: skip
        if key != "ceiling":
            row[f"{key}_ratio"] = figures["images"] / row["ceiling"]

    row: Row = {}
    add(row, "ceiling", median(ceiling))
    if not args.ceiling_only:
        add(row, "pipeline", median(pipeline))
        if args.decode_on_device and args.task == "pretext":
            add(row, "device_decode", median(lambda: pipeline(on_device=True)))
    if args.compile and args.task == "pretext":
        add(row, "compiled", median(ceiling, compile=True))
    if args.profile:
        profiled = Profiled(args.warmup)
        timed_fit(module, ceiling() if args.ceiling_only else pipeline(), args, profiled)
        row["profile"] = profiled.top_ops(args.profile)
    return row


def rate(value: float) -> str:
    """Images/s as a whole number, or with 3 significant digits below 100."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def describe_row(method: str, row: Row) -> str:
    if "error" in row:
        return f"{method}: failed: {row['error']}"
    text = (
        f"{method}: ceiling {rate(row['ceiling'])} img/s ({row['ceiling_steps']:.3g} steps/s, main process "
        f"{row['ceiling_main_cpu']:.2f} cores)"
    )
    if "pipeline" in row:
        text += (
            f", pipeline {rate(row['pipeline'])} img/s ({row['pipeline_steps']:.3g} steps/s, "
            f"{row['pipeline_main_cpu']:.2f} cores), ratio {row['pipeline_ratio']:.2f}"
        )
    if "device_decode" in row:
        text += f", decode on device {row['device_decode']:.0f} img/s ({row['device_decode_ratio']:.2f})"
    if "compiled" in row:
        text += f", compiled {row['compiled']:.0f} img/s ({row['compiled_ratio']:.2f})"
    return text


def write_json(path: Path, figures: dict[str, Any]) -> None:
    """Replace ``path`` atomically (a kill leaves the last complete version)."""
    atomic_write(path, lambda temp: Path(temp).write_text(json.dumps(figures, indent=1)))


def model_figures(args: argparse.Namespace, figures: dict[str, Any] | None = None) -> dict[str, Row]:
    """Each pretext's figures; with ``--json`` a failure is recorded and the next pretext runs."""
    rows: dict[str, Row] = {}
    names = {"pretext": args.methods, "classification": ["classification"], "detection": args.detectors}
    for method in names[args.task]:
        try:
            rows[method] = task_figures(method, args)
        except Exception as error:
            if args.json is None:
                raise
            traceback.print_exc()
            rows[method] = {"error": f"{type(error).__name__}: {error}"}
        print(describe_row(method, rows[method]), flush=True)
        print_profile(method, rows[method].get("profile", []))
        if args.json is not None and figures is not None:
            write_json(args.json, figures)
    return rows


def print_profile(name: str, ops: list[dict[str, Any]]) -> None:
    if ops:
        print(f"{name}: where the main process's time goes (self CPU time, timed steps)")
        for op in ops:
            print(f"  {op['share']:6.1%}  {op['ms']:9.1f} ms  {op['calls']:6d}x  {op['op']}")


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
    parser.add_argument(
        "--task", choices=TASKS, default="pretext",
        help="pretext (--methods), classification (fine-tuning) or detection (--detectors)",
    )  # fmt: skip
    parser.add_argument(
        "--data", type=Path, default=None,
        help=f"folder of JPEG images (class folders for classification; default {DEFAULT_DATA}) or, for "
        f"detection, an annotated folder (--data-format; default {DEFAULT_DETECTION_DATA})",
    )  # fmt: skip
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS,
        default=["rotation", "colorization", "contrastive_patches", "simclr"],
    )  # fmt: skip
    parser.add_argument("--detectors", nargs="+", choices=DETECTORS, default=["fasterrcnn"])
    parser.add_argument("--data-format", choices=("voc", "coco", "yolo"), default="voc")
    parser.add_argument("--fpn-channels", type=int, default=256, help="detection: width of the pyramid")
    parser.add_argument(
        "--roi-align", choices=("ours", "torchvision"), default="ours",
        help="Faster R-CNN's RoI pooling on CPU: ours (sparse-matrix, every core) or torchvision's",
    )  # fmt: skip
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="add a profiled fit and print its N most expensive ops")  # fmt: skip
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
    if args.data is None:
        args.data = DEFAULT_DETECTION_DATA if args.task == "detection" else DEFAULT_DATA
    if not args.data.is_dir():
        sys.exit(f"no image folder at {args.data}: pass --data")
    per_core = not args.skip_per_core and not is_shards(args.data) and args.task == "pretext"
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    setting = f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, {args.precision}"
    setting = f"{args.task}: {setting}"
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
    columns: list[tuple[str, str, str | None]] = [("ceiling", "ceiling a (img/s)", None)]
    if not args.ceiling_only:
        columns.append(("pipeline", "pipeline b (img/s)", "b/a"))
        if args.decode_on_device:
            columns.append(("device_decode", "decode on device c (img/s)", "c/a"))
    if args.compile:
        columns.append(("compiled", "compiled a' (img/s)", "a'/a"))
    columns = [c for c in columns if args.task == "pretext" or c[0] in ("ceiling", "pipeline")]
    label = {"pretext": "pretext", "classification": "task", "detection": "detector"}[args.task]
    head, rule = f"| {label} |", "| --- |"
    for _, name, ratio in columns:
        head += f" {name} | steps/s | main cores |" + (f" {ratio} |" if ratio else "")
        rule += " --- | --- | --- |" + (" --- |" if ratio else "")
    print(f"\n{head}\n{rule}")
    for method, row in rows.items():
        if "error" in row:
            print(f"| {method} | failed: {row['error']} |")
            continue
        line = f"| {method} |"
        for key, _, ratio in columns:
            line += f" {rate(row[key])} | {row[key + '_steps']:.3g} | {row[key + '_main_cpu']:.2f} |"
            line += f" {row[key + '_ratio']:.2f} |" if ratio else ""
        print(line)


if __name__ == "__main__":
    main()
