"""Was the quickstart's scratch arm handicapped? Both arms over the same learning-rate grid, and
scratch also with more epochs, on the quickstart's labels and seeds.

    python benchmarks/quickstart_tuning.py --ckpt runs/quickstart/pretext.ckpt
    python benchmarks/quickstart_tuning.py --ckpt runs/quickstart/pretext.ckpt --lrs 1e-3 3e-3 --epochs 19 38

Every cell is the quickstart's own (``configs/transfer/quickstart_finetune.yaml`` at 10 % of the
embedded labels, the report's subset and seeds) with ``--model.lr`` and ``--trainer.max_epochs``
changed; scratch runs every (lr, epochs) pair, the pretrained arm every lr at the first epoch count.
Prints one line per setting (mean ± sample std over seeds) and the best of each arm.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

from visiontransfer.commands import quickstart, report
from visiontransfer.commands.lightning_cli import config_dir, fit_then_test


def score(backbone: report.Backbone, plan: quickstart.Plan, lr: float, epochs: int, seed: int) -> float:
    """Test top-1 of one quickstart cell with ``lr`` and ``epochs``."""
    recipe = str(config_dir() / quickstart.RECIPE)
    args = [a for a in report.cell_args(backbone, recipe, 0.1, seed, plan.settings())
            if not a.startswith("--trainer.max_epochs")]  # fmt: skip
    args += [
        f"--trainer.max_epochs={epochs}",
        f"--model.lr={lr}",
        *report.RUN_ONLY,
        f"--data.num_workers={plan.workers}",
    ]
    with report.quiet():
        _, metrics = fit_then_test(args, save_config=False)
    return float(metrics["test/top1"])


def main(argv: list[str] | None = None) -> dict[tuple[str, float, int], list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="the quickstart's pretext.ckpt")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--epochs", type=int, nargs="+", default=[19, 38], help="first: both arms")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labeled-images", type=int, default=2048, help="embedded labeled pool")
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args(argv)
    if not Path(options.ckpt).is_file():
        parser.error(f"--ckpt={options.ckpt}: no such file; run `visiontransfer quickstart` first")
    namespace = argparse.Namespace(pretext="simclr", fractions=None, seeds=options.seeds, image_size=None,
                                   data=None, workers=options.workers, fast=False)  # fmt: skip
    plan = replace(quickstart.default_plan(namespace), labeled_images=options.labeled_images)
    results: dict[tuple[str, float, int], list[float]] = {}
    for arm in quickstart.arms(options.ckpt):
        for lr in options.lrs:
            for epochs in options.epochs if arm.name == "scratch" else options.epochs[:1]:
                scores = [score(arm, plan, lr, epochs, seed) for seed in options.seeds]
                results[(arm.name, lr, epochs)] = scores
                spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
                print(f"{arm.name:10s} lr {lr:g} epochs {epochs}: test top-1 {statistics.mean(scores):.3f} "
                      f"± {spread:.3f} {[round(s, 3) for s in scores]}", flush=True)  # fmt: skip
    for name in ("pretrained", "scratch"):
        (_, lr, epochs), scores = max(((k, v) for k, v in results.items() if k[0] == name),
                                      key=lambda kv: statistics.mean(kv[1]))  # fmt: skip
        print(f"best {name}: lr {lr:g}, {epochs} epochs, {statistics.mean(scores):.3f}")
    return results


if __name__ == "__main__":
    main()
