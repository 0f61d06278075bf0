"""Labeled images for classification: class-per-folder trees, CSV manifests or the embedded set.

``root`` may hold the classes directly (``root/<class>/<image>``) or split folders
(``root/train/<class>/...`` with optional ``root/val`` and ``root/test``), as CIFAR-style exports
do. Without a validation set, a stratified ``val_fraction`` of the training images is held out
first, then the small labeled subset (``samples_per_class`` or ``label_fraction``) is drawn from
the rest, so every label budget is validated on the same images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from visiontransfer.data.base import SourceDataModule, check_label_budget, probe_classes, warn_small_classes
from visiontransfer.data.index import PathTable, read_manifest, scan_class_folders
from visiontransfer.data.shards import read_index
from visiontransfer.data.subsets import stratified_split, stratified_subset
from visiontransfer.data.synthetic import SHAPES
from visiontransfer.errors import ConfigError, MissingPathError, require

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
"""Sub-folder names recognised when ``root`` holds split folders rather than class folders."""


@dataclass(frozen=True)
class LabeledFiles:
    """Paths with class indices."""

    paths: PathTable
    labels: np.ndarray

    def take(self, positions: np.ndarray) -> LabeledFiles:
        rel = self.paths.relative
        table = PathTable(self.paths.root, (rel(int(i)) for i in positions))
        return LabeledFiles(table, self.labels[positions])


def _natural_sorted(names: set[str]) -> list[str]:
    """Class names sorted numerically when they are all integers, else alphabetically."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _find_split(root: str, split: str) -> str | None:
    for name in SPLIT_DIRS[split]:
        candidate = os.path.join(root, name)
        if os.path.isdir(candidate):
            return candidate
    return None


def _shard_classes(folder: str) -> list[str]:
    """Class names stored in a shard folder's index; an unlabeled folder is an error."""
    classes = list(read_index(folder)["classes"])
    if not classes:
        raise ConfigError(
            f"--data.shards={folder!r} holds no labels: write the shards from a class-per-folder "
            "tree with `visiontransfer shard SRC --out DIR --labeled`"
        )
    return classes


class ClassificationDataModule(SourceDataModule):
    """Labeled images for downstream classification, with small-label subsets.

    ``root`` is a class-per-folder tree, or a folder holding ``train/`` (and optionally ``val/``,
    ``test/``) class-per-folder trees; ``manifest`` a CSV file with ``path`` and ``label``
    columns; ``shards`` labeled tar shards (``visiontransfer shard SRC --out DIR --labeled``),
    whose ``val-*`` shards validate unless ``val_root`` is given; the whole shard set is used
    (``samples_per_class`` and ``label_fraction`` need ``root`` or ``manifest``). With none of
    them it serves the embedded procedural set (10 shape classes).

    Args:
        val_root: Validation set (a class-per-folder tree or a CSV manifest); default: ``root/val``
            if present, else a stratified ``val_fraction`` of the training images.
        test_root: Test set (folder or CSV manifest); default: ``root/test`` if present.
        samples_per_class: Keep at most this many training labels per class.
        label_fraction: Keep this share of the training labels of each class, in (0, 1].
        val_fraction: Share of each class held out for validation when no validation set exists.
        test_images: Test on a stratified subset of about this many test images (seed 0, the
            same subset whatever ``seed``); None: all.
        **kwargs: ``root``, ``manifest``, ``shards``, ``augment`` and the loader arguments of
            :class:`~visiontransfer.data.base.SourceDataModule`.
    """

    def __init__(
        self,
        *,
        val_root: str | None = None,
        test_root: str | None = None,
        samples_per_class: int | None = None,
        label_fraction: float | None = None,
        val_fraction: float = 0.1,
        test_images: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_label_budget(samples_per_class, label_fraction)
        require(0 < val_fraction < 1, "data", "val_fraction", val_fraction, "must be in (0, 1)")
        require(test_images is None or test_images >= 1, "data", "test_images", test_images, "must be >= 1")
        self._shard_classes = None if self.shards is None else _shard_classes(self.shards)
        if self.shards is not None and (samples_per_class is not None or label_fraction is not None):
            raise ConfigError(
                "--data.samples_per_class and --data.label_fraction draw from an indexed set: "
                "use --data.root or --data.manifest for small-label subsets, not --data.shards"
            )
        self.val_root = val_root
        self.test_root = test_root
        self.samples_per_class = samples_per_class
        self.label_fraction = label_fraction
        self.val_fraction = val_fraction
        self.test_images = test_images
        self._classes: list[str] | None = None
        self._scans: dict[str, tuple[list[str], np.ndarray, list[str]]] = {}
        self.save_hyperparameters()

    # -- where the splits come from -------------------------------------------------------------
    def _sources(self) -> dict[str, str | None]:
        """Folder or manifest of each split (None: carve from train / embedded / absent)."""
        if self.manifest is not None:
            return {"train": self.manifest, "val": self.val_root, "test": self.test_root}
        if self.root is None:
            return {"train": None, "val": None, "test": None}
        train = _find_split(self.root, "train")
        return {
            "train": train or self.root,
            "val": self.val_root or (_find_split(self.root, "val") if train else None),
            "test": self.test_root or (_find_split(self.root, "test") if train else None),
        }

    @property
    def classes(self) -> list[str]:
        """Class names in label order (from the training folders or manifest)."""
        if self._classes is None:
            train = self._sources()["train"]
            if self._shard_classes is not None:
                self._classes = self._shard_classes
            elif train is None:
                self._classes = list(SHAPES)
            elif os.path.isdir(train):
                self._classes = self._scan(train, "--data.root")[2]
            else:
                _, labels = read_manifest(train)
                if labels is None:
                    raise ConfigError(f"--data.manifest={train!r} needs a 'label' column")
                self._classes = _natural_sorted(set(labels))
        return self._classes

    def _scan(self, folder: str, flag: str) -> tuple[list[str], np.ndarray, list[str]]:
        """A class-per-folder tree, indexed once (the class names are asked for before set-up)."""
        if folder not in self._scans:
            try:
                skipped: list[tuple[str, str]] = []
                self._scans[folder] = scan_class_folders(folder, skipped=skipped)
                self.note_index_skips(skipped, f"{flag}={folder!r}")
            except FileNotFoundError as error:
                raise MissingPathError(f"{flag}={folder!r}: {error}") from None
        return self._scans[folder]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def _read(self, source: str, flag: str) -> LabeledFiles:
        """Index a class-per-folder tree or a CSV manifest, labels mapped to :attr:`classes`."""
        index = {name: i for i, name in enumerate(self.classes)}
        if os.path.isdir(source):
            rel, labels, names = self._scan(source, flag)
            self._scans.pop(source, None)  # a million Python strings must not reach the workers
            table = PathTable(source, rel)
            label_names = [names[i] for i in labels]
        elif not os.path.isfile(source):
            raise MissingPathError(
                f"{flag}={source!r} does not exist: give a class-per-folder tree or a CSV manifest "
                "with 'path' and 'label' columns"
            )
        else:
            paths, names_or_none = read_manifest(source)
            if names_or_none is None:
                raise ConfigError(f"{flag}={source!r}: the manifest needs a 'label' column")
            table, label_names = PathTable("", paths), names_or_none
        unknown = sorted(set(label_names) - set(index))
        if unknown:
            raise ConfigError(
                f"{flag}={source!r} has classes not in the training set: {unknown[:5]}; "
                f"training classes are {self.classes[:10]}"
            )
        return LabeledFiles(table, np.asarray([index[n] for n in label_names], dtype=np.int64))

    # -- building the datasets -----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        if self.shards is not None:
            self._setup_shards(self.shards)
            return
        sources = self._sources()
        if sources["train"] is None:
            self._setup_synthetic()
            return
        flag = "--data.manifest" if self.manifest else "--data.root"
        train = self._read(sources["train"], flag)
        probe_classes(
            train.paths, train.labels, self.classes, f"{flag}={sources['train']!r}", self.max_pixels
        )
        if sources["val"] is not None:
            val = self._read(sources["val"], "--data.val_root")
        else:
            keep, held = stratified_split(train.labels, self.val_fraction, self.seed)
            train, val = train.take(keep), train.take(held)
        warn_small_classes(np.bincount(train.labels, minlength=self.num_classes), self.classes,
                           self.samples_per_class)  # fmt: skip
        train = train.take(self._labeled_positions(train.labels))
        self.datasets["train"] = self._files(train.paths, train.labels, train=True)
        self.datasets["val"] = self._files(val.paths, val.labels, train=False)
        if sources["test"] is not None:
            test = self._read(sources["test"], "--data.test_root")
            test = test.take(self._test_positions(test.labels))
            self.datasets["test"] = self._files(test.paths, test.labels, train=False)
        self.datasets["predict"] = self.datasets.get("test", self.datasets["val"])

    def _test_positions(self, labels: np.ndarray) -> np.ndarray:
        """All test images, or a stratified ``test_images`` of them (seed 0: the same for every seed)."""
        if self.test_images is None or self.test_images >= len(labels):
            return np.arange(len(labels))
        per_class = max(1, self.test_images // self.num_classes)
        return stratified_subset(labels, samples_per_class=per_class, seed=0)

    def _setup_shards(self, folder: str) -> None:
        train, val = self._shard_streams(folder, self.shuffle_buffer)
        self.datasets["train"] = train
        if self.val_root is not None:
            held = self._read(self.val_root, "--data.val_root")
            self.datasets["val"] = self._files(held.paths, held.labels, train=False)
        elif val is not None:
            self.datasets["val"] = val
        else:
            raise ConfigError(
                f"--data.shards={folder!r} has no val-* shards: give --data.val_root, or write "
                "them with `visiontransfer shard SRC --out DIR --labeled --val-fraction 0.05`"
            )
        if self.test_root is not None:
            test = self._read(self.test_root, "--data.test_root")
            test = test.take(self._test_positions(test.labels))
            self.datasets["test"] = self._files(test.paths, test.labels, train=False)
        self.datasets["predict"] = self.datasets.get("test", self.datasets["val"])

    def _labeled_positions(self, labels: np.ndarray) -> np.ndarray:
        return stratified_subset(labels, self.samples_per_class, self.label_fraction, self.seed)

    def _setup_synthetic(self) -> None:
        n = self.synthetic_size
        labels = self._synthetic(np.arange(n), train=False).labels
        keep, held = stratified_split(labels, self.val_fraction, self.seed)
        keep = keep[self._labeled_positions(labels[keep])]
        n_eval = len(held)
        self.datasets["train"] = self._synthetic(keep, train=True)
        self.datasets["val"] = self._synthetic(held, train=False)
        self.datasets["test"] = self._synthetic(np.arange(n, n + n_eval), train=False)
        self.datasets["predict"] = self.datasets["test"]

    def train_label_counts(self) -> np.ndarray:
        """Training labels per class after subsetting (call after ``setup``)."""
        labels = getattr(self.datasets["train"], "labels", None)
        if labels is None:
            raise ConfigError("label counts need --data.root or --data.manifest, not --data.shards")
        return np.bincount(labels, minlength=self.num_classes)
