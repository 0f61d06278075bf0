"""Shared plumbing of the image datamodules: loaders, worker seeding, skipped files, probing.

The datamodules read a folder (``--data.root``), a manifest (``--data.manifest``) or, with neither, the
embedded procedural set, so every command runs without data to fetch.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, get_worker_info

from visiontransfer.data.datasets import (
    ImageFileDataset,
    SkipLog,
    SyntheticDataset,
    collate_samples,
)
from visiontransfer.data.decode import DEFAULT_MAX_PIXELS, UnreadableImageError, load_rgb
from visiontransfer.data.device_decode import collate_encoded, decode_on_device
from visiontransfer.data.index import PathTable
from visiontransfer.data.sampling import ResumableLoader, ResumableSampler
from visiontransfer.data.shards import ShardLoader, ShardStream
from visiontransfer.data.sources import resolve_source
from visiontransfer.data.synthetic import SHAPES
from visiontransfer.data.transforms import Augment, eval_transform, seed_transform, train_transform
from visiontransfer.errors import ConfigError, require
from visiontransfer.imagelog import log_folder

PROBE_FILES = 64
"""Files decoded at set-up to catch a folder with no readable image before training starts."""


def _seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream, reproducible under a seed."""
    info = get_worker_info()
    if info is None:
        return
    seed = info.seed % 2**32
    np.random.seed(seed)
    transform = getattr(info.dataset, "transform", None)
    if transform is not None:
        seed_transform(transform, seed)


def check_label_budget(samples_per_class: int | None, label_fraction: float | None) -> None:
    """A datamodule's small-label budget: at most one of the two, each in range (naming the flag)."""
    if samples_per_class is not None and label_fraction is not None:
        raise ConfigError("give either --data.samples_per_class or --data.label_fraction, not both")
    if samples_per_class is not None:
        require(samples_per_class >= 1, "data", "samples_per_class", samples_per_class, "must be >= 1")
    if label_fraction is not None:
        require(0 < label_fraction <= 1, "data", "label_fraction", label_fraction, "must be in (0, 1]")


def probe_readable(paths: PathTable, where: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Decode up to :data:`PROBE_FILES` files spread over ``paths``; fail if none decodes.

    Raises:
        ValueError: naming ``where`` and the reasons, when no probed file is a readable image.
    """
    if len(paths) == 0:
        raise ConfigError(f"no image files found in {where}")
    picks = np.unique(np.linspace(0, len(paths) - 1, min(PROBE_FILES, len(paths))).astype(int))
    reasons = _unreadable(paths, picks, max_pixels)
    if len(reasons) < len(picks):
        return
    scope = "any" if len(picks) == len(paths) else f"any of {len(picks)} sampled"
    raise ConfigError(
        f"no readable image in {where}: {scope} files failed to decode, e.g.\n  " + "\n  ".join(reasons[:3])
    )


def _unreadable(paths: PathTable, picks: Iterable[int], max_pixels: int) -> list[str]:
    """Decode ``paths[picks]`` in order until one decodes; the reasons of those that failed."""
    reasons = []
    for i in picks:
        try:
            load_rgb(paths[int(i)], max_pixels)
            break
        except UnreadableImageError as error:
            reasons.append(f"{error.path}: {error.reason}")
    return reasons


CLASS_PROBE_FILES = 8
"""Files of each class decoded at set-up (until one decodes) to catch a class with no readable image."""


def probe_classes(
    paths: PathTable, labels: np.ndarray, classes: list[str], where: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> None:
    """Every class must have a training image that decodes (up to :data:`CLASS_PROBE_FILES` tried).

    Raises:
        ConfigError: naming the classes with no image, or with none readable, and the fix.
    """
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise ConfigError(
            f"{where}: class(es) {empty[:5]} have no training image; add images to their folders or "
            "remove the folders (a class the model can never see cannot be learned)"
        )
    for label, name in enumerate(classes):
        positions = np.flatnonzero(labels == label)[:CLASS_PROBE_FILES]
        reasons = _unreadable(paths, positions, max_pixels)
        if len(reasons) == len(positions):
            raise ConfigError(
                f"{where}: no readable image in class {name!r} ({len(reasons)} of its {counts[label]} "
                f"files tried failed to decode, e.g. {reasons[0]}); fix or remove them"
            )


def warn_small_classes(counts: np.ndarray, classes: list[str], samples_per_class: int | None) -> None:
    """One warning naming the classes that hold fewer training images than ``samples_per_class``."""
    if samples_per_class is None:
        return
    short = [(classes[c], int(counts[c])) for c in np.flatnonzero(counts < samples_per_class)]
    if short:
        listed = ", ".join(f"{name} ({n})" for name, n in short[:8]) + (" ..." if len(short) > 8 else "")
        warnings.warn(
            f"--data.samples_per_class={samples_per_class} but {len(short)} of {len(classes)} classes have "
            f"fewer training images, and all of theirs are used: {listed}",
            stacklevel=3,
        )


class ImageDataModule(L.LightningDataModule):
    """Loader plumbing shared by the datamodules: workers, seeding, skipped-file bookkeeping, the
    resumable training loader, and :meth:`source` (the :class:`~visiontransfer.data.protocol.ImageData`
    protocol). Subclasses build their datasets in ``setup`` and their transforms in
    :meth:`_transforms`.

    Keyword-only args:
        image_size: Side of the square crops fed to the model, in pixels.
        batch_size: Images per batch per process.
        num_workers: DataLoader worker processes; -1 means one per CPU core, at most 8.
        pin_memory: Pin host memory for faster copies to the GPU (ignored without CUDA).
        persistent_workers: Keep workers alive between epochs.
        seed: Seed of the splits, the label subsets, the augmentations and of the embedded set.
        max_pixels: Largest image (width × height) decoded; larger headers are skipped as
            decompression bombs.
        synthetic_size: Number of training images of the embedded set (when no data is given).
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        batch_size: int = 128,
        num_workers: int = -1,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        synthetic_size: int = 2048,
    ) -> None:
        super().__init__()
        require(batch_size >= 1, "data", "batch_size", batch_size, "must be >= 1")
        require(synthetic_size >= 16, "data", "synthetic_size", synthetic_size, "must be >= 16")
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers < 0 else num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.seed = seed
        self.max_pixels = max_pixels
        self.synthetic_size = synthetic_size
        self.skip_log = SkipLog()
        self.datasets: dict[str, Dataset[Any]] = {}
        self._train_loader: ResumableLoader | ShardLoader | None = None
        self._pending_loader_state: dict[str, int] | None = None
        self._collate: Callable[[list[Any]], dict[str, Any]] = collate_samples
        # Train and eval pipelines are built once; workers reseed their own copies.
        self._train_tf, self._eval_tf = self._transforms()
        seed_transform(self._train_tf, seed)

    def _transforms(self) -> tuple[A.Compose, A.Compose]:
        """The training and evaluation pipelines (called once, in ``__init__``)."""
        return train_transform(self.image_size, "none"), eval_transform(self.image_size)

    def note_index_skips(self, skipped: list[tuple[str, str]], where: str) -> None:
        """Count what indexing left out (link loops, dangling links, second paths to a file) with the
        unreadable files, and say so now, once."""
        if not skipped:
            return
        self.skip_log.add(skipped)
        shown = "; ".join(f"{path}: {reason}" for path, reason in skipped[:3])
        warnings.warn(f"{where}: {len(skipped)} entries left out while indexing, e.g. {shown}", stacklevel=3)

    def has_split(self, split: str) -> bool:
        """Whether ``setup`` built a ``split`` set (``train``, ``val``, ``test``, ``predict``)."""
        return split in self.datasets

    def source(self, split: str, index: int) -> str:
        """The file behind item ``index`` of ``split`` (``embedded:N`` for the embedded set)."""
        dataset = self.datasets.get(split)
        while isinstance(dataset, Subset):
            index, dataset = int(dataset.indices[index]), dataset.dataset
        describe = getattr(dataset, "source", None)
        return describe(index) if callable(describe) else f"{split}:{index}"

    @property
    def skipped_files(self) -> list[str]:
        """Paths of the unreadable files skipped so far (reasons: ``skip_log.reasons``)."""
        return self.skip_log.paths

    def _loader(self, split: str, train: bool) -> DataLoader[Any]:
        if split not in self.datasets:
            raise RuntimeError(
                f"no {split} set: {type(self).__name__}.setup() has not built one for this stage"
            )
        dataset = self.datasets[split]
        workers = self.num_workers
        options: dict[str, Any] = {
            "num_workers": workers,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.persistent_workers and workers > 0,
            "collate_fn": collate_encoded if getattr(dataset, "encoded", False) else self._collate,
            "worker_init_fn": _seed_worker,
        }
        trainer = getattr(self, "trainer", None)  # set by Lightning (None outside a Trainer)
        if isinstance(dataset, ShardStream):
            return self._shard_loader(dataset, train, trainer, options)
        if not train:
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, **options)
        sampler = ResumableSampler(
            dataset,  # type: ignore[arg-type]
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=self.seed,
            group_ids=self._group_ids(dataset),
            batch_size=self.batch_size,
        )
        drop_last = sampler.num_samples > self.batch_size
        loader = ResumableLoader(dataset, sampler, self.batch_size, drop_last=drop_last, **options)
        return self._track(loader)

    def _shard_loader(
        self, stream: ShardStream, train: bool, trainer: Any, options: dict[str, Any]
    ) -> DataLoader[Any]:
        """Tar shards: each rank streams its own shards (the stream splits them, not a sampler)."""
        stream.rank = trainer.global_rank if trainer is not None else 0
        stream.world_size = trainer.world_size if trainer is not None else 1
        if not train:
            stream.batch_size = self.batch_size
            return DataLoader(stream, batch_size=self.batch_size, **{**options, "persistent_workers": False})
        return self._track(ShardLoader(stream, self.batch_size, **options))

    def _group_ids(self, dataset: Dataset[Any]) -> list[int] | None:
        """Group of each training sample for single-group batches (see ResumableSampler); None: any mix."""
        return None

    def _shard_streams(self, folder: str, buffer_size: int) -> tuple[ShardStream, ShardStream | None]:
        """Training stream over ``shard-*`` and, when the folder has them, one over ``val-*``."""
        common = {"seed": self.seed, "max_pixels": self.max_pixels, "buffer_size": buffer_size}
        train = ShardStream(folder, self._train_tf, "train", **common)  # type: ignore[arg-type]
        if not train.val_samples:
            return train, None
        return train, ShardStream(folder, self._eval_tf, "val", shuffle=False, **common)  # type: ignore[arg-type]

    def _track(self, loader: ResumableLoader | ShardLoader) -> DataLoader[Any]:
        """Remember the training loader and give it a position restored from a checkpoint."""
        self._train_loader = loader
        if self._pending_loader_state is not None:
            loader.load_state_dict(self._pending_loader_state)
            self._pending_loader_state = None
        return loader

    def describe(self) -> dict[str, Any]:
        """What the data is, for checkpoints and model cards: the datamodule, where its images come
        from, and how many each split holds (after set-up)."""
        sizes = {}
        for split, dataset in self.datasets.items():
            with contextlib.suppress(TypeError):  # a stream without a length
                sizes[split] = len(dataset)  # type: ignore[arg-type]
        images = getattr(self, "images", None)
        source = images.describe() if images is not None else "the embedded procedural set"
        return {"datamodule": type(self).__name__, "source": source, "images": sizes,
                "image_size": self.image_size}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (see :class:`ResumableLoader`) and :meth:`describe`,
        saved in checkpoints."""
        if self._train_loader is None:
            return {"data": self.describe()}
        state = self._train_loader.state_dict()
        # With --trainer.limit_train_batches Lightning ends the epoch before the loader does.
        limit = getattr(getattr(self, "trainer", None), "num_training_batches", float("inf"))
        if state["batches_done"] >= limit:
            state["batches_done"] = len(self._train_loader)
        return {"train_loader": state, "data": self.describe()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training order where the checkpoint left it.

        Lightning restores a loader's state only when the loader is built after the checkpoint
        is read, which is not the case when the LR schedule asks for
        ``trainer.estimated_stepping_batches``; the datamodule carries it instead. The loader
        reads its position lazily, at the first batch, so either order of the two calls works.
        """
        state = state_dict.get("train_loader")
        if state is not None and self._train_loader is not None:
            self._train_loader.load_state_dict(state)
        else:
            self._pending_loader_state = state

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader[Any]:
        return self._loader("predict", train=False)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "encoded" in batch:  # --data.decode_on_device
            trainer = getattr(self, "trainer", None)
            device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
            batch = decode_on_device(batch, self.image_size, device)
        if isinstance(batch, dict) and "skipped" in batch:
            skipped = batch.pop("skipped")
            if skipped:
                self.skip_log.add(skipped)
        return batch

    def teardown(self, stage: str) -> None:
        if not self.skip_log.reasons:
            return
        # "predict" is the val or test set again: count each dataset once.
        unique = {id(d): d for d in self.datasets.values()}
        total = sum(len(d) for d in unique.values())  # type: ignore[arg-type, misc]
        self.skip_log.warn_once(total)
        trainer = getattr(self, "trainer", None)
        # Rank zero writes its list (each rank warns about its own): trainer.log_dir is a
        # collective under DDP, and ranks that skipped nothing return early above.
        log_dir = log_folder(trainer) if trainer is not None and trainer.is_global_zero else None
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            lines = [f"{p}\t{self.skip_log.reasons[p]}" for p in self.skip_log.paths]
            Path(log_dir, "skipped_files.txt").write_text("\n".join(lines) + "\n")

    def _files(self, paths: PathTable, labels: np.ndarray | None, train: bool) -> ImageFileDataset:
        transform = self._train_tf if train else self._eval_tf
        return ImageFileDataset(paths, labels, transform, self.max_pixels)

    def _synthetic(self, scenes: np.ndarray, train: bool) -> SyntheticDataset:
        """Scenes of the embedded set, rendered at least 32 px and cropped to ``image_size``."""
        transform = self._train_tf if train else self._eval_tf
        render = max(self.image_size, 32)
        return SyntheticDataset(scenes, transform, render, len(SHAPES), self.seed)


class SourceDataModule(ImageDataModule):
    """A datamodule whose images come from one source: a folder, a manifest, tar shards, or (with
    none of them) the embedded procedural set, resolved and checked once at construction
    (:func:`~visiontransfer.data.sources.resolve_source`).

    Args:
        root: Image folder (its layout is described by the datamodule).
        manifest: Instead of ``root``: a manifest file of image paths (paths relative to its folder).
        shards: Instead of ``root``: a folder of tar shards written by ``visiontransfer shard``
            (streamed, split across processes and workers).
        shuffle_buffer: Samples per worker in the shuffle buffer when reading ``shards``.
        augment: Training augmentation preset (``crop_flip``, ``flip`` or ``none``).
        **kwargs: Loader arguments of :class:`ImageDataModule` (``image_size``, ``batch_size``,
            ``num_workers``, ``seed``, ...).
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        manifest: str | None = None,
        shards: str | None = None,
        shuffle_buffer: int = 2000,
        augment: Augment = "crop_flip",
        **kwargs: Any,
    ) -> None:
        self.augment: Augment = augment
        super().__init__(**kwargs)
        self.images = resolve_source(root, manifest, shards)
        self.root, self.manifest, self.shards = root, manifest, shards
        self.shuffle_buffer = shuffle_buffer

    def _transforms(self) -> tuple[A.Compose, A.Compose]:
        return train_transform(self.image_size, self.augment), eval_transform(self.image_size)
