"""Segmentation readers: image / mask pairs from paired folders, Pascal VOC or a CSV manifest, class
names, and the mask decoder.

A mask is a single-channel image of class indices, the same size as its image: 8-bit greyscale
(mode ``L``, as CamVid's), a palette PNG (mode ``P``, as VOC's ``SegmentationClass``: the palette
index is the class) or 16-bit greyscale for more than 256 classes. Colour-coded RGB masks are
refused with a reason: they need a colour-to-class table, which is not guessed.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visiontransfer.data.classification import _find_split
from visiontransfer.data.decode import DEFAULT_MAX_PIXELS, UnreadableImageError
from visiontransfer.data.detection.splits import read_split_names
from visiontransfer.data.index import PathTable, scan_images
from visiontransfer.errors import ConfigError, MissingPathError

SPLITS = ("train", "val", "test")
IMAGE_DIRS = ("images", "JPEGImages")
"""Image folders of a dataset root: paired folders (``images``) and Pascal VOC (``JPEGImages``)."""
MASK_DIRS = ("masks", "labels", "annotations", "SegmentationClass")
"""Mask folders beside them, the first present wins."""
CLASSES_FILE = "classes.txt"
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
"""Pascal VOC's 21 segmentation classes in label order (0 is the background, 255 the void border)."""
MANIFEST_COLUMNS = ("image", "mask")


@dataclass(frozen=True)
class MaskedImages:
    """Image files and their mask files, position by position.

    Attributes:
        images: The image files.
        masks: The mask file of each image.
    """

    images: PathTable
    masks: PathTable

    def __len__(self) -> int:
        return len(self.images)

    def take(self, positions: Iterable[int]) -> MaskedImages:
        """The pairs at ``positions``, in that order."""
        chosen = [int(i) for i in positions]
        return MaskedImages(
            PathTable("", [self.images[i] for i in chosen]), PathTable("", [self.masks[i] for i in chosen])
        )

    @classmethod
    def of(cls, pairs: list[tuple[str, str]]) -> MaskedImages:
        return cls(PathTable("", [p[0] for p in pairs]), PathTable("", [p[1] for p in pairs]))


@dataclass
class SegmentationFiles:
    """What a reader found: the pairs of each split it knows, and the images it had to leave out.

    Attributes:
        splits: ``train`` (always), and ``val`` / ``test`` when the layout names them.
        unpaired: ``(image path, reason)`` of the images without a mask.
        where: The flag and path they came from, for messages.
    """

    splits: dict[str, MaskedImages]
    unpaired: list[tuple[str, str]] = field(default_factory=list)
    where: str = ""


# -- masks -----------------------------------------------------------------------------------------
def load_mask(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a mask file to its class indices ``(H, W)``: ``uint8`` (modes ``L``, ``P``, ``1``) or
    ``uint16`` (16-bit greyscale); EXIF orientation applied, as for images.

    Raises:
        UnreadableImageError: missing, empty, corrupt, too large, or not a single-channel mask.
    """
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImageError(path, "empty mask file (0 bytes)")
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UnreadableImageError(
                    path, f"mask header claims {width}x{height} pixels, over max_pixels={max_pixels:,}"
                )
            image.load()
            upright: Image.Image = ImageOps.exif_transpose(image) or image
            mode = upright.mode
            if mode in ("L", "P", "1"):
                return np.asarray(upright, dtype=np.uint8)
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                values = np.asarray(upright, dtype=np.int64)
                if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
                    raise UnreadableImageError(path, "mask values outside 0..65535")
                return values.astype(np.uint16)
    except UnreadableImageError:
        raise
    except FileNotFoundError:
        raise UnreadableImageError(path, "mask file not found") from None
    except UnidentifiedImageError:
        raise UnreadableImageError(path, "not an image PIL can identify") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(
            path, f"corrupt or truncated mask ({type(error).__name__}: {error})"
        ) from None
    raise UnreadableImageError(
        path,
        f"a {mode} mask: masks hold one class index per pixel (8-bit greyscale L, palette P or 16-bit); "
        "convert colour-coded masks to class indices first",
    )


# -- class names -----------------------------------------------------------------------------------
def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names in label order, one per line (blank lines and ``#`` comments skipped).

    Raises:
        ConfigError: an empty file, or a name given twice, naming the file.
    """
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ConfigError(f"{os.fspath(path)!r} lists no class names")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{os.fspath(path)!r} lists classes more than once: {twice[:5]}")
    return names


# -- pairing ---------------------------------------------------------------------------------------
def _by_stem(folder: str) -> dict[str, str]:
    """Files under ``folder`` keyed by their path relative to it, without extension (``.png`` wins)."""
    found: dict[str, str] = {}
    for rel in scan_images(folder):
        stem, ext = os.path.splitext(rel)
        if stem not in found or ext.lower() == ".png":
            found[stem] = os.path.join(folder, rel)
    return found


def pair_folders(image_dir: str, mask_dir: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Each image under ``image_dir`` with the mask of the same relative path and stem under
    ``mask_dir`` (any image extension; ``x.jpg`` pairs with ``x.png``).

    Returns:
        ``(pairs, unpaired)``: ``(image, mask)`` paths, and ``(image, reason)`` for images without mask.
    """
    masks = _by_stem(mask_dir) if os.path.isdir(mask_dir) else {}
    pairs, unpaired = [], []
    for rel in scan_images(image_dir):
        image = os.path.join(image_dir, rel)
        mask = masks.get(os.path.splitext(rel)[0])
        if mask is None:
            unpaired.append((image, f"no mask for it in {mask_dir}"))
        else:
            pairs.append((image, mask))
    return pairs, unpaired


def _first_dir(root: str, names: Iterable[str]) -> str | None:
    return next((os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))), None)


def is_voc_root(root: str) -> bool:
    """Whether ``root`` is laid out as Pascal VOC (``JPEGImages`` and ``SegmentationClass``)."""
    return os.path.isdir(os.path.join(root, "JPEGImages")) and os.path.isdir(
        os.path.join(root, "SegmentationClass")
    )


def _split_dirs(images: str) -> dict[str, str]:
    """The split folders of an image folder (``train``, ``val`` / ``valid``, ``test``), or the
    folder itself as the training set when it has none."""
    return {s: d for s in SPLITS if (d := _find_split(images, s)) is not None} or {"train": images}


def _voc_lists(root: str) -> dict[str, str]:
    """``ImageSets/Segmentation/<split>.txt`` of a VOC root, per split found."""
    lists = os.path.join(root, "ImageSets", "Segmentation")
    return {s: path for s in SPLITS if os.path.isfile(path := os.path.join(lists, f"{s}.txt"))}


def segmentation_splits(root: str) -> list[str]:
    """The splits the segmentation layout of ``root`` names, from its folders and lists alone (no
    file is read): ``[]`` when it is no segmentation layout."""
    if is_voc_root(root):
        return list(_voc_lists(root)) or ["train"]
    images, masks = _first_dir(root, IMAGE_DIRS), _first_dir(root, MASK_DIRS)
    return [] if images is None or masks is None else list(_split_dirs(images))


def read_paired_folders(root: str) -> SegmentationFiles:
    """``root/images/<split>/x.jpg`` with ``root/masks/<split>/x.png`` (splits ``train``, ``val`` /
    ``valid``, ``test``), or ``root/images/x.jpg`` with ``root/masks/x.png`` (one training set).

    Raises:
        MissingPathError: no image or mask folder, naming ``--data.root``.
    """
    where = f"--data.root={root!r}"
    images, masks = _first_dir(root, IMAGE_DIRS), _first_dir(root, MASK_DIRS)
    if images is None or masks is None:
        raise MissingPathError(
            f"{where} has no {'images/' if images is None else 'masks/'} folder: a segmentation set is "
            "root/images/<split>/x.jpg with root/masks/<split>/x.png, Pascal VOC (JPEGImages/, "
            "SegmentationClass/) or a CSV manifest (--data.manifest) with image and mask columns"
        )
    found = SegmentationFiles({}, where=where)
    for split, image_dir in _split_dirs(images).items():
        mask_dir = os.path.join(masks, os.path.relpath(image_dir, images))
        pairs, unpaired = pair_folders(image_dir, mask_dir)
        found.unpaired += unpaired
        if pairs:
            found.splits[split] = MaskedImages.of(pairs)
    return found


def read_voc(root: str) -> SegmentationFiles:
    """Pascal VOC: ``JPEGImages/``, ``SegmentationClass/`` (palette PNGs) and the image lists
    ``ImageSets/Segmentation/{train,val,test}.txt``; without lists, every mask is a training image."""
    where = f"--data.root={root!r}"
    image_dir, mask_dir = os.path.join(root, "JPEGImages"), os.path.join(root, "SegmentationClass")
    images = _by_stem(image_dir)
    masks = _by_stem(mask_dir)
    found = SegmentationFiles({}, where=where)
    named = _voc_lists(root)
    if not named:
        pairs = [(images[stem], mask) for stem, mask in masks.items() if stem in images]
        found.unpaired = [
            (mask, f"no image for this mask in {image_dir}") for s, mask in masks.items() if s not in images
        ]
        if pairs:
            found.splits["train"] = MaskedImages.of(pairs)
        return found
    for split, listing in named.items():
        pairs = []
        for name in read_split_names(listing):
            stem = os.path.splitext(name)[0]
            if stem not in images:
                found.unpaired.append((os.path.join(image_dir, name), f"listed in {listing} but not found"))
            elif stem not in masks:
                found.unpaired.append((images[stem], f"no mask for it in {mask_dir}"))
            else:
                pairs.append((images[stem], masks[stem]))
        if pairs:
            found.splits[split] = MaskedImages.of(pairs)
    return found


def read_segmentation_manifest(path: str) -> SegmentationFiles:
    """A CSV file with ``image`` and ``mask`` columns (paths relative to its folder) and optionally a
    ``split`` column (``train``, ``val``, ``test``; empty: ``train``). A row with an empty mask is an
    image without mask (skipped and counted).

    Raises:
        ConfigError: a missing column or an unknown split, naming the file and line.
    """
    where = f"--data.manifest={path!r}"
    base = Path(path).parent
    found = SegmentationFiles({}, where=where)
    pairs: dict[str, list[tuple[str, str]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if not all(c in fields for c in MANIFEST_COLUMNS):
            raise ConfigError(
                f"{path}:1: a segmentation manifest needs 'image' and 'mask' columns, got {fields}"
            )
        for row in reader:
            image, mask = (row.get("image") or "").strip(), (row.get("mask") or "").strip()
            split = (row.get("split") or "").strip() or "train"
            if not image:
                raise ConfigError(f"{path}:{reader.line_num}: empty 'image'")
            if split not in SPLITS:
                raise ConfigError(
                    f"{path}:{reader.line_num}: split {split!r} is not one of {', '.join(SPLITS)}"
                )
            if not mask:
                found.unpaired.append((str(base / image), f"no mask in {path}:{reader.line_num}"))
                continue
            pairs.setdefault(split, []).append((str(base / image), str(base / mask)))
    found.splits = {split: MaskedImages.of(p) for split, p in pairs.items()}
    return found
