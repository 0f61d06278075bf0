"""``visiontransfer report``: how much pretraining buys at each label budget (label efficiency).

Every (backbone, recipe, label fraction, seed) cell trains an
:class:`~visiontransfer.transfer.ImageClassifier` with a real ``lightning.Trainer`` on a stratified,
seeded subset of the training labels of a class-folder tree (``ROOT/train/<class>/<image>``,
``ROOT/test/<class>/<image>``; 10% of the training images are held out first, as
:class:`~visiontransfer.data.ClassificationDataModule` does) and tests it on ``ROOT/test``. The
random-init ("scratch") baseline of the same architecture and stem as each pretrained backbone is
always added. The run writes, under ``--out``:

- ``cells.jsonl``: one JSON line per finished cell, keyed by everything that changes its result.
  A rerun skips the cells it finds there and only redraws the report, so an interrupted run
  resumes where it stopped;
- ``report.md``: mean ± std of test top-1 over seeds per backbone, recipe and fraction, the number
  of labeled images of each fraction, and the settings;
- ``report.png``: top-1 against the number of labeled images (log scale), one line per
  backbone × recipe, error bars one standard deviation over seeds.

From Python: :func:`run_report` does all of it; :func:`resolve_backbones`, :func:`run_cell`,
:func:`run_grid`, :func:`summarize`, :func:`format_table`, :func:`plot_label_efficiency` and
:func:`write_report` are the pieces.
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
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.data.transforms import Augment
from visiontransfer.errors import ConfigError, MissingPathError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RECIPES: dict[str, dict[str, Any]] = {
    "linear_probe": {"strategy": "linear_probe", "lr": 1e-2, "weight_decay": 0.0, "warmup_epochs": 0},
    "finetune": {"strategy": "finetune", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1},
}
"""Transfer recipes: :class:`~visiontransfer.transfer.ImageClassifier` arguments."""

CELLS = "cells.jsonl"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
SCRATCH = "scratch"


@dataclass(frozen=True)
class Settings:
    """What a cell's result depends on besides backbone, recipe, fraction and seed (and workers).

    Attributes:
        data: Labeled set: a folder with ``train/`` and ``test/`` class-folder trees; None: the
            embedded procedural set.
        image_size: Side of the images fed to the model, in pixels.
        batch_size: Training and test batch size.
        base_epochs: Epochs at 1% of the labels; larger fractions get fewer (:func:`epochs_for`).
        test_images: Test on a stratified subset of about this many test images (None: all).
        precision: Lightning precision, e.g. ``32-true`` or ``bf16-mixed``.
        augment: Training augmentation preset of the datamodule.
        val_fraction: Share of the training images held out before the labels are drawn.
        synthetic_size: Training images of the embedded set (when ``data`` is None).
        workers: DataLoader workers (does not change results, so not part of a cell's key).
    """

    data: str | None = None
    image_size: int = 32
    batch_size: int = 128
    base_epochs: int = 30
    test_images: int | None = None
    precision: str = "32-true"
    augment: Augment = "crop_flip"
    val_fraction: float = 0.1
    synthetic_size: int = 2048
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


@dataclass(frozen=True)
class Backbone:
    """A backbone to transfer: a pretrained file, or the random-init baseline of an architecture.

    Attributes:
        name: Display name in the report.
        source: What :class:`~visiontransfer.transfer.ImageClassifier` gets as ``backbone``: the
            file, or the timm architecture for the scratch baseline.
        spec: Architecture, ``in_chans``, ``small_input_stem`` and ``backbone_kwargs``.
        fingerprint: Identifies the weights in cell keys: a hash of the weight file's content,
            or ``scratch:`` and the spec.
        pretrained: False for the scratch baseline.
    """

    name: str
    source: str
    spec: dict[str, Any] = field(compare=False)
    fingerprint: str
    pretrained: bool = True

    def init_args(self) -> dict[str, Any]:
        """Backbone arguments of the classifier: none for a file (it describes itself), else the spec."""
        if self.pretrained:
            return {}
        return {
            "small_input_stem": bool(self.spec.get("small_input_stem", False)),
            "in_chans": int(self.spec.get("in_chans", 3)),
            "backbone_kwargs": self.spec.get("backbone_kwargs") or None,
        }


@dataclass(frozen=True)
class Cell:
    """One finished (backbone, recipe, fraction, seed) run; a line of ``cells.jsonl``."""

    backbone: str
    recipe: str
    fraction: float
    seed: int
    labels: int
    top1: float
    epochs: int
    seconds: float
    key: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class SummaryRow:
    """Test top-1 of one backbone, recipe and fraction over seeds."""

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


def _method_of(path: str) -> str | None:
    """The pretext method recorded in a checkpoint or export folder, if any."""
    try:
        if os.path.isdir(path):
            config = json.loads(Path(path, "config.json").read_text())
            return config.get("visiontransfer", {}).get("method")
        if path.endswith(".ckpt"):
            from visiontransfer.export import backbone_spec, read_checkpoint

            return backbone_spec(read_checkpoint(path)).get("method")
    except (OSError, ValueError, KeyError):
        return None
    return None


def _split_name(entry: str) -> tuple[str | None, str]:
    """``NAME=PATH`` → (NAME, PATH); a path that exists (Lightning names hold ``=``) has no name."""
    name, sep, path = entry.partition("=")
    if os.path.exists(entry) or not sep or os.sep in name or "/" in name:
        return None, entry
    return name, path


def _scratch_name(spec: dict[str, Any], specs: int) -> str:
    """``scratch``, with the architecture spelled out when several architectures are compared."""
    if specs == 1:
        return SCRATCH
    extras = [spec["architecture"]]
    if spec.get("small_input_stem"):
        extras.append("small stem")
    if int(spec.get("in_chans", 3)) != 3:
        extras.append(f"{spec.get('in_chans')} channel")
    extras += [f"{k}={v}" for k, v in sorted((spec.get("backbone_kwargs") or {}).items())]
    return f"{SCRATCH} ({', '.join(extras)})"


def _load_spec(path: str) -> dict[str, Any]:
    """The spec of a backbone file, checked to load; errors name ``--backbones``."""
    from visiontransfer.export import load_backbone_with_spec

    if not os.path.exists(path):
        raise MissingPathError(
            f"--backbones: {path!r} does not exist (give pretext .ckpt files or export folders)"
        )
    try:
        return load_backbone_with_spec(path)[1]
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
        default = _method_of(path) or Path(path).stem
        found.append(Backbone(name or default, path, spec, fingerprint(path)))
    names = [b.name for b in found]
    found = [b if names.count(b.name) == 1 else dataclasses.replace(b, name=b.source) for b in found]
    if not scratch:
        return found
    specs = {json.dumps(b.spec, sort_keys=True): b.spec for b in found}
    for text, spec in specs.items():
        found.append(
            Backbone(_scratch_name(spec, len(specs)), spec["architecture"], spec, f"scratch:{text}", False)
        )
    return found


# -- one cell --------------------------------------------------------------------------------------
def epochs_for(fraction: float, base: int) -> int:
    """Fewer epochs for more labels, so each cell gets a comparable number of steps (at least 2)."""
    return max(2, round(base / (fraction * 100) ** 0.5))


def cell_key(
    backbone: Backbone, recipe: str, fraction: float, seed: int, settings: Settings
) -> dict[str, Any]:
    """Everything a cell's result depends on: weights, recipe and its arguments, fraction, seed, settings."""
    return {
        "backbone": backbone.fingerprint,
        "recipe": recipe,
        "recipe_args": RECIPES[recipe],
        "fraction": fraction,
        "seed": seed,
        "settings": settings.key(),
    }


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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


def limit_test_set(data: Any, images: int | None) -> None:
    """Replace the datamodule's test set by a stratified subset of about ``images`` images.

    The test set lists its files class by class, so its first images would be one or two classes.
    """
    from torch.utils.data import Subset

    from visiontransfer.data.subsets import stratified_subset

    test = data.datasets.get("test")
    if images is None or test is None or images >= len(test):
        return
    per_class = max(1, images // data.num_classes)
    keep = stratified_subset(np.asarray(test.labels), samples_per_class=per_class, seed=0)
    data.datasets["test"] = Subset(test, keep.tolist())


def _datamodule(fraction: float, seed: int, settings: Settings) -> Any:
    """The labeled data of a cell, set up, its test set limited to ``settings.test_images``."""
    from visiontransfer.data import ClassificationDataModule

    data = ClassificationDataModule(
        root=settings.data, label_fraction=fraction, val_fraction=settings.val_fraction,
        image_size=settings.image_size, batch_size=settings.batch_size, augment=settings.augment,
        num_workers=settings.workers, seed=seed, synthetic_size=settings.synthetic_size,
    )  # fmt: skip
    data.setup("fit")
    if "test" not in data.datasets:
        raise MissingPathError(f"--data={settings.data!r} has no test/ folder of class folders to test on")
    limit_test_set(data, settings.test_images)
    return data


def run_cell(backbone: Backbone, recipe: str, fraction: float, seed: int, settings: Settings) -> Cell:
    """Train and test one cell: ``seed`` seeds the weights, the augmentation and the label subset.

    Returns:
        The cell, with test top-1, the number of labeled training images and the wall time.
    """
    import lightning as L

    from visiontransfer.transfer import ImageClassifier

    start = time.perf_counter()
    with _quiet():
        L.seed_everything(seed, verbose=False)
        model = ImageClassifier(backbone=backbone.source, **backbone.init_args(), **RECIPES[recipe])
        data = _datamodule(fraction, seed, settings)
        epochs = epochs_for(fraction, settings.base_epochs)
        precision: Any = settings.precision  # checked by Lightning
        trainer = L.Trainer(  # one device: DDP would relaunch the calling script for every cell
            max_epochs=epochs, precision=precision, devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        )  # fmt: skip
        trainer.fit(model, data)
        top1 = float(trainer.test(model, data, verbose=False)[0]["test/top1"])
    return Cell(
        backbone.name, recipe, fraction, seed, len(data.datasets["train"]), top1, epochs,
        time.perf_counter() - start, cell_key(backbone, recipe, fraction, seed, settings),
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
            cells.append(Cell(**json.loads(line)))
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
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        raise ConfigError(f"--recipes: unknown {unknown}; choose from {list(RECIPES)}")
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
    """Mean and sample standard deviation of test top-1 over seeds, per backbone, recipe and fraction.

    Rows keep the order in which their backbone, recipe and fraction first appear in ``cells``.
    """
    groups: dict[tuple[str, str, float], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.backbone, cell.recipe, cell.fraction), []).append(cell)
    rows = []
    for (backbone, recipe, fraction), group in groups.items():
        values = [c.top1 for c in group]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        labels = round(statistics.fmean(c.labels for c in group))
        rows.append(
            SummaryRow(backbone, recipe, fraction, labels, statistics.fmean(values), std, len(values))
        )
    return rows


def percent(fraction: float) -> str:
    """``0.01`` → ``1%``, ``0.005`` → ``0.5%``."""
    return f"{fraction * 100:g}%"


def format_table(rows: Sequence[SummaryRow]) -> str:
    """Markdown table: one row per backbone and recipe, one column per fraction (with its label
    count), cells ``mean ± std`` of test top-1."""
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


def plot_label_efficiency(rows: Sequence[SummaryRow], title: str = "Label efficiency") -> Figure:
    """Test top-1 against the number of labeled images (log x), one line per backbone × recipe,
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
                label=f"{backbone} / {recipe}",
            )  # fmt: skip
    ax.set_xscale("log")
    ticks = {r.labels: r.fraction for r in rows}
    ax.set_xticks(sorted(ticks), [f"{n}\n({percent(ticks[n])})" for n in sorted(ticks)])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("labeled training images")
    ax.set_ylabel("test top-1")
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
    lines = [
        f"- data: `{settings.data}`"
        if settings.data is not None
        else f"- data: the embedded procedural set ({settings.synthetic_size} training images)",
        "- labeled training images: " + ", ".join(f"{percent(f)}: {labels[f]}" for f in fractions),
        f"- seeds per cell: {', '.join(map(str, seeds))}",
        f"- image size {settings.image_size}, batch size {settings.batch_size}, augmentation "
        f"`{settings.augment}`, precision `{settings.precision}`, "
        f"validation hold-out {settings.val_fraction:g}",
        f"- epochs: {settings.base_epochs} at 1% of the labels, fewer for more: "
        + ", ".join(f"{percent(f)}: {epochs_for(f, settings.base_epochs)}" for f in fractions),
        "- test images: "
        + ("all" if settings.test_images is None else f"~{settings.test_images} (stratified)"),
    ]
    for recipe in dict.fromkeys(r.recipe for r in rows):
        args = ", ".join(f"{k}={v}" for k, v in RECIPES[recipe].items())
        lines.append(f"- recipe `{recipe}`: {args}")
    for backbone in backbones:
        where = backbone.source if backbone.pretrained else "random init"
        lines.append(f"- backbone `{backbone.name}`: {where} ({json.dumps(backbone.spec, sort_keys=True)})")
    return lines


def write_report(
    rows: Sequence[SummaryRow],
    out: str | os.PathLike[str],
    settings: Settings,
    backbones: Sequence[Backbone] = (),
) -> Path:
    """Write ``report.md`` (table and settings) and ``report.png`` (:func:`plot_label_efficiency`)
    under ``out``, each atomically.

    Returns:
        The path of ``report.md``.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    fig = plot_label_efficiency(rows)
    atomic_write(folder / REPORT_PNG, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    text = "\n".join(
        [
            "# Label efficiency",
            "",
            "Test top-1, mean ± standard deviation over seeds, after transfer from each backbone "
            "(`cells.jsonl` holds every run).",
            "",
            format_table(rows),
            "",
            f"![label efficiency]({REPORT_PNG})",
            "",
            "## Settings",
            "",
            *_settings_lines(settings, backbones, rows),
            "",
        ]
    )
    atomic_write(folder / REPORT_MD, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder / REPORT_MD


def run_report(
    backbones: Sequence[str],
    out: str | os.PathLike[str],
    settings: Settings,
    recipes: Sequence[str] = tuple(RECIPES),
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
    write_report(rows, out, settings, resolved)
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
    parser.add_argument("--data", required=True, help="folder with train/ and test/ class-folder trees")
    parser.add_argument("--backbones", nargs="+", required=True, metavar="[NAME=]PATH",
                        help="pretext .ckpt files or export folders")  # fmt: skip
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--fractions", nargs="+", type=_fraction, default=[0.01, 0.1, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--image-size", type=_positive, default=32)
    parser.add_argument("--batch-size", type=_positive, default=128)
    parser.add_argument(
        "--base-epochs", type=_positive, default=30, help="epochs at 1%% labels; fewer for more"
    )
    parser.add_argument(
        "--test-images", type=_positive, default=None, help="stratified test subset (default: all)"
    )
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/report", help="output folder (default: runs/report)")
    return parser


def _check_data(root: str) -> None:
    """``--data`` must hold ``train/`` and ``test/`` folders."""
    if not os.path.isdir(root):
        raise MissingPathError(f"--data={root!r} does not exist or is not a folder")
    missing = [split for split in ("train", "test") if not os.path.isdir(os.path.join(root, split))]
    if missing:
        raise MissingPathError(
            f"--data={root!r} has no {' or '.join(f'{m}/' for m in missing)} folder: give a folder "
            "with train/<class>/<image> and test/<class>/<image>"
        )


def _print_progress(cell: Cell, fresh: bool) -> None:
    done = f"{cell.seconds:.0f} s" if fresh else "from cells.jsonl"
    print(f"{cell.backbone} / {cell.recipe} @ {percent(cell.fraction)} seed {cell.seed}: "
          f"top-1 {cell.top1:.3f} ({done})", flush=True)  # fmt: skip


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
        workers=options.workers,
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
    report = write_report(rows, options.out, settings, backbones)
    print("\n" + format_table(rows))
    print(f"\nwritten: {report}, {report.with_name(REPORT_PNG)}, {report.with_name(CELLS)}")
