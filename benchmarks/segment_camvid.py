"""Does pretraining pay for semantic segmentation? Fine-tune a segmenter on CamVid (the shared copy:
367 / 101 / 233 images, 11 classes, 255 = void) from a pretext-pretrained backbone and from a random
init of the same network, with the same recipe, budget and seeds; print test mIoU and per-class IoU.

    python benchmarks/segment_camvid.py                        # pretrains RotNet on CamVid first
    python benchmarks/segment_camvid.py --backbone runs/.../last.ckpt --seeds 0 1 2

Without ``--backbone`` the script first pretrains with the product's own command, on CamVid's 367
training images without their masks::

    visiontransfer fit --config configs/pretrain/rotation.yaml --data.root CAMVID/images/train ...

(RotNet, Gidaris et al. 2018; ``--pretrain-config`` takes another pretext config). Each fine-tuning
run is one cell of ``visiontransfer report`` (:func:`visiontransfer.commands.report.cell_args`: the
recipe YAML, ``configs/transfer/segment_fpn.yaml`` by default, the backbone, the seed and the
label fraction), tested on the 233 test images; the random-init baseline is the pretrained file's
exact architecture and stem (:func:`~visiontransfer.commands.report.resolve_backbones`). Results are
kept in ``--out``/``runs.jsonl``: a rerun only trains what is missing. Prints a Markdown table (mean
± std over seeds) and the wall and CPU time of each part.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from visiontransfer.commands import report
from visiontransfer.commands.lightning_cli import VisionTransferCLI, config_dir, fit_then_test
from visiontransfer.data.segmentation.records import read_class_names
from visiontransfer.stats import mean_std

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = _clock()
    return {"wall_minutes": (wall - start[0]) / 60, "cpu_minutes": (cpu - start[1]) / 60}


def pretrain(args: argparse.Namespace) -> Path:
    """The pretext on CamVid's training images (no masks), through ``visiontransfer fit``."""
    path = args.out / "pretrained.ckpt"
    if path.is_file():
        print(f"pretrained backbone found: {path}", flush=True)
        return path
    command = [
        "fit", "--config", str(args.pretrain_config), f"--data.root={args.data / 'images' / 'train'}",
        f"--model.backbone={args.arch}", "--model.small_input_stem=false",
        f"--data.image_size={args.pretrain_image_size}",
        f"--data.batch_size={args.pretrain_batch_size}", f"--data.num_workers={args.workers}",
        f"--trainer.max_epochs={args.pretrain_epochs}", "--trainer.logger=false", "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={args.out / 'pretrain'}", f"--seed_everything={args.seed}",
        *args.pretrain_args,
    ]  # fmt: skip
    print("visiontransfer " + " ".join(command), flush=True)
    start = _clock()
    cli = VisionTransferCLI(args=command)
    cli.trainer.save_checkpoint(path)
    spent = _since(start)
    metrics = {k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items()}
    print(f"pretrained ({spent['wall_minutes']:.1f} min wall, {spent['cpu_minutes']:.1f} min CPU): {metrics}")
    (args.out / "pretrain.json").write_text(json.dumps({"command": command, **spent, "metrics": metrics}))
    return path


def settings(args: argparse.Namespace) -> report.Settings:
    """The report settings of every run: ``base_epochs`` chosen so the fraction gets ``--epochs``."""
    base = max(1, round(args.epochs * math.sqrt(args.fraction * 100)))
    return report.Settings(
        data=str(args.data), image_size=args.image_size, batch_size=args.batch_size, base_epochs=base,
        metric="test/miou", workers=args.workers,
    )  # fmt: skip


def finetune(backbone: report.Backbone, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One run: the recipe from ``backbone``; every test metric, the labeled images and the time."""
    cell_args = report.cell_args(backbone, str(args.recipe), args.fraction, seed, settings(args))
    extra = [f"--data.crop_size={args.crop_size}", *args.recipe_args]
    start = _clock()
    with report.quiet():
        run_args = [*cell_args, *extra, *report.RUN_ONLY, f"--data.num_workers={args.workers}"]
        cli, metrics = fit_then_test(run_args, save_config=False)
    return {
        "backbone": backbone.name, "seed": seed, "labels": len(cli.datamodule.datasets["train"]),
        "command": "visiontransfer fit " + " ".join([*cell_args, *extra]), **metrics, **_since(start),
    }  # fmt: skip


def _key(backbone: report.Backbone, seed: int, args: argparse.Namespace) -> str:
    """What a run's result depends on: the weights (the file's hash, or the random init's
    architecture), the seed and the fine-tuning settings."""
    return json.dumps(
        {"weights": backbone.fingerprint, "seed": seed, "config": _config(args)}, sort_keys=True
    )


def _config(args: argparse.Namespace) -> dict[str, Any]:
    skip = ("backbone", "seeds", "workers", "out", *(k for k in vars(args) if k.startswith("pretrain")))
    return {k: str(v) for k, v in vars(args).items() if k not in skip}


def print_table(runs: list[dict[str, Any]], classes: list[str]) -> str:
    """Mean ± std over seeds of test mIoU, pixel accuracy and per-class IoU, one row per backbone."""
    names = list(dict.fromkeys(r["backbone"] for r in runs))
    columns = ["test/miou", "test/pixel_accuracy", *(f"test/iou_{c}" for c in classes)]
    header = ["backbone", "mIoU", "pixel acc.", *classes, "min (wall / CPU)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name in names:
        group = [r for r in runs if r["backbone"] == name]
        cells = [mean_std([float(r[c]) for r in group]).format() for c in columns[:2]]
        cells += [f"{mean_std([float(r[c]) for r in group]).mean:.3f}" for c in columns[2:]]
        wall = sum(r["wall_minutes"] for r in group) / len(group)
        cpu = sum(r["cpu_minutes"] for r in group) / len(group)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {wall:.1f} / {cpu:.1f} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def paired_gains(runs: list[dict[str, Any]], metric: str = "test/miou") -> dict[int, float]:
    """``metric`` of the pretrained run minus that of the random init, per seed run on both. One
    seed gives both sides the same labeled images, crops and order, so these differences carry
    less of the seed's noise than the two rows' spreads."""
    by_seed: dict[int, dict[str, float]] = {}
    for run in runs:
        by_seed.setdefault(int(run["seed"]), {})[run["backbone"]] = float(run[metric])
    return {
        seed: sides["pretrained"] - sides["random init"]
        for seed, sides in sorted(by_seed.items())
        if {"pretrained", "random init"} <= sides.keys()
    }


def print_gains(runs: list[dict[str, Any]]) -> str:
    """One line: the per-seed mIoU gains of pretraining and their mean ± std."""
    gains = paired_gains(runs)
    if not gains:
        return ""
    each = ", ".join(f"seed {seed} {gain:+.3f}" for seed, gain in gains.items())
    summary = mean_std(list(gains.values()))
    text = (
        f"pretrained - random init, paired by seed: {each}; "
        f"{summary.mean:+.3f} ± {summary.std:.3f} mIoU ({summary.n} seeds)"
    )
    print(text, flush=True)
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--backbone", help="pretext checkpoint (.ckpt) or export folder; default: pretrain here")
    add(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="CamVid: images/{train,val,test}, masks/..., classes.txt",
    )
    add("--arch", default="resnet18", help="timm architecture pretrained when --backbone is not given")
    add("--pretrain-config", type=Path, default=config_dir() / "pretrain" / "rotation.yaml")
    add("--pretrain-epochs", type=int, default=30)
    add("--pretrain-image-size", type=int, default=128)
    add("--pretrain-batch-size", type=int, default=32)
    add(
        "--pretrain-args", type=shlex.split, action="extend", default=[],
        help='more visiontransfer fit flags for the pretraining, as one string after "=": '
        '--pretrain-args="--model.lr 2e-3 --model.output_stride 2"',
    )  # fmt: skip
    add("--recipe", type=Path, default=config_dir() / "transfer" / "segment_fpn.yaml")
    add(
        "--recipe-args", type=shlex.split, action="extend", default=[],
        help='more flags for every fine-tuning run, one string: --recipe-args="--model.lr 3e-3"',
    )  # fmt: skip
    add("--epochs", type=int, default=20, help="fine-tuning epochs, the same for both backbones")
    add("--fraction", type=float, default=1.0, help="share of the 367 training images labeled")
    add("--image-size", type=int, default=240, help="longest side of the images (CamVid's is 240)")
    add("--crop-size", type=int, default=176)
    add("--batch-size", type=int, default=8)
    add("--workers", type=int, default=2)
    add("--seed", type=int, default=0, help="seed of the pretraining")
    add("--seeds", type=int, nargs="+", default=[0, 1], help="fine-tuning seeds (mean ± std over them)")
    add("--out", type=Path, default=Path("runs/bench_segment"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if not (args.data / "images" / "train").is_dir():
        sys.exit(f"CamVid not found at {args.data} (needs images/{{train,val,test}}, masks/..., classes.txt)")
    args.out.mkdir(parents=True, exist_ok=True)
    start = _clock()
    source = args.backbone or str(pretrain(args))
    backbones = report.resolve_backbones([f"pretrained={source}"])
    backbones = [dataclasses.replace(b, name="random init") if not b.pretrained else b for b in backbones]
    store = args.out / "runs.jsonl"
    done = {}
    if store.is_file():
        done = {r["key"]: r for r in map(json.loads, store.read_text().splitlines()) if r}
    runs = []
    for seed in args.seeds:
        for backbone in sorted(backbones, key=lambda b: b.pretrained):  # random init first
            key = _key(backbone, seed, args)
            run = done.get(key)
            if run is None:
                run = {**finetune(backbone, args, seed), "key": key}
                with store.open("a") as handle:
                    handle.write(json.dumps(run) + "\n")
            runs.append(run)
            minutes = f"{run['wall_minutes']:.1f} min wall, {run['cpu_minutes']:.1f} min CPU"
            print(f"{backbone.name}, seed {seed}: mIoU {run['test/miou']:.3f} ({minutes})", flush=True)
    spent = _since(start)
    classes = read_class_names(args.data / "classes.txt")
    print(
        f"\n{backbones[0].spec.architecture}, {args.recipe.name}, {args.epochs} epochs at "
        f"{args.image_size} px "
        f"(crops {args.crop_size}), {runs[0]['labels']} labeled training images, test mIoU on CamVid's "
        f"233 test images, seeds {args.seeds}; this run {spent['wall_minutes']:.1f} min wall, "
        f"{spent['cpu_minutes']:.1f} min CPU (pretraining not counted when found)\n"
    )
    text = print_table(runs, classes)
    gains = print_gains(runs)
    (args.out / "segment_results.md").write_text(text + "\n" + (f"\n{gains}\n" if gains else ""))
    return runs


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
