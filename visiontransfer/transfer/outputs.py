"""What the prediction writers share: rows gathered from every process, files written atomically."""

from __future__ import annotations

import json
import os
from typing import Any, TypeVar

import lightning as L
import torch.distributed as dist

from visiontransfer.checkpoint_io import atomic_write

Row = TypeVar("Row", bound=tuple[Any, ...])


def gather_rows(trainer: L.Trainer, rows: list[Row]) -> list[Row]:
    """Every process's rows (keyed by their first item, the dataset index), each index once, sorted.

    Under DDP each process predicts its share of the set, and the distributed sampler may repeat a
    few indices to even the shares out; all processes take part in the gather.
    """
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        parts: list[list[Row] | None] = [None] * trainer.world_size
        dist.all_gather_object(parts, rows)
        rows = [row for part in parts for row in (part or [])]
    unique: dict[Any, Row] = {}
    for row in rows:
        unique.setdefault(row[0], row)
    return [unique[key] for key in sorted(unique)]


def output_path(trainer: L.Trainer, path: str) -> str:
    """``path``, or inside the run's log folder when relative. Call it on every process
    (``trainer.log_dir`` is a collective under DDP)."""
    return path if os.path.isabs(path) else os.path.join(trainer.log_dir or ".", path)


def write_json(path: str, data: Any) -> None:
    """``data`` as JSON at ``path`` (folders created), atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def dump(temp: str) -> None:
        with open(temp, "w") as handle:
            json.dump(data, handle)

    atomic_write(path, dump)
