"""The segmentation datamodule: finds image / mask pairs under ``--data.root`` (paired folders or
Pascal VOC) or in a CSV manifest, splits them, draws the small labeled subset and serves them (or
the embedded set) with mask-aware augmentation."""

from __future__ import annotations

import os
from typing import Any, Literal

import albumentations as A
import numpy as np
from torch.utils.data import DataLoader

from visiontransfer.data.base import PROBE_FILES, ImageDataModule, check_label_budget
from visiontransfer.data.datasets import Skipped
from visiontransfer.data.segmentation.datasets import (
    EMBEDDED_CLASSES,
    SegmentationDataset,
    SyntheticSegmentationDataset,
    segmentation_collate,
)
from visiontransfer.data.segmentation.records import (
    CLASSES_FILE,
    VOC_CLASSES,
    MaskedImages,
    SegmentationFiles,
    is_voc_root,
    read_class_names,
    read_paired_folders,
    read_segmentation_manifest,
    read_voc,
)
from visiontransfer.data.segmentation.transforms import (
    SegmentationAugment,
    segmentation_eval_transform,
    segmentation_train_transform,
)
from visiontransfer.data.sources import resolve_source
from visiontransfer.data.subsets import stratified_split, stratified_subset
from visiontransfer.errors import ConfigError, require

SegmentationFormat = Literal["auto", "folders", "voc"]
"""Layouts of ``--data.root``: ``folders`` (``images/<split>/`` with ``masks/<split>/``), ``voc``
(``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/``), ``auto`` (VOC when its
folders are there, else paired folders)."""


class SegmentationDataModule(ImageDataModule):
    """Images with per-pixel class masks for semantic segmentation, with small-label subsets.

    ``root`` holds paired folders (``images/{train,val,test}/x.jpg`` with
    ``masks/{train,val,test}/x.png``, or ``images/`` and ``masks/`` without splits; the layout of
    the shared CamVid copy) or Pascal VOC; ``manifest`` is a CSV file with ``image``, ``mask`` and
    optionally ``split`` columns. With neither it serves the embedded procedural set (11 classes:
    the background and 10 shapes). Without a validation split a seeded ``val_fraction`` of the
    training images is held out first, then the labeled subset (``label_fraction`` or
    ``num_images``, nested across sizes for a fixed ``seed``) is drawn from the rest. Without a test
    split ``test`` and ``predict`` use the validation images.

    Images without a mask, unreadable files, masks of another size than their image and masks with
    values outside ``0..C-1`` and ``ignore_index`` are skipped and counted, naming the file (one
    warning; the list in ``skipped_files.txt`` of the log folder); no usable pair at all is an error.

    Keyword-only args:
        root: Dataset folder (see above).
        manifest: Instead of ``root``: a CSV file of ``image,mask[,split]`` rows (paths relative to it).
        format: Layout of ``root``: ``auto``, ``folders`` or ``voc``.
        classes: Class names in label order; default: ``classes.txt`` in ``root`` (or beside the
            manifest), VOC's 21 classes for VOC, the embedded set's 11 without data.
        ignore_index: Mask value of pixels without a label (void); ignored by loss and metrics.
        image_size: Longest side of the images fed to the model (aspect ratio kept), in pixels.
        crop_size: Side of the square training crops; default ``image_size``.
        augment: Training preset: ``standard``, ``flip`` or ``none`` (see
            :data:`~visiontransfer.data.segmentation.transforms.SegmentationAugment`).
        val_fraction: Share of the training images held out when there is no validation split.
        label_fraction: Keep this share of the training images, in (0, 1].
        num_images: Instead: keep this many training images.
        test_images: Test on a seeded subset of this many test images (seed 0: the same whatever
            ``seed``); None: all.
        batch_size: Images per batch per process.
        synthetic_size: Training images of the embedded set (when no data is given).
        **kwargs: Loader arguments of :class:`~visiontransfer.data.base.ImageDataModule`
            (``num_workers``, ``seed``, ``max_pixels``, ...).
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        manifest: str | None = None,
        format: SegmentationFormat = "auto",
        classes: list[str] | None = None,
        ignore_index: int = 255,
        image_size: int = 240,
        crop_size: int | None = None,
        augment: SegmentationAugment = "standard",
        val_fraction: float = 0.1,
        label_fraction: float | None = None,
        num_images: int | None = None,
        test_images: int | None = None,
        batch_size: int = 8,
        synthetic_size: int = 512,
        **kwargs: Any,
    ) -> None:
        require(0 <= ignore_index <= 65535, "data", "ignore_index", ignore_index, "must be in 0..65535")
        self.ignore_index = ignore_index
        self.crop_size = crop_size or image_size
        self.augment: SegmentationAugment = augment
        super().__init__(
            image_size=image_size, batch_size=batch_size, synthetic_size=synthetic_size, **kwargs
        )
        if format not in ("auto", "folders", "voc"):
            raise ConfigError(f"--data.format={format!r}: choose one of auto, folders, voc")
        self._check_budget(label_fraction, num_images, val_fraction, test_images)
        if classes is not None and len(set(classes)) != len(classes):
            raise ConfigError(f"--data.classes={classes} lists a class twice")
        self.images = resolve_source(root, manifest)
        self.root, self.manifest, self.format = root, manifest, format
        self.declared_classes = list(classes) if classes is not None else None
        self.val_fraction, self.label_fraction = val_fraction, label_fraction
        self.num_images, self.test_images = num_images, test_images
        self._classes: list[str] | None = None
        self._collate = segmentation_collate(ignore_index)
        self.save_hyperparameters()

    @staticmethod
    def _check_budget(
        label_fraction: float | None, num_images: int | None, val_fraction: float, test_images: int | None
    ) -> None:
        if label_fraction is not None and num_images is not None:
            raise ConfigError("give either --data.label_fraction or --data.num_images, not both")
        check_label_budget(None, label_fraction)
        require(num_images is None or num_images >= 1, "data", "num_images", num_images, "must be >= 1")
        require(0 < val_fraction < 1, "data", "val_fraction", val_fraction, "must be in (0, 1)")
        require(test_images is None or test_images >= 1, "data", "test_images", test_images, "must be >= 1")

    def _transforms(self) -> tuple[A.Compose, A.Compose]:
        """The mask-aware pipelines: the ``augment`` preset for training, the resize for evaluation."""
        train = segmentation_train_transform(self.image_size, self.crop_size, self.augment, self.ignore_index)
        return train, segmentation_eval_transform(self.image_size)

    # -- classes --------------------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """Whether the embedded procedural set is served (neither ``root`` nor ``manifest``)."""
        return self.images.kind == "embedded"

    @property
    def classes(self) -> list[str]:
        """Class names in label order (mask value ``k`` is ``classes[k]``)."""
        if self._classes is None:
            self._classes = self._find_classes()
        return self._classes

    def _find_classes(self) -> list[str]:
        if self.declared_classes is not None:
            return self.declared_classes
        if self.embedded:
            return list(EMBEDDED_CLASSES)
        folder = self.root if self.root is not None else os.path.dirname(os.path.abspath(str(self.manifest)))
        listing = os.path.join(folder, CLASSES_FILE)
        if os.path.isfile(listing):
            return read_class_names(listing)
        if self.root is not None and self._is_voc():
            return list(VOC_CLASSES)
        raise ConfigError(
            f"no class names for {self.images.describe()}: put a {CLASSES_FILE} (one name per line, in "
            "mask-value order) there, or give --data.classes [name, ...]"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (the ignore index not counted)."""
        return len(self.classes)

    def _is_voc(self) -> bool:
        return self.format == "voc" or (self.format == "auto" and is_voc_root(str(self.root)))

    # -- datasets -------------------------------------------------------------------------------
    def _read(self) -> SegmentationFiles:
        if self.manifest is not None:
            return read_segmentation_manifest(self.manifest)
        assert self.root is not None
        return read_voc(self.root) if self._is_voc() else read_paired_folders(self.root)

    def _dataset(self, files: MaskedImages, train: bool) -> SegmentationDataset:
        transform = self._train_tf if train else self._eval_tf
        return SegmentationDataset(files, transform, self.num_classes, self.ignore_index, self.max_pixels)

    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        if self.embedded:
            self._setup_synthetic()
            return
        found = self._read()
        if found.unpaired:
            self.skip_log.add(found.unpaired)
            self.skip_log.warn_once()
        train = found.splits.get("train")
        if train is None:
            example = f"; e.g. {found.unpaired[0][0]}: {found.unpaired[0][1]}" if found.unpaired else ""
            raise ConfigError(f"{found.where}: no training image with a mask{example}")
        val = found.splits.get("val")
        if val is None:
            keep, held = stratified_split(np.zeros(len(train), np.int64), self.val_fraction, self.seed)
            train, val = train.take(keep), train.take(held)
        train = train.take(self._labeled_positions(len(train)))
        self.datasets["train"] = self._dataset(train, train=True)
        self.datasets["val"] = self._dataset(val, train=False)
        self._probe(self._dataset(train, train=False), found.where)
        test = found.splits.get("test")
        if test is not None:
            self.datasets["test"] = self._dataset(test.take(self._test_positions(len(test))), train=False)
        self.datasets["predict"] = self.datasets.get("test", self.datasets["val"])

    def _labeled_positions(self, count: int) -> np.ndarray:
        """The labeled subset: a seeded permutation's prefix, so smaller budgets nest in larger ones."""
        return stratified_subset(np.zeros(count, np.int64), self.num_images, self.label_fraction, self.seed)

    def _test_positions(self, count: int) -> np.ndarray:
        if self.test_images is None or self.test_images >= count:
            return np.arange(count)
        return stratified_subset(np.zeros(count, np.int64), samples_per_class=self.test_images, seed=0)

    def _probe(self, dataset: SegmentationDataset, where: str) -> None:
        """Decode up to :data:`~visiontransfer.data.base.PROBE_FILES` pairs spread over the set; fail
        when none is usable (every file broken, every mask of the wrong size or classes)."""
        picks = np.unique(np.linspace(0, len(dataset) - 1, min(PROBE_FILES, len(dataset))).astype(int))
        reasons = []
        for i in picks:
            sample = dataset[int(i)]
            if not isinstance(sample, Skipped):
                return
            reasons.append(f"{sample.path}: {sample.reason}")
        raise ConfigError(
            f"no usable image / mask pair in {where}: {len(picks)} probed pairs failed, e.g.\n  "
            + "\n  ".join(reasons[:3])
        )

    def _setup_synthetic(self) -> None:
        n = self.synthetic_size
        n_eval = max(16, round(n * self.val_fraction))
        train = np.arange(n)[self._labeled_positions(n)]
        size, seed = self.image_size, self.seed
        self.datasets["train"] = SyntheticSegmentationDataset(train, self._train_tf, size, seed)
        self.datasets["val"] = SyntheticSegmentationDataset(
            np.arange(n, n + n_eval), self._eval_tf, size, seed
        )
        test = np.arange(n + n_eval, n + 2 * n_eval)
        self.datasets["test"] = SyntheticSegmentationDataset(test, self._eval_tf, size, seed)
        self.datasets["predict"] = self.datasets["test"]

    # -- loaders --------------------------------------------------------------------------------
    def _eval_loader(self, split: str) -> DataLoader[Any]:
        """Each evaluation image once across processes: the whole-set metrics count every pixel once
        (the sampler Lightning puts in would repeat images to even the processes' shares out)."""
        loader = self._loader(split, train=False)
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        dataset = loader.dataset
        if trainer is None or world <= 1 or len(dataset) < world:  # type: ignore[arg-type]
            return loader
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        sampler = UnrepeatedDistributedSampler(
            dataset, num_replicas=world, rank=trainer.global_rank, shuffle=False
        )
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, num_workers=loader.num_workers,
            collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn,
            persistent_workers=loader.persistent_workers,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader[Any]:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader[Any]:
        return self._eval_loader("test")
