"""Map-style datasets over image files and over the embedded set, and the batch collation.

A sample is a dict ``{"image": (3, H, W) uint8 tensor, "label": int, "index": int}``. Keys are
dataset indices, or ``(index, seed)`` pairs from :class:`~visiontransfer.data.sampling.ResumableSampler`
that also seed the sample's augmentation. A file that
can't be decoded does not crash the epoch: its slot holds a :class:`Skipped` record instead, the
collate function drops it and carries the path and reason in ``batch["skipped"]``, and the
datamodule counts them (see :class:`SkipLog`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from visiontransfer.data.decode import DEFAULT_MAX_PIXELS, UnreadableImageError, load_rgb
from visiontransfer.data.index import PathTable
from visiontransfer.data.sampling import SeededIndex
from visiontransfer.data.synthetic import render_scene, scene_label
from visiontransfer.data.transforms import seed_transform

Sample = dict[str, Any]


@dataclass(frozen=True)
class Skipped:
    """An unreadable file in place of a sample."""

    path: str
    reason: str


def reseed(transform: A.Compose, key: int | SeededIndex) -> int:
    """The dataset index of ``key``; a ``(index, seed)`` key also reseeds the augmentation."""
    if isinstance(key, tuple):
        index, seed = key
        seed_transform(transform, seed)
        return int(index)
    return int(key)


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3) uint8`` array to a contiguous ``(3, H, W) uint8`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class ImageFileDataset(Dataset[Sample | Skipped]):
    """Images decoded from files, labeled or not.

    Args:
        paths: The files.
        labels: Class index per file, or None for unlabeled images (label -1).
        transform: Albumentations pipeline applied to the decoded RGB array.
        max_pixels: Largest width × height decoded (see :func:`load_rgb`).
    """

    def __init__(
        self,
        paths: PathTable,
        labels: np.ndarray | None,
        transform: A.Compose,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(labels)} labels for {len(paths)} paths")
        self.paths = paths
        self.labels = labels
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | SeededIndex) -> Sample | Skipped:
        index = reseed(self.transform, key)
        path = self.paths[index]
        try:
            image = load_rgb(path, self.max_pixels)
        except UnreadableImageError as error:
            return Skipped(path, error.reason)
        label = -1 if self.labels is None else int(self.labels[index])
        image = self.transform(image=image)["image"]
        return {"image": to_chw_tensor(image), "label": label, "index": index}


SCENE_CACHE_BYTES = 256 * 2**20
"""Bytes of rendered scenes a dataset keeps in each process (a scene is the same every epoch, so a
scene a worker has seen once is not rendered again; about 0.5 ms a scene at 32 px); scenes past
this are rendered each time. Train, validation and test datasets have a cache each."""


class SyntheticDataset(Dataset[Sample]):
    """Scenes of the embedded default set (:func:`render_scene`), rendered on the fly and kept
    (up to :data:`SCENE_CACHE_BYTES` per process, not pickled to spawned workers) for later epochs.

    Args:
        scenes: Scene numbers served, in order (disjoint splits use disjoint numbers).
        transform: Albumentations pipeline applied to each rendered scene.
        image_size: Side the scenes are rendered at.
        num_classes: Number of shape classes.
        seed: Seed of the set.
    """

    def __init__(
        self,
        scenes: np.ndarray,
        transform: A.Compose,
        image_size: int = 64,
        num_classes: int = 10,
        seed: int = 0,
    ) -> None:
        self.scenes = np.asarray(scenes, dtype=np.int64)
        self.transform = transform
        self.image_size = image_size
        self.num_classes = num_classes
        self.seed = seed
        self.labels = np.asarray(
            [scene_label(int(i), num_classes, seed) for i in self.scenes], dtype=np.int64
        )
        self._rendered: dict[int, np.ndarray] = {}
        self._rendered_bytes = 0

    def __len__(self) -> int:
        return len(self.scenes)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_rendered"], state["_rendered_bytes"] = {}, 0  # each process renders its own
        return state

    def scene_image(self, index: int) -> np.ndarray:
        """The ``(H, W, 3) uint8`` image of position ``index``, from the cache or rendered."""
        image = self._rendered.get(index)
        if image is None:
            image = render_scene(int(self.scenes[index]), self.image_size, self.num_classes, self.seed).image
            if self._rendered_bytes + image.nbytes <= SCENE_CACHE_BYTES:
                image.setflags(write=False)
                self._rendered[index] = image
                self._rendered_bytes += image.nbytes
        return image

    def __getitem__(self, key: int | SeededIndex) -> Sample:
        index = reseed(self.transform, key)
        image = self.transform(image=self.scene_image(index))["image"]
        return {"image": to_chw_tensor(image), "label": int(self.labels[index]), "index": index}


def collate_samples(samples: list[Sample | Skipped]) -> dict[str, Any]:
    """Stack readable samples; list the skipped ones in ``batch["skipped"]``.

    Returns:
        ``{"image": (B, 3, H, W) uint8, "label": (B,) int64, "index": (B,) int64,
        "skipped": [(path, reason), ...]}`` where B may be 0 if every file was unreadable.
    """
    good = [s for s in samples if not isinstance(s, Skipped)]
    skipped = [(s.path, s.reason) for s in samples if isinstance(s, Skipped)]
    if good:
        images = torch.stack([s["image"] for s in good])
    else:
        images = torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    return {
        "image": images,
        "label": torch.as_tensor([s["label"] for s in good], dtype=torch.int64),
        "index": torch.as_tensor([s["index"] for s in good], dtype=torch.int64),
        "skipped": skipped,
    }


@dataclass
class SkipLog:
    """Unreadable files met so far (each once), with the reason; summarised in one warning."""

    reasons: dict[str, str] = field(default_factory=dict)
    warned: int = 0

    def add(self, skipped: list[tuple[str, str]]) -> None:
        for path, reason in skipped:
            self.reasons.setdefault(path, reason)

    @property
    def paths(self) -> list[str]:
        return sorted(self.reasons)

    def summary(self, total: int | None = None) -> str:
        of = f" of {total:,}" if total else ""
        shown = [f"  {p}: {self.reasons[p]}" for p in self.paths[:5]]
        more = f"\n  ... and {len(self.reasons) - 5} more" if len(self.reasons) > 5 else ""
        return (
            f"visiontransfer skipped {len(self.reasons):,} unreadable image file(s){of}:\n"
            + "\n".join(shown)
            + more
            + "\nThe full list is datamodule.skipped_files (and skipped_files.txt in the log dir)."
        )

    def warn_once(self, total: int | None = None) -> None:
        """Emit the summary warning if files were skipped since the last one."""
        if len(self.reasons) > self.warned:
            warnings.warn(self.summary(total), stacklevel=2)
            self.warned = len(self.reasons)
