"""Run one transfer experiment over several seeds and report mean ± std.

``visiontransfer seeds --seeds 0 1 2 --config configs/transfer/finetune.yaml [--key value ...]``
fits and tests once per seed (``seed_everything`` and ``--data.seed``, so the small labeled subset
is redrawn too) and prints one table of every test metric as mean ± std.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from visiontransfer.commands.lightning_cli import fit_then_test
from visiontransfer.stats import MeanStd, mean_std


def run_one(args: list[str], seed: int) -> dict[str, float]:
    """Fit then test one configuration at one seed (the best checkpoint when there is one);
    returns the test (or validation) metrics."""
    seeded = [*args, f"--seed_everything={seed}", f"--data.init_args.seed={seed}"]
    return fit_then_test(seeded, ckpt_path="best")[1]


def summarize(per_seed: dict[int, dict[str, float]]) -> dict[str, MeanStd]:
    """Mean and (sample) standard deviation of every metric across seeds."""
    keys = sorted(set().union(*(m.keys() for m in per_seed.values())))
    return {key: mean_std([m[key] for m in per_seed.values() if key in m]) for key in keys}


def format_table(summary: dict[str, MeanStd], keys: list[str] | None = None) -> str:
    """Markdown table ``metric | mean ± std | seeds``."""
    rows = ["| metric | mean ± std | seeds |", "| --- | --- | --- |"]
    for key in keys or sorted(summary):
        rows.append(f"| {key} | {summary[key].format(4)} | {summary[key].n} |")
    return "\n".join(rows)


def main(argv: list[str]) -> dict[str, Any]:
    """Entry point of ``visiontransfer seeds``."""
    parser = argparse.ArgumentParser(
        prog="visiontransfer seeds",
        description="Fit and test a config once per seed; print mean ± std of the test metrics. "
        "Every other argument goes to `visiontransfer fit`.",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--summary", default=None, help="also write the summary as JSON to this file")
    options, rest = parser.parse_known_args(argv)
    if not rest:
        parser.error("give the experiment, e.g. --config configs/transfer/finetune.yaml")
    per_seed = {seed: run_one(rest, seed) for seed in options.seeds}
    summary = summarize(per_seed)
    if getattr(rank_zero_only, "rank", 0) != 0:  # under DDP every process ran the seeds; one reports them
        return {"per_seed": per_seed, "summary": summary}
    main_keys = [k for k in summary if k.endswith(("/top1", "/top5", "/loss", "/miou", "/map_50"))]
    print("\n" + format_table(summary, main_keys or None), flush=True)
    if options.summary:
        as_dict = {k: {"mean": s.mean, "std": s.std, "n": s.n} for k, s in summary.items()}
        Path(options.summary).write_text(json.dumps({"per_seed": per_seed, "summary": as_dict}, indent=2))
    return {"per_seed": per_seed, "summary": summary}


if __name__ == "__main__":
    main(sys.argv[1:])
