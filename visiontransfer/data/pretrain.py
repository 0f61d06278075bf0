"""Unlabeled images for self-supervised pretraining: a folder, a manifest or the embedded set."""

from __future__ import annotations

from typing import Any

import numpy as np

from visiontransfer.data.base import SourceDataModule, probe_readable
from visiontransfer.data.device_decode import EncodedFileDataset
from visiontransfer.data.index import PathTable, read_manifest, scan_images
from visiontransfer.data.subsets import stratified_split
from visiontransfer.data.transforms import CROP_SCALE
from visiontransfer.errors import ConfigError, MissingPathError, require


class PretrainDataModule(SourceDataModule):
    """Unlabeled images for self-supervised pretraining.

    ``root`` is read recursively for images (jpg, png, webp, bmp, tiff, gif); ``manifest`` is a
    text file with one image path per line, or a CSV file with a ``path`` column; ``shards`` are
    streamed (validation reads their ``val-*`` shards, ``val_fraction`` is not used). With none of
    them it serves the embedded procedural set (labels kept, so online evaluation works out of
    the box).

    Args:
        decode_on_device: Decode training JPEGs in batches on the training device (nvJPEG on a
            GPU) and cut the random-resized crop and flip there; workers only read bytes. For
            large images when CPU workers can't feed the GPU; needs ``augment: crop_flip`` and
            files or shards (see :mod:`visiontransfer.data.device_decode`).
        val_fraction: Share of the images held out to validate the pretext task.
        **kwargs: ``root``, ``manifest``, ``shards``, ``augment`` and the loader arguments of
            :class:`~visiontransfer.data.base.SourceDataModule`.
    """

    def __init__(self, *, decode_on_device: bool = False, val_fraction: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        require(0 < val_fraction < 1, "data", "val_fraction", val_fraction, "must be in (0, 1)")
        if decode_on_device and (self.augment != "crop_flip" or self.images.kind == "embedded"):
            raise ConfigError(
                "--data.decode_on_device true needs --data.augment crop_flip and image files "
                "(--data.root, --data.manifest or --data.shards)"
            )
        self.decode_on_device = decode_on_device
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
            skipped: list[tuple[str, str]] = []
            table = PathTable(self.root, scan_images(self.root, skipped=skipped))
            self.note_index_skips(skipped, where)
            return table, where
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
