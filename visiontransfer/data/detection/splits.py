"""Train / val / test splits of detection records: a folder of images, or a CSV / text file of
image names."""

from __future__ import annotations

import csv
import os
from collections import defaultdict

from visiontransfer.data.decode import has_image_extension
from visiontransfer.data.detection.records import AnnotationError, DetectionRecord
from visiontransfer.errors import ConfigError, MissingPathError

# -- splits -------------------------------------------------------------------------------------
FILENAME_COLUMNS = ("filename", "file_name", "path", "image", "image_path", "file")
"""CSV columns read as image names in a split file, the first present wins."""


def read_split_names(path: str) -> list[str]:
    """Image names listed by a split file: a CSV file (column ``filename``, ``file_name``,
    ``path`` or ``image``; repeated rows, one per box as in the raccoon set, count once) or a text
    file with one name per line (``#`` comments). Pascal VOC's ``ImageSets/Main/*.txt`` lists image
    ids without extension, and its per-class files add a flag (``2008_000008 -1``): the first word
    of a line is the name, and a line flagged ``-1`` (the class is absent) is left out."""
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
                words = line.split()
                if words and not words[0].startswith("#") and words[1:2] != ["-1"]:
                    names[words[0]] = None
    return list(names)


def select_records(records: list[DetectionRecord], split: str, flag: str) -> list[DetectionRecord]:
    """The records a split names: a folder (images under it) or a CSV / text file of names
    (matched on the file name, or on the end of the path for names with folders; a name without
    an image extension, as VOC's image ids, matches the image file's name without its extension).

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
    by_stem: dict[str, list[int]] = defaultdict(list)  # file name without extension
    for i, record in enumerate(records):
        by_name[os.path.basename(record.path)].append(i)
        by_stem[os.path.splitext(os.path.basename(record.path))[0]].append(i)
    chosen_idx: list[int] = []
    missing = []
    for name in read_split_names(split):
        clean = name.replace("\\", "/")
        if has_image_extension(clean):
            candidates = by_name.get(os.path.basename(clean), [])
            hits = [i for i in candidates if records[i].path.replace("\\", "/").endswith(clean)]
        else:  # an image id: the file name without its extension
            candidates = by_stem.get(os.path.basename(clean), [])
            hits = [
                i
                for i in candidates
                if os.path.splitext(records[i].path.replace("\\", "/"))[0].endswith(clean)
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
