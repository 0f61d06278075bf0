"""The embedded default image set: procedural scenes with class labels and bounding boxes.

No files and nothing to download: image ``i`` of seed ``s`` is drawn from ``default_rng([s, i])``,
so the same index always gives the same pixels, in any worker. Each scene has a sky, a horizon
and textured ground (so rotation and colour are learnable, as on photos), one main object whose
shape is the class label, and up to two smaller distractors of other classes; every object has a
box. It lets the quickstart and every task's tests run without data. It is no substitute for real
images: readers are tested on real files from ``../shared/data``.
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


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered scene: ``image`` ``(H, W, 3) uint8``, ``label`` of the main object, ``boxes``
    ``(N, 4)`` absolute ``xyxy`` float32 and their ``box_labels`` ``(N,)`` int64."""

    image: np.ndarray
    label: int
    boxes: np.ndarray
    box_labels: np.ndarray


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Outline of a polygonal shape centred on (cx, cy) with half-size r (y grows downwards)."""
    pts: list[tuple[float, float]]
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == "triangle":
        pts = [(0, -1), (1, 1), (-1, 1)]
    elif shape == "diamond":
        pts = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    elif shape == "cross":
        a = 0.35
        pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1)]
        pts += [(-a, a), (-1, a), (-1, -a), (-a, -a)]
    elif shape == "star":
        pts = []
        for k in range(10):
            radius = 1.0 if k % 2 == 0 else 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            pts.append((radius * math.cos(angle), radius * math.sin(angle)))
    elif shape == "house":
        pts = [(-1, 1), (-1, -0.1), (0, -1), (1, -0.1), (1, 1)]
    elif shape == "arrow":
        pts = [(0, -1), (1, 0), (0.4, 0), (0.4, 1), (-0.4, 1), (-0.4, 0), (-1, 0)]
    else:
        raise ValueError(f"{shape!r} is not a polygon shape")
    return [(cx + x * r, cy + y * r) for x, y in pts]


def _draw_object(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: tuple[int, ...]
) -> tuple[float, float, float, float]:
    """Draw one object and return its box ``(x0, y0, x1, y1)``."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r * 0.35)))
    elif shape == "half_disc":
        draw.pieslice(box, 180, 360, fill=colour)
        box = (cx - r, cy - r, cx + r, cy)
    else:
        points = _polygon(shape, cx, cy, r)
        draw.polygon(points, fill=colour)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        box = (min(xs), min(ys), max(xs), max(ys))
    return box


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sky above a horizon, textured ground below: ``(size, size, 3) float32`` in 0..255."""
    sky = np.array([rng.uniform(90, 160), rng.uniform(140, 200), rng.uniform(200, 255)])
    ground = np.array([rng.uniform(60, 140), rng.uniform(90, 160), rng.uniform(20, 70)])
    horizon = rng.uniform(0.4, 0.65) * size
    rows = np.arange(size, dtype=np.float32)[:, None]
    sky_shade = 1.0 - 0.35 * (rows / size)  # lighter at the top
    weight = (rows >= horizon).astype(np.float32)  # (H, 1)
    image = (1 - weight)[:, :, None] * sky * sky_shade[:, :, None] + weight[:, :, None] * ground
    image = np.broadcast_to(image, (size, size, 3)).copy()
    image += rng.normal(0.0, 8.0, size=(size, size, 1)) * weight[:, :, None]
    return image.astype(np.float32)


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
    canvas = Image.fromarray(np.clip(_background(rng, image_size), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    objects = [(label, rng.uniform(0.18, 0.32))]
    for _ in range(int(rng.integers(0, 3))):
        other = int(rng.integers(num_classes - 1))
        objects.append((other + (other >= label), rng.uniform(0.08, 0.13)))
    boxes, box_labels = [], []
    for cls, rel_radius in objects:
        r = rel_radius * image_size
        cx, cy = rng.uniform(r, image_size - r, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0, x1, y1 = _draw_object(draw, SHAPES[cls], cx, cy, r, colour)
        boxes.append([max(0.0, x0), max(0.0, y0), min(image_size, x1), min(image_size, y1)])
        box_labels.append(cls)
    return SyntheticSample(
        image=np.asarray(canvas, dtype=np.uint8),
        label=label,
        boxes=np.asarray(boxes, dtype=np.float32),
        box_labels=np.asarray(box_labels, dtype=np.int64),
    )
