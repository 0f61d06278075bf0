"""Prediction writers: ``predict`` results written to files, gathered from every process.

Each writer is a callback: it collects the rows of its process, gathers every process's rows at
the end of the epoch (each dataset index once: the distributed sampler may repeat a few to even
the shares out) and rank 0 writes the file atomically. Where an item came from is asked of the
datamodule through :class:`~visiontransfer.data.protocol.ImageData` (``source(split, index)``);
class names come from the module (``class_names``), which knows them even when the predicted
images have no labels.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, TypeVar

import lightning as L
import torch.distributed as dist
from torch import Tensor

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.data.protocol import DetectionData, ImageData, LabeledData

Row = TypeVar("Row", bound=tuple[Any, ...])


def gather_rows(trainer: L.Trainer, rows: list[Row]) -> list[Row]:
    """Every process's rows (keyed by their first item, the dataset index), each index once, sorted.

    All processes must call it (it is a collective under DDP).
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


def _datamodule(trainer: L.Trainer) -> Any:
    return getattr(trainer, "datamodule", None)


def source_of(trainer: L.Trainer, index: int) -> str:
    """Where predicted item ``index`` came from (a file path, ``embedded:N``, or ``predict:N``)."""
    data = _datamodule(trainer)
    return data.source("predict", index) if isinstance(data, ImageData) else f"predict:{index}"


def class_names_of(trainer: L.Trainer, pl_module: L.LightningModule) -> list[str] | None:
    """The class names the module was given (transfer modules take them), else the datamodule's,
    else None."""
    names = getattr(pl_module, "declared_class_names", None)
    if names:
        return list(names)
    data = _datamodule(trainer)
    return list(data.classes) if isinstance(data, LabeledData) else None


class PredictionWriter(L.Callback):
    """Write ``predict`` results as CSV: path, predicted class, probability (one row per image,
    gathered from every process under DDP).

    Args:
        path: Output CSV file (relative paths go into the run's log folder).
    """

    def __init__(self, path: str = "predictions.csv") -> None:
        self.path = path
        self.rows: list[tuple[int, int, float]] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        for i, p, c in zip(
            outputs["index"].tolist(), outputs["pred"].tolist(), outputs["prob"].tolist(), strict=True
        ):
            self.rows.append((i, p, c))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = output_path(trainer, self.path)
        rows = gather_rows(trainer, self.rows)
        if not trainer.is_global_zero:
            return
        names = class_names_of(trainer, pl_module)
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)

        def write(temp: str) -> None:
            with open(temp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "predicted_class", "probability"])
                for index, pred, prob in rows:
                    writer.writerow(
                        [source_of(trainer, index), names[pred] if names else pred, f"{prob:.6f}"]
                    )

        atomic_write(out, write)
        print(f"predictions written to {out}")


class DetectionWriter(L.Callback):
    """Write ``predict`` results as COCO-format detections, and optionally images with their boxes
    (under DDP each process draws its own images; rank 0 writes the detections of all).

    ``path`` gets the COCO results list (``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``
    in original pixels, ``score``), loadable with ``pycocotools``' ``COCO.loadRes``; beside it,
    ``<stem>_images.json`` maps the ``image_id`` to files and lists the categories. Image ids are
    the COCO file's own for COCO data, else the index in the predicted set.

    Args:
        path: Output JSON file (relative paths go into the run's log folder).
        draw_dir: Folder for PNGs of the network input with the boxes drawn (relative: in the
            log folder); None: draw nothing.
        draw_threshold: Smallest score drawn.
        max_drawn: Draw at most this many images.
    """

    def __init__(
        self,
        path: str = "detections.json",
        draw_dir: str | None = None,
        draw_threshold: float = 0.5,
        max_drawn: int = 100,
    ) -> None:
        self.path = path
        self.draw_dir = draw_dir
        self.draw_threshold = draw_threshold
        self.max_drawn = max_drawn
        self.rows: list[tuple[int, Tensor, Tensor, Tensor]] = []
        self.drawn = 0
        self._draw_folder: str | None = None

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows, self.drawn = [], 0
        # Resolved here, on every process at once (the log folder is a collective under DDP).
        self._draw_folder = None if self.draw_dir is None else output_path(trainer, self.draw_dir)

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        for k, (index, det) in enumerate(zip(outputs["index"].tolist(), outputs["detections"], strict=True)):
            self.rows.append((index, det["boxes"].cpu(), det["scores"].cpu(), det["labels"].cpu()))
            if self._draw_folder is not None and self.drawn < self.max_drawn:
                self._draw(trainer, pl_module, index, batch["image"][k].cpu(), det)

    def _draw(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        index: int,
        image: Tensor,
        det: dict[str, Tensor],
    ) -> None:
        from PIL import Image
        from torchvision.utils import draw_bounding_boxes

        assert self._draw_folder is not None
        names = class_names_of(trainer, pl_module)
        keep = det["scores"] >= self.draw_threshold
        labels = [
            f"{names[int(c) - 1] if names else int(c)} {float(s):.2f}"
            for c, s in zip(det["labels"][keep], det["scores"][keep], strict=True)
        ]
        drawn = draw_bounding_boxes(
            image, det["input_boxes"][keep].cpu(), labels=labels, colors="red", width=2
        )
        os.makedirs(self._draw_folder, exist_ok=True)
        source = source_of(trainer, index)
        stem = os.path.splitext(os.path.basename(source))[0] if os.sep in source else f"image_{index:06d}"
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(os.path.join(self._draw_folder, f"{stem}.png"))
        self.drawn += 1

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = output_path(trainer, self.path)
        rows = gather_rows(trainer, self.rows)
        if not trainer.is_global_zero:
            return
        data = _datamodule(trainer)
        names = class_names_of(trainer, pl_module) or []
        category_ids = list(data.category_ids) if isinstance(data, DetectionData) else []
        category_ids = category_ids or list(range(1, len(names) + 1))
        results, images = [], {}
        for index, boxes, scores, labels in rows:
            own_id = data.image_id("predict", index) if isinstance(data, DetectionData) else None
            image_id = index if own_id is None else own_id
            images[image_id] = {"id": image_id, "file_name": source_of(trainer, index)}
            for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
                x0, y0, x1, y1 = box
                category = category_ids[label - 1] if 0 < label <= len(category_ids) else label
                bbox = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
                results.append(
                    {"image_id": image_id, "category_id": category, "bbox": bbox, "score": round(score, 5)}
                )
        categories = [{"id": c, "name": n} for c, n in zip(category_ids, names, strict=False)]
        write_json(out, results)
        write_json(
            os.path.splitext(out)[0] + "_images.json",
            {"images": list(images.values()), "categories": categories},
        )
        print(f"{len(results)} detections on {len(images)} images written to {out}")
