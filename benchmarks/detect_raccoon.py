"""Does pretraining pay for detection on a small labeled set? Fine-tune a detector on the raccoon set
(its own 160 / 40 split: 173 / 44 boxes) from a pretext-pretrained backbone and from a randomly
initialised one, with the same budget and seeds, and print mAP@50 (and mAP) for both.

    python benchmarks/detect_raccoon.py                       # pretrains RotNet itself first
    python benchmarks/detect_raccoon.py --backbone runs/rotation/version_0/checkpoints/last.ckpt

Without ``--backbone`` the script is self-contained: it first pretrains RotNet (Gidaris et al.
2018; ``visiontransfer.pretext.RotationPrediction``) on the 160 training images, labels unused.
Both detectors are ``visiontransfer.transfer.ObjectDetector`` trained with Lightning on the real
files (VOC xml); mAP is torchmetrics' COCO mAP on the 40 held-out images. The random-init baseline
is the pretrained network's exact architecture and stem. The default budget (resnet18, RotNet 30
epochs at 128 px, Faster R-CNN 8 epochs at 320 px, one seed) takes ~8 min on an idle 2-core CPU
(several times that when the cores are shared); ``--seeds 0 1 2`` repeats the fine-tuning and
reports mean ± std, and ``--epochs``, ``--pretrain-epochs``, ``--image-size``, ``--fpn-channels``,
``--full-rcnn`` scale it up on a GPU. Prints a Markdown table and writes ``detect_results.json``
under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from visiontransfer.backbones import BackboneSpec
from visiontransfer.backbones.weights import read_backbone_file
from visiontransfer.data import PretrainDataModule
from visiontransfer.data.detection import DetectionDataModule, read_split_names
from visiontransfer.pretext import RotationPrediction
from visiontransfer.stats import mean_std
from visiontransfer.transfer import ObjectDetector

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "raccoon"
TRAIN_SPLIT = "data/train_labels.csv"
TEST_SPLIT = "data/test_labels.csv"
CHEAP_RCNN = {
    "rpn_pre_nms_top_n_train": 600,
    "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 300,
    "box_batch_size_per_image": 64,
}
"""Faster R-CNN sampling sized for a CPU and few objects per image (torchvision: 2000 / 2000 / 1000 /
1000 proposals, 512 sampled RoIs); ``--full-rcnn`` restores torchvision's values."""


def _trainer(args: argparse.Namespace, epochs: int, root: Path) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, accelerator=args.accelerator, precision=args.precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root,
    )  # fmt: skip


def pretrain(args: argparse.Namespace) -> Path:
    """RotNet on the training images (no labels); returns the checkpoint."""
    names = read_split_names(str(args.data / TRAIN_SPLIT))
    manifest = args.out / "pretrain_images.txt"
    manifest.write_text("".join(f"{args.data / 'images' / n}\n" for n in names))
    L.seed_everything(args.seed)
    model = RotationPrediction(
        backbone=args.arch, small_input_stem=False, head_hidden_dim=256, optimizer="sgd",
        lr=args.pretrain_lr, weight_decay=5e-4, warmup_epochs=1,
    )  # fmt: skip
    data = PretrainDataModule(
        manifest=str(manifest), image_size=args.pretrain_image_size, batch_size=args.pretrain_batch_size,
        val_fraction=0.05, augment="crop_flip", num_workers=args.workers, seed=args.seed,
    )  # fmt: skip
    trainer = _trainer(args, args.pretrain_epochs, args.out / "pretrain")
    start = time.perf_counter()
    trainer.fit(model, data)
    minutes = (time.perf_counter() - start) / 60
    path = args.out / "rotation_pretrained.ckpt"
    trainer.save_checkpoint(path)
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
    print(
        f"pretrained RotNet ({args.pretrain_epochs} epochs, {minutes:.1f} min): {metrics} -> {path}",
        flush=True,
    )
    return path


def finetune(source: str, same_arch: dict[str, Any], args: argparse.Namespace, seed: int) -> dict[str, float]:
    """Train one detector from ``source`` and return its mAP on the 40 held-out images."""
    L.seed_everything(seed)
    data = DetectionDataModule(
        root=str(args.data), format="voc", train_split=TRAIN_SPLIT, val_split=TEST_SPLIT,
        image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers, seed=seed,
    )  # fmt: skip
    model = ObjectDetector(
        num_classes=data.num_classes, class_names=data.classes, image_size=args.image_size,
        detector=args.detector, backbone=source, fpn_channels=args.fpn_channels, bn_mode=args.bn_mode,
        trainable_stages=args.trainable_stages, out_indices=tuple(args.out_indices) or None,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=1,
        detector_kwargs=CHEAP_RCNN if args.detector == "fasterrcnn" and not args.full_rcnn else None,
        **same_arch,
    )  # fmt: skip
    trainer = _trainer(args, args.epochs, args.out / "finetune")
    start = time.perf_counter()
    trainer.fit(model, data)
    minutes = (time.perf_counter() - start) / 60
    trainer.limit_val_batches = 1.0
    results = trainer.validate(model, data, verbose=False)[0]
    return {
        "map_50": float(results["val/map_50"]),
        "map": float(results["val/map"]),
        "map_75": float(results["val/map_75"]),
        "train_minutes": minutes,
    }


def _spec(backbone: str) -> BackboneSpec:
    """Architecture, stem and kwargs of a checkpoint's or export folder's backbone."""
    return read_backbone_file(backbone)[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    add = parser.add_argument
    add("--backbone", help="pretext checkpoint (.ckpt) or export folder; default: pretrain RotNet here")
    add("--data", type=Path, default=DEFAULT_DATA, help="the raccoon set (images/, annotations/, data/)")
    add("--arch", default="resnet18", help="timm architecture pretrained when --backbone is not given")
    add("--pretrain-epochs", type=int, default=30)
    add("--pretrain-image-size", type=int, default=128)
    add("--pretrain-batch-size", type=int, default=16)
    add("--pretrain-lr", type=float, default=0.05)
    add("--detector", default="fasterrcnn", choices=["fasterrcnn", "retinanet", "fcos"])
    add("--epochs", type=int, default=8, help="fine-tuning epochs, the same for both backbones")
    add("--image-size", type=int, default=320, help="longest side of the detection images")
    add("--batch-size", type=int, default=4)
    add("--fpn-channels", type=int, default=64)
    add("--out-indices", type=int, nargs="*", default=[2, 3, 4], help="backbone levels into the FPN")
    add("--full-rcnn", action="store_true", help="torchvision's proposal and RoI counts")
    add("--bn-mode", default="train", choices=["train", "eval", "frozen"])
    add("--trainable-stages", type=int, default=None)
    add("--optimizer", default="adamw", choices=["adamw", "sgd"])
    add("--lr", type=float, default=3e-4)
    add("--weight-decay", type=float, default=1e-4)
    add("--workers", type=int, default=2)
    add("--accelerator", default="auto")
    add("--precision", default="32-true")
    add("--seed", type=int, default=0, help="seed of the pretraining")
    add("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds (mean ± std over them)")
    add("--out", type=Path, default=Path("runs/bench_detect"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    args = parse_args(argv)
    if not (args.data / TRAIN_SPLIT).is_file():
        sys.exit(f"raccoon set not found at {args.data} (needs {TRAIN_SPLIT}, images/, annotations/)")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    backbone = args.backbone or str(pretrain(args))
    spec = _spec(backbone)
    same_arch = {
        "small_input_stem": spec.small_input_stem,
        "in_chans": spec.in_chans,
        "backbone_kwargs": dict(spec.backbone_kwargs) or None,
    }
    sources = {"pretrained": (backbone, {}), "random init": (spec.architecture, same_arch)}
    table: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    for seed in args.seeds:
        for name, (source, arch_args) in sources.items():
            table[name].append(finetune(source, arch_args, args, seed))
            print(f"{name}, seed {seed}: {table[name][-1]}", flush=True)
    total = (time.perf_counter() - start) / 60
    print_table(table, args, spec.architecture, total)
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "results": table, "total_minutes": total}
    (args.out / "detect_results.json").write_text(json.dumps(payload, indent=2))
    return table


def _cell(runs: list[dict[str, float]], key: str) -> str:
    summary = mean_std([run[key] for run in runs])
    return f"{summary.mean:.3f}" if summary.n == 1 else summary.format()


def print_table(
    table: dict[str, list[dict[str, float]]], args: argparse.Namespace, arch: str, total: float
) -> None:
    seeds = f"{len(args.seeds)} seeds" if len(args.seeds) > 1 else f"seed {args.seeds[0]}"
    print(
        f"\n{args.detector} / {arch}, {args.image_size} px, {args.epochs} epochs on the 160 raccoon "
        f"training images, mAP on the 40 held-out ones, {seeds} (total {total:.1f} min)\n"
    )
    lines = ["| backbone | mAP@50 | mAP | mAP@75 | fine-tune min |", "| --- | --- | --- | --- | --- |"]
    for name, runs in table.items():
        cells = [_cell(runs, key) for key in ("map_50", "map", "map_75")]
        minutes = sum(run["train_minutes"] for run in runs) / len(runs)
        lines.append(f"| {name} | {' | '.join(cells)} | {minutes:.1f} |")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
