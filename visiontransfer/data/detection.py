"""Object detection data: Pascal VOC, COCO and YOLO annotations read into one record format,
bbox-aware augmentation, and batches as lists (images of different sizes).

Label convention: every reader returns labels in ``1..C``, ``label`` naming ``classes[label - 1]``,
and 0 is reserved for the background, as torchvision's detectors expect
(:class:`~visiontransfer.transfer.detection.ObjectDetector` shifts them for the detectors that
count no background class). Boxes are absolute pixel ``xyxy`` (``x_min, y_min, x_max, y_max``)
in the image as displayed (EXIF orientation applied, as :func:`~visiontransfer.data.load_rgb`
decodes it), ``float32``.

Boxes partly outside their image are clipped to it; boxes with no area left (degenerate, or
entirely outside) are dropped; both are counted and reported in one warning naming the files.
An image with no box is kept as a negative. A malformed annotation file raises
:class:`AnnotationError` naming the file and the line.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from xml.parsers import expat

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from visiontransfer.data.base import _ImageDataModule, probe_readable
from visiontransfer.data.datasets import Skipped, reseed, to_chw_tensor
from visiontransfer.data.decode import DEFAULT_MAX_PIXELS, UnreadableImageError, has_image_extension, load_rgb
from visiontransfer.data.index import PathTable, scan_images
from visiontransfer.data.sampling import SeededIndex
from visiontransfer.data.synthetic import SHAPES, render_scene
from visiontransfer.data.transforms import seed_transform
from visiontransfer.errors import ConfigError, MissingPathError

AnnotationFormat = Literal["voc", "coco", "yolo"]
"""Annotation formats: Pascal VOC xml (one file per image), COCO json (one file), YOLO txt (one
file per image, normalised ``class cx cy w h``)."""

DetectionAugment = Literal["standard", "flip", "none"]
"""Training presets: ``standard`` (a random crop keeping every box or a zoom-out, horizontal flip,
colour jitter), ``flip`` (horizontal flip only), ``none`` (as evaluation: resize only)."""

MIN_BOX_SIDE = 1.0
"""Boxes narrower or lower than this many pixels (after clipping) are dropped."""

FILL = (124, 116, 104)
"""Fill of the border a zoom-out adds (the ImageNet mean colour)."""


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


# -- Pascal VOC ---------------------------------------------------------------------------------
def _parse_xml(path: str) -> tuple[ET.Element, dict[ET.Element, int]]:
    """Parse an XML file, remembering the line each element starts on."""
    builder = ET.TreeBuilder()
    lines: dict[ET.Element, int] = {}
    parser = expat.ParserCreate()

    def start(tag: str, attrs: dict[str, str]) -> None:
        lines[builder.start(tag, attrs)] = parser.CurrentLineNumber

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        with open(path, "rb") as handle:
            parser.ParseFile(handle)
    except expat.ExpatError as error:
        raise AnnotationError(
            path, error.lineno, f"malformed XML ({expat.errors.messages[error.code]})"
        ) from None
    return builder.close(), lines


def _xml_number(parent: ET.Element, tag: str, path: str, lines: dict[ET.Element, int]) -> float:
    child = parent.find(tag)
    if child is None:
        raise AnnotationError(path, lines.get(parent), f"<{parent.tag}> has no <{tag}>")
    try:
        return float((child.text or "").strip())
    except ValueError:
        raise AnnotationError(path, lines.get(child), f"<{tag}> is {child.text!r}, not a number") from None


def _voc_image(xml_path: str, root: ET.Element, images: str) -> str:
    """The image an annotation describes: ``<filename>`` in ``images``, else the file's stem."""
    filename = (root.findtext("filename") or "").strip()
    if filename and os.path.isfile(os.path.join(images, filename)):
        return os.path.join(images, filename)
    stem = Path(xml_path).stem
    for candidate in sorted(Path(images).glob(f"{stem}.*")):
        if has_image_extension(candidate):
            return str(candidate)
    return os.path.join(images, filename or f"{stem}.jpg")  # missing: the loader skips it, counted


def _read_voc_file(xml_path: str, images: str) -> _Entry:
    root, lines = _parse_xml(xml_path)
    if root.tag != "annotation":
        raise AnnotationError(xml_path, lines.get(root), f"root element is <{root.tag}>, not <annotation>")
    size = root.find("size")
    width = height = None
    if size is not None:
        width = int(_xml_number(size, "width", xml_path, lines)) or None
        height = int(_xml_number(size, "height", xml_path, lines)) or None
    boxes, names = [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise AnnotationError(xml_path, lines.get(obj), "<object> has no <name>")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise AnnotationError(xml_path, lines.get(obj), f"<object> {name!r} has no <bndbox>")
        boxes.append([_xml_number(bndbox, tag, xml_path, lines) for tag in ("xmin", "ymin", "xmax", "ymax")])
        names.append(name)
    return _voc_image(xml_path, root, images), boxes, names, width, height, None


def read_voc(
    annotations: str | Sequence[str], images: str, classes: Sequence[str] | None = None
) -> DetectionAnnotations:
    """Read Pascal VOC xml files (one per image).

    Args:
        annotations: A folder of ``.xml`` files, or a list of them.
        images: Folder of the images named by ``<filename>`` (else the xml file's stem is tried).
        classes: Class names in label order; objects of other classes are ignored (counted).
            Default: every ``<name>`` found, sorted.

    Raises:
        AnnotationError: a malformed file (bad XML, missing or non-numeric fields), naming the
            file and line.
    """
    if isinstance(annotations, (str, os.PathLike)):
        folder = os.fspath(annotations)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"VOC annotation folder {folder!r} does not exist")
        files = sorted(str(p) for p in Path(folder).glob("*.xml"))
        if not files:
            raise FileNotFoundError(f"no .xml files in the VOC annotation folder {folder!r}")
    else:
        files = [os.fspath(f) for f in annotations]
    entries = [_read_voc_file(f, images) for f in files]
    names = list(classes) if classes is not None else sorted({n for e in entries for n in e[2]})
    report = BoxReport()
    records = _finish(entries, names, report)
    report.warn(f"VOC annotations in {os.path.dirname(files[0]) if files else images!r}")
    return DetectionAnnotations(records, names, list(range(1, len(names) + 1)))


# -- COCO ---------------------------------------------------------------------------------------
class _LocatedDict(dict):  # type: ignore[type-arg]
    """A JSON object that knows the character offset it starts at."""

    offset = 0


def _json_line(text: str, where: Sequence[str | int]) -> int | None:
    """Line of the JSON object at ``where`` (e.g. ``("annotations", 12)``) in ``text``.

    Re-parses with the pure-Python scanner, recording where each object starts; only called
    when reporting an error, so valid files keep the fast C parser.
    """
    decoder = json.JSONDecoder()

    def parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[_LocatedDict, int]:
        obj, end = json.decoder.JSONObject(s_and_end, *args)  # type: ignore[attr-defined]
        located = _LocatedDict(obj)
        located.offset = s_and_end[1] - 1
        return located, end

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    node: Any = decoder.decode(text)
    line = None
    for key in where:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(node, _LocatedDict):
            line = text.count("\n", 0, node.offset) + 1
    return line


def _coco_fail(path: str, text: str, where: Sequence[str | int], message: str) -> AnnotationError:
    label = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in where).lstrip(".")
    return AnnotationError(path, _json_line(text, where), f"{label}: {message}")


def _coco_tables(
    path: str, text: str, data: Any
) -> tuple[dict[int, dict[str, Any]], dict[int, str], list[dict[str, Any]]]:
    """Images by id, category names by id, and annotations, with their structure checked."""
    if not isinstance(data, dict):
        raise AnnotationError(path, 1, "a COCO file is a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(path, 1, f"needs a list {key!r}; found {type(data.get(key)).__name__}")
    images: dict[int, dict[str, Any]] = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise _coco_fail(path, text, ("images", i), "an image needs 'id' and 'file_name'")
        images[image["id"]] = image
    categories: dict[int, str] = {}
    for i, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise _coco_fail(path, text, ("categories", i), "a category needs 'id' and 'name'")
        categories[category["id"]] = str(category["name"])
    return images, categories, data["annotations"]


def _coco_box(
    path: str, text: str, i: int, ann: Any, images: dict[int, Any], cats: dict[int, str]
) -> list[float]:
    """``[x, y, w, h]`` of annotation ``i`` as ``xyxy``, its references checked."""
    if not isinstance(ann, dict):
        raise _coco_fail(path, text, ("annotations", i), "an annotation is a JSON object")
    if ann.get("image_id") not in images:
        raise _coco_fail(
            path, text, ("annotations", i), f"image_id {ann.get('image_id')!r} is not in 'images'"
        )
    if ann.get("category_id") not in cats:
        raise _coco_fail(
            path, text, ("annotations", i), f"category_id {ann.get('category_id')!r} is not in 'categories'"
        )
    bbox = ann.get("bbox")
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        raise _coco_fail(path, text, ("annotations", i), f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def read_coco(json_file: str, images: str, classes: Sequence[str] | None = None) -> DetectionAnnotations:
    """Read a COCO ``instances`` json file (boxes ``[x, y, w, h]``; crowd regions ignored).

    Args:
        json_file: The annotation file.
        images: Folder the images' ``file_name`` are relative to.
        classes: Category names in label order; annotations of other categories are ignored
            (counted). Default: every category, ordered by id.

    Raises:
        AnnotationError: invalid JSON, or a missing or ill-typed field, naming the file and line.
    """
    text = Path(json_file).read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise AnnotationError(json_file, error.lineno, f"invalid JSON ({error.msg})") from None
    image_table, categories, annotations = _coco_tables(json_file, text, data)
    per_image: dict[int, tuple[list[list[float]], list[str]]] = {i: ([], []) for i in image_table}
    for i, ann in enumerate(annotations):
        box = _coco_box(json_file, text, i, ann, image_table, categories)
        if ann.get("iscrowd", 0):
            continue
        per_image[ann["image_id"]][0].append(box)
        per_image[ann["image_id"]][1].append(categories[ann["category_id"]])
    by_id = sorted(categories)
    names = list(classes) if classes is not None else [categories[c] for c in by_id]
    id_of = {categories[c]: c for c in reversed(by_id)}
    unknown = [n for n in names if n not in id_of]
    if unknown:
        raise AnnotationError(json_file, None, f"--data.classes {unknown} are not categories of this file")
    entries: list[_Entry] = []
    for image_id, image in image_table.items():
        boxes, box_names = per_image[image_id]
        path = os.path.join(images, str(image["file_name"]))
        width, height = int(image.get("width") or 0) or None, int(image.get("height") or 0) or None
        entries.append((path, boxes, box_names, width, height, int(image_id)))
    report = BoxReport()
    records = _finish(entries, names, report)
    report.warn(f"COCO annotations {json_file!r}")
    return DetectionAnnotations(records, names, [int(id_of[n]) for n in names])


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


# -- augmentation -------------------------------------------------------------------------------
def _bbox_params() -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        clip=True,
        min_width=MIN_BOX_SIDE,
        min_height=MIN_BOX_SIDE,
    )


def detection_eval_transform(image_size: int) -> A.Compose:
    """Resize the longest side to ``image_size`` (aspect ratio kept; boxes follow)."""
    if image_size < 32:
        raise ConfigError(f"--data.image_size={image_size} is too small for detection; use at least 32")
    return A.Compose(
        [A.LongestMaxSize(max_size=image_size, interpolation=cv2.INTER_AREA)], bbox_params=_bbox_params()
    )


def detection_train_transform(image_size: int, augment: DetectionAugment = "standard") -> A.Compose:
    """Training pipeline for ``augment`` (see :data:`DetectionAugment`); every step moves the boxes.

    ``standard``: with p=0.5, either a random crop that keeps every box whole (a zoom-in once
    resized) or a zoom-out to 60–100 % on a mean-colour border; then the longest side resized to
    ``image_size``, a horizontal flip and colour jitter.
    """
    resize = detection_eval_transform(image_size).transforms
    if augment == "none":
        steps = list(resize)
    elif augment == "flip":
        steps = [*resize, A.HorizontalFlip(p=0.5)]
    elif augment == "standard":
        zoom = A.OneOf(
            [
                A.BBoxSafeRandomCrop(erosion_rate=0.0),
                A.Affine(
                    scale=(0.6, 1.0), keep_ratio=True, border_mode=cv2.BORDER_CONSTANT, fill=FILL, p=1.0
                ),
            ],
            p=0.5,
        )
        colour = A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8)
        steps = [zoom, *resize, A.HorizontalFlip(p=0.5), colour]
    else:
        raise ConfigError(f"--data.augment={augment!r}: choose one of standard, flip, none")
    return A.Compose(steps, bbox_params=_bbox_params())


# -- datasets and batching ----------------------------------------------------------------------
DetectionSample = dict[str, Any]


def _sample(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, transform: A.Compose, index: int
) -> DetectionSample:
    """Apply ``transform`` to an image and its boxes: ``{"image": (3, H, W) uint8, "boxes": (N, 4)
    float32, "labels": (N,) int64, "index", "orig_size": (H0, W0)}``."""
    height, width = image.shape[:2]
    out = transform(image=image, bboxes=boxes.reshape(-1, 4), labels=labels)
    new_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
    new_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
    keep = (new_boxes[:, 2] - new_boxes[:, 0] >= MIN_BOX_SIDE) & (
        new_boxes[:, 3] - new_boxes[:, 1] >= MIN_BOX_SIDE
    )
    return {
        "image": to_chw_tensor(out["image"]),
        "boxes": torch.from_numpy(new_boxes[keep]),
        "labels": torch.from_numpy(new_labels[keep]),
        "index": index,
        "orig_size": (height, width),
    }


class DetectionDataset(Dataset[DetectionSample | Skipped]):
    """Images with boxes, decoded by :func:`~visiontransfer.data.load_rgb` (unreadable files are
    returned as :class:`~visiontransfer.data.datasets.Skipped`, and reported by the datamodule).

    Args:
        records: The images and their boxes.
        transform: Albumentations pipeline with bbox parameters (:func:`detection_train_transform`).
        max_pixels: Largest width × height decoded.
    """

    def __init__(
        self, records: list[DetectionRecord], transform: A.Compose, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.records = records
        self.transform = transform
        self.max_pixels = max_pixels
        self.paths = [r.path for r in records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def group_ids(self) -> list[int]:
        """Aspect-ratio group of each image: 0 landscape or square (or unknown), 1 portrait."""
        return [int(bool(r.width and r.height and r.height > r.width)) for r in self.records]

    def __getitem__(self, key: int | SeededIndex) -> DetectionSample | Skipped:
        index = reseed(self.transform, key)
        record = self.records[index]
        try:
            image = load_rgb(record.path, self.max_pixels)
        except UnreadableImageError as error:
            return Skipped(record.path, error.reason)
        height, width = image.shape[:2]
        boxes, labels, clipped, dropped = clean_boxes(record.boxes, record.labels, width, height)
        if clipped or dropped:  # the annotation's size was missing or wrong
            warnings.warn(
                f"{record.path}: {clipped} box(es) clipped and {dropped} dropped to fit the decoded "
                f"{width}x{height} image (annotated size {record.width}x{record.height})",
                stacklevel=2,
            )
        return _sample(image, boxes, labels, self.transform, index)


class SyntheticDetectionDataset(Dataset[DetectionSample]):
    """Scenes of the embedded set (:func:`~visiontransfer.data.synthetic.render_scene`) with their
    boxes: every shape is an object, labels ``1..10``.

    Args:
        scenes: Scene numbers served, in order.
        transform: Albumentations pipeline with bbox parameters.
        image_size: Side the scenes are rendered at.
        seed: Seed of the set.
    """

    def __init__(
        self, scenes: np.ndarray, transform: A.Compose, image_size: int = 320, seed: int = 0
    ) -> None:
        self.scenes = np.asarray(scenes, dtype=np.int64)
        self.transform = transform
        self.image_size = image_size
        self.seed = seed
        self.group_ids = [0] * len(self.scenes)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, key: int | SeededIndex) -> DetectionSample:
        index = reseed(self.transform, key)
        scene = render_scene(int(self.scenes[index]), self.image_size, len(SHAPES), self.seed)
        return _sample(scene.image, scene.boxes, scene.box_labels + 1, self.transform, index)


def collate_detection(samples: list[DetectionSample | Skipped]) -> dict[str, Any]:
    """Batch as lists (images differ in size); list the skipped files in ``batch["skipped"]``.

    Returns:
        ``{"image": [(3, H_i, W_i) uint8], "target": [{"boxes": (N_i, 4) float32, "labels":
        (N_i,) int64}], "index": (B,) int64, "orig_size": (B, 2) int64 (height, width before
        resizing), "skipped": [(path, reason), ...]}``; B may be 0.
    """
    good = [s for s in samples if not isinstance(s, Skipped)]
    return {
        "image": [s["image"] for s in good],
        "target": [{"boxes": s["boxes"], "labels": s["labels"]} for s in good],
        "index": torch.as_tensor([s["index"] for s in good], dtype=torch.int64),
        "orig_size": torch.as_tensor([s["orig_size"] for s in good], dtype=torch.int64).reshape(-1, 2),
        "skipped": [(s.path, s.reason) for s in samples if isinstance(s, Skipped)],
    }


# -- splits -------------------------------------------------------------------------------------
FILENAME_COLUMNS = ("filename", "file_name", "path", "image", "image_path", "file")
"""CSV columns read as image names in a split file, the first present wins."""


def read_split_names(path: str) -> list[str]:
    """Image names listed by a split file: a CSV file (column ``filename``, ``file_name``,
    ``path`` or ``image``; repeated rows, one per box as in the raccoon set, count once) or a text
    file with one name per line (``#`` comments)."""
    names: dict[str, None] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        if path.lower().endswith(".csv"):
            reader = csv.DictReader(handle)
            column = next((c for c in FILENAME_COLUMNS if c in (reader.fieldnames or [])), None)
            if column is None:
                raise AnnotationError(
                    path,
                    1,
                    f"a split CSV needs one of the columns {list(FILENAME_COLUMNS)}; got {reader.fieldnames}",
                )
            for row in reader:
                value = (row.get(column) or "").strip()
                if not value:
                    raise AnnotationError(path, reader.line_num, f"empty {column!r}")
                names[value] = None
        else:
            for line in handle:
                value = line.strip()
                if value and not value.startswith("#"):
                    names[value] = None
    return list(names)


def select_records(records: list[DetectionRecord], split: str, flag: str) -> list[DetectionRecord]:
    """The records a split names: a folder (images under it) or a CSV / text file of names
    (matched on the file name, or on the end of the path for names with folders).

    Raises:
        ValueError: names that match no image, naming ``flag`` and the file.
    """
    if os.path.isdir(split):
        prefix = os.path.join(os.path.abspath(split), "")
        chosen = [r for r in records if os.path.abspath(r.path).startswith(prefix)]
        if not chosen:
            raise ConfigError(f"{flag}={split!r}: no annotated image lies under this folder")
        return chosen
    if not os.path.isfile(split):
        raise MissingPathError(f"{flag}={split!r} is neither a folder nor a CSV / text file of image names")
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        by_name[os.path.basename(record.path)].append(i)
    chosen_idx: list[int] = []
    missing = []
    for name in read_split_names(split):
        clean = name.replace("\\", "/")
        hits = [
            i
            for i in by_name.get(os.path.basename(clean), [])
            if records[i].path.replace("\\", "/").endswith(clean)
        ]
        if not hits:
            missing.append(name)
        chosen_idx.extend(hits)
    if missing:
        raise ConfigError(
            f"{flag}={split!r} names {len(missing)} image(s) with no annotation entry, e.g. {missing[:3]}; "
            "check --data.root / --data.images"
        )
    return [records[i] for i in dict.fromkeys(chosen_idx)]


# -- the datamodule -----------------------------------------------------------------------------
def _first_existing(*candidates: str) -> str | None:
    return next((c for c in candidates if os.path.exists(c)), None)


class DetectionDataModule(_ImageDataModule):
    """Images with boxes for object detection, from Pascal VOC, COCO or YOLO annotations.

    With neither ``root`` nor ``annotations`` it serves the embedded procedural set (10 shape
    classes, every shape boxed), so detection runs with no data. Batches are lists (see
    :func:`collate_detection`): images keep their aspect ratio, the longest side resized to
    ``image_size``. Labels are ``1..num_classes`` (0: background; see the module docstring).

    Args:
        root: Dataset folder. ``voc``: ``annotations/`` (or ``Annotations/``) xml files and
            ``images/`` (or ``JPEGImages/``); ``coco``: ``annotations.json`` (or
            ``_annotations.coco.json``, or the one json file in ``annotations/``) and ``images/``;
            ``yolo``: ``images/`` and ``labels/``, class names in ``classes.txt`` or ``data.yaml``.
        format: Annotation format: ``voc``, ``coco`` or ``yolo``.
        images: Image folder, if not the one found under ``root``.
        annotations: VOC xml folder, COCO json file or YOLO label folder, if not under ``root``.
        train_split: Training images: a CSV file (``filename`` column) or text file listing image
            names, or a folder of images. Relative paths are tried from ``root`` too. Default: all
            but a seeded ``val_fraction``.
        val_split: Validation images, as ``train_split``. Default: the images not in
            ``train_split`` if it is given, else a seeded ``val_fraction``.
        test_split: Test images, as ``train_split``; default: none (``test`` uses the validation set).
        val_fraction: Share of the images held out for validation when no split says otherwise.
        classes: Class names in label order; objects of other classes are ignored. Default: all
            classes of the annotations (VOC: sorted names; COCO: by category id; YOLO: its list).
        image_size: Longest side of the images fed to the model, in pixels.
        batch_size: Images per batch per process.
        augment: Training augmentation preset: ``standard``, ``flip`` or ``none``.
        aspect_ratio_grouping: Batch landscape and portrait training images separately (less padding).
        num_workers: DataLoader worker processes; -1 means one per CPU core, at most 8.
        pin_memory: Pin host memory for faster copies to the GPU (ignored without CUDA).
        persistent_workers: Keep workers alive between epochs.
        seed: Seed of the validation split, of the augmentations and of the embedded set.
        max_pixels: Largest image (width × height) decoded; larger headers are skipped.
        synthetic_size: Number of training images of the embedded set (when no data is given).
    """

    def __init__(
        self,
        root: str | None = None,
        format: AnnotationFormat = "voc",
        images: str | None = None,
        annotations: str | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        val_fraction: float = 0.2,
        classes: list[str] | None = None,
        image_size: int = 320,
        batch_size: int = 4,
        augment: DetectionAugment = "standard",
        aspect_ratio_grouping: bool = True,
        num_workers: int = -1,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        synthetic_size: int = 512,
    ) -> None:
        super().__init__(
            image_size, batch_size, "none", num_workers, pin_memory, persistent_workers,
            seed, max_pixels, synthetic_size,
        )  # fmt: skip
        if format not in ("voc", "coco", "yolo"):
            raise ConfigError(f"--data.format={format!r}: choose one of voc, coco, yolo")
        if not 0 < val_fraction < 1:
            raise ConfigError(f"--data.val_fraction={val_fraction} must be in (0, 1)")
        if classes is not None and len(set(classes)) != len(classes):
            raise ConfigError(f"--data.classes={classes} lists a class twice")
        self.root, self.format, self.images, self.annotations = root, format, images, annotations
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.val_fraction = val_fraction
        self.class_filter = list(classes) if classes is not None else None
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.augment = augment  # type: ignore[assignment]
        self._train_tf = detection_train_transform(image_size, augment)
        self._eval_tf = detection_eval_transform(image_size)
        seed_transform(self._train_tf, seed)
        self._data: DetectionAnnotations | None = None
        self._collate = collate_detection
        self.save_hyperparameters()

    # -- annotations ----------------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """Whether the embedded procedural set is served (no ``root`` nor ``annotations``)."""
        return self.root is None and self.annotations is None

    def _sources(self) -> tuple[str, str]:
        """``(annotations, images)`` locations for the format, from the arguments or ``root``."""
        root = self.root or ""
        if self.root is not None and not os.path.isdir(self.root):
            raise MissingPathError(f"--data.root={self.root!r} does not exist or is not a folder")
        if self.root is None and self.images is None:
            raise ConfigError("--data.annotations without --data.root needs --data.images (the image folder)")
        images = (
            self.images or _first_existing(*(os.path.join(root, d) for d in ("images", "JPEGImages"))) or root
        )
        if self.annotations is not None:
            found: str | None = self.annotations
        elif self.format == "voc":
            found = _first_existing(*(os.path.join(root, d) for d in ("annotations", "Annotations")))
        elif self.format == "coco":
            names = ("annotations.json", "_annotations.coco.json", "instances.json")
            found = _first_existing(*(os.path.join(root, n) for n in names))
            jsons = sorted(Path(root, "annotations").glob("*.json")) if found is None else []
            found = str(jsons[0]) if len(jsons) == 1 else found
        else:
            found = _first_existing(os.path.join(root, "labels")) or ""
        if found is None or (found and not os.path.exists(found)):
            raise MissingPathError(
                f"no {self.format} annotations found for --data.root={self.root!r} "
                f"(--data.format={self.format}); point --data.annotations at them"
            )
        return found, images

    def annotations_data(self) -> DetectionAnnotations:
        """The records and class map of the annotations (read once, cached)."""
        if self._data is None:
            found, images = self._sources()
            if self.format == "voc":
                self._data = read_voc(found, images, self.class_filter)
            elif self.format == "coco":
                self._data = read_coco(found, images, self.class_filter)
            else:
                self._data = read_yolo(images, found or None, self.class_filter)
            if not self._data.records:
                raise ConfigError(f"no images in the {self.format} annotations of --data.root={self.root!r}")
        return self._data

    @property
    def classes(self) -> list[str]:
        """Class names; label ``k`` is ``classes[k - 1]``."""
        return list(SHAPES) if self.embedded else self.annotations_data().classes

    @property
    def num_classes(self) -> int:
        """Number of object classes (the background not counted)."""
        return len(self.classes)

    @property
    def category_ids(self) -> list[int]:
        """Id written for each label in COCO-format detections (the COCO file's own ids)."""
        return list(range(1, len(SHAPES) + 1)) if self.embedded else self.annotations_data().category_ids

    # -- datasets -------------------------------------------------------------------------------
    def _split_path(self, split: str) -> str:
        if os.path.exists(split) or self.root is None:
            return split
        return os.path.join(self.root, split)

    def _splits(self, records: list[DetectionRecord]) -> dict[str, list[DetectionRecord]]:
        """Train / val (/ test) records from the split arguments or a seeded ``val_fraction``."""
        pick = {
            name: select_records(records, self._split_path(split), f"--data.{name}_split")
            for name, split in (
                ("train", self.train_split),
                ("val", self.val_split),
                ("test", self.test_split),
            )
            if split is not None
        }
        if "train" in pick and "val" not in pick:
            taken = {id(r) for r in pick["train"]} | {id(r) for r in pick.get("test", [])}
            rest = [r for r in records if id(r) not in taken]
            if rest:
                pick["val"] = rest
        if "val" not in pick:
            pool = pick.get("train") or [
                r for r in records if id(r) not in {id(t) for t in pick.get("test", [])}
            ]
            order = np.random.default_rng(self.seed).permutation(len(pool))
            n_val = max(1, round(self.val_fraction * len(pool)))
            pick["val"], pick["train"] = [pool[i] for i in order[:n_val]], [pool[i] for i in order[n_val:]]
        pick.setdefault("train", [r for r in records if id(r) not in {id(v) for v in pick["val"]}])
        if not pick["train"]:
            raise ConfigError("no training images left after the validation / test splits")
        return pick

    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        if self.embedded:
            self._setup_synthetic()
            return
        splits = self._splits(self.annotations_data().records)
        where = f"--data.root={self.root!r}" if self.root else f"--data.annotations={self.annotations!r}"
        probe_readable(PathTable("", [r.path for r in splits["train"]]), where, self.max_pixels)
        for name, records in splits.items():
            self.datasets[name] = DetectionDataset(
                records, self._train_tf if name == "train" else self._eval_tf, self.max_pixels
            )
        self.datasets.setdefault("test", self.datasets["val"])
        self.datasets["predict"] = self.datasets["test"]

    def _setup_synthetic(self) -> None:
        n = self.synthetic_size
        n_val = max(16, int(n * self.val_fraction))
        size = self.image_size
        self.datasets["train"] = SyntheticDetectionDataset(np.arange(n), self._train_tf, size, self.seed)
        self.datasets["val"] = SyntheticDetectionDataset(
            np.arange(n, n + n_val), self._eval_tf, size, self.seed
        )
        test = np.arange(n + n_val, n + 2 * n_val)
        self.datasets["test"] = SyntheticDetectionDataset(test, self._eval_tf, size, self.seed)
        self.datasets["predict"] = self.datasets["test"]

    def _group_ids(self, dataset: Dataset[Any]) -> list[int] | None:
        """Landscape / portrait group of each training image when ``aspect_ratio_grouping``."""
        if not self.aspect_ratio_grouping:
            return None
        return list(getattr(dataset, "group_ids", [])) or None

    def record(self, split: str, index: int) -> DetectionRecord | None:
        """The record of item ``index`` of a split (None for the embedded set)."""
        records = getattr(self.datasets.get(split), "records", None)
        return records[index] if records is not None else None
