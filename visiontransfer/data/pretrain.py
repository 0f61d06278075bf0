"""Unlabeled images for self-supervised pretraining: a folder, a manifest or the embedded set."""

from __future__ import annotations

import os

import numpy as np

from visiontransfer.data.base import _ImageDataModule, probe_readable
from visiontransfer.data.decode import DEFAULT_MAX_PIXELS
from visiontransfer.data.device_decode import EncodedFileDataset
from visiontransfer.data.index import PathTable, read_manifest, scan_images
from visiontransfer.data.shards import read_index
from visiontransfer.data.subsets import stratified_split
from visiontransfer.data.transforms import CROP_SCALE, Augment
from visiontransfer.errors import ConfigError, MissingPathError


class PretrainDataModule(_ImageDataModule):
    """Unlabeled images for self-supervised pretraining.

    With neither ``root`` nor ``manifest`` it serves the embedded procedural set (labels kept, so
    online evaluation works out of the box).

    Args:
        root: Folder read recursively for images (jpg, png, webp, bmp, tiff, gif).
        manifest: Instead of ``root``: a text file with one image path per line, or a CSV file
            with a ``path`` column (paths relative to the manifest's folder).
        shards: Instead of ``root``: a folder of tar shards written by ``visiontransfer shard``
            (streamed, split across processes and workers; validation reads its ``val-*`` shards
            and ``val_fraction`` is not used).
        shuffle_buffer: Samples per worker in the shuffle buffer when reading ``shards``.
        decode_on_device: Decode training JPEGs in batches on the training device (nvJPEG on a
            GPU) and cut the random-resized crop and flip there; workers only read bytes. For
            large images when CPU workers can't feed the GPU; needs ``augment: crop_flip`` and
            files or shards (see :mod:`visiontransfer.data.device_decode`).
        val_fraction: Share of the images held out to validate the pretext task.
        image_size: Side of the square crops fed to the model, in pixels.
        batch_size: Images per batch per process.
        augment: Training augmentation preset (``crop_flip``, ``flip`` or ``none``).
        num_workers: DataLoader worker processes; -1 means one per CPU core, at most 8.
        pin_memory: Pin host memory for faster copies to the GPU (ignored without CUDA).
        persistent_workers: Keep workers alive between epochs.
        seed: Seed of the validation split and of the embedded set.
        max_pixels: Largest image (width × height) decoded; larger headers are skipped as
            decompression bombs.
        synthetic_size: Number of training images of the embedded set (when no data is given).
    """

    def __init__(
        self,
        root: str | None = None,
        manifest: str | None = None,
        shards: str | None = None,
        shuffle_buffer: int = 2000,
        decode_on_device: bool = False,
        val_fraction: float = 0.05,
        image_size: int = 32,
        batch_size: int = 128,
        augment: Augment = "crop_flip",
        num_workers: int = -1,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        synthetic_size: int = 2048,
    ) -> None:
        super().__init__(
            image_size, batch_size, augment, num_workers, pin_memory, persistent_workers,
            seed, max_pixels, synthetic_size,
        )  # fmt: skip
        if sum(x is not None for x in (root, manifest, shards)) > 1:
            raise ConfigError("give one of --data.root, --data.manifest or --data.shards")
        if shards is not None:
            read_index(shards)  # fails early, naming --data.shards
        if root is not None and not os.path.isdir(root):
            raise MissingPathError(f"--data.root={root!r} does not exist or is not a folder")
        if manifest is not None and not os.path.isfile(manifest):
            raise MissingPathError(f"--data.manifest={manifest!r} does not exist or is not a file")
        self.root = root
        self.manifest = manifest
        self.shards = shards
        self.shuffle_buffer = shuffle_buffer
        self.decode_on_device = decode_on_device
        if decode_on_device and (augment != "crop_flip" or (root, manifest, shards) == (None, None, None)):
            raise ConfigError(
                "--data.decode_on_device true needs --data.augment crop_flip and image files "
                "(--data.root, --data.manifest or --data.shards)"
            )
        self.val_fraction = val_fraction
        self.save_hyperparameters()

    def _index(self) -> tuple[PathTable, str]:
        """All image paths of the set and a description of where they came from."""
        if self.manifest is not None:
            paths, _ = read_manifest(self.manifest)
            return PathTable("", paths), f"manifest {self.manifest!r}"
        assert self.root is not None
        where = f"--data.root={self.root!r}"
        try:
            return PathTable(self.root, scan_images(self.root)), where
        except FileNotFoundError as error:
            raise MissingPathError(f"{where}: {error}") from None

    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        if self.shards is not None:
            stream, held = self._shard_streams(self.shards, self.shuffle_buffer)
            stream.encoded = self.decode_on_device
            if held is None:
                raise ConfigError(
                    f"--data.shards={self.shards!r} has no val-* shards to validate on: "
                    "write them with `visiontransfer shard SRC --out DIR --val-fraction 0.01`"
                )
            self.datasets.update(train=stream, val=held, predict=held)
            return
        if self.root is None and self.manifest is None:
            n, n_val = self.synthetic_size, max(64, int(self.synthetic_size * self.val_fraction))
            self.datasets["train"] = self._synthetic(np.arange(n), train=True)
            self.datasets["val"] = self._synthetic(np.arange(n, n + n_val), train=False)
            self.datasets["predict"] = self.datasets["val"]
            return
        table, where = self._index()
        probe_readable(table, where, self.max_pixels)
        train_idx, val_idx = stratified_split(np.zeros(len(table), np.int64), self.val_fraction, self.seed)
        rel = table.relative
        train = PathTable(table.root, (rel(int(i)) for i in train_idx))
        val = PathTable(table.root, (rel(int(i)) for i in val_idx))
        if self.decode_on_device:
            self.datasets["train"] = EncodedFileDataset(train, None, CROP_SCALE, self.max_pixels)
        else:
            self.datasets["train"] = self._files(train, None, train=True)
        self.datasets["val"] = self._files(val, None, train=False)
        self.datasets["predict"] = self.datasets["val"]
