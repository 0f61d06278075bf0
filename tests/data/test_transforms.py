"""Augmentation presets: output sizes, dtype, seeding and errors naming the flag."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from visiontransfer.data.transforms import eval_transform, seed_transform, train_transform

SHAPES = [(32, 32), (40, 50), (50, 40), (300, 400), (12, 20)]


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for shape in SHAPES]


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("augment", ["crop_flip", "flip", "none", "eval"])
def test_output_size_and_dtype(images: list[np.ndarray], size: int, augment: Any):
    pipeline = eval_transform(size) if augment == "eval" else train_transform(size, augment)
    for image in images:
        out = pipeline(image=image)["image"]
        assert out.shape == (size, size, 3), (augment, image.shape)
        assert out.dtype == np.uint8


def test_eval_is_deterministic_centre_crop(images: list[np.ndarray]):
    image = images[3]  # 300 x 400
    out = eval_transform(224)(image=image)["image"]
    np.testing.assert_array_equal(out, eval_transform(224)(image=image)["image"])
    same = images[0]  # 32 x 32 at size 32: untouched
    np.testing.assert_array_equal(eval_transform(32)(image=same)["image"], same)


def test_seeded_pipelines_repeat_and_seeds_differ(images: list[np.ndarray]):
    def stream(seed: int) -> list[np.ndarray]:
        pipeline = train_transform(32)
        seed_transform(pipeline, seed)
        return [pipeline(image=images[1])["image"] for _ in range(6)]

    first, again, other = stream(1), stream(1), stream(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert len({a.tobytes() for a in first}) > 1  # the stream moves on between calls


def test_invalid_augment_names_the_flag():
    with pytest.raises(ValueError, match=r"--data\.augment='jitter'.*crop_flip, flip, none"):
        train_transform(32, "jitter")  # type: ignore[arg-type]


@pytest.mark.parametrize("build", [eval_transform, train_transform])
def test_too_small_size_names_the_flag(build):
    with pytest.raises(ValueError, match=r"--data\.image_size=4"):
        build(4)
