"""COCO reader: one ``instances`` json file, errors naming the file and the line of the object."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visiontransfer.data.detection.records import (
    AnnotationError,
    BoxReport,
    DetectionAnnotations,
    _Entry,
    _finish,
)


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
