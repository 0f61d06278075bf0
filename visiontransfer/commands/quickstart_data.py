"""The quickstart's plan, and its view of a user's folder: ``train/`` and ``test/`` class trees,
and an image size.

A folder that already holds ``train/`` and ``test/`` class trees is used as it is. A plain
class-per-folder tree gets a stratified, seeded test split (20 % of each class) as a tree of
symbolic links under the output folder, made once (a marker file says it is complete), so the
pretext trains on the training images only and every arm is tested on the same held-out images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visiontransfer.commands import report
from visiontransfer.data.decode import UnreadableImageError, load_rgb
from visiontransfer.data.index import scan_class_folders, scan_images
from visiontransfer.data.subsets import stratified_split
from visiontransfer.errors import ConfigError, MissingPathError

QUIET = ("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")

TEST_FRACTION = 0.2
DONE = ".complete"


def prepare_folder(data: str, out: Path, seed: int = 0) -> Path:
    """A folder with ``train/`` and ``test/`` class trees for ``data`` (see the module docstring).

    Raises:
        MissingPathError: ``data`` does not exist.
        ConfigError: it holds no class folders, or a class has fewer than 2 images.
    """
    root = Path(data)
    if not root.is_dir():
        raise MissingPathError(f"--data={data!r} does not exist or is not a folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    if (out / DONE).is_file():
        return out
    try:
        paths, labels, classes = scan_class_folders(root)
    except FileNotFoundError as error:
        raise ConfigError(
            f"--data={data!r}: {error}; give a class-per-folder tree or train/ + test/"
        ) from None
    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() < 2:
        few = [classes[c] for c in np.flatnonzero(counts < 2)]
        raise ConfigError(
            f"--data={data!r}: class(es) {few[:5]} have fewer than 2 images: none left to test on"
        )
    train, test = stratified_split(labels, TEST_FRACTION, seed)
    for split, positions in (("train", train), ("test", test)):
        for i in positions:
            link = out / split / paths[int(i)]
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                os.symlink(os.path.abspath(root / paths[int(i)]), link)
    (out / DONE).write_text(f"{len(train)} train, {len(test)} test images of {data}\n")
    return out


def suggested_image_size(folder: Path, probe: int = 32) -> int:
    """32 px for CIFAR-sized images, 64 px up to ~100 px, else 96 px (a CPU-sized default), from
    the median shorter side of up to ``probe`` images."""
    files = scan_images(folder)
    sides = []
    for i in np.unique(np.linspace(0, len(files) - 1, min(probe, len(files))).astype(int)) if files else []:
        try:
            sides.append(min(load_rgb(folder / files[int(i)]).shape[:2]))
        except UnreadableImageError:
            continue
    side = float(np.median(sides)) if sides else 64.0
    return 32 if side <= 40 else 64 if side <= 100 else 96


@dataclass(frozen=True)
class Plan:
    """What the quickstart runs (see :func:`default_plan`, :func:`budget_plan`).

    Attributes:
        data: Labeled tree with ``train/`` and ``test/`` (None: the embedded set).
        pretext: Config of the pretext run.
        image_size: Side of the images.
        pretrain_epochs: Epochs of pretraining.
        pretrain_images: Unlabeled images of the embedded set (ignored with ``data``).
        labeled_images: Labeled images of the embedded set (ignored with ``data``).
        fractions: Label budgets, as shares of the labeled training images.
        seeds: Seeds of each transfer cell.
        base_epochs: Transfer epochs at 1 % of the labels (fewer for more: the report's rule).
        workers: DataLoader workers.
    """

    data: str | None
    pretext: str
    image_size: int
    pretrain_epochs: int
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    base_epochs: int
    pretrain_images: int = 4096
    labeled_images: int = 2048
    workers: int = 2
    notes: list[str] = field(default_factory=list, compare=False)

    def settings(self) -> report.Settings:
        """The report's settings for the transfer cells."""
        return report.Settings(
            data=self.data, image_size=self.image_size, base_epochs=self.base_epochs,
            synthetic_size=self.labeled_images, workers=self.workers,
        )  # fmt: skip

    def pretrain_args(self, out: Path) -> list[str]:
        """``visiontransfer fit`` arguments of the pretext run."""
        data = [f"--data.root={Path(self.data) / 'train'}"] if self.data else [
            f"--data.synthetic_size={self.pretrain_images}"
        ]  # fmt: skip
        return [
            "--config", self.pretext, *data, f"--data.image_size={self.image_size}",
            f"--trainer.max_epochs={self.pretrain_epochs}", f"--data.num_workers={self.workers}",
            f"--trainer.default_root_dir={out / 'pretrain'}",
            f"--trainer.logger.init_args.save_dir={out / 'pretrain'}", *QUIET,
        ]  # fmt: skip
