"""YOLO reader: one txt file per image of normalised ``class cx cy w h`` (or polygon) lines, the
class names from ``classes.txt`` / ``data.yaml``, image sizes from the headers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from visiontransfer.data.detection.records import (
    AnnotationError,
    BoxReport,
    DetectionAnnotations,
    _Entry,
    _finish,
)
from visiontransfer.data.index import scan_images


# -- YOLO ---------------------------------------------------------------------------------------
def image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` of an image as displayed (EXIF rotation applied), from its header alone."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def yolo_class_names(*folders: str) -> list[str] | None:
    """Class names from ``classes.txt`` / ``obj.names`` (one per line) or ``data.yaml`` /
    ``dataset.yaml`` (``names``) in the first of ``folders`` that has one."""
    for folder in folders:
        for name in ("classes.txt", "obj.names"):
            file = Path(folder, name)
            if file.is_file():
                return [line.strip() for line in file.read_text().splitlines() if line.strip()]
        for name in ("data.yaml", "dataset.yaml"):
            file = Path(folder, name)
            if file.is_file():
                import yaml

                names = (yaml.safe_load(file.read_text()) or {}).get("names")
                if isinstance(names, dict):
                    return [str(names[k]) for k in sorted(names)]
                if isinstance(names, list):
                    return [str(n) for n in names]
    return None


def _yolo_label_file(image: str, images_root: str, labels: str | None) -> str:
    """The label file of ``image``: under ``labels`` (same relative path), else the Ultralytics
    ``images/`` → ``labels/`` sibling, else beside the image."""
    stem = os.path.splitext(image)[0]
    if labels is not None:
        return os.path.join(labels, os.path.relpath(stem, images_root) + ".txt")
    parts = Path(stem).parts
    if "images" in parts:
        k = len(parts) - 1 - parts[::-1].index("images")
        return str(Path(*parts[:k], "labels", *parts[k + 1 :])) + ".txt"
    return stem + ".txt"


def _read_yolo_file(path: str, num_classes: int | None) -> tuple[list[list[float]], list[int]]:
    """Normalised ``cx, cy, w, h`` boxes (polygons: their bounding box) and class ids of one file."""
    boxes, ids = [], []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
                raise AnnotationError(
                    path, number, f"expected 'class cx cy w h' (or a polygon), got {len(fields)} fields"
                )
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise AnnotationError(path, number, f"non-numeric field in {line.strip()!r}") from None
            cls = int(values[0])
            if cls != values[0] or cls < 0 or (num_classes is not None and cls >= num_classes):
                limit = f" (there are {num_classes} classes)" if num_classes is not None else ""
                raise AnnotationError(path, number, f"class id {fields[0]!r} is not a valid index{limit}")
            if len(fields) == 5:
                boxes.append(values[1:])
            else:  # segmentation polygon x1 y1 x2 y2 ...: its bounding box
                xs, ys = values[1::2], values[2::2]
                boxes.append(
                    [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
                )
            ids.append(cls)
    return boxes, ids


def read_yolo(
    images: str | Sequence[str], labels: str | None = None, classes: Sequence[str] | None = None
) -> DetectionAnnotations:
    """Read YOLO txt labels (``class cx cy w h``, normalised to 0..1; one file per image).

    Args:
        images: Folder of images (searched recursively), or a list of image files.
        labels: Folder of the label files, mirroring ``images``; default: the ``labels/`` sibling
            of an ``images/`` folder (Ultralytics layout), else beside each image.
        classes: Class names, index ``k`` for class id ``k``. Default: from ``classes.txt``,
            ``obj.names`` or ``data.yaml`` near the labels, else the ids themselves (``"0"``, ...).

    An image without a label file (or with an empty one) is a negative.

    Raises:
        AnnotationError: a line that is not 5 numbers (or a polygon), or a class id out of range,
            naming the file and line.
    """
    if isinstance(images, (str, os.PathLike)):
        root = os.fspath(images)
        paths = [os.path.join(root, p) for p in scan_images(root)]
    else:
        paths = [os.fspath(p) for p in images]
        root = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    if classes is None:
        near = [d for d in (labels, os.path.dirname(labels or root), root, os.path.dirname(root)) if d]
        classes = yolo_class_names(*near)
    per_image = []
    for path in paths:
        label_file = _yolo_label_file(path, root, labels)
        parsed = (
            _read_yolo_file(label_file, len(classes) if classes else None)
            if os.path.isfile(label_file)
            else ([], [])
        )
        per_image.append((path, *parsed))
    if classes is None:
        top = max((max(ids) for _, _, ids in per_image if ids), default=0)
        classes = [str(i) for i in range(top + 1)]
    entries: list[_Entry] = []
    for path, boxes, ids in per_image:
        size = image_size(path)
        if size is None:  # unreadable: the loader skips the image and reports it
            entries.append((path, [], [], None, None, None))
            continue
        w0, h0 = size
        absolute = [[(cx - w / 2) * w0, (cy - h / 2) * h0, (cx + w / 2) * w0, (cy + h / 2) * h0]
                    for cx, cy, w, h in boxes]  # fmt: skip
        entries.append((path, absolute, [classes[i] for i in ids], w0, h0, None))
    report = BoxReport()
    records = _finish(entries, list(classes), report)
    report.warn(f"YOLO labels for {root!r}")
    return DetectionAnnotations(records, list(classes), list(range(1, len(classes) + 1)))
