"""``visiontransfer report``: how much pretraining buys at each label budget (label efficiency).

Every (backbone, recipe, label fraction, seed) cell is one ordinary ``visiontransfer fit`` run of a
recipe config of ``configs/transfer/`` (``linear_probe.yaml``, ``finetune.yaml``, or any YAML
file given to ``--recipes``), on a stratified, seeded subset of the training labels of a
class-folder tree (``ROOT/train/<class>/<image>``, ``ROOT/test/<class>/<image>``; the recipe's
``val_fraction`` of the training images is held out first), then tested on ``ROOT/test``. So any
cell is reproduced by the command ``report.md`` prints for it. Segmentation recipes
(``segment_fpn.yaml``, ``segment_deeplab.yaml``) run the same way on a segmentation set with
train and test splits (``ROOT/images/{train,test}/`` with ``ROOT/masks/{train,test}/``, or Pascal
VOC's ``ImageSets/Segmentation/{train,test}.txt``), a seeded share of the training images kept,
and report ``--metric test/miou``. The random-init ("scratch")
baseline of the same architecture and stem as each pretrained backbone is always added. The run
writes, under ``--out``:

- ``cells.jsonl``: one JSON line per finished cell, keyed by everything that changes its result
  (the weights, the recipe file's content, the fraction, the seed and the settings). A rerun
  skips the cells it finds there and only redraws the report, so an interrupted run resumes
  where it stopped;
- ``report.md``: mean ± std of the test metric over seeds per backbone, recipe and fraction, the
  number of labeled images of each fraction, the settings and each cell's command;
- ``report.png``: the metric against the number of labeled images (log scale), one line per
  backbone × recipe, error bars one standard deviation over seeds.

From Python: :func:`run_report` does all of it; :func:`resolve_backbones`, :func:`cell_args`,
:func:`run_cell`, :func:`run_grid`, :func:`summarize`, :func:`format_table`,
:func:`plot_label_efficiency` and :func:`write_report` are the pieces.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shlex
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visiontransfer.backbones import BackboneSpec
from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.commands.lightning_cli import config_dir, fit_then_test
from visiontransfer.data.segmentation.records import segmentation_splits
from visiontransfer.errors import ConfigError, MissingPathError
from visiontransfer.stats import mean_std

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RECIPES = ("linear_probe", "finetune")
"""Built-in recipes: the configs ``configs/transfer/<name>.yaml``."""

RUN_ONLY = (
    "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--trainer.limit_val_batches=0", "--trainer.devices=1",
)  # fmt: skip
"""What the report adds to a cell's command to run it quietly in this process, none of which
changes its result: no logger, checkpoints, prediction files, progress bar or validation, and
one device (DDP would relaunch the calling script for every cell)."""

CELLS = "cells.jsonl"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
SCRATCH = "scratch"


@dataclass(frozen=True)
class Settings:
    """What a cell's result depends on besides backbone, recipe, fraction and seed (and workers).
    Fields left None take the recipe's value.

    Attributes:
        data: Labeled set: a folder with ``train/`` and ``test/`` class-folder trees, or a
            segmentation set with train and test splits; None: the embedded procedural set.
        image_size: Side of the images fed to the model, in pixels.
        batch_size: Training and test batch size.
        base_epochs: Epochs at 1% of the labels; larger fractions get fewer (:func:`epochs_for`).
        test_images: Test on a stratified subset of about this many test images (None: all).
        precision: Lightning precision, e.g. ``32-true`` or ``bf16-mixed``.
        augment: Training augmentation preset of the datamodule.
        val_fraction: Share of the training images held out before the labels are drawn.
        synthetic_size: Training images of the embedded set (when ``data`` is None).
        metric: The test metric reported (``test/top1``; ``test/miou`` for segmentation recipes).
        workers: DataLoader workers (does not change results, so not part of a cell's key).
    """

    data: str | None = None
    image_size: int | None = None
    batch_size: int | None = None
    base_epochs: int = 30
    test_images: int | None = None
    precision: str | None = None
    augment: str | None = None
    val_fraction: float | None = None
    synthetic_size: int = 2048
    metric: str = "test/top1"
    workers: int = 2

    def key(self) -> dict[str, Any]:
        """The settings that change results (not ``workers``; ``synthetic_size`` only without data),
        ``data`` as an absolute path."""
        values = dataclasses.asdict(self)
        del values["workers"]
        if self.data is not None:
            del values["synthetic_size"]
            values["data"] = os.path.abspath(self.data)
        return values

    def overrides(self) -> list[str]:
        """The ``visiontransfer fit`` flags of the fields that are set."""
        flags = {
            "--data.image_size": self.image_size, "--data.batch_size": self.batch_size,
            "--data.test_images": self.test_images, "--trainer.precision": self.precision,
            "--data.augment": self.augment, "--data.val_fraction": self.val_fraction,
        }  # fmt: skip
        out = [
            f"--data.root={self.data}"
            if self.data is not None
            else f"--data.synthetic_size={self.synthetic_size}"
        ]
        return out + [f"{flag}={value}" for flag, value in flags.items() if value is not None]


@dataclass(frozen=True)
class Backbone:
    """A backbone to transfer: a pretrained file, or the random-init baseline of an architecture.

    Attributes:
        name: Display name in the report.
        source: What the recipe gets as ``--model.backbone``: the file, or the timm architecture
            for the scratch baseline.
        spec: Architecture, input channels, stem and timm arguments (and, for a file, how it was
            trained).
        fingerprint: Identifies the weights in cell keys: a hash of the weight file's content,
            or ``scratch:`` and the spec.
        pretrained: False for the scratch baseline.
    """

    name: str
    source: str
    spec: BackboneSpec = field(compare=False)
    fingerprint: str
    pretrained: bool = True

    def model_args(self) -> list[str]:
        """The ``--model.*`` flags: the file alone (it describes itself), or the architecture."""
        args = [f"--model.backbone={self.source}"]
        if self.pretrained:
            return args
        spec = self.spec
        args += [
            f"--model.small_input_stem={str(spec.small_input_stem).lower()}",
            f"--model.in_chans={spec.in_chans}",
        ]
        if spec.backbone_kwargs:
            args.append(f"--model.backbone_kwargs={json.dumps(dict(spec.backbone_kwargs), sort_keys=True)}")
        return args


@dataclass(frozen=True)
class Cell:
    """One finished (backbone, recipe, fraction, seed) run; a line of ``cells.jsonl``.

    ``score`` is the test metric of the settings (``metric``); cells written by release 0.1 call
    it ``top1``. ``confusion`` (rows: truth, columns: prediction) and ``classes`` are the test
    confusion matrix of a classifier and its class names (None for other tasks, for more than
    :data:`MAX_CONFUSION_CLASSES` classes and in older cells).
    """

    backbone: str
    recipe: str
    fraction: float
    seed: int
    labels: int
    score: float
    epochs: int
    seconds: float
    key: dict[str, Any] = field(compare=False)
    metric: str = "test/top1"
    command: str = ""
    confusion: list[list[int]] | None = field(default=None, compare=False)
    classes: list[str] | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cell:
        """A ``cells.jsonl`` record (of this release or of 0.1)."""
        if "top1" in data and "score" not in data:
            data = {**data, "score": data.pop("top1")}
        return cls(**data)


@dataclass(frozen=True)
class SummaryRow:
    """The test metric of one backbone, recipe and fraction over seeds."""

    backbone: str
    recipe: str
    fraction: float
    labels: int
    mean: float
    std: float
    seeds: int


# -- backbones -------------------------------------------------------------------------------------
def fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 (first 16 hex digits) of a checkpoint, ``.safetensors`` file or export folder's weights."""
    target = Path(path)
    if target.is_dir():
        target = target / "model.safetensors"
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _split_name(entry: str) -> tuple[str | None, str]:
    """``NAME=PATH`` → (NAME, PATH); a path that exists (Lightning names hold ``=``) has no name."""
    name, sep, path = entry.partition("=")
    if os.path.exists(entry) or not sep or os.sep in name or "/" in name:
        return None, entry
    return name, path


def _scratch_name(spec: BackboneSpec, specs: int) -> str:
    """``scratch``, with the architecture spelled out when several architectures are compared."""
    if specs == 1:
        return SCRATCH
    extras = [spec.architecture]
    if spec.small_input_stem:
        extras.append("small stem")
    if spec.in_chans != 3:
        extras.append(f"{spec.in_chans} channel")
    extras += [f"{k}={v}" for k, v in sorted(spec.backbone_kwargs.items())]
    return f"{SCRATCH} ({', '.join(extras)})"


def _load_spec(path: str) -> BackboneSpec:
    """The spec of a backbone file, checked to load; errors name ``--backbones``."""
    from visiontransfer.backbones.weights import load_backbone_file

    if not os.path.exists(path):
        raise MissingPathError(
            f"--backbones: {path!r} does not exist (give pretext .ckpt files or export folders)"
        )
    try:
        return load_backbone_file(path)[1]
    except Exception as error:  # unreadable, unsafe, foreign or mismatched files alike
        raise ConfigError(f"--backbones: {path!r} is not a visiontransfer backbone: {error}") from None


def resolve_backbones(entries: Sequence[str], scratch: bool = True) -> list[Backbone]:
    """The backbones to compare: each file, then one scratch baseline per distinct architecture.

    Args:
        entries: Pretext ``.ckpt`` files, export folders or ``.safetensors`` files, each optionally
            ``NAME=PATH``. Unnamed ones are called by their pretext method (or file name).
        scratch: Add the random-init baseline of each architecture and stem.

    Raises:
        MissingPathError: a path does not exist.
        ConfigError: a file is not a visiontransfer backbone (the message says why).
    """
    found: list[Backbone] = []
    for entry in entries:
        name, path = _split_name(entry)
        spec = _load_spec(path)
        found.append(Backbone(name or spec.method or Path(path).stem, path, spec, fingerprint(path)))
    names = [b.name for b in found]
    found = [b if names.count(b.name) == 1 else dataclasses.replace(b, name=b.source) for b in found]
    if not scratch:
        return found
    architectures = {json.dumps(b.spec.architecture_only().to_dict(), sort_keys=True): b.spec for b in found}
    for text, spec in architectures.items():
        baseline = spec.architecture_only()
        name = _scratch_name(baseline, len(architectures))
        found.append(Backbone(name, baseline.architecture, baseline, f"scratch:{text}", False))
    return found


# -- one cell --------------------------------------------------------------------------------------
def epochs_for(fraction: float, base: int) -> int:
    """Fewer epochs for more labels, so each cell gets a comparable number of steps (at least 2)."""
    return max(2, round(base / (fraction * 100) ** 0.5))


def recipe_file(recipe: str) -> Path:
    """The config of a recipe: a built-in name (``configs/transfer/<name>.yaml``) or a YAML path.

    Raises:
        ConfigError: neither, naming ``--recipes``.
    """
    path = (
        Path(recipe) if recipe.endswith((".yaml", ".yml")) else config_dir() / "transfer" / f"{recipe}.yaml"
    )
    if not path.is_file():
        raise ConfigError(
            f"--recipes: {recipe!r} is neither a built-in recipe ({', '.join(RECIPES)}) nor a YAML file"
        )
    return path


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def cell_key(
    backbone: Backbone, recipe: str, fraction: float, seed: int, settings: Settings
) -> dict[str, Any]:
    """Everything a cell's result depends on: weights, the recipe file, fraction, seed, settings."""
    return {
        "backbone": backbone.fingerprint,
        "recipe": recipe,
        "recipe_config": _file_hash(recipe_file(recipe)),
        "fraction": fraction,
        "seed": seed,
        "settings": settings.key(),
    }


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


def cell_args(backbone: Backbone, recipe: str, fraction: float, seed: int, settings: Settings) -> list[str]:
    """The ``visiontransfer fit`` arguments of a cell: the recipe, the backbone, the labels, the
    seed and the settings. ``visiontransfer test`` with the same arguments and ``--ckpt_path``
    of the run's ``last.ckpt`` gives the cell's score."""
    return [
        "--config", str(recipe_file(recipe)), *backbone.model_args(), *settings.overrides(),
        f"--data.label_fraction={fraction}", f"--seed_everything={seed}", f"--data.seed={seed}",
        f"--trainer.max_epochs={epochs_for(fraction, settings.base_epochs)}",
    ]  # fmt: skip


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Lightning's per-run banners and small-data warnings (dozens of runs per report)."""
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings(
            "ignore", message=r".*isinstance\(treespec, LeafSpec\).*"
        )  # torch vs Lightning
        for log in loggers:
            log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels, strict=True):
                log.setLevel(level)


MAX_CONFUSION_CLASSES = 100
"""A classifier cell records its test confusion matrix up to this many classes."""


def run_cell(backbone: Backbone, recipe: str, fraction: float, seed: int, settings: Settings) -> Cell:
    """Train and test one cell with its recipe, in this process: ``seed`` seeds the weights, the
    augmentation and the label subset.

    Returns:
        The cell, with the test metric, the number of labeled training images and the wall time.
    """
    args = cell_args(backbone, recipe, fraction, seed, settings)
    start = time.perf_counter()
    with quiet():
        cli, metrics = fit_then_test(
            [*args, *RUN_ONLY, f"--data.num_workers={settings.workers}"], save_config=False
        )
    if settings.metric not in metrics:
        raise ConfigError(
            f"--recipes {recipe}: its test gives {sorted(metrics)}, not {settings.metric!r}; "
            "choose the metric with --metric"
        )
    confusion = getattr(cli.model, "last_confusion", {}).get("test")
    if confusion is not None and len(confusion) > MAX_CONFUSION_CLASSES:
        confusion = None  # a cells.jsonl line stays small (append_cell repairs lines within 1 MiB)
    classes = None if confusion is None else getattr(cli.model, "class_names", None)
    return Cell(
        backbone.name, recipe, fraction, seed, len(cli.datamodule.datasets["train"]),
        metrics[settings.metric], epochs_for(fraction, settings.base_epochs), time.perf_counter() - start,
        cell_key(backbone, recipe, fraction, seed, settings), settings.metric,
        "visiontransfer fit " + shlex.join(args),
        None if confusion is None else confusion.int().tolist(), None if classes is None else list(classes),
    )  # fmt: skip


# -- cells.jsonl -----------------------------------------------------------------------------------
def load_cells(path: str | os.PathLike[str]) -> list[Cell]:
    """The cells of a ``cells.jsonl``; a truncated last line (a run killed mid-write) is ignored.

    Other unreadable lines are skipped with a warning.
    """
    file = Path(path)
    if not file.is_file():
        return []
    lines = file.read_text(encoding="utf-8").split("\n")
    cells = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            cells.append(Cell.from_json(json.loads(line)))
        except (ValueError, TypeError):
            if number < len(lines):  # the last piece has no newline: an interrupted write
                warnings.warn(f"{file}:{number}: not a cell record, skipped", stacklevel=2)
    return cells


def append_cell(path: str | os.PathLike[str], cell: Cell) -> None:
    """Append one cell as one JSON line, in one write, flushed to disk.

    A truncated line left by an interrupted write is cut off first, so it never runs into the new one.
    """
    line = (json.dumps(dataclasses.asdict(cell), sort_keys=True) + "\n").encode("utf-8")
    with open(path, "r+b" if os.path.exists(path) else "w+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                start = max(0, size - (1 << 20))
                handle.seek(start)
                handle.truncate(start + handle.read().rfind(b"\n") + 1)
        handle.seek(0, os.SEEK_END)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def run_grid(
    backbones: Sequence[Backbone],
    recipes: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    settings: Settings,
    out: str | os.PathLike[str],
    progress: Callable[[Cell, bool], None] | None = None,
) -> list[Cell]:
    """Every (backbone, recipe, fraction, seed) cell: read from ``out/cells.jsonl`` when it is there,
    else trained with :func:`run_cell` and appended to it.

    Args:
        progress: Called with each cell and whether it was just computed (False: found).

    Returns:
        The cells in grid order, named after the current ``backbones``.
    """
    for recipe in recipes:
        recipe_file(recipe)  # fails naming --recipes
    Path(out).mkdir(parents=True, exist_ok=True)
    path = Path(out) / CELLS
    done = {_key_text(c.key): c for c in load_cells(path)}
    cells = []
    for backbone in backbones:
        for recipe in recipes:
            for fraction in fractions:
                for seed in seeds:
                    cell = done.get(_key_text(cell_key(backbone, recipe, fraction, seed, settings)))
                    fresh = cell is None
                    if cell is None:
                        cell = run_cell(backbone, recipe, fraction, seed, settings)
                        append_cell(path, cell)
                    cells.append(dataclasses.replace(cell, backbone=backbone.name))
                    if progress is not None:
                        progress(cells[-1], fresh)
    return cells


# -- summary, table, figure ------------------------------------------------------------------------
def summarize(cells: Sequence[Cell]) -> list[SummaryRow]:
    """Mean and sample standard deviation of the score over seeds, per backbone, recipe and fraction.

    Rows keep the order in which their backbone, recipe and fraction first appear in ``cells``.
    """
    groups: dict[tuple[str, str, float], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.backbone, cell.recipe, cell.fraction), []).append(cell)
    rows = []
    for (backbone, recipe, fraction), group in groups.items():
        summary = mean_std([c.score for c in group])
        labels = round(sum(c.labels for c in group) / len(group))
        rows.append(SummaryRow(backbone, recipe, fraction, labels, summary.mean, summary.std, summary.n))
    return rows


def percent(fraction: float) -> str:
    """``0.01`` → ``1%``, ``0.005`` → ``0.5%``."""
    return f"{fraction * 100:g}%"


def format_table(rows: Sequence[SummaryRow]) -> str:
    """Markdown table: one row per backbone and recipe, one column per fraction (with its label
    count), cells ``mean ± std`` of the test metric."""
    fractions = sorted({r.fraction for r in rows})
    labels = {r.fraction: r.labels for r in rows}
    lines = [
        "| backbone | recipe | " + " | ".join(f"{percent(f)} ({labels[f]} labels)" for f in fractions) + " |",
        "| --- | --- |" + " --- |" * len(fractions),
    ]
    table: dict[tuple[str, str], dict[float, SummaryRow]] = {}
    for row in rows:
        table.setdefault((row.backbone, row.recipe), {})[row.fraction] = row
    for (backbone, recipe), by_fraction in table.items():
        values = [
            f"{by_fraction[f].mean:.3f} ± {by_fraction[f].std:.3f}" if f in by_fraction else "–"
            for f in fractions
        ]
        lines.append(f"| {backbone} | {recipe} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def plot_label_efficiency(
    rows: Sequence[SummaryRow], title: str = "Label efficiency", metric: str = "test/top1"
) -> Figure:
    """The test metric against the number of labeled images (log x), one line per backbone × recipe,
    error bars one standard deviation over seeds. Colour: backbone; line style: recipe.

    Returns:
        A matplotlib figure (not attached to pyplot: save it, or display it in a notebook).
    """
    from matplotlib.figure import Figure

    backbones = list(dict.fromkeys(r.backbone for r in rows))
    recipes = list(dict.fromkeys(r.recipe for r in rows))
    fig = Figure(figsize=(9.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for b, backbone in enumerate(backbones):
        for s, recipe in enumerate(recipes):
            points = sorted(
                (r for r in rows if (r.backbone, r.recipe) == (backbone, recipe)), key=lambda r: r.labels
            )
            if not points:
                continue
            ax.errorbar(
                [p.labels for p in points], [p.mean for p in points], yerr=[p.std for p in points],
                color=f"C{b % 10}", linestyle=("-", "--", ":", "-.")[s % 4], marker="o", capsize=3,
                label=backbone if len(recipes) == 1 else f"{backbone} / {Path(recipe).stem}",
            )  # fmt: skip
    ax.set_xscale("log")
    ticks = {r.labels: r.fraction for r in rows}
    ax.set_xticks(sorted(ticks), [f"{n}\n({percent(ticks[n])})" for n in sorted(ticks)])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("labeled training images")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


# -- report files ----------------------------------------------------------------------------------
def _settings_lines(
    settings: Settings, backbones: Sequence[Backbone], rows: Sequence[SummaryRow]
) -> list[str]:
    """The settings section of ``report.md``."""
    fractions = sorted({r.fraction for r in rows})
    labels = {r.fraction: r.labels for r in rows}
    seeds = sorted({r.seeds for r in rows})
    chosen = {"image size": settings.image_size, "batch size": settings.batch_size,
              "augmentation": settings.augment, "precision": settings.precision,
              "validation hold-out": settings.val_fraction}  # fmt: skip
    lines = [
        f"- data: `{settings.data}`"
        if settings.data is not None
        else f"- data: the embedded procedural set ({settings.synthetic_size} training images)",
        "- labeled training images: " + ", ".join(f"{percent(f)}: {labels[f]}" for f in fractions),
        f"- seeds per cell: {', '.join(map(str, seeds))}",
        "- " + ", ".join(f"{k} {'the recipe’s' if v is None else v}" for k, v in chosen.items()),
        f"- epochs: {settings.base_epochs} at 1% of the labels, fewer for more: "
        + ", ".join(f"{percent(f)}: {epochs_for(f, settings.base_epochs)}" for f in fractions),
        "- test images: "
        + ("all" if settings.test_images is None else f"~{settings.test_images} (stratified)"),
    ]
    for recipe in dict.fromkeys(r.recipe for r in rows):
        lines.append(f"- recipe `{recipe}`: `{recipe_file(recipe)}`")
    for backbone in backbones:
        where = backbone.source if backbone.pretrained else "random init"
        spec = json.dumps(backbone.spec.architecture_only().to_dict(), sort_keys=True)
        lines.append(f"- backbone `{backbone.name}`: {where} ({spec})")
    return lines


def _commands_lines(cells: Sequence[Cell]) -> list[str]:
    """How to reproduce each cell: its ``visiontransfer fit`` command (then ``test`` on the run's
    ``last.ckpt``)."""
    lines = [
        "Each cell is this `visiontransfer fit` run, then `visiontransfer test` with the same "
        "arguments and `--ckpt_path` the run's `checkpoints/last.ckpt`:",
        "",
    ]
    for cell in cells:
        if cell.command:
            lines.append(f"- {cell.backbone} / {cell.recipe} @ {percent(cell.fraction)} seed {cell.seed}: "
                         f"`{cell.command}`")  # fmt: skip
    return lines


def write_report(
    rows: Sequence[SummaryRow],
    out: str | os.PathLike[str],
    settings: Settings,
    backbones: Sequence[Backbone] = (),
    cells: Sequence[Cell] = (),
) -> Path:
    """Write ``report.md`` (table, settings, each cell's command) and ``report.png``
    (:func:`plot_label_efficiency`) under ``out``, each atomically.

    Returns:
        The path of ``report.md``.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    fig = plot_label_efficiency(rows, metric=settings.metric)
    atomic_write(folder / REPORT_PNG, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    text = "\n".join(
        [
            "# Label efficiency",
            "",
            f"`{settings.metric}`, mean ± standard deviation over seeds, after transfer from each "
            "backbone (`cells.jsonl` holds every run).",
            "",
            format_table(rows),
            "",
            f"![label efficiency]({REPORT_PNG})",
            "",
            "## Settings",
            "",
            *_settings_lines(settings, backbones, rows),
            "",
            "## Commands",
            "",
            *_commands_lines(cells),
            "",
        ]
    )
    atomic_write(folder / REPORT_MD, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder / REPORT_MD


def run_report(
    backbones: Sequence[str],
    out: str | os.PathLike[str],
    settings: Settings,
    recipes: Sequence[str] = RECIPES,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    progress: Callable[[Cell, bool], None] | None = None,
) -> list[SummaryRow]:
    """Resolve the backbones (scratch baselines added), run or resume the grid, write the report.

    Returns:
        The summary rows (as in ``report.md``).
    """
    resolved = resolve_backbones(backbones)
    cells = run_grid(resolved, recipes, fractions, seeds, settings, out, progress)
    rows = summarize(cells)
    write_report(rows, out, settings, resolved, cells)
    return rows


# -- command line ----------------------------------------------------------------------------------
def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"{value} must be in (0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``visiontransfer report`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="visiontransfer report",
        description="Transfer pretrained backbones and their random-init baselines at several label "
        "fractions and seeds; write report.md, report.png and cells.jsonl (resumable) under --out.",
    )
    parser.add_argument(
        "--data", required=True,
        help="folder with train/ and test/ class-folder trees, or a segmentation set with train and test "
        "splits (images/ and masks/, or Pascal VOC)",
    )  # fmt: skip
    parser.add_argument("--backbones", nargs="+", required=True, metavar="[NAME=]PATH",
                        help="pretext .ckpt files or export folders")  # fmt: skip
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=list(RECIPES),
        metavar="RECIPE",
        help=f"built-in ({', '.join(RECIPES)}) or recipe YAML files (default: both built-ins)",
    )
    parser.add_argument("--fractions", nargs="+", type=_fraction, default=[0.01, 0.1, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--image-size", type=_positive, default=None, help="default: the recipe's")
    parser.add_argument("--batch-size", type=_positive, default=None, help="default: the recipe's")
    parser.add_argument(
        "--base-epochs", type=_positive, default=30, help="epochs at 1%% labels; fewer for more"
    )
    parser.add_argument(
        "--test-images", type=_positive, default=None, help="stratified test subset (default: all)"
    )
    parser.add_argument("--precision", default=None, help="default: the recipe's (32-true)")
    parser.add_argument("--metric", default="test/top1", help="test metric reported (default test/top1)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/report", help="output folder (default: runs/report)")
    return parser


def _check_data(root: str) -> None:
    """``--data`` must hold a training and a test split: ``train/`` and ``test/`` folders (class
    trees), or a segmentation layout naming both."""
    if not os.path.isdir(root):
        raise MissingPathError(f"--data={root!r} does not exist or is not a folder")
    missing = [split for split in ("train", "test") if not os.path.isdir(os.path.join(root, split))]
    segmentation = segmentation_splits(root)
    if segmentation:
        missing = [split for split in ("train", "test") if split not in segmentation]
    if missing:
        layout = (
            "images/<split>/ with masks/<split>/, or Pascal VOC's ImageSets/Segmentation/<split>.txt"
            if segmentation
            else "train/<class>/<image> and test/<class>/<image>"
        )
        raise MissingPathError(
            f"--data={root!r} has no {' or '.join(f'{m}/' for m in missing)} split: give a folder "
            f"with {layout}"
        )


def _print_progress(cell: Cell, fresh: bool) -> None:
    done = f"{cell.seconds:.0f} s" if fresh else "from cells.jsonl"
    print(f"{cell.backbone} / {cell.recipe} @ {percent(cell.fraction)} seed {cell.seed}: "
          f"{cell.metric} {cell.score:.3f} ({done})", flush=True)  # fmt: skip


def main(args: list[str]) -> None:
    """Entry point of ``visiontransfer report``.

    A mistake in the arguments (missing data, a file that is no backbone) exits with status 2 and
    one line naming the flag.
    """
    parser = build_parser()
    options = parser.parse_args(args)
    settings = Settings(
        data=options.data, image_size=options.image_size, batch_size=options.batch_size,
        base_epochs=options.base_epochs, test_images=options.test_images, precision=options.precision,
        metric=options.metric, workers=options.workers,
    )  # fmt: skip
    try:
        _check_data(options.data)
        backbones = resolve_backbones(options.backbones)
        cells = run_grid(
            backbones, options.recipes, options.fractions, options.seeds, settings, options.out,
            progress=_print_progress,
        )  # fmt: skip
    except ConfigError as error:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(error).split())}\n")
    rows = summarize(cells)
    report = write_report(rows, options.out, settings, backbones, cells)
    print("\n" + format_table(rows))
    print(f"\nwritten: {report}, {report.with_name(REPORT_PNG)}, {report.with_name(CELLS)}")
