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
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.data.decode import UnreadableImageError, load_rgb
from visiontransfer.data.protocol import DetectionData, ImageData, LabeledData
from visiontransfer.data.segmentation import colorize, palette

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


def write_csv(path: str, header: list[str], rows: list[list[Any]]) -> None:
    """A CSV file of ``header`` and ``rows`` at ``path`` (folders created), atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def write(temp: str) -> None:
        with open(temp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)


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


def image_stem(source: str, index: int) -> str:
    """File name (without extension) for what is written about predicted item ``index``: the stem
    of its source file, or ``image_NNNNNN`` when it came from no file (the embedded set)."""
    return os.path.splitext(os.path.basename(source))[0] if os.sep in source else f"image_{index:06d}"


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
        lines = [
            [source_of(trainer, i), names[pred] if names else pred, f"{prob:.6f}"] for i, pred, prob in rows
        ]
        write_csv(out, ["path", "predicted_class", "probability"], lines)
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
        stem = image_stem(source_of(trainer, index), index)
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


class SegmentationWriter(L.Callback):
    """Write ``predict`` results of a segmenter: each image's predicted class mask as a PNG at the
    image's original size, a colour overlay, and an index CSV (under DDP each process writes the
    files of its own images; rank 0 writes the index of all).

    Masks are palette PNGs (up to 256 classes; 16-bit greyscale above): the pixel values are the
    class indices, as in Pascal VOC's ``SegmentationClass``, and image viewers show the palette's
    colours (:func:`~visiontransfer.data.segmentation.palette`). Overlays blend those colours into
    the original image. ``path`` lists, per image, its source, mask and overlay files.

    Args:
        path: Output CSV index (relative paths go into the run's log folder).
        mask_dir: Folder of the mask PNGs (relative: in the log folder).
        overlay_dir: Folder of the overlays (relative: in the log folder); None: no overlays.
        alpha: Opacity of the class colours in the overlays.
    """

    def __init__(
        self,
        path: str = "segmentation.csv",
        mask_dir: str = "masks",
        overlay_dir: str | None = "overlays",
        alpha: float = 0.5,
    ) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"SegmentationWriter alpha={alpha} must be in [0, 1]")
        self.path, self.mask_dir, self.overlay_dir, self.alpha = path, mask_dir, overlay_dir, alpha
        self.rows: list[tuple[int, str, str]] = []
        self._folders: tuple[str, str | None] | None = None

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []
        # Resolved here, on every process at once (the log folder is a collective under DDP).
        overlays = None if self.overlay_dir is None else output_path(trainer, self.overlay_dir)
        self._folders = (output_path(trainer, self.mask_dir), overlays)
        for folder in self._folders:
            if folder is not None:
                os.makedirs(folder, exist_ok=True)

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        assert self._folders is not None
        mask_folder, overlay_folder = self._folders
        classes = int(getattr(pl_module, "num_classes", 0)) or len(class_names_of(trainer, pl_module) or [])
        for k, (index, mask) in enumerate(zip(outputs["index"].tolist(), outputs["masks"], strict=True)):
            source = source_of(trainer, index)
            stem = image_stem(source, index)
            mask = mask.cpu()
            mask_file = os.path.join(mask_folder, f"{stem}.png")
            _save(_mask_png(mask, classes), mask_file, "PNG")
            overlay_file = ""
            if overlay_folder is not None:
                overlay_file = os.path.join(overlay_folder, f"{stem}.jpg")
                image = _original_image(source, batch["image"][k], batch["size"][k].tolist(), mask.shape)
                blended = _overlay(image, mask, classes, self.alpha)
                _save(blended, overlay_file, "JPEG")
            self.rows.append((index, mask_file, overlay_file))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = output_path(trainer, self.path)
        rows = gather_rows(trainer, self.rows)
        if not trainer.is_global_zero:
            return
        write_csv(out, ["path", "mask", "overlay"], [[source_of(trainer, i), m, o] for i, m, o in rows])
        print(f"{len(rows)} predicted masks written beside {out} (the index)")


def _save(image: Image.Image, path: str, format: str) -> None:
    atomic_write(path, lambda temp: image.save(temp, format=format))


def _mask_png(mask: Tensor, num_classes: int) -> Image.Image:
    """A class-index mask ``(H, W)`` as a PIL image: palette PNG up to 256 classes, else 16-bit."""
    values = mask.numpy()
    if num_classes > 256:
        return Image.fromarray(values.astype("uint16"))
    image = Image.fromarray(values.astype("uint8"))
    image.putpalette(palette(256).flatten().tolist())  # the greyscale image becomes a palette image
    return image


def _original_image(source: str, network_input: Tensor, size: list[int], shape: tuple[int, ...]) -> Tensor:
    """``(3, H0, W0)`` uint8: the source file when it can be read at the mask's size, else the
    network input (its unpadded part) resized to it."""
    if os.path.isfile(source):
        try:
            image = torch.from_numpy(load_rgb(source)).permute(2, 0, 1)
            if tuple(image.shape[1:]) == tuple(shape):
                return image
        except UnreadableImageError:
            pass
    own = network_input[:3, : size[0], : size[1]].cpu().float()[None]
    return F.interpolate(own, size=tuple(shape), mode="bilinear", align_corners=False)[0].round().byte()


def _overlay(image: Tensor, mask: Tensor, num_classes: int, alpha: float) -> Image.Image:
    """The image with the class colours of ``mask`` blended in (opacity ``alpha``), as a PIL image."""
    colours = colorize(mask, max(num_classes, int(mask.max()) + 1)).float()  # (3, H, W)
    blended = (1 - alpha) * image.float() + alpha * colours
    return Image.fromarray(blended.round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
