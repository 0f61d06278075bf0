"""``visiontransfer quickstart``: will self-supervised pretraining help on these images? Pretrain a
pretext on the images without their labels, fine-tune the backbone on a few labels and the same
network from scratch on the same labels, several seeds, and answer in numbers and pictures.

Without ``--data`` it runs on the embedded procedural set, where shape is the class and colour,
scale, pose, position, background and clutter are nuisances: a few minutes on a laptop CPU show
pretraining paying. With ``--data DIR`` (a class-per-folder tree, or ``train/`` + ``test/`` trees)
it runs on your images: the pretext on the training images (labels unused), transfer at a few
label budgets against scratch through :mod:`visiontransfer.commands.report` (each cell one
``visiontransfer fit`` of a recipe config; resumable), the backbone exported for reuse, a verdict,
``report.md`` / ``report.png`` and a summary (``quickstart.html``, ``quickstart.png``: the label
efficiency, what the pretext learned as nearest neighbours, both arms' confusion matrices).
``--minutes`` picks the epochs from a short calibration run to fit the time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.commands import report
from visiontransfer.commands.lightning_cli import config_dir
from visiontransfer.commands.quickstart_data import Plan, prepare_folder, suggested_image_size
from visiontransfer.commands.quickstart_summary import Arms, write_summary
from visiontransfer.errors import ConfigError

PRETEXTS = {
    "simclr": "pretrain/simclr_quickstart.yaml",
    "rotation": "pretrain/rotation_quickstart.yaml",
}
"""Pretext configs the quickstart runs (``--pretext``); other YAML files may be given by path."""

RECIPE = "transfer/quickstart_finetune.yaml"
"""The transfer recipe of both arms: the same network, labels, epochs and optimizer."""


def default_plan(options: argparse.Namespace) -> Plan:
    """The plan without a time budget (``--fast``: a pipeline check): 10 pretraining epochs of the
    embedded set (what shows the effect in about 4 minutes on 2 cores), 4 of a user's folder."""
    pretext = _pretext_config(options.pretext)
    fractions = tuple(options.fractions or ((0.1,) if options.data is None else (0.1, 1.0)))
    plan = Plan(
        data=options.data, pretext=pretext, image_size=options.image_size or 32,
        pretrain_epochs=10 if options.data is None else 4,
        fractions=fractions, seeds=tuple(options.seeds), base_epochs=60, workers=options.workers,
    )  # fmt: skip
    if options.fast:
        return replace(plan, pretrain_epochs=1, base_epochs=2, pretrain_images=256, labeled_images=256,
                       seeds=plan.seeds[:1])  # fmt: skip
    return plan


def _pretext_config(name: str) -> str:
    if name in PRETEXTS:
        return str(config_dir() / PRETEXTS[name])
    if os.path.isfile(name):
        return name
    raise ConfigError(f"--pretext={name!r}: choose {', '.join(PRETEXTS)} or give a pretext YAML config")


MIN_PRETRAIN_EPOCHS = 3
"""Under ``--minutes``, fewer pretraining epochs than this at the chosen image size make the
quickstart try a smaller size (unless ``--image-size`` was given)."""

BUDGET_SIZES = (224, 160, 128, 96, 64, 48, 32)
"""Image sides ``--minutes`` steps down through."""


def budget_plan(plan: Plan, minutes: float, out: Path, fixed_size: bool = False) -> Plan:
    """Epochs, and the image size unless ``fixed_size``, that fit ``minutes``: half the time
    pretrains, half transfers (measured speeds of a few steps of each, per image). The size steps
    down while fewer than :data:`MIN_PRETRAIN_EPOCHS` pretraining epochs would fit, with the time
    per image estimated to scale with the pixels (optimistic for small images, where per-step
    overheads weigh more: the plan is an estimate, the bar shows the real time left)."""
    measured = pretrain_s, transfer_s = _calibrate(plan, out)
    budget = minutes * 60.0
    images = _pretrain_images(plan)
    size = plan.image_size
    while (
        not fixed_size
        and size > BUDGET_SIZES[-1]
        and 0.5 * budget < MIN_PRETRAIN_EPOCHS * pretrain_s * images
    ):
        smaller = next(s for s in BUDGET_SIZES if s < size)
        pretrain_s, transfer_s = (t * (smaller / size) ** 2 for t in (pretrain_s, transfer_s))
        size = smaller
    pretrain_epochs = max(1, int(0.5 * budget / max(pretrain_s * images, 1e-6)))
    cell_images = {f: _labeled(plan, f) for f in plan.fractions}
    base = plan.base_epochs
    while base > 2 and _transfer_seconds(plan, base, cell_images, transfer_s) > 0.5 * budget:
        base = int(base * 0.8)
    resized = f", image size {size} px (from {plan.image_size})" if size != plan.image_size else ""
    per_image = " / ".join(f"{t * 1000:.1f}" for t in measured)
    notes = [f"--minutes {minutes:g}: {pretrain_epochs} pretraining epochs, transfer base epochs {base}"
             f"{resized} (measured at {plan.image_size} px: {per_image} ms per image)"]  # fmt: skip
    return replace(
        plan, pretrain_epochs=min(pretrain_epochs, 200), base_epochs=base, image_size=size, notes=notes
    )


def _pretrain_images(plan: Plan) -> int:
    if plan.data is None:
        return plan.pretrain_images
    from visiontransfer.data.index import scan_images

    return len(scan_images(Path(plan.data) / "train"))


def _labeled(plan: Plan, fraction: float) -> int:
    """About how many labeled training images a budget gives (the 10 % hold-out first)."""
    pool = plan.labeled_images if plan.data is None else _pretrain_images(plan)
    return max(1, round(0.9 * pool * fraction))


def _transfer_seconds(plan: Plan, base: int, cell_images: dict[float, int], per_image: float) -> float:
    cells = 2 * len(plan.seeds)  # pretrained and scratch
    steps = sum(report.epochs_for(f, base) * n for f, n in cell_images.items())
    return cells * (steps * per_image + 8.0)  # 8 s of set-up per cell


def _calibrate(plan: Plan, out: Path) -> tuple[float, float]:
    """Seconds per image of a few pretext and transfer steps (after a warm-up step)."""
    from visiontransfer.callbacks.summary import StepTimer

    probe = replace(plan, pretrain_epochs=1)
    timers = []
    for args in (
        [*probe.pretrain_args(out / "calibration"), "--trainer.max_steps=6", "--trainer.limit_val_batches=0",
         "--trainer.callbacks=[]", "--trainer.logger=false", "--trainer.enable_checkpointing=false"],
        ["--config", str(config_dir() / RECIPE), "--model.backbone=resnet10t", *plan.settings().overrides(),
         "--trainer.max_steps=6", *report.RUN_ONLY, f"--data.num_workers={plan.workers}"],
    ):  # fmt: skip
        timer = StepTimer()
        from visiontransfer.commands.lightning_cli import VisionTransferCLI

        cli = VisionTransferCLI(args=args, run=False, save_config=False)
        cli.trainer.callbacks.append(  # type: ignore[attr-defined]
            timer
        )
        cli.trainer.fit(cli.model, cli.datamodule)
        timers.append(timer.seconds_per_image())
    return timers[0], timers[1]


def pretrain(plan: Plan, out: Path, progress: Progress) -> Path:
    """The pretext run, resumed where it stopped; returns ``out/pretext.ckpt`` (kept: a rerun
    skips pretraining).

    Raises:
        ConfigError: ``out`` holds a pretext run of other settings (another ``--pretext``, image
            size or epochs): it is neither reused nor overwritten.
    """
    final = out / "pretext.ckpt"
    args = plan.pretrain_args(out)
    _claim(out, args)
    if final.is_file():
        progress.done("pretraining: found", final)
        return final
    from visiontransfer.commands.lightning_cli import VisionTransferCLI

    cli = VisionTransferCLI(args=args, run=False)
    cli.trainer.callbacks.append(  # type: ignore[attr-defined]
        progress.callback(plan.pretrain_epochs)
    )
    last = max((out / "pretrain").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime, default=None)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(last) if last else None)
    cli.trainer.save_checkpoint(final)
    progress.done("pretraining", final)
    return final


PRETEXT_ARGS = "pretext.args.json"
"""Beside ``pretext.ckpt``: the ``fit`` arguments of the pretext run that made it."""


def _claim(out: Path, args: list[str]) -> None:
    """Record the pretext run's arguments in ``out``, or refuse a folder holding another run's."""
    record = out / PRETEXT_ARGS
    if record.is_file():
        before = json.loads(record.read_text())
        if before != args:
            changed = sorted(set(args) ^ set(before))
            raise ConfigError(
                f"--out={out} holds a pretext run of other settings ({', '.join(changed[:4])}); "
                f"give another --out, or delete {out / 'pretext.ckpt'}, {out / 'pretrain'} and {record}"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(record, lambda temp: Path(temp).write_text(json.dumps(args, indent=1)))


@dataclass
class Progress:
    """One bar over the whole quickstart (``tqdm``, with the estimated time left)."""

    total: float
    bar: Any = None
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=round(self.total), unit="step", desc="quickstart", dynamic_ncols=True)

    def advance(self, units: float) -> None:
        self.bar.update(units)

    def callback(self, epochs: int) -> Any:
        from visiontransfer.callbacks.summary import ProgressTicks

        return ProgressTicks(self.advance)

    def done(self, what: str, where: object = "") -> None:
        self.bar.write(f"{what} ({time.perf_counter() - self.started:.0f} s) {where}".rstrip())

    def close(self) -> None:
        self.bar.close()


def planned_steps(plan: Plan) -> float:
    """Training steps of the whole plan (pretraining, then both arms' cells), for the bar."""
    batch = 64
    pretrain = plan.pretrain_epochs * max(1, _pretrain_images(plan) // batch)
    cells = sum(report.epochs_for(f, plan.base_epochs) * max(1, _labeled(plan, f) // 32)
                for f in plan.fractions)  # fmt: skip
    return pretrain + 2 * len(plan.seeds) * cells


def arms(ckpt: Path | str) -> list[report.Backbone]:
    """The quickstart's two arms: the pretext checkpoint's backbone ("pretrained") and a random
    init of the same network ("scratch")."""
    backbones = report.resolve_backbones([f"pretrained={ckpt}"])
    return [replace(b, name="pretrained" if b.pretrained else "scratch") for b in backbones]


def transfer(
    plan: Plan, ckpt: Path, out: Path, progress: Progress
) -> tuple[list[report.Backbone], list[report.Cell]]:
    """Both arms at every budget and seed (resumable ``cells.jsonl``)."""
    backbones = arms(ckpt)

    def tick(cell: report.Cell, fresh: bool) -> None:
        progress.advance(cell.epochs * max(1, cell.labels // 32))
        progress.done(f"{cell.backbone} @ {report.percent(cell.fraction)} seed {cell.seed}: "
                      f"top-1 {cell.score:.3f}" + ("" if fresh else " (found)"))  # fmt: skip

    recipe = str(config_dir() / RECIPE)
    cells = report.run_grid(
        backbones, [recipe], plan.fractions, plan.seeds, plan.settings(), out / "report", tick
    )
    return backbones, cells


def verdict(rows: Sequence[report.SummaryRow], backbone_dir: Path) -> list[str]:
    """The answer, in words and numbers, per budget, then where the backbone is."""
    by = {(r.backbone, r.fraction): r for r in rows}
    lines = []
    for fraction in sorted({r.fraction for r in rows}):
        ours, base = by.get(("pretrained", fraction)), by.get(("scratch", fraction))
        if ours is None or base is None:
            continue
        gain = ours.mean - base.mean
        spread = max(ours.std, base.std)
        judged = "pretraining helped" if gain > spread else "no clear gain from pretraining"
        lines.append(
            f"at {report.percent(fraction)} of the labels ({ours.labels} images), {judged}: test top-1 "
            f"{ours.mean:.3f} ± {ours.std:.3f} pretrained against {base.mean:.3f} ± {base.std:.3f} from "
            f"scratch ({gain * 100:+.1f} points, {ours.seeds} seeds)"
        )
    lines.append(f"the pretrained backbone is in {backbone_dir}; load it with "
                 f'visiontransfer.load_backbone("{backbone_dir}")')  # fmt: skip
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The ``visiontransfer quickstart`` argument parser."""
    parser = argparse.ArgumentParser(prog="visiontransfer quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="class-per-folder tree or train/ + test/ trees "
                        "(default: the embedded procedural set)")  # fmt: skip
    parser.add_argument("--pretext", default="simclr", help=f"{', '.join(PRETEXTS)} or a pretext YAML config")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="time budget: picks the epochs (and the image size, unless --image-size is given)",
    )
    parser.add_argument("--fractions", type=float, nargs="+", default=None,
                        help="label budgets (default: 0.1 embedded; 0.1 1.0 with --data)")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--image-size", type=int, default=None, help="default: from the images (32: embedded)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    parser.add_argument("--fast", action="store_true", help="tiny budget, to check the pipeline")
    return parser


def plan_from(options: argparse.Namespace, out: Path) -> Plan:
    """The plan of a command line: the data prepared, the image size chosen, the budget met."""
    fixed_size = options.image_size is not None
    if options.data is not None:
        options.data = str(prepare_folder(options.data, out / "data"))
        options.image_size = options.image_size or suggested_image_size(Path(options.data) / "train")
    plan = default_plan(options)
    if options.minutes is not None and not options.fast:
        plan = budget_plan(plan, options.minutes, out, fixed_size)
    return plan


def main(argv: list[str]) -> dict[str, Any]:
    """Entry point; returns the summary rows and the verdict."""
    parser = build_parser()
    options = parser.parse_args(argv)
    out = Path(options.out)
    try:
        plan = plan_from(options, out)
        _claim(out, plan.pretrain_args(out))
    except (ConfigError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(error).split())}\n")
    where = plan.data or "the embedded procedural set"
    print(f"visiontransfer quickstart on {where}: pretrain {Path(plan.pretext).stem} ({plan.pretrain_epochs} "
          f"epochs), then fine-tune it and the same network from scratch at {list(plan.fractions)} of the "
          f"labels, seeds {list(plan.seeds)}", *plan.notes, sep="\n", flush=True)  # fmt: skip
    progress = Progress(planned_steps(plan))
    with report.quiet():
        ckpt = pretrain(plan, out, progress)
        from visiontransfer.export import export_backbone

        backbone_dir = export_backbone(ckpt, out / "backbone", overwrite=True)
        backbones, cells = transfer(plan, ckpt, out, progress)
        progress.close()
        rows = report.summarize(cells)
        report.write_report(rows, out / "report", plan.settings(), backbones, cells)
        arms = Arms.from_cells(cells, plan, str(config_dir() / RECIPE), backbones)
        summary = write_summary(out, rows, arms, ckpt, plan)
    lines = verdict(rows, backbone_dir)
    print("\n" + "=" * 78, *lines, f"summary: {summary} and {summary.with_suffix('.png')}",
          f"report: {out / 'report' / report.REPORT_MD}, {out / 'report' / report.REPORT_PNG}", "=" * 78,
          sep="\n")  # fmt: skip
    return {"rows": rows, "verdict": lines, "summary": summary}
