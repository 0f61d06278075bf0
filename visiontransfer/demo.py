"""Small ready-made image sets for notebooks and quick experiments.

:func:`small_image_set` copies a few hundred CIFAR-10 images into a ``train/`` + ``test/``
class-folder tree when CIFAR-10 is found beside the repository (``../shared/data/cifar10``, the
layout the tests use), and otherwise falls back to the embedded procedural set, so the same
notebook runs with and without data.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from visiontransfer.data import IMAGE_EXTENSIONS

_SHARED = Path("shared") / "data" / "cifar10"


@dataclass(frozen=True)
class ImageSet:
    """A small image set for pretraining and transfer.

    Attributes:
        root: Labeled set with ``train/`` and ``test/`` class folders (``ClassificationDataModule``'s
            ``root``); None: the embedded procedural set.
        pretrain_root: Unlabeled pretraining images (the training split only; ``PretrainDataModule``'s
            ``root``); None: the embedded set.
        description: What the set is, in words.
    """

    root: str | None
    pretrain_root: str | None
    description: str


def find_cifar10() -> Path | None:
    """CIFAR-10 as ``{train,test}/<class>/<image>`` beside the repository or the working directory."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd().parent, Path.cwd()):
        candidate = base / _SHARED
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def _copy_first(source: Path, dest: Path, count: int) -> int:
    """Copy the first ``count`` images (by name) of ``source`` into ``dest``; returns how many."""
    files = sorted(f for f in source.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)[:count]
    dest.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = dest / file.name
        if not target.is_file() or target.stat().st_size != file.stat().st_size:
            shutil.copyfile(file, target)
    return len(files)


def small_image_set(
    out: str | os.PathLike[str],
    train_per_class: int = 50,
    test_per_class: int = 20,
    classes: int = 10,
    source: str | os.PathLike[str] | None = None,
) -> ImageSet:
    """A few real images per class in ``out/{train,test}/<class>/``, or the embedded set without data.

    Args:
        out: Folder to copy the images into (created; existing copies are kept).
        train_per_class: Training images per class (the first ones by file name).
        test_per_class: Test images per class.
        classes: Number of classes (the first ones by name).
        source: A ``{train,test}/<class>/`` tree to copy from; default: :func:`find_cifar10`.
    """
    found = Path(source) if source is not None else find_cifar10()
    if found is None:
        return ImageSet(None, None, "the embedded procedural image set (CIFAR-10 not found)")
    counts = {}
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        names = sorted(d.name for d in (found / split).iterdir() if d.is_dir())[:classes]
        counts[split] = sum(_copy_first(found / split / n, Path(out) / split / n, count) for n in names)
    description = (
        f"{counts['train']} training and {counts['test']} test images of {len(names)} classes from {found}"
    )
    return ImageSet(str(out), str(Path(out) / "train"), description)
