"""Decode one image file from disk into an RGB ``uint8`` array, or say exactly why it can't be.

Every reader in visiontransfer goes through :func:`load_rgb`, so every image, whatever its format
or mode, reaches the augmentations as ``(H, W, 3) uint8`` RGB with its EXIF orientation applied.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
"""File endings read as images (compared lower-case)."""

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest image (width × height) decoded by default; a bigger header is treated as a
decompression bomb and the file is skipped. Raise it with ``--data.max_pixels``."""


def _allow_pixels(max_pixels: int) -> None:
    """Make Pillow's own bomb limit, checked in ``Image.open`` before ours, no stricter than ours.

    Pillow refuses images above ``Image.MAX_IMAGE_PIXELS`` (about 89 M pixels, below the 100 M
    default of ``max_pixels``); without this, ``--data.max_pixels`` could never let them through.
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


class UnreadableImageError(Exception):
    """An image file could not be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an ``(H, W, 3) uint8`` RGB array."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit greyscale: scale the full range of the type to 0..255.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if mode == "F":
            top = max(float(array.max(initial=1.0)), 1.0)
        grey = np.clip(array * (255.0 / top), 0, 255).round().astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def load_rgb(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to RGB.

    EXIF orientation is applied; greyscale, palette, RGBA, CMYK and 16-bit images are converted to
    RGB; an animated GIF gives its first frame.

    Args:
        path: The image file.
        max_pixels: Largest width × height to decode; a larger header is refused before any pixel
            is read (decompression bomb).

    Returns:
        ``(H, W, 3) uint8`` array.

    Raises:
        UnreadableImageError: the file is empty, truncated, corrupt, not an image, or too large.
    """
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImageError(path, "empty file (0 bytes)")
    except FileNotFoundError as error:
        raise UnreadableImageError(path, "file not found") from error
    return decode_rgb(path, path, max_pixels)


def decode_rgb(
    source: str | os.PathLike[str] | BinaryIO,
    where: str | os.PathLike[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """:func:`load_rgb` for a path or an open binary stream (e.g. a member of a tar shard);
    errors name ``where``."""
    path = where
    try:
        _allow_pixels(max_pixels)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise UnreadableImageError(
                        path,
                        f"header claims {width}x{height} = {width * height:,} pixels, over "
                        f"max_pixels={max_pixels:,} (decompression bomb?); raise --data.max_pixels "
                        "if the file is genuine",
                    )
                image.seek(0)
                image.load()
                upright: Image.Image = ImageOps.exif_transpose(image) or image
                array = _to_rgb(upright)
    except UnreadableImageError:
        raise
    except FileNotFoundError as error:
        raise UnreadableImageError(path, "file not found") from error
    except UnidentifiedImageError as error:
        raise UnreadableImageError(path, "not an image PIL can identify") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnreadableImageError(
            path, f"decompression bomb: {error}; raise --data.max_pixels if the file is genuine"
        ) from error
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as error:
        raise UnreadableImageError(path, f"corrupt or truncated ({type(error).__name__}: {error})") from error
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise UnreadableImageError(path, f"decoded to an empty array of shape {array.shape}")
    return array


def has_image_extension(name: str | Path) -> bool:
    """Whether a file name ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(str(name))[1].lower() in IMAGE_EXTENSIONS
