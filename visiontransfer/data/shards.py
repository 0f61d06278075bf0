"""Image sets as tar shards (WebDataset layout) for sets too large to walk on every node.

``visiontransfer shard SRC --out DIR`` packs an image folder (or manifest) into
``DIR/shard-000000.tar``, ... with the original encoded bytes (no re-encoding) as
``<key>.<ext>`` members, plus ``<key>.cls`` for labeled sets (class-per-folder trees), and writes
``DIR/index.json`` (shards, their sample counts, class names). The layout is WebDataset's, so the
``webdataset`` library reads the shards too; visiontransfer reads them without it.

Why tar shards and not litdata chunks: plain tar needs no extra dependency or service, keeps the
original JPEG bytes (decoded and augmented exactly like files), and every tool can list or
extract it; the index holds the sample counts that exact epoch lengths under DDP need.

:class:`ShardStream` streams the shards: each epoch it shuffles the shard order (seeded by the
epoch), deals shards to ranks and then to DataLoader workers, shuffles samples in a buffer, and
gives every rank exactly ``total // world_size`` samples (cycling its own shards if it is short),
so no rank waits on another at the end of an epoch. It resumes mid-epoch by replaying the
stream's order without decoding the samples already seen.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from visiontransfer.data.datasets import Sample, Skipped, to_chw_tensor
from visiontransfer.data.decode import DEFAULT_MAX_PIXELS, UnreadableImageError, decode_rgb
from visiontransfer.data.device_decode import encoded_sample
from visiontransfer.data.index import scan_class_folders, scan_images
from visiontransfer.data.sampling import resume_position
from visiontransfer.data.transforms import CROP_SCALE, seed_transform
from visiontransfer.errors import ConfigError, MissingPathError

INDEX = "index.json"
"""The shard index in the output folder."""


def _pack(
    out: Path, items: list[tuple[str, int]], shard_size: int, prefix: str, first: int = 0
) -> list[dict[str, Any]]:
    """Write ``(path, label)`` items into tar shards of ``shard_size`` samples; return their index.

    Sample keys are running numbers from ``first`` (unique across the train and val shards)."""
    shards = []
    for start in range(0, len(items), shard_size):
        name = f"{prefix}-{start // shard_size:06d}.tar"
        part = items[start : start + shard_size]
        temp = out / (name + ".partial")
        with tarfile.open(temp, "w", dereference=True) as tar:  # file contents, not symlinks
            for number, (path, label) in enumerate(part, start=first + start):
                key = f"{number:09d}"
                ext = Path(path).suffix.lower().lstrip(".") or "img"
                tar.add(path, arcname=f"{key}.{ext}", recursive=False)
                if label >= 0:
                    data = str(label).encode()
                    info = tarfile.TarInfo(f"{key}.cls")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        os.replace(temp, out / name)
        shards.append({"name": name, "samples": len(part)})
    return shards


def write_shards(
    source: str,
    out: str,
    shard_size: int = 10_000,
    labeled: bool = False,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> Path:
    """Pack the images of folder ``source`` into tar shards under ``out``; return the index path.

    Args:
        source: Image folder, read recursively (or, with ``labeled``, a class-per-folder tree).
        out: Output folder (created).
        shard_size: Samples per shard (``~1e4`` JPEGs of ImageNet size make ~1 GB shards).
        labeled: Store each image's class (its top-level folder) as ``<key>.cls``.
        val_fraction: Share of the images (seeded random choice) written to separate
            ``val-*.tar`` shards for validation.
        seed: Seed of the validation choice.
    """
    if shard_size < 1:
        raise ConfigError(f"--shard-size={shard_size} must be >= 1")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction={val_fraction} must be in [0, 1)")
    if not os.path.isdir(source):
        raise MissingPathError(f"{source!r} does not exist or is not a folder")
    if labeled:
        rel, labels, classes = scan_class_folders(source)
        items = [(os.path.join(source, r), int(c)) for r, c in zip(rel, labels, strict=True)]
    else:
        items, classes = [(os.path.join(source, r), -1) for r in scan_images(source)], []
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    held = np.zeros(len(items), dtype=bool)
    held[np.random.default_rng(seed).permutation(len(items))[: int(len(items) * val_fraction)]] = True
    train = [item for item, h in zip(items, held, strict=True) if not h]
    val = [item for item, h in zip(items, held, strict=True) if h]
    index = {
        "format": "webdataset", "samples": len(train), "val_samples": len(val), "classes": classes,
        "shards": _pack(folder, train, shard_size, "shard"),
        "val_shards": _pack(folder, val, shard_size, "val", first=len(train)),
    }  # fmt: skip
    temp = folder / (INDEX + ".partial")
    temp.write_text(json.dumps(index, indent=1))
    os.replace(temp, folder / INDEX)
    return folder / INDEX


def read_index(folder: str) -> dict[str, Any]:
    """The index of a shard folder; errors name ``--data.shards`` and the fix."""
    path = Path(folder, INDEX)
    if not path.is_file():
        raise MissingPathError(
            f"--data.shards={folder!r} has no {INDEX}: "
            f"create it with `visiontransfer shard SRC --out {folder}`"
        )
    index = json.loads(path.read_text())
    listed = [*index["shards"], *index.get("val_shards", [])]
    missing = [s["name"] for s in listed if not Path(folder, s["name"]).is_file()]
    if missing:
        raise MissingPathError(f"--data.shards={folder!r}: shard files missing: {missing[:3]}")
    return index


def _tar_samples(path: Path) -> Iterator[tuple[str, bytes | None, int]]:
    """``(key, image bytes or None, label)`` of each sample of a shard, in order, undecoded."""
    current, data, label = None, None, -1
    with tarfile.open(path, "r|") as tar:  # streaming: sequential reads only
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition(".")
            if key != current and current is not None:
                yield current, data, label
                data, label = None, -1
            current = key
            payload = tar.extractfile(member)
            content = payload.read() if payload is not None else b""
            if ext == "cls":
                label = int(content.decode().strip())
            else:
                data = content
    if current is not None:
        yield current, data, label


class ShardStream(IterableDataset[Sample | Skipped]):
    """Samples of a shard folder, split across ranks and workers, shuffled in a buffer.

    Args:
        folder: Folder with ``index.json`` and the shards (``visiontransfer shard``).
        split: ``train`` (the ``shard-*`` files) or ``val`` (``val-*``).
        transform: Albumentations pipeline for each decoded image.
        shuffle: Shuffle the shard order each epoch and the samples in a buffer.
        buffer_size: Samples held in the shuffle buffer (per worker).
        seed: Seed of the shard order, the buffers and the per-sample augmentation seeds.
        max_pixels: Largest image decoded (see :func:`~visiontransfer.data.decode.load_rgb`).
        encoded: Leave JPEG decoding and the crop to the training device
            (:mod:`~visiontransfer.data.device_decode`); ``transform`` is then not used.
    """

    encoded: bool

    def __init__(
        self,
        folder: str,
        transform: A.Compose,
        split: str = "train",
        shuffle: bool = True,
        buffer_size: int = 2000,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        encoded: bool = False,
    ) -> None:
        self.folder = folder
        self.encoded = encoded
        index = read_index(folder)
        self.shards: list[dict[str, Any]] = index["shards" if split == "train" else "val_shards"]
        self.samples = int(index["samples" if split == "train" else "val_samples"])
        self.val_samples = int(index.get("val_samples", 0))
        self.classes: list[str] = list(index["classes"])
        self.transform = transform
        self.shuffle = shuffle
        self.buffer_size = max(1, buffer_size)
        self.seed = seed
        self.max_pixels = max_pixels
        self.epoch = 0
        self.rank, self.world_size = 0, 1
        self.skip_batches, self.batch_size = 0, 1

    def __len__(self) -> int:
        """Samples per rank and epoch (equal on every rank)."""
        return self.samples // self.world_size

    def _worker_quota(self, worker: int, workers: int) -> int:
        """Samples of worker ``worker``: whole batches dealt round-robin, as the DataLoader reads them."""
        per_rank = len(self)
        batches, rest = divmod(per_rank, self.batch_size)
        mine = batches // workers + (1 if worker < batches % workers else 0)
        last = rest if rest and worker == batches % workers else 0
        return mine * self.batch_size + last

    def _my_shards(self, worker: int, workers: int) -> list[int]:
        order = np.arange(len(self.shards))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        ranks = order[self.rank :: self.world_size]
        if len(ranks) == 0:  # fewer shards than ranks: share them
            ranks = order[self.rank % len(order) :: len(order)]
        mine = ranks[worker::workers]
        return [int(s) for s in (mine if len(mine) else ranks)]

    def _stream(self, shards: list[int], worker: int) -> Iterator[tuple[str, bytes | None, int]]:
        """This worker's shards in order, cycling, shuffled through the buffer."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, 1])
        buffer: list[tuple[str, bytes | None, int]] = []
        while True:
            for shard in shards:
                for item in _tar_samples(Path(self.folder, self.shards[shard]["name"])):
                    if not self.shuffle:
                        yield item
                        continue
                    buffer.append(item)
                    if len(buffer) >= self.buffer_size:
                        yield self._take(buffer, rng)
            while buffer:  # end of a pass: empty the buffer, so a pass holds every sample once
                yield self._take(buffer, rng)

    @staticmethod
    def _take(buffer: list[Any], rng: np.random.Generator) -> Any:
        pick = int(rng.integers(len(buffer)))
        buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
        return buffer.pop()

    def __iter__(self) -> Iterator[Sample | Skipped]:
        # Not a generator: the epoch and the resume point are read now, when the loader starts.
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader reads workers round-robin from worker 0; after a resume the next batch
        # is due from worker (batches done % workers), so worker ids rotate by that much.
        worker = (physical + self.skip_batches) % workers
        quota = self._worker_quota(worker, workers)
        skip = self._worker_quota_done(worker, workers)
        stream = self._stream(self._my_shards(worker, workers), worker)
        return self._samples(stream, quota, skip)

    def _samples(
        self, stream: Iterator[tuple[str, bytes | None, int]], quota: int, skip: int
    ) -> Iterator[Sample | Skipped]:
        for position in range(quota):
            key, data, label = next(stream)
            if position >= skip:
                yield self._decode(key, data, label)

    def _worker_quota_done(self, worker: int, workers: int) -> int:
        """Samples of this worker already consumed before a resume (``skip_batches`` batches)."""
        done = self.skip_batches // workers + (1 if worker < self.skip_batches % workers else 0)
        return done * self.batch_size

    def _decode(self, key: str, data: bytes | None, label: int) -> Sample | Skipped:
        where = f"{self.folder}:{key}"
        if data is None:
            return Skipped(where, "no image member for this key")
        seed = (self.seed * 1_000_003 + self.epoch * 7919 + int(key)) % 2**31
        if self.encoded:
            sample = encoded_sample(data, where, seed, CROP_SCALE, self.max_pixels)
            if isinstance(sample, dict):
                sample.update(label=label, index=int(key))
            return sample
        try:
            image = decode_rgb(io.BytesIO(data), where, self.max_pixels)
        except UnreadableImageError as error:
            return Skipped(where, error.reason)
        seed_transform(self.transform, seed)
        image = self.transform(image=image)["image"]
        return {"image": to_chw_tensor(image), "label": label, "index": int(key)}


class ShardLoader(DataLoader):  # type: ignore[type-arg]
    """DataLoader over a :class:`ShardStream` that counts epochs and saves its position.

    Each iteration is the next epoch (Lightning iterates once per epoch); ``state_dict`` /
    ``load_state_dict`` follow :class:`~visiontransfer.data.sampling.ResumableLoader`. Workers
    are never persistent: each epoch they take a fresh copy of the stream (its epoch, its
    resume point).
    """

    def __init__(self, dataset: ShardStream, batch_size: int, **kwargs: Any) -> None:
        kwargs["persistent_workers"] = False
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self.stream = dataset
        dataset.batch_size = batch_size
        self._next_epoch = 0
        self._epoch = 0
        self._batches_done = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self._epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        self.stream.epoch = self._epoch
        self._batches_done = self.stream.skip_batches
        batches = super().__iter__()  # the stream (or the workers' copies) read the state now
        self.stream.skip_batches = 0
        for batch in batches:
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches_done": self._batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._next_epoch, self.stream.skip_batches = resume_position(state, len(self))
