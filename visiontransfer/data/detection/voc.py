"""Pascal VOC reader: one xml file per image, errors naming the file and line."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from xml.parsers import expat

from visiontransfer.data.decode import has_image_extension
from visiontransfer.data.detection.records import (
    AnnotationError,
    BoxReport,
    DetectionAnnotations,
    _Entry,
    _finish,
)


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
