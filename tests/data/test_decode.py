"""load_rgb: real photos, every odd-but-valid format and mode, and every kind of broken file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiontransfer.data.decode import UnreadableImageError, has_image_extension, load_rgb

GREYSCALE_RACCOONS = ("raccoon-150.jpg", "raccoon-152.jpg", "raccoon-161.jpg")
VALID = (
    "grey_L.png",
    "bilevel_1.png",
    "palette_P.png",
    "palette_P_transparent.png",
    "palette_P_transparent.gif",
    "rgba.png",
    "grey_alpha_LA.png",
    "cmyk.jpg",
    "grey16.png",
    "grey16.tif",
    "animated.gif",
    "lossless.webp",
    "image.bmp",
    "image.tiff",
    "flat.jpg",
    "exif_orientation_6.jpg",
    "exif_orientation_8.jpg",
)
BROKEN = (
    "empty.jpg",
    "truncated.jpg",
    "truncated.png",
    "corrupt.jpg",
    "corrupt_after_jpeg_magic.jpg",
    "text_named.png",
    "bomb.png",
)


def test_zoo_lists_every_case(image_zoo):
    assert set(image_zoo.valid) == set(VALID)
    assert set(image_zoo.broken) == set(BROKEN)


def test_cifar_jpegs_decode_to_rgb(cifar10_dir: Path):
    for path in sorted((cifar10_dir / "test" / "ship").glob("*.jpg"))[:3]:
        image = load_rgb(path)
        assert image.shape == (32, 32, 3)
        assert image.dtype == np.uint8
        assert image.std() > 5  # a photo, not a blank
        with Image.open(path) as reference:
            np.testing.assert_array_equal(image, np.asarray(reference.convert("RGB")))


@pytest.mark.parametrize("name", GREYSCALE_RACCOONS)
def test_greyscale_photos_become_three_equal_channels(raccoon_dir: Path, name: str):
    with Image.open(raccoon_dir / name) as reference:
        assert reference.mode == "L"
        grey = np.asarray(reference)
    image = load_rgb(raccoon_dir / name)
    assert image.shape == (*grey.shape, 3)
    assert image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], grey)


def test_colour_photo_keeps_its_colours(raccoon_dir: Path):
    path = raccoon_dir / "raccoon-1.jpg"
    image = load_rgb(path)
    with Image.open(path) as reference:
        assert image.shape == (reference.height, reference.width, 3)
    assert not np.array_equal(image[:, :, 0], image[:, :, 2])


@pytest.mark.parametrize("name", VALID)
def test_odd_but_valid_images_decode(image_zoo, name: str):
    case = image_zoo.valid[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray PIL warning either
        image = load_rgb(case.path)
    assert image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3
    assert image.shape == case.expected.shape
    difference = np.abs(image.astype(int) - case.expected.astype(int))
    assert difference.max() <= case.atol, f"{name}: off by up to {difference.max()}"


def test_sixteen_bit_greyscale_scales_full_range(image_zoo):
    image = load_rgb(image_zoo.valid["grey16.png"].path)
    with Image.open(image_zoo.valid["grey16.png"].path) as source:
        assert source.mode.startswith("I;16")
    np.testing.assert_array_equal(image[0, :, 0], [0, 1, 128, 255])  # 0, 257, 32768, 65535
    np.testing.assert_array_equal(image[1, :, 1], [255, 128, 1, 0])


def test_dark_sixteen_bit_image_is_not_taken_for_eight_bit(tmp_path: Path):
    path = tmp_path / "dark16.png"
    Image.fromarray(np.full((2, 3), 200, np.uint16)).save(path)
    assert load_rgb(path).max() == 1  # 200 / 65535 of full scale, not 200 / 255


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1)])
def test_exif_orientation_is_applied(image_zoo, orientation: int, turns: int):
    path = image_zoo.valid[f"exif_orientation_{orientation}.jpg"].path
    with Image.open(path) as stored:
        assert stored.getexif()[0x0112] == orientation
        raw = np.asarray(stored.convert("RGB"))
    image = load_rgb(path)
    assert raw.shape == (16, 32, 3)
    assert image.shape == (32, 16, 3)  # height and width swapped
    np.testing.assert_array_equal(image, np.rot90(raw, turns))
    # The red top-left quadrant ends up top-right (clockwise) or bottom-left (counter-clockwise).
    corner = image[2, -3] if orientation == 6 else image[-3, 2]
    np.testing.assert_allclose(corner, (255, 0, 0), atol=8)


def test_animated_gif_gives_first_frame(image_zoo):
    path = image_zoo.valid["animated.gif"].path
    with Image.open(path) as gif:
        assert gif.n_frames == 2
    image = load_rgb(path)
    assert (image == (255, 0, 0)).all()


def test_palette_with_transparency_keeps_colours(image_zoo):
    path = image_zoo.valid["palette_P_transparent.png"].path
    with Image.open(path) as source:
        assert source.mode == "P" and "transparency" in source.info
    np.testing.assert_array_equal(load_rgb(path), image_zoo.valid["palette_P.png"].expected)


@pytest.mark.parametrize("name", BROKEN)
def test_broken_files_raise_unreadable_with_reason(image_zoo, name: str):
    case = image_zoo.broken[name]
    with pytest.raises(UnreadableImageError, match=case.reason) as caught:
        load_rgb(case.path)
    assert caught.value.path == str(case.path)
    assert str(case.path) in str(caught.value)
    assert caught.value.reason and caught.value.reason in str(caught.value)


def test_missing_file_is_unreadable(tmp_path: Path):
    with pytest.raises(UnreadableImageError, match="file not found"):
        load_rgb(tmp_path / "nope.jpg")


def test_bomb_is_refused_from_the_header_alone(image_zoo):
    path = image_zoo.broken["bomb.png"].path
    assert path.stat().st_size < 200  # nothing to decode: refused before any pixel is read
    with pytest.raises(UnreadableImageError, match=r"10,000,000,000|10000000000"):
        load_rgb(path)


def test_max_pixels_refuses_larger_images_and_names_the_flag(image_zoo):
    path = image_zoo.valid["image.bmp"].path  # 9 x 7
    assert load_rgb(path, max_pixels=63).shape == (7, 9, 3)
    with pytest.raises(
        UnreadableImageError, match=r"9x7 = 63 pixels, over max_pixels=62.*--data\.max_pixels"
    ):
        load_rgb(path, max_pixels=62)


def test_max_pixels_above_pillows_own_limit_is_honoured(monkeypatch, make_greyscale_png, tmp_path: Path):
    # Pillow refuses images over Image.MAX_IMAGE_PIXELS (~89 M) in Image.open, below the 100 M
    # default max_pixels: raising --data.max_pixels must let such images through.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    path = tmp_path / "big.png"
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(path)  # 1,600 px: over Pillow's 1,000
    assert load_rgb(path, max_pixels=10_000).shape == (40, 40, 3)
    huge = tmp_path / "huge.png"
    huge.write_bytes(make_greyscale_png(400, 400))  # 160,000 px: over 2 x Pillow's limit too
    with pytest.raises(UnreadableImageError, match=r"decompression bomb.*--data\.max_pixels"):
        load_rgb(huge, max_pixels=10_000)
    assert load_rgb(path, max_pixels=1_000_000).shape == (40, 40, 3)


def test_header_larger_than_data_is_truncated_not_bomb(make_greyscale_png, tmp_path: Path):
    path = tmp_path / "short.png"
    path.write_bytes(make_greyscale_png(300, 200))
    with pytest.raises(UnreadableImageError, match="corrupt or truncated"):
        load_rgb(path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True),
        ("A.JPG", True),
        ("b.Png", True),
        ("c.JPEG", True),
        ("d.webp", True),
        ("e.TIF", True),
        ("f.gif", True),
        ("g.bmp", True),
        ("notes.txt", False),
        ("archive.jpg.zip", False),
        ("noext", False),
        (Path("dir/x.tiff"), True),
    ],
)
def test_has_image_extension(name, expected: bool):
    assert has_image_extension(name) is expected
