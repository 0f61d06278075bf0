"""The record format every reader returns, and box hygiene: boxes clipped to their image,
boxes with no area left dropped, both reported in one warning."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIN_BOX_SIDE = 1.0
"""Boxes narrower or lower than this many pixels (after clipping) are dropped."""


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and, where known, the line."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        where = f"{os.fspath(path)}:{line}" if line else os.fspath(path)
        super().__init__(f"{where}: {message}")
        self.path = os.fspath(path)
        self.line = line


@dataclass
class DetectionRecord:
    """One image and its boxes.

    Attributes:
        path: The image file.
        boxes: ``(N, 4)`` float32 absolute ``xyxy`` pixels.
        labels: ``(N,)`` int64 class labels in ``1..C`` (0 is the background).
        width: Width declared by the annotations (or read from the image header), if known.
        height: Height declared by the annotations (or read from the image header), if known.
        image_id: The image's id in a COCO file (None for other formats).
    """

    path: str
    boxes: np.ndarray
    labels: np.ndarray
    width: int | None = None
    height: int | None = None
    image_id: int | None = None


@dataclass
class DetectionAnnotations:
    """What a reader returns: the records, the class map, and the original category ids.

    Attributes:
        records: One record per image, negatives (no box) included.
        classes: Class names; label ``k`` is ``classes[k - 1]``.
        category_ids: The annotation file's own id of each class (COCO category ids; ``1..C``
            for the other formats), used when writing COCO-format detections.
    """

    records: list[DetectionRecord]
    classes: list[str]
    category_ids: list[int]


# -- box hygiene --------------------------------------------------------------------------------
@dataclass
class BoxReport:
    """Boxes clipped or dropped, and objects ignored, per file; summarised in one warning."""

    clipped: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)

    def add(self, source: str, clipped: int, dropped: int) -> None:
        if clipped:
            self.clipped[source] += clipped
        if dropped:
            self.dropped[source] += dropped

    def warn(self, what: str) -> None:
        """One warning with the counts and the first files of each kind, if anything happened."""
        parts = []
        for counter, verb in (
            (self.clipped, "clipped to the image (partly outside it)"),
            (self.dropped, "dropped (degenerate, or outside the image)"),
        ):
            if counter:
                files = ", ".join(f"{Path(f).name} ({n})" for f, n in sorted(counter.items())[:5])
                more = f", ... ({len(counter) - 5} more files)" if len(counter) > 5 else ""
                parts.append(
                    f"{sum(counter.values())} box(es) {verb} in {len(counter)} file(s): {files}{more}"
                )
        if self.ignored:
            names = ", ".join(f"{name!r} ({n})" for name, n in self.ignored.most_common(8))
            parts.append(
                f"{sum(self.ignored.values())} object(s) of classes not in --data.classes ignored: {names}"
            )
        if parts:
            warnings.warn(f"{what}: " + "; ".join(parts), stacklevel=3)


def clean_boxes(
    boxes: np.ndarray, labels: np.ndarray, width: int | None, height: int | None
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Clip boxes to the image and drop those with no area left (or non-finite ones).

    Args:
        boxes: ``(N, 4)`` absolute ``xyxy``.
        labels: ``(N,)`` labels.
        width: Image width (None: no clipping, only degenerate boxes dropped).
        height: Image height.

    Returns:
        ``(boxes, labels, clipped, dropped)``: kept boxes and labels, and how many were clipped
        (and kept) or dropped.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    finite = np.isfinite(boxes).all(axis=1)
    clipped_boxes = boxes.copy()
    if width and height:
        clipped_boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
        clipped_boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    keep = finite & (clipped_boxes[:, 2] - clipped_boxes[:, 0] >= MIN_BOX_SIDE)
    keep &= clipped_boxes[:, 3] - clipped_boxes[:, 1] >= MIN_BOX_SIDE
    changed = finite & (np.abs(clipped_boxes - np.where(np.isfinite(boxes), boxes, 0)).max(axis=1) > 1e-3)
    clipped = int((changed & keep).sum())
    return clipped_boxes[keep], labels[keep], clipped, int((~keep).sum())


_Entry = tuple[str, list[list[float]], list[str], int | None, int | None, int | None]
"""What a reader collects per image: path, raw ``xyxy`` boxes, class names, width, height, image id."""


def _finish(
    entries: list[_Entry],
    class_names: list[str],
    report: BoxReport,
) -> list[DetectionRecord]:
    """Map class names to labels ``1..C`` and clean the boxes of ``(path, boxes, names, w, h, id)``."""
    index = {name: i + 1 for i, name in enumerate(class_names)}
    records = []
    for path, raw_boxes, names, width, height, image_id in entries:
        known = [i for i, name in enumerate(names) if name in index]
        for i in set(range(len(names))) - set(known):
            report.ignored[names[i]] += 1
        boxes = np.asarray([raw_boxes[i] for i in known], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray([index[names[i]] for i in known], dtype=np.int64)
        boxes, labels, clipped, dropped = clean_boxes(boxes, labels, width, height)
        report.add(path, clipped, dropped)
        records.append(DetectionRecord(path, boxes, labels, width, height, image_id))
    return records
