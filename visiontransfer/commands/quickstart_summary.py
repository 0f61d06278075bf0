"""The quickstart's pictures and page: label efficiency, what the pretext learned (nearest
neighbours of a few test images in its feature space), and the confusion matrices of both arms,
as PNGs, one combined ``quickstart.png`` and a ``quickstart.html`` page with the verdict."""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.commands import report
from visiontransfer.commands.lightning_cli import fit_then_test

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from visiontransfer.commands.quickstart_data import Plan


@dataclass(frozen=True)
class Arms:
    """Test confusion matrices of both arms at the smallest label budget, first seed.

    They come from the cells (which record them); a cell recorded without one (an older
    ``cells.jsonl``) is run again: a cell is deterministic, so the model is the one the report
    scored.
    """

    fraction: float
    confusion: dict[str, Tensor]
    top1: dict[str, float]
    class_names: list[str]

    @classmethod
    def from_cells(
        cls, cells: Sequence[report.Cell], plan: Plan, recipe: str, backbones: Sequence[report.Backbone]
    ) -> Arms:
        fraction, seed = min(plan.fractions), plan.seeds[0]
        confusion, top1, names = {}, {}, []
        for backbone in backbones:
            cell = next(
                (c for c in cells if (c.backbone, c.fraction, c.seed) == (backbone.name, fraction, seed)),
                None,
            )
            if cell is not None and cell.confusion is not None and cell.classes is not None:
                confusion[backbone.name] = torch.tensor(cell.confusion)
                top1[backbone.name], names = cell.score, cell.classes
                continue
            args = report.cell_args(backbone, recipe, fraction, seed, plan.settings())
            cli, metrics = fit_then_test(
                [*args, *report.RUN_ONLY, f"--data.num_workers={plan.workers}"], save_config=False
            )
            confusion[backbone.name] = cli.model.last_confusion["test"]
            top1[backbone.name] = metrics["test/top1"]
            names = list(cli.model.class_names)
        return cls(fraction, confusion, top1, names)


def _pixels(fig: Figure, dpi: int = 90) -> Image.Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _save(image: Image.Image, path: Path) -> None:
    atomic_write(path, lambda temp: image.save(temp, format="PNG", optimize=True))


def neighbours_image(ckpt: Path, plan: Plan) -> Image.Image:
    """Nearest training images of one test image per class (up to 6) in the pretext's features."""
    from visiontransfer import pretext, visualize
    from visiontransfer.backbones.weights import read_checkpoint, spec_from_checkpoint

    method = spec_from_checkpoint(read_checkpoint(ckpt)).method or ""
    module = getattr(pretext, method).load_from_checkpoint(ckpt, map_location="cpu").eval()
    queries, query_labels, classes = visualize.labeled_images(plan.data, "test", 1, plan.image_size)
    bank, bank_labels, _ = visualize.labeled_images(plan.data, "train", 20, plan.image_size)
    rows = torch.arange(min(6, len(queries)))
    with torch.no_grad():
        found = visualize.nearest_neighbours(
            visualize.embed(module, queries[rows]), visualize.embed(module, bank), 5
        )
    title = "What the pretext learned: nearest training images (no labels used)"
    fig = visualize.neighbours_figure(
        queries[rows], bank, found, query_labels[rows], bank_labels, classes, title
    )
    return _pixels(fig)


def _tile(images: Sequence[Image.Image], width: int = 1500) -> Image.Image:
    """Images stacked top to bottom, each scaled to ``width`` at most, on white."""
    scaled = [
        im.resize((min(width, im.width), round(im.height * min(width, im.width) / im.width))) for im in images
    ]
    canvas = Image.new("RGB", (max(im.width for im in scaled), sum(im.height for im in scaled)), "white")
    y = 0
    for im in scaled:
        canvas.paste(im, ((canvas.width - im.width) // 2, y))
        y += im.height
    return canvas


def _side_by_side(images: Sequence[Image.Image]) -> Image.Image:
    canvas = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas


def write_summary(out: Path, rows: Sequence[report.SummaryRow], arms: Arms, ckpt: Path, plan: Plan) -> Path:
    """``quickstart.png`` (all pictures) and ``quickstart.html`` beside the separate PNGs; returns
    the page."""
    from visiontransfer.visualize import confusion_figure

    pictures: dict[str, Image.Image] = {"label_efficiency": _pixels(report.plot_label_efficiency(rows))}
    pictures["neighbours"] = neighbours_image(ckpt, plan)
    matrices = [
        _pixels(
            confusion_figure(
                matrix,
                arms.class_names,
                f"{name}: test top-1 {arms.top1[name]:.3f} at {report.percent(arms.fraction)} of the labels",
            )
        )
        for name, matrix in arms.confusion.items()
    ]
    pictures["confusion"] = _side_by_side(matrices)
    for name, image in pictures.items():
        _save(image, out / f"{name}.png")
    _save(_tile(list(pictures.values())), out / "quickstart.png")
    page = out / "quickstart.html"
    atomic_write(page, lambda temp: Path(temp).write_text(_html(rows, pictures, plan), encoding="utf-8"))
    return page


def _html(rows: Sequence[report.SummaryRow], pictures: dict[str, Any], plan: Plan) -> str:
    table = report.format_table(rows)
    images = "\n".join(
        f'<p><img src="{name}.png" alt="{name}" style="max-width:100%"></p>' for name in pictures
    )
    where = html.escape(plan.data or "the embedded procedural set")
    return (
        "<!doctype html><meta charset='utf-8'><title>visiontransfer quickstart</title>"
        f"<h1>Did pretraining pay? ({where})</h1><pre>{html.escape(table)}</pre>{images}"
        "<p>Every number comes from report/cells.jsonl; report/report.md lists each run's command.</p>\n"
    )
