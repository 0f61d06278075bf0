"""Run one transfer experiment over several seeds and report mean ± std.

``visiontransfer seeds --seeds 0 1 2 --config configs/transfer/finetune.yaml [--key value ...]``
fits and tests once per seed (``seed_everything`` and ``--data.seed``, so the small labeled subset
is redrawn too) and prints one table of every test metric as mean ± std.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only


def run_one(args: list[str], seed: int) -> dict[str, float]:
    """Fit then test one configuration at one seed; returns the test (or validation) metrics."""
    from visiontransfer.cli import VisionTransferCLI

    cli = VisionTransferCLI(
        args=[*args, f"--seed_everything={seed}", f"--data.init_args.seed={seed}"], run=False
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    has_test = hasattr(cli.datamodule, "datasets") and "test" in cli.datamodule.datasets
    ckpt = "best" if getattr(cli.trainer.checkpoint_callback, "best_model_path", "") else None
    if has_test:
        results = cli.trainer.test(cli.model, cli.datamodule, ckpt_path=ckpt, verbose=False)
    else:
        results = cli.trainer.validate(cli.model, cli.datamodule, ckpt_path=ckpt, verbose=False)
    return {k: float(v) for k, v in results[0].items()}


def summarize(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and (sample) standard deviation of every metric across seeds."""
    keys = sorted(set().union(*(m.keys() for m in per_seed.values())))
    out = {}
    for key in keys:
        values = [m[key] for m in per_seed.values() if key in m]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out[key] = {"mean": statistics.fmean(values), "std": std, "n": float(len(values))}
    return out


def format_table(summary: dict[str, dict[str, float]], keys: list[str] | None = None) -> str:
    """Markdown table ``metric | mean ± std | seeds``."""
    rows = ["| metric | mean ± std | seeds |", "| --- | --- | --- |"]
    for key in keys or sorted(summary):
        s = summary[key]
        rows.append(f"| {key} | {s['mean']:.4f} ± {s['std']:.4f} | {int(s['n'])} |")
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
    main_keys = [k for k in summary if k.endswith(("/top1", "/top5", "/loss"))]
    print("\n" + format_table(summary, main_keys or None), flush=True)
    if options.summary:
        Path(options.summary).write_text(json.dumps({"per_seed": per_seed, "summary": summary}, indent=2))
    return {"per_seed": per_seed, "summary": summary}


if __name__ == "__main__":
    main(sys.argv[1:])
