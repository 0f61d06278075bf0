"""Fixtures of the data-layer tests: a generated zoo of odd-but-valid and broken image files."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BOMB_SIDE = 100_000
"""Side of the decompression bomb: its header claims 100000 x 100000 = 10^10 pixels."""


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC-32 of type + data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def greyscale_png(width: int, height: int, scanlines: bytes = b"\x00\x00") -> bytes:
    """A hand-made 8-bit greyscale PNG whose header claims ``width`` x ``height`` whatever the
    (tiny, by default) pixel data holds."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # depth 8, greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(scanlines))
        + png_chunk(b"IEND", b"")
    )


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@dataclass(frozen=True)
class ValidImage:
    """A decodable file and the ``(H, W, 3) uint8`` array ``load_rgb`` must give (within ``atol``)."""

    path: Path
    expected: np.ndarray
    atol: int


@dataclass(frozen=True)
class BrokenImage:
    """An undecodable file and a regex its ``UnreadableImageError.reason`` must match."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ImageZoo:
    valid: dict[str, ValidImage]
    broken: dict[str, BrokenImage]


def _grey3(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[:, :, None], 3, axis=2).astype(np.uint8)


def _quadrants(height: int, width: int) -> np.ndarray:
    """Flat red, green, blue and white quadrants (clockwise from top-left): no symmetry."""
    image = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w] = (255, 0, 0)
    image[:h, w:] = (0, 255, 0)
    image[h:, w:] = (0, 0, 255)
    image[h:, :w] = (255, 255, 255)
    return image


def _write_valid(folder: Path) -> dict[str, ValidImage]:
    rng = np.random.default_rng(0)
    valid: dict[str, ValidImage] = {}

    def add(name: str, data: bytes, expected: np.ndarray, atol: int = 0) -> None:
        path = folder / name
        path.write_bytes(data)
        valid[name] = ValidImage(path, expected, atol)

    grey = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    add("grey_L.png", encode(Image.fromarray(grey, "L"), "PNG"), _grey3(grey))

    bits = rng.random((5, 9)) > 0.5
    add("bilevel_1.png", encode(Image.fromarray(bits), "PNG"), _grey3(bits * 255))

    palette = np.array([[10, 20, 30], [200, 10, 30], [0, 250, 0], [40, 40, 240]], np.uint8)
    indices = rng.integers(0, 4, (5, 6), dtype=np.uint8)
    paletted = Image.fromarray(indices, "P")
    paletted.putpalette(palette.ravel().tolist())
    add("palette_P.png", encode(paletted, "PNG"), palette[indices])
    add("palette_P_transparent.png", encode(paletted, "PNG", transparency=0), palette[indices])
    add("palette_P_transparent.gif", encode(paletted, "GIF", transparency=0), palette[indices])

    rgba = rng.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    add("rgba.png", encode(Image.fromarray(rgba, "RGBA"), "PNG"), rgba[:, :, :3])

    la = rng.integers(0, 256, (4, 6, 2), dtype=np.uint8)
    add("grey_alpha_LA.png", encode(Image.fromarray(la, "LA"), "PNG"), _grey3(la[:, :, 0]))

    cyan_magenta = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    red = np.zeros((8, 16, 3), np.uint8)
    red[:, :, 0] = 255
    add("cmyk.jpg", encode(cyan_magenta, "JPEG", quality=95), red, atol=8)

    # 16-bit greyscale: the full 0..65535 range maps onto 0..255.
    deep = np.array([[0, 257, 32768, 65535], [65535, 32768, 257, 0]], np.uint16)
    scaled = _grey3(np.round(deep / 257.0))
    add("grey16.png", encode(Image.fromarray(deep), "PNG"), scaled)
    add("grey16.tif", encode(Image.fromarray(deep), "TIFF"), scaled)

    frames = [Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    add("animated.gif", animated.getvalue(), np.asarray(frames[0]))

    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    add("lossless.webp", encode(Image.fromarray(rgb), "WEBP", lossless=True), rgb)
    add("image.bmp", encode(Image.fromarray(rgb), "BMP"), rgb)
    add("image.tiff", encode(Image.fromarray(rgb), "TIFF"), rgb)
    add(
        "flat.jpg",
        encode(Image.fromarray(_quadrants(16, 16)), "JPEG", quality=95, subsampling=0),
        _quadrants(16, 16),
        8,
    )

    # EXIF orientation 6 (turn 90° clockwise to display) and 8 (counter-clockwise): the stored
    # pixels, turned, with height and width swapped.
    for orientation, turns in ((6, -1), (8, 1)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = encode(Image.fromarray(_quadrants(16, 32)), "JPEG", quality=95, exif=exif)
        with Image.open(io.BytesIO(data)) as stored:
            raw = np.asarray(stored.convert("RGB"))  # Pillow does not apply EXIF on its own
        add(f"exif_orientation_{orientation}.jpg", data, np.rot90(raw, turns))
    return valid


def _write_broken(folder: Path) -> dict[str, BrokenImage]:
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    jpeg, png = encode(noise, "JPEG", quality=90), encode(noise, "PNG")
    files = {
        "empty.jpg": (b"", r"empty file \(0 bytes\)"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], r"corrupt or truncated .*truncated"),
        "truncated.png": (png[: len(png) // 2], r"corrupt or truncated"),
        "corrupt.jpg": (rng.bytes(1500), r"not an image PIL can identify"),
        "corrupt_after_jpeg_magic.jpg": (b"\xff\xd8\xff\xe0" + rng.bytes(1500), r"not an image|corrupt"),
        "text_named.png": (b"these are notes, not pixels\n" * 20, r"not an image PIL can identify"),
        "bomb.png": (
            greyscale_png(BOMB_SIDE, BOMB_SIDE),
            r"decompression bomb.*raise --data\.max_pixels",
        ),
    }
    broken = {}
    for name, (data, reason) in files.items():
        (folder / name).write_bytes(data)
        broken[name] = BrokenImage(folder / name, reason)
    return broken


@pytest.fixture(scope="session")
def make_greyscale_png() -> Callable[..., bytes]:
    """:func:`greyscale_png`: PNG bytes whose header claims any size."""
    return greyscale_png


@pytest.fixture(scope="session")
def image_zoo(tmp_path_factory: pytest.TempPathFactory) -> ImageZoo:
    """Odd-but-valid images in ``valid/`` and broken ones in ``broken/``, written once a session."""
    root = tmp_path_factory.mktemp("image_zoo")
    (root / "valid").mkdir()
    (root / "broken").mkdir()
    return ImageZoo(valid=_write_valid(root / "valid"), broken=_write_broken(root / "broken"))


LINKS = {
    "loop": "unresolvable symbolic link",  # ln -s loop loop
    "loop.jpg": "unresolvable symbolic link",
    "dangling.jpg": "dangling symbolic link",
    "sub/up": "already walked",  # a link to an ancestor folder
    "sub/again.png": "the same file as",  # a second path to a file of the tree
}
"""Symbolic links an image folder may hold, and the reason indexing gives for leaving each out."""


@pytest.fixture(scope="session")
def link_reasons() -> dict[str, str]:
    """:data:`LINKS`: each link of :func:`odd_folder` and the reason indexing leaves it out."""
    return dict(LINKS)


@pytest.fixture(scope="session")
def odd_folder(image_zoo: ImageZoo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder as users have them: the zoo's valid and broken images, and the links of
    :data:`LINKS` (loops, dangling, to an ancestor, a second path to a file)."""
    root = tmp_path_factory.mktemp("odd_folder")
    for kind in ("valid", "broken"):
        for name, case in getattr(image_zoo, kind).items():
            (root / kind).mkdir(exist_ok=True)
            (root / kind / name).write_bytes(case.path.read_bytes())
    (root / "sub").mkdir()
    os.symlink("loop", root / "loop")
    os.symlink("loop.jpg", root / "loop.jpg")
    os.symlink(root / "missing.jpg", root / "dangling.jpg")
    os.symlink(root, root / "sub" / "up")
    first_valid = sorted((root / "valid").glob("*.png"))[0]
    os.symlink(first_valid, root / "sub" / "again.png")
    return root
