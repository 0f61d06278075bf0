"""Every image of a source exactly once, in chunks, for ``visiontransfer embed``.

:class:`EmbeddingData` is a datamodule over a folder, a manifest, tar shards, the embedded set or
any map-style dataset of samples. Its images are cut into numbered chunks: ``chunk_size``
consecutive images of a folder or manifest (the size is rounded up to whole batches, so the
batches, and with them the features, do not depend on it), or one tar shard each. Process ``r``
of ``W`` embeds the chunks ``c`` with ``c % W == r`` that are not finished in the output folder
yet, so a resumed run does only what is missing and, under DDP, every image is embedded by
exactly one process (with any number of processes, also on resume). A batch never spans two
chunks and tells the writer (:class:`~visiontransfer.callbacks.embeddings.EmbeddingWriter`) which
chunk it belongs to and whether it is the chunk's last.

DataLoader workers share a process's batches (worker ``w`` of ``n`` makes its batches ``w``,
``w + n``, ..., which the loader hands out in order); tar shards are read sequentially, so there
each worker takes whole shards. Unreadable files are :class:`~visiontransfer.data.datasets.Skipped`
samples, counted by the datamodule's :class:`~visiontransfer.data.datasets.SkipLog` and recorded
with their chunk.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from visiontransfer.data.base import SourceDataModule, probe_readable
from visiontransfer.data.classification import SPLIT_DIRS, _natural_sorted
from visiontransfer.data.datasets import Skipped, collate_samples
from visiontransfer.data.decode import has_image_extension
from visiontransfer.data.index import PathTable, read_manifest, scan_class_folders, scan_images
from visiontransfer.data.shards import ShardStream, _tar_samples, read_index
from visiontransfer.data.synthetic import SHAPES
from visiontransfer.errors import ConfigError, MissingPathError, require
from visiontransfer.features import store

Labels = Literal["auto", "none"]
"""``auto``: labels where the source has classes (a class-per-folder tree, a manifest's ``label``
column, labeled shards, the embedded set); ``none``: never."""

# The loader reports its length (for the progress bar) and splits its work across workers itself.
warnings.filterwarnings("ignore", message=r".*Your `IterableDataset` has `__len__` defined.*")


@dataclass(frozen=True)
class MapChunks:
    """Chunks of a map-style dataset: chunk ``c`` holds items ``[c·size, (c+1)·size)``.

    Attributes:
        dataset: Items are samples or :class:`Skipped` records.
        describe: Where item ``i`` came from (its path).
        size: Items per chunk.
    """

    dataset: Dataset[Any]
    describe: Callable[[int], str]
    size: int
    sequential = False

    @property
    def num_items(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def num_chunks(self) -> int:
        return -(-self.num_items // self.size)

    def chunk_length(self, chunk: int) -> int:
        return min(self.size, self.num_items - chunk * self.size)

    def read(self, chunk: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[Any, str]]:
        """``(sample or Skipped, path)`` of positions ``start:stop`` of ``chunk``."""
        first = chunk * self.size
        stop = self.chunk_length(chunk) if stop is None else stop
        for i in range(first + start, first + stop):
            item = self.dataset[i]
            yield item, item.path if isinstance(item, Skipped) else self.describe(i)


class ShardChunks:
    """Chunks of a tar-shard folder: chunk ``c`` is shard ``c`` (the ``shard-*`` files, then the
    ``val-*`` ones), read sequentially and decoded like :class:`ShardStream` does.

    Args:
        folder: Folder written by ``visiontransfer shard``.
        stream: A stream over ``folder``, used for its decoding and transform.
    """

    sequential = True

    def __init__(self, folder: str, stream: ShardStream) -> None:
        index = read_index(folder)
        self.folder = os.path.abspath(folder)
        self.shards: list[dict[str, Any]] = [*index["shards"], *index.get("val_shards", [])]
        self.classes: list[str] = list(index["classes"])
        self.stream = stream

    @property
    def num_items(self) -> int:
        return sum(int(s["samples"]) for s in self.shards)

    @property
    def num_chunks(self) -> int:
        return len(self.shards)

    def chunk_length(self, chunk: int) -> int:
        return int(self.shards[chunk]["samples"])

    def read(self, chunk: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[Any, str]]:
        shard = os.path.join(self.folder, self.shards[chunk]["name"])
        for key, data, label in _tar_samples(Path(shard)):
            item = self.stream._decode(key, data, label)
            yield item, f"{shard}:{key}"


ChunkSource = MapChunks | ShardChunks


@dataclass(frozen=True)
class BatchJob:
    """Batch ``number`` of ``chunk``: positions ``start:stop`` of the chunk."""

    chunk: int
    start: int
    stop: int
    last: bool


def chunk_batches(source: ChunkSource, chunks: list[int], batch_size: int) -> list[BatchJob]:
    """The batches of ``chunks``, in order (a chunk without items still gets one, empty)."""
    jobs = []
    for chunk in chunks:
        length = source.chunk_length(chunk)
        starts = list(range(0, length, batch_size)) or [0]
        jobs += [BatchJob(chunk, s, min(s + batch_size, length), s == starts[-1]) for s in starts]
    return jobs


def _collate(items: list[tuple[Any, str]], chunk: int, last: bool) -> dict[str, Any]:
    """:func:`collate_samples` plus what the writer needs (see :mod:`~visiontransfer.features.store`)."""
    batch = collate_samples([item for item, _ in items])
    batch[store.BATCH_PATHS] = [path for item, path in items if not isinstance(item, Skipped)]
    batch[store.BATCH_UNREADABLE] = list(batch["skipped"])
    batch[store.BATCH_CHUNK] = chunk
    batch[store.BATCH_CHUNK_LAST] = last
    return batch


class ChunkBatches(IterableDataset[dict[str, Any]]):
    """The batches of one process's chunks, split across DataLoader workers (see the module).

    Args:
        source: The chunked images.
        chunks: This process's chunks, in order.
        batch_size: Images per batch.
    """

    def __init__(self, source: ChunkSource, chunks: list[int], batch_size: int) -> None:
        self.source = source
        self.chunks = chunks
        self.batch_size = batch_size
        self.jobs = chunk_batches(source, chunks, batch_size)

    def __len__(self) -> int:
        # At least 1: Lightning skips the loop (and its end-of-epoch hooks, where the processes
        # meet to merge) on a process with nothing left to do; such a process yields nothing.
        return max(1, len(self.jobs))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.source.sequential:
            return self._whole_chunks(self.chunks[worker::workers])
        return self._batches(self.jobs[worker::workers])

    def _batches(self, jobs: list[BatchJob]) -> Iterator[dict[str, Any]]:
        for job in jobs:
            yield _collate(list(self.source.read(job.chunk, job.start, job.stop)), job.chunk, job.last)

    def _whole_chunks(self, chunks: list[int]) -> Iterator[dict[str, Any]]:
        """Read each chunk once, front to back; the batch that ends it is marked last."""
        for chunk in chunks:
            pending: list[tuple[Any, str]] | None = None
            items: list[tuple[Any, str]] = []
            for item in self.source.read(chunk):
                items.append(item)
                if len(items) == self.batch_size:
                    if pending is not None:
                        yield _collate(pending, chunk, last=False)
                    pending, items = items, []
            if pending is not None and items:
                yield _collate(pending, chunk, last=False)
                pending = None
            yield _collate(pending if pending is not None else items, chunk, last=True)


def _is_class_tree(root: str) -> bool:
    """Whether ``root`` looks like ``root/<class>/<image>``: two or more sub-folders, not all named
    like splits (``train``, ``val``, ``test``), and no images of its own."""
    with os.scandir(root) as entries:
        visible = [e for e in entries if not e.name.startswith(".") and e.name != "__MACOSX"]
    folders = [e.name for e in visible if e.is_dir()]
    split_names = {name for names in SPLIT_DIRS.values() for name in names}
    own_images = any(e.is_file() and has_image_extension(e.name) for e in visible)
    return len(folders) >= 2 and not set(folders) <= split_names and not own_images


class EmbeddingData(SourceDataModule):
    """Every image of a source once, in resumable chunks split across processes (see the module).

    Args:
        out: The embeddings folder: chunks finished there are not embedded again.
        chunk_size: Images per chunk of a folder, manifest or dataset (rounded up to a multiple of
            ``batch_size``); a tar shard is one chunk.
        labels: ``auto`` (class-per-folder trees, a manifest's ``label`` column, labeled shards,
            the embedded set) or ``none``.
        dataset: Instead of ``root``, ``manifest`` or ``shards``: a map-style dataset of samples
            (``{"image": (3, H, W) uint8, "label", "index"}`` or :class:`Skipped`), unlabeled.
        **kwargs: ``root``, ``manifest``, ``shards`` and the loader arguments of
            :class:`~visiontransfer.data.base.SourceDataModule` (``image_size``, ``batch_size``,
            ``num_workers``, ``max_pixels``, ``synthetic_size``, ``seed``).
    """

    def __init__(
        self,
        *,
        out: str,
        chunk_size: int = 10_000,
        labels: Labels = "auto",
        dataset: Dataset[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("augment", "none")
        kwargs.setdefault("persistent_workers", False)
        super().__init__(**kwargs)
        require(chunk_size >= 1, "data", "chunk_size", chunk_size, "must be >= 1")
        require(labels in ("auto", "none"), "data", "labels", labels, "must be auto or none")
        if dataset is not None and self.images.kind != "embedded":
            raise ConfigError(
                "give a dataset or one of --data.root, --data.manifest, --data.shards, not both"
            )
        self.out = out
        self.chunk_size = -(-chunk_size // self.batch_size) * self.batch_size
        self.labels = labels
        self.dataset = dataset
        self.chunks: ChunkSource | None = None
        self.classes: list[str] = []
        self.allow_zero_length_dataloader_with_multiple_devices = True

    @property
    def num_chunks(self) -> int:
        """Chunks of the source (after :meth:`setup`)."""
        assert self.chunks is not None, "EmbeddingData.setup() first"
        return self.chunks.num_chunks

    @property
    def num_images(self) -> int:
        """Images of the source, readable or not (after :meth:`setup`)."""
        assert self.chunks is not None, "EmbeddingData.setup() first"
        return self.chunks.num_items

    def describe_source(self) -> dict[str, Any]:
        """Kind and absolute path of the source, for the output's ``meta.json``."""
        if self.dataset is not None:
            return {"kind": "dataset", "path": None}
        path = self.images.path
        return {"kind": self.images.kind, "path": None if path is None else os.path.abspath(path)}

    def setup(self, stage: str) -> None:
        if self.chunks is not None:
            return
        if self.dataset is not None:
            self.chunks = MapChunks(self.dataset, "dataset:{}".format, self.chunk_size)
        elif self.shards is not None:
            stream = ShardStream(
                self.shards, self._eval_tf, "train", shuffle=False, max_pixels=self.max_pixels
            )
            self.chunks = ShardChunks(self.shards, stream)
            self.classes = self.chunks.classes if self.labels == "auto" else []
        elif self.images.kind == "embedded":
            scenes = self._synthetic(np.arange(self.synthetic_size), train=False)
            self.chunks = MapChunks(scenes, "embedded:{}".format, self.chunk_size)
            self.classes = list(SHAPES) if self.labels == "auto" else []
        else:
            table, labels = self._index()
            probe_readable(table, self.images.describe(), self.max_pixels)
            files = self._files(table, labels, train=False)
            self.chunks = MapChunks(files, table.__getitem__, self.chunk_size)

    def _index(self) -> tuple[PathTable, np.ndarray | None]:
        """The files (absolute paths) and, when labeled, their class indices (sets :attr:`classes`)."""
        if self.manifest is not None:
            paths, names = read_manifest(os.path.abspath(self.manifest))
            if names is None or self.labels == "none":
                return PathTable("", paths), None
            self.classes = _natural_sorted(set(names))
            lookup = {name: i for i, name in enumerate(self.classes)}
            return PathTable("", paths), np.asarray([lookup[n] for n in names], dtype=np.int64)
        assert self.root is not None
        root = os.path.abspath(self.root)
        try:
            if self.labels == "auto" and _is_class_tree(root):
                relative, labels, self.classes = scan_class_folders(root)
                return PathTable(root, relative), labels
            return PathTable(root, scan_images(root)), None
        except FileNotFoundError as error:
            raise MissingPathError(f"{self.images.describe()}: {error}") from None

    def predict_dataloader(self) -> DataLoader[Any]:
        assert self.chunks is not None, "EmbeddingData.setup() first"
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        done = store.finished_chunks(self.out)
        mine = [c for c in range(rank, self.num_chunks, world) if c not in done]
        return DataLoader(
            ChunkBatches(self.chunks, mine, self.batch_size),
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory
            and trainer is not None
            and trainer.strategy.root_device.type == "cuda",
        )

    def teardown(self, stage: str) -> None:
        """Warn about unreadable files; their list goes into the output folder with the rows
        (``skipped_files.txt``), not into a log folder."""
        self.skip_log.warn_once(self.num_images if self.chunks is not None else None)
