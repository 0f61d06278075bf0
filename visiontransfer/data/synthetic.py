"""The embedded default image set: procedural scenes with class labels, boxes and masks.

No files and nothing to download: scene ``i`` of seed ``s`` is drawn from ``default_rng([s, i])``,
so the same index always gives the same pixels, in any worker. The class of a scene is the shape
of its main object; everything else varies and carries no label, as in photos:

- **colour and texture**: the object is one random colour, or stripes of two at a random angle;
- **scale, pose and position**: the object covers 26–44 % of the side, is turned by up to ±30°
  (so the square and the diamond stay distinct) and lies anywhere in the image;
- **background and clutter**: one of five backgrounds (sky over textured ground, a smooth colour
  gradient, noise, stripes, a checkerboard) under random strokes and blobs, and up to two small
  distractor objects of other classes.

A classifier trained on a few labels from scratch latches onto colour and background; what a
pretext learns from many unlabeled scenes (that shape is what persists across crops and colour
changes) is what transfer needs, so the embedded set shows pretraining paying, on a CPU, in
minutes. Every object has a box and a mask (``mask``: 0 background, ``k + 1`` for class ``k``),
so classification, detection and segmentation all run without data. It is no substitute for
real images: readers are tested on real files from ``../shared/data``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = (
    "disc",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "star",
    "house",
    "arrow",
    "half_disc",
)
"""Class names of the embedded set, in label order."""

MAX_TURN_DEGREES = 30.0
"""Objects turn by at most this much: the square and the diamond (the square turned by 45°)
stay distinct classes."""


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
    """The filled polygons of a shape in a unit box ``[-1, 1]²`` (y down); a ring has two (the
    outer one filled, the inner one cut out)."""
    circle = [(math.cos(2 * math.pi * k / 40), math.sin(2 * math.pi * k / 40)) for k in range(40)]
    star = [(1.0 if k % 2 == 0 else 0.45, -math.pi / 2 + k * math.pi / 5) for k in range(10)]  # (r, angle)
    a = 0.35
    outlines: dict[str, list[list[tuple[float, float]]]] = {
        "disc": [circle],
        "ring": [circle, [(0.6 * x, 0.6 * y) for x, y in circle]],
        "half_disc": [[(math.cos(math.pi * (1 + k / 20)), math.sin(math.pi * (1 + k / 20)) + 0.5)
                       for k in range(21)]],
        "square": [[(-1, -1), (1, -1), (1, 1), (-1, 1)]],
        "triangle": [[(0, -1), (1, 1), (-1, 1)]],
        "diamond": [[(0, -1), (1, 0), (0, 1), (-1, 0)]],
        "cross": [[(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a),
                   (-1, a), (-1, -a), (-a, -a)]],
        "star": [[(radius * math.cos(angle), radius * math.sin(angle)) for radius, angle in star]],
        "house": [[(-1, 1), (-1, -0.1), (0, -1), (1, -0.1), (1, 1)]],
        "arrow": [[(0, -1), (1, 0), (0.4, 0), (0.4, 1), (-0.4, 1), (-0.4, 0), (-1, 0)]],
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


def _stripes(rng: np.random.Generator, size: int, period: float) -> np.ndarray:
    """``(size, size)`` float in {0, 1}: stripes of a random angle and phase."""
    angle = rng.uniform(0, math.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period + rng.uniform(0, 6.3))
    return (wave > 0).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """One of five backgrounds: ``(size, size, 3) float32`` in 0..255."""
    kind = int(rng.integers(5))
    rows = np.arange(size, dtype=np.float32)[:, None, None] / size  # (H, 1, 1)
    first, second = _colour(rng), _colour(rng)
    if kind == 0:  # sky over textured ground
        horizon = rng.uniform(0.35, 0.65)
        ground = (rows >= horizon).astype(np.float32)
        image = (1 - ground) * first * (1.0 - 0.35 * rows) + ground * second
        image = image + rng.normal(0.0, 10.0, size=(size, size, 1)) * ground
    elif kind == 1:  # smooth gradient at a random angle
        t = np.broadcast_to(np.linspace(0, 1, size, dtype=np.float32)[None, :], (size, size))
        t = t if rng.random() < 0.5 else t.T
        image = first + (second - first) * t[..., None]
    elif kind == 2:  # coloured noise around a colour
        image = first + rng.normal(0.0, 35.0, size=(size, size, 3))
    elif kind == 3:  # stripes
        mix = _stripes(rng, size, period=rng.uniform(0.12, 0.3) * size)[..., None]
        image = first * mix + second * (1 - mix)
    else:  # checkerboard
        cell = max(2, int(size * rng.uniform(0.1, 0.25)))
        ys, xs = np.mgrid[0:size, 0:size]
        mix = (((ys // cell) + (xs // cell)) % 2).astype(np.float32)[..., None]
        image = first * mix + second * (1 - mix)
    return np.broadcast_to(image, (size, size, 3)).astype(np.float32)


def _clutter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Random strokes and blobs over the background."""
    size = image.shape[0]
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, size=4))
        fill = tuple(int(c) for c in _colour(rng))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=fill, width=max(1, int(size * rng.uniform(0.01, 0.05))))
        else:
            r = size * rng.uniform(0.03, 0.08)
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=fill)
    return np.asarray(canvas, dtype=np.float32)


def _paint(rng: np.random.Generator, image: np.ndarray, where: np.ndarray) -> None:
    """Fill the pixels ``where`` with one colour or with stripes of two, in place; the colour
    differs clearly from the background under the object."""
    size = image.shape[0]
    below = image[where].mean(axis=0) if where.any() else np.full(3, 127.0)
    colour = _colour(rng)
    for _ in range(8):  # keep the object visible against what lies under it
        if np.abs(colour - below).sum() > 120:
            break
        colour = _colour(rng)
    if rng.random() < 0.35:
        mix = _stripes(rng, size, period=rng.uniform(0.08, 0.2) * size)[..., None]
        other = _colour(rng)
        fill = colour * mix + other * (1 - mix)
        image[where] = fill[where]
    else:
        image[where] = colour


def _place(
    rng: np.random.Generator, size: int, shape: str, rel_radius: tuple[float, float]
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A randomly sized, turned and placed object: its mask and box ``(x0, y0, x1, y1)``."""
    r = rng.uniform(*rel_radius) * size
    turn = math.radians(rng.uniform(-MAX_TURN_DEGREES, MAX_TURN_DEGREES))
    reach = r * 1.05  # a turned unit box stays within about ±1.05 r of its centre here
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
    for _ in range(int(rng.integers(0, 3))):
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
