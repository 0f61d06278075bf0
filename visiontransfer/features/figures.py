"""Pictures of saved embeddings: grids of the images behind rows, written atomically as PNG.

Rows name where their image came from (``index.csv``): a file, a member of a tar shard
(``/shards/shard-000003.tar:000012345``) or a scene of the embedded set (``embedded:N``).
:func:`thumbnails` brings them back as small centre crops (one pass per shard, however many of
its images are shown); an image that can't be read any more is drawn grey. The grids are
:func:`visiontransfer.visualize.image_grid` figures.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.data.datasets import to_chw_tensor
from visiontransfer.data.decode import UnreadableImageError, decode_rgb, load_rgb
from visiontransfer.data.shards import _tar_samples
from visiontransfer.data.synthetic import SHAPES, render_scene
from visiontransfer.data.transforms import eval_transform
from visiontransfer.visualize import image_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure

THUMBNAIL = 64
"""Side of the images in the pictures, in pixels."""
EMBEDDED = "embedded:"


def _shard_member(path: str) -> tuple[str, str] | None:
    """``(shard file, sample key)`` of a shard member's path, else None."""
    shard, sep, key = path.rpartition(".tar:")
    return (shard + ".tar", key) if sep else None


def _decode(path: str, seed: int) -> np.ndarray:
    """``(H, W, 3) uint8`` of a file or an embedded scene."""
    if path.startswith(EMBEDDED):
        return render_scene(int(path[len(EMBEDDED) :]), THUMBNAIL, len(SHAPES), seed).image
    if not os.path.isfile(path):
        raise UnreadableImageError(path, "not a file (any more)")
    return load_rgb(path)


def _from_shards(paths: Sequence[str]) -> dict[str, np.ndarray]:
    """The images of the shard members among ``paths``, one pass over each shard."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for path in paths:
        member = _shard_member(path)
        if member is not None:
            wanted[member[0]].add(member[1])
    found: dict[str, np.ndarray] = {}
    for shard, keys in wanted.items():
        if not os.path.isfile(shard):
            continue
        for key, data, _ in _tar_samples(Path(shard)):
            if key in keys and data is not None:
                where = f"{shard}:{key}"
                try:
                    found[where] = decode_rgb(io.BytesIO(data), where)
                except UnreadableImageError:
                    continue
    return found


def thumbnails(paths: Sequence[str], size: int = THUMBNAIL, seed: int = 0) -> Tensor:
    """``(N, 3, size, size) uint8`` centre crops of the images at ``paths`` (grey where unreadable,
    white for an empty path: a free place in a grid).

    Args:
        paths: Paths as ``index.csv`` holds them, or ``""``.
        size: Side of the crops.
        seed: Seed of the embedded set (for ``embedded:N`` paths).
    """
    crop = eval_transform(size)
    from_shards = _from_shards(paths)
    images = []
    for path in paths:
        if not path:
            images.append(torch.full((3, size, size), 255, dtype=torch.uint8))
            continue
        try:
            image = from_shards[path] if _shard_member(path) else _decode(path, seed)
            images.append(to_chw_tensor(crop(image=image)["image"]))
        except (UnreadableImageError, KeyError):
            images.append(torch.full((3, size, size), 128, dtype=torch.uint8))
    if not images:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.stack(images)


def grid_figure(
    paths: Sequence[str],
    ncols: int,
    titles: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    title: str | None = None,
    seed: int = 0,
) -> Figure:
    """The images at ``paths`` in a grid of ``ncols`` columns, each with an optional title."""
    return image_grid(thumbnails(paths, seed=seed), ncols=ncols, titles=titles, colors=colors, title=title)


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``figure`` as a PNG at ``path`` atomically; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda temp: figure.savefig(temp, format="png", dpi=100))
    return target
