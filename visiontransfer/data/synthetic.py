"""The embedded default image set: procedural scenes with class labels, boxes and masks.

No files and nothing to download: scene ``i`` of seed ``s`` is drawn from ``default_rng([s, i])``,
so the same index always gives the same pixels, in any worker. The class of a scene is the shape
of its main object; everything else varies and carries no label, as in photos:

- **colour**: the object is one random colour, clearly apart from what lies under it;
- **scale, pose and position**: the object's half-size is 26–44 % of the side (it spans about
  half to nine tenths of the image), it is turned by up to ±20° and placed at random, about a
  quarter of the time cut by the border;
- **background and clutter**: a smooth gradient between two random colours, horizontal or
  vertical, under up to two random strokes or blobs, and at most one small distractor object of
  another class.

Each shape has a clear "up" and none is another turned (so a turn of the image never turns one
class into another). A classifier trained on a few labels from scratch latches onto colour and
background; what a pretext learns from many unlabeled scenes (that shape is what persists across
crops and colour changes) is what transfer needs, so the embedded set shows pretraining paying, on
a CPU, in minutes. Stronger nuisances hurt the pretext more than scratch: striped two-colour
objects and noise, stripe or checkerboard backgrounds give contrastive views a per-image cue (the
same texture in both views) to match instead of the shape; in short SimCLR runs at 32 px a linear
probe fell from 0.26 to 0.23 with striped objects and to 0.15 with half the backgrounds noise.
Every object has a box and a mask (``mask``: 0 background, ``k + 1`` for class ``k``), so
classification, detection and segmentation all run without data. It is no substitute for real
images: readers are tested on real files from ``../shared/data``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = (
    "triangle",
    "house",
    "arrow",
    "half_disc",
    "tee",
    "ell",
    "crescent",
    "heart",
    "flag",
    "drop",
)
"""Class names of the embedded set, in label order."""

MAX_TURN_DEGREES = 20.0
"""Objects turn by at most this much either way."""


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered scene: ``image`` ``(H, W, 3) uint8``, ``label`` of the main object, ``boxes``
    ``(N, 4)`` absolute ``xyxy`` float32 and their ``box_labels`` ``(N,)`` int64 (the main object
    first), and ``mask`` ``(H, W) uint8``: 0 background, ``k + 1`` where an object of class ``k``
    is visible (later objects cover earlier ones)."""

    image: np.ndarray
    label: int
    boxes: np.ndarray
    box_labels: np.ndarray
    mask: np.ndarray


def _outline(shape: str) -> list[list[tuple[float, float]]]:
    """The polygons of a shape in a unit box ``[-1, 1]²`` (y down): the first is filled, later
    ones are cut out of it (the crescent)."""
    circle = [(math.cos(2 * math.pi * k / 40), math.sin(2 * math.pi * k / 40)) for k in range(40)]
    heart = [2 * math.pi * k / 48 for k in range(48)]
    drop = [math.pi * (-0.25 + 1.5 * k / 29) for k in range(30)]
    outlines: dict[str, list[list[tuple[float, float]]]] = {
        "triangle": [[(0, -1), (1, 1), (-1, 1)]],
        "house": [[(-1, 1), (-1, -0.1), (0, -1), (1, -0.1), (1, 1)]],
        "arrow": [[(0, -1), (1, 0), (0.4, 0), (0.4, 1), (-0.4, 1), (-0.4, 0), (-1, 0)]],
        "half_disc": [[(math.cos(math.pi * (1 + k / 20)), math.sin(math.pi * (1 + k / 20)) + 0.5)
                       for k in range(21)]],
        "tee": [[(-1, -1), (1, -1), (1, -0.4), (0.3, -0.4), (0.3, 1), (-0.3, 1), (-0.3, -0.4), (-1, -0.4)]],
        "ell": [[(-0.8, -1), (-0.2, -1), (-0.2, 0.4), (0.8, 0.4), (0.8, 1), (-0.8, 1)]],
        "crescent": [circle, [(0.85 * x, 0.85 * y - 0.35) for x, y in circle]],
        "heart": [[(16 * math.sin(t) ** 3 / 17,
                    -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17)
                   for t in heart]],
        "flag": [[(-0.8, -1), (-0.5, -1), (-0.5, -0.9), (0.9, -0.55), (-0.5, -0.2), (-0.5, 1), (-0.8, 1)]],
        "drop": [[(0, -1), *[(0.65 * math.cos(t), 0.35 + 0.65 * math.sin(t)) for t in drop]]],
    }  # fmt: skip
    if shape not in outlines:
        raise ValueError(f"shape={shape!r} is not one of {SHAPES}")
    return outlines[shape]


def _object_mask(shape: str, size: int, cx: float, cy: float, r: float, turn: float) -> np.ndarray:
    """``(size, size)`` bool: the pixels of a ``shape`` of half-size ``r`` at ``(cx, cy)`` turned by
    ``turn`` radians."""
    cos, sin = math.cos(turn), math.sin(turn)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for k, polygon in enumerate(_outline(shape)):
        points = [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in polygon]
        draw.polygon(points, fill=255 if k == 0 else 0)
    return np.asarray(canvas) > 127


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth gradient between two random colours, horizontal or vertical: ``(size, size, 3)
    float32`` in 0..255."""
    first, second = _colour(rng), _colour(rng)
    t = np.broadcast_to(np.linspace(0, 1, size, dtype=np.float32)[None, :], (size, size))
    t = t if rng.random() < 0.5 else t.T
    return (first + (second - first) * t[..., None]).astype(np.float32)


def _clutter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Up to two random strokes or blobs over the background."""
    size = image.shape[0]
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 3))):
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, size=4))
        fill = tuple(int(c) for c in _colour(rng))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=fill, width=max(1, int(size * rng.uniform(0.01, 0.05))))
        else:
            r = size * rng.uniform(0.03, 0.08)
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=fill)
    return np.asarray(canvas, dtype=np.float32)


def _paint(rng: np.random.Generator, image: np.ndarray, where: np.ndarray) -> None:
    """Fill the pixels ``where`` with one colour, in place; the colour differs clearly from the
    background under the object."""
    below = image[where].mean(axis=0) if where.any() else np.full(3, 127.0)
    colour = _colour(rng)
    for _ in range(8):  # keep the object visible against what lies under it
        if np.abs(colour - below).sum() > 120:
            break
        colour = _colour(rng)
    image[where] = colour


def _place(
    rng: np.random.Generator, size: int, shape: str, rel_radius: tuple[float, float]
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A randomly sized, turned and placed object: its mask and box ``(x0, y0, x1, y1)``."""
    r = rng.uniform(*rel_radius) * size
    turn = math.radians(rng.uniform(-MAX_TURN_DEGREES, MAX_TURN_DEGREES))
    reach = (
        r * 1.05
    )  # the centre's distance from the border; turned shapes reach up to ~1.3 r, so some are cut
    cx, cy = rng.uniform(reach, size - reach, size=2)
    mask = _object_mask(shape, size, cx, cy, r, turn)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return mask, (cx - 0.5, cy - 0.5, cx + 0.5, cy + 0.5)
    return mask, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def scene_label(index: int, num_classes: int = 10, seed: int = 0) -> int:
    """The class of scene ``index`` without rendering it."""
    return int(np.random.default_rng([seed, index]).integers(num_classes))


def render_scene(index: int, image_size: int = 64, num_classes: int = 10, seed: int = 0) -> SyntheticSample:
    """Render scene ``index`` of the embedded set.

    Args:
        index: Scene number; the same index and seed always give the same scene.
        image_size: Side of the square image in pixels (at least 16).
        num_classes: Number of shape classes used, 2 to ``len(SHAPES)``.
        seed: Seed of the whole set.
    """
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small for the embedded set; use >= 16")
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes={num_classes} must be in [2, {len(SHAPES)}]")
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(num_classes))  # first draw: scene_label() repeats it cheaply
    image = _clutter(rng, _background(rng, image_size))
    objects = [(label, (0.26, 0.44))]
    for _ in range(int(rng.integers(0, 2))):
        other = int(rng.integers(num_classes - 1))
        objects.append((other + (other >= label), (0.07, 0.11)))
    mask = np.zeros((image_size, image_size), dtype=np.uint8)
    boxes, box_labels = [], []
    for cls, rel_radius in objects:
        where, box = _place(rng, image_size, SHAPES[cls], rel_radius)
        _paint(rng, image, where)
        mask[where] = cls + 1
        boxes.append(box)
        box_labels.append(cls)
    return SyntheticSample(
        image=np.clip(image, 0, 255).astype(np.uint8),
        label=label,
        boxes=np.asarray(boxes, dtype=np.float32),
        box_labels=np.asarray(box_labels, dtype=np.int64),
        mask=mask,
    )
