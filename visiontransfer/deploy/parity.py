"""Check an exported graph against the PyTorch network it came from, on real images.

Images: the ones given (``--images``: a folder or files), else a few of the checkpoint's own data
(its test, validation or training folder, or manifest, when still on disk), else the embedded
procedural set (said so in the record). They are decoded and resized as the datamodules do for
evaluation (classification and dense tasks: resize and centre crop to the training size;
detection: the longest side to it, so the detector sees several image shapes).

Agreement:

- tensors (logits, features, segmentation maps): max absolute difference at most
  :data:`DENSE_TOLERANCE` (float32), on a batch of one image and on a batch of all of them;
- detections, image by image: every detection of one side has one on the other with the same
  label, a box within :data:`BOX_TOLERANCE` pixels and a score within :data:`SCORE_TOLERANCE`.
  Only a detection scored at the other side's cut-off (its lowest score, within the tolerance)
  may be missing: the detector's score threshold and top-k then decide on float noise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from visiontransfer.data.decode import UnreadableImageError, has_image_extension, load_rgb
from visiontransfer.data.detection import detection_eval_transform
from visiontransfer.data.index import read_manifest, scan_images
from visiontransfer.data.synthetic import render_scene
from visiontransfer.data.transforms import eval_transform
from visiontransfer.deploy.task import Kind
from visiontransfer.errors import ConfigError

DENSE_TOLERANCE = 1e-4
"""Largest absolute difference allowed between exported and PyTorch tensors (float32)."""
BOX_TOLERANCE = 0.05
"""Largest difference (pixels) between the coordinates of a matched pair of boxes."""
SCORE_TOLERANCE = 1e-3
"""Largest difference between the scores of a matched pair of detections."""
CHECK_IMAGES = 8
"""Images a check runs on by default."""

Outputs = Tensor | tuple[Tensor, ...]


class ExportCheckError(ValueError):
    """An exported graph does not reproduce the PyTorch network's outputs."""


def find_images(
    given: str | os.PathLike[str] | Sequence[str] | None,
    checkpoint: dict[str, Any],
    count: int = CHECK_IMAGES,
) -> tuple[list[str], str]:
    """Up to ``count`` image files to check on, and where they come from (see the module doc).

    Raises:
        ConfigError: ``given`` names no readable image, naming ``--images``.
    """
    if given is not None:
        files = _image_files(given)
        if not files:
            raise ConfigError(
                f"--images={given!r} holds no image file: give a folder of images, or image files"
            )
        named = f"--images={os.fspath(given)!r}" if isinstance(given, str | os.PathLike) else "--images files"
        return _spread(files, count), named
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    for key in ("test_root", "val_root", "root", "manifest"):
        where = data.get(key)
        if isinstance(where, str) and os.path.exists(where):
            files = _image_files(where)
            if files:
                return _spread(files, count), f"the checkpoint's --data.{key}={where!r}"
    return [], "the embedded procedural set (no real images found: pass --images DIR)"


def _image_files(source: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """Image files of a folder (recursively; photos first: JPEG before PNG masks), a manifest, or a list."""
    if isinstance(source, str | os.PathLike):
        where = Path(source)
        if where.is_dir():
            files = [os.path.join(where, name) for name in scan_images(where)]
            jpeg = [f for f in files if f.lower().endswith((".jpg", ".jpeg"))]
            return jpeg or files
        if where.is_file() and not has_image_extension(where):
            return read_manifest(where)[0]
        return [os.fspath(where)] if where.is_file() else []
    return [os.fspath(f) for f in source if os.path.isfile(f)]


def _spread(files: list[str], count: int) -> list[str]:
    """``count`` files spread over the sorted list (not all of the first class folder)."""
    ordered = sorted(files)
    step = max(1, len(ordered) // count)
    return ordered[::step][:count]


def load_images(files: Sequence[str], size: int, kind: Kind, count: int = CHECK_IMAGES) -> list[Tensor]:
    """``(3, H, W)`` uint8 images prepared as for evaluation; the embedded set when ``files`` is
    empty. Unreadable files are left out."""
    if kind == "detection":
        resize = detection_eval_transform(size)

        def prepare(image: np.ndarray) -> np.ndarray:
            return resize(image=image, bboxes=np.zeros((0, 4), np.float32), labels=[])["image"]
    else:
        crop = eval_transform(size)

        def prepare(image: np.ndarray) -> np.ndarray:
            return crop(image=image)["image"]

    arrays = []
    for file in files:
        try:
            arrays.append(prepare(load_rgb(file)))
        except UnreadableImageError:
            continue
    if not arrays:
        arrays = [prepare(render_scene(i, max(size, 16)).image) for i in range(count)]
    return [torch.from_numpy(np.array(a)).permute(2, 0, 1).contiguous() for a in arrays]


def example_input(images: list[Tensor], network: nn.Module) -> Tensor:
    """The batch an export is traced on: two images (one where the network takes one at a time)."""
    fixed = getattr(network, "batch_size", None)
    return torch.stack(images[: int(fixed or 2)]) if len(images) > 1 else images[0][None]


def check(
    network: nn.Module, runtime: Callable[[Tensor], Outputs], images: list[Tensor], kind: Kind
) -> dict[str, Any]:
    """Run ``runtime`` (the exported file) and ``network`` on the same batches and compare.

    Returns:
        What was compared and how close it came (recorded in ``config.json`` and the model card).

    Raises:
        ExportCheckError: a difference beyond the tolerances.
    """
    with torch.no_grad():
        if kind == "detection":
            pairs = [(network(image[None]), runtime(image[None])) for image in images]
            return {"images": len(images), **compare_detections(pairs)}
        batches = [images[:1], images] if len(images) > 1 else [images]
        worst = 0.0
        for batch in batches:
            stacked = torch.stack(batch)
            worst = max(worst, max_abs_difference(network(stacked), runtime(stacked)))
    if not worst <= DENSE_TOLERANCE:
        raise ExportCheckError(
            f"the exported model differs from PyTorch by {worst:.3g} (max abs) > {DENSE_TOLERANCE:g}"
        )
    return {"images": len(images), "batches": [len(b) for b in batches], "max_abs_diff": worst,
            "tolerance": DENSE_TOLERANCE}  # fmt: skip


def max_abs_difference(expected: Outputs, got: Outputs) -> float:
    """Largest absolute difference between two outputs (tensors, or tuples of tensors)."""
    pairs = zip(_as_tuple(expected), _as_tuple(got), strict=True)
    worst = 0.0
    for a, b in pairs:
        if a.shape != b.shape:
            raise ExportCheckError(
                f"the exported model gives shape {tuple(b.shape)} where PyTorch gives {tuple(a.shape)}"
            )
        worst = max(worst, float((a.float() - b.float()).abs().max()) if a.numel() else 0.0)
    return worst


def _as_tuple(outputs: Outputs) -> tuple[Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, tuple | list) else (outputs,)


def compare_detections(pairs: Sequence[tuple[Outputs, Outputs]]) -> dict[str, Any]:
    """Match ``(boxes, scores, labels)`` of PyTorch and the export, image by image (module doc).

    Raises:
        ExportCheckError: a detection without its counterpart, not at the cut-off.
    """
    matched = at_cutoff = 0
    worst_box = worst_score = 0.0
    for index, (expected, got) in enumerate(pairs):
        pytorch, exported = _as_tuple(expected), _as_tuple(got)
        for one, other, side in ((pytorch, exported, "the export"), (exported, pytorch, "PyTorch")):
            found, missing, box, score = match_detections(one, other)
            if missing:
                raise ExportCheckError(
                    f"image {index}: {len(missing)} detection(s) missing in {side}, e.g. scored "
                    f"{float(one[1][missing[0]]):.4f}, above its cut-off"
                )
            worst_box, worst_score = max(worst_box, box), max(worst_score, score)
        found = match_detections(pytorch, exported)[0]
        matched += found
        at_cutoff += len(pytorch[1]) + len(exported[1]) - 2 * found
    return {"detections": matched, "unmatched_at_cutoff": at_cutoff, "max_box_diff": worst_box,
            "max_score_diff": worst_score, "box_tolerance": BOX_TOLERANCE,
            "score_tolerance": SCORE_TOLERANCE}  # fmt: skip


def match_detections(
    one: tuple[Tensor, ...], other: tuple[Tensor, ...]
) -> tuple[int, list[int], float, float]:
    """Greedy one-to-one matching of ``one``'s detections (highest score first) to ``other``'s.

    Returns:
        ``(matched, indices of one's detections without a match above other's cut-off, largest
        box difference, largest score difference)``.
    """
    boxes, scores, labels = (t.float() if i < 2 else t for i, t in enumerate(one))
    other_boxes, other_scores, other_labels = (t.float() if i < 2 else t for i, t in enumerate(other))
    cutoff = float(other_scores.min()) + SCORE_TOLERANCE if len(other_scores) else float("-inf")
    free = torch.ones(len(other_scores), dtype=torch.bool)
    missing: list[int] = []
    matched, worst_box, worst_score = 0, 0.0, 0.0
    for i in scores.argsort(descending=True).tolist():
        box_diff = (other_boxes - boxes[i]).abs().amax(dim=1) if len(other_boxes) else other_scores
        score_diff = (other_scores - scores[i]).abs()
        ok = (
            free & (other_labels == labels[i]) & (box_diff <= BOX_TOLERANCE) & (score_diff <= SCORE_TOLERANCE)
        )
        if ok.any():
            j = int(torch.where(ok, box_diff, torch.full_like(box_diff, float("inf"))).argmin())
            free[j] = False
            matched += 1
            worst_box, worst_score = (
                max(worst_box, float(box_diff[j])),
                max(worst_score, float(score_diff[j])),
            )
        elif float(scores[i]) > cutoff:
            missing.append(i)
    return matched, missing, worst_box, worst_score
