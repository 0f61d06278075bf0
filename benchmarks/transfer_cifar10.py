"""Does pretraining pay on CIFAR-10? Transfer a pretext backbone and a randomly initialised one at
1%, 10% and 100% of the training labels, by linear probe and fine-tuning, all in one run.

    python benchmarks/transfer_cifar10.py --backbone runs/bench_pretext/rotation.ckpt

Every cell trains ``visiontransfer.transfer.ImageClassifier`` with Lightning on real CIFAR-10
files (stratified, seeded label subsets; 10% of the training images held out for validation)
and reports top-1 on ``--test-images`` test images. The random-init baseline is the same
architecture and stem, read from the checkpoint. Prints a Markdown table and writes
``transfer_results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from visiontransfer.data import ClassificationDataModule
from visiontransfer.export import backbone_spec, read_checkpoint
from visiontransfer.transfer import ImageClassifier

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
RECIPES = {
    "linear_probe": {"strategy": "linear_probe", "lr": 1e-2, "weight_decay": 0.0, "warmup_epochs": 0},
    "finetune": {"strategy": "finetune", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1},
}


def epochs_for(fraction: float, base: int) -> int:
    """Fewer epochs for more labels, so each cell gets a comparable number of steps (at least 2)."""
    return max(2, round(base / (fraction * 100) ** 0.5))


def run_cell(
    source: str, spec: dict[str, Any], recipe: str, fraction: float, args: argparse.Namespace
) -> float:
    """Train one (backbone, recipe, label fraction) cell; return test top-1."""
    L.seed_everything(args.seed)
    same_arch: dict[str, Any] = {}
    if source == spec["architecture"]:  # random init: rebuild the pretrained network's exact form
        same_arch = {
            "small_input_stem": spec["small_input_stem"],
            "in_chans": spec.get("in_chans", 3),
            "backbone_kwargs": spec.get("backbone_kwargs") or None,
        }
    model = ImageClassifier(backbone=source, **same_arch, **RECIPES[recipe])
    data = ClassificationDataModule(
        root=str(args.data), label_fraction=fraction, image_size=32, batch_size=args.batch_size,
        num_workers=args.workers, seed=args.seed, augment="crop_flip",
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=epochs_for(fraction, args.base_epochs), precision=args.precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, limit_test_batches=args.test_images // args.batch_size,
    )  # fmt: skip
    trainer.fit(model, data)
    return float(trainer.test(model, data, verbose=False)[0]["test/top1"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", required=True, help="pretext checkpoint (.ckpt) or export folder")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--base-epochs", type=int, default=30, help="epochs at 1%% labels; fewer for more")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--test-images", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_transfer"))
    args = parser.parse_args(argv)
    if not (args.data / "train").is_dir():
        sys.exit(f"CIFAR-10 not found at {args.data}")
    args.out.mkdir(parents=True, exist_ok=True)
    spec = backbone_spec(read_checkpoint(args.backbone)) if args.backbone.endswith(".ckpt") else None
    if spec is None:
        config = json.loads((Path(args.backbone) / "config.json").read_text())
        spec = {
            "architecture": config["architecture"],
            "small_input_stem": config["visiontransfer"]["small_input_stem"],
            "in_chans": config["model_args"].get("in_chans", 3),
            "backbone_kwargs": {k: v for k, v in config["model_args"].items() if k != "in_chans"},
        }
    sources = {"pretrained": args.backbone, "random init": spec["architecture"]}
    table: dict[str, dict[str, float]] = {}
    for recipe in args.recipes:
        for name, source in sources.items():
            row = f"{recipe} / {name}"
            table[row] = {}
            for fraction in args.fractions:
                table[row][f"{fraction:.0%}"] = run_cell(source, spec, recipe, fraction, args)
                print(f"{row} @ {fraction:.0%}: {table[row][f'{fraction:.0%}']:.3f}", flush=True)
    print_table(table, args.fractions)
    (args.out / "transfer_results.json").write_text(
        json.dumps(
            {"args": vars(args) | {"data": str(args.data), "out": str(args.out)}, "top1": table}, indent=2
        )
    )
    return table


def print_table(table: dict[str, dict[str, float]], fractions: list[float]) -> None:
    heads = [f"{f:.0%}" for f in fractions]
    lines = ["| recipe / backbone | " + " | ".join(f"top-1 @ {h} labels" for h in heads) + " |"]
    lines.append("| --- |" + " --- |" * len(heads))
    for row, cells in table.items():
        lines.append(f"| {row} | " + " | ".join(f"{cells[h]:.3f}" for h in heads) + " |")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    np.set_printoptions(precision=3)
    main()
