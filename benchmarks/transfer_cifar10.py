"""Does pretraining pay on CIFAR-10? Transfer a pretext backbone and a randomly initialised one at
1%, 10% and 100% of the training labels, by linear probe and fine-tuning, all in one run.

    python benchmarks/transfer_cifar10.py --backbone runs/bench_pretext/rotation.ckpt

A thin wrapper over :mod:`visiontransfer.report` (``visiontransfer report`` with CIFAR-10
defaults): every cell trains ``visiontransfer.transfer.ImageClassifier`` with Lightning on real
CIFAR-10 files (stratified, seeded label subsets; 10% of the training images held out for
validation) and reports top-1 on a stratified subset of ``--test-images`` test images. The
random-init baseline is the same architecture and stem, read from the checkpoint. Prints a
Markdown table and writes ``transfer_results.json``, ``report.md``, ``report.png`` and
``cells.jsonl`` under ``--out``; a rerun with the same settings reuses the finished cells.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from visiontransfer import report

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
NAMES = {True: "pretrained", False: "random init"}


def print_table(table: dict[str, dict[str, float]], fractions: list[float]) -> None:
    """Markdown table: one row per ``recipe / backbone``, top-1 (mean over seeds) per fraction."""
    heads = [report.percent(f) for f in fractions]
    lines = ["| recipe / backbone | " + " | ".join(f"top-1 @ {h} labels" for h in heads) + " |"]
    lines.append("| --- |" + " --- |" * len(heads))
    for row, cells in table.items():
        lines.append(f"| {row} | " + " | ".join(f"{cells[h]:.3f}" for h in heads) + " |")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", required=True, help="pretext checkpoint (.ckpt) or export folder")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--recipes", nargs="+", default=list(report.RECIPES), choices=list(report.RECIPES))
    parser.add_argument("--base-epochs", type=int, default=30, help="epochs at 1%% labels; fewer for more")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--test-images", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (default 0)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_transfer"))
    args = parser.parse_args(argv)
    if not (args.data / "train").is_dir():
        sys.exit(f"CIFAR-10 not found at {args.data}")
    settings = report.Settings(
        data=str(args.data), image_size=32, batch_size=args.batch_size, base_epochs=args.base_epochs,
        test_images=args.test_images, precision=args.precision, workers=args.workers,
    )  # fmt: skip
    backbones = [
        report.Backbone(NAMES[b.pretrained], b.source, b.spec, b.fingerprint, b.pretrained)
        for b in report.resolve_backbones([args.backbone])
    ]
    cells = report.run_grid(
        backbones, args.recipes, args.fractions, args.seed, settings, args.out, progress=_progress
    )
    rows = report.summarize(cells)
    report.write_report(rows, args.out, settings, backbones)
    table: dict[str, dict[str, float]] = {}
    for row in sorted(rows, key=lambda r: args.recipes.index(r.recipe)):
        table.setdefault(f"{row.recipe} / {row.backbone}", {})[report.percent(row.fraction)] = row.mean
    print_table(table, args.fractions)
    results: dict[str, Any] = {"args": vars(args) | {"data": str(args.data), "out": str(args.out)}}
    (args.out / "transfer_results.json").write_text(json.dumps(results | {"top1": table}, indent=2))
    return table


def _progress(cell: report.Cell, fresh: bool) -> None:
    done = f"{cell.seconds:.0f} s" if fresh else "done before"
    print(f"{cell.recipe} / {cell.backbone} @ {report.percent(cell.fraction)} seed {cell.seed}: "
          f"{cell.top1:.3f} ({done})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
