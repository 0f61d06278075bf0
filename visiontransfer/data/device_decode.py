"""JPEG decoding and the training crop on the training device (``--data.decode_on_device``).

At 224 px a GPU trains on images faster than a few CPU cores can decode and crop them. In this
mode the DataLoader workers only read each file's bytes, parse its header (size, EXIF orientation,
the decompression-bomb check) and draw the sample's crop box and flip from its per-sample seed, so
a batch is the same whatever the workers, ranks or resume point. The datamodule then decodes the
batch with TorchCodec's ``decode_jpeg(device=...)`` (nvJPEG on CUDA, libjpeg-turbo on CPU; it
applies the EXIF orientation), falling back to torchvision's deprecated decoder where TorchCodec
is not installed, and cuts each image's crop with ``roi_align`` on that device: the pretext's own
batched augmentations follow there. Files that are not JPEGs (PNG, WebP, ...) are decoded in the
workers as usual; a JPEG the device decoder refuses (CMYK, some progressive files on nvJPEG) is
decoded by Pillow instead, and a file nothing can decode is skipped and counted.

The crop is a random-resized crop (area share in ``scale``, aspect ratio in 3/4..4/3) followed by a
horizontal flip with probability 1/2, the ``crop_flip`` preset above 64 px.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.ops import roi_align

from visiontransfer.data.datasets import Sample, Skipped, to_chw_tensor
from visiontransfer.data.decode import DEFAULT_MAX_PIXELS, UnreadableImageError, decode_rgb
from visiontransfer.data.index import PathTable
from visiontransfer.data.sampling import SeededIndex
from visiontransfer.data.transforms import CROP_SCALE

JPEG_MAGIC = b"\xff\xd8\xff"
ORIENTATION_TAG = 0x0112
SWAPS_AXES = {5, 6, 7, 8}
"""EXIF orientations that exchange width and height."""


def crop_box(
    width: int, height: int, rng: np.random.Generator, scale: tuple[float, float] = CROP_SCALE
) -> tuple[float, float, float, float]:
    """A random-resized-crop box ``(x0, y0, x1, y1)`` in pixels inside a ``width`` × ``height`` image.

    The area share is uniform in ``scale`` and the log aspect ratio uniform in log(3/4)..log(4/3);
    sides are clipped to the image (as :func:`~visiontransfer.pretext.augment.random_resized_crop`).
    """
    area = rng.uniform(*scale) * width * height
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(max(math.sqrt(area * aspect), 1.0), float(width))
    h = min(max(math.sqrt(area / aspect), 1.0), float(height))
    x0, y0 = rng.uniform() * (width - w), rng.uniform() * (height - h)
    return x0, y0, x0 + w, y0 + h


def jpeg_header(data: bytes, where: str, max_pixels: int) -> tuple[int, int, int]:
    """Upright ``(width, height, exif_orientation)`` of a JPEG, from its header alone.

    Raises:
        UnreadableImageError: not an image Pillow identifies, or over ``max_pixels``.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            orientation = int(image.getexif().get(ORIENTATION_TAG, 1))
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableImageError(where, f"not a readable JPEG header ({error})") from error
    if width * height > max_pixels:
        raise UnreadableImageError(
            where,
            f"header claims {width}x{height} = {width * height:,} pixels, over max_pixels="
            f"{max_pixels:,} (decompression bomb?); raise --data.max_pixels if the file is genuine",
        )
    if orientation in SWAPS_AXES:
        width, height = height, width
    return width, height, orientation if 1 <= orientation <= 8 else 1


def encoded_sample(
    data: bytes, where: str, seed: int, scale: tuple[float, float], max_pixels: int
) -> Sample | Skipped:
    """A training sample whose decoding is left to the device: bytes, crop box and flip.

    Non-JPEG files are decoded here, on the CPU, and travel as ``(3, H, W)`` uint8 tensors.
    """
    try:
        if data.startswith(JPEG_MAGIC):
            width, height, orientation = jpeg_header(data, where, max_pixels)
            payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        else:
            payload = to_chw_tensor(decode_rgb(io.BytesIO(data), where, max_pixels))
            height, width, orientation = payload.shape[1], payload.shape[2], 1
    except UnreadableImageError as error:
        return Skipped(where, error.reason)
    rng = np.random.default_rng(seed)
    box = crop_box(width, height, rng, scale)
    return {
        "encoded": payload,
        "orientation": orientation,
        "box": torch.tensor(box, dtype=torch.float32),
        "flip": bool(rng.uniform() < 0.5),
        "where": where,
    }


class EncodedFileDataset(torch.utils.data.Dataset[Sample | Skipped]):
    """Image files read as bytes for :func:`decode_on_device` (training only).

    Args:
        paths: The files.
        labels: Class index per file, or None (label -1).
        scale: Area share range of the random-resized crop.
        max_pixels: Largest width × height accepted (from the header).
    """

    encoded = True

    def __init__(
        self,
        paths: PathTable,
        labels: np.ndarray | None = None,
        scale: tuple[float, float] = CROP_SCALE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.paths = paths
        self.labels = labels
        self.scale = scale
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | SeededIndex) -> Sample | Skipped:
        index, seed = key if isinstance(key, tuple) else (key, key)
        path = self.paths[int(index)]
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as error:
            return Skipped(path, f"unreadable file ({error.strerror or error})")
        if not data:
            return Skipped(path, "empty file (0 bytes)")
        sample = encoded_sample(data, path, int(seed), self.scale, self.max_pixels)
        if isinstance(sample, dict):
            sample["label"] = -1 if self.labels is None else int(self.labels[int(index)])
            sample["index"] = int(index)
        return sample


def collate_encoded(samples: Sequence[Sample | Skipped]) -> dict[str, Any]:
    """Batch of :func:`encoded_sample` records: payloads stay a list (their sizes differ)."""
    good = [s for s in samples if not isinstance(s, Skipped)]
    return {
        "encoded": [s["encoded"] for s in good],
        "orientation": [s["orientation"] for s in good],
        "where": [s["where"] for s in good],
        "box": torch.stack([s["box"] for s in good]) if good else torch.zeros(0, 4),
        "flip": torch.as_tensor([s["flip"] for s in good], dtype=torch.bool),
        "label": torch.as_tensor([s["label"] for s in good], dtype=torch.int64),
        "index": torch.as_tensor([s["index"] for s in good], dtype=torch.int64),
        "skipped": [(s.path, s.reason) for s in samples if isinstance(s, Skipped)],
    }


def _jpeg(payloads: list[Tensor], device: torch.device) -> list[Tensor]:
    """JPEGs decoded upright (EXIF orientation applied) to RGB on ``device``: TorchCodec's decoder,
    else torchvision's (deprecated since 0.29). Raises RuntimeError on any undecodable file."""
    try:
        from torchcodec.decoders import decode_jpeg
    except (ImportError, RuntimeError, OSError):  # not installed, or built for another torch
        return _torchvision_jpeg(payloads, device)
    return list(decode_jpeg(payloads, mode="RGB", device=device))


def _torchvision_jpeg(payloads: list[Tensor], device: torch.device) -> list[Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: image IO -> TorchCodec
        return decode_jpeg(payloads, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)


def _decode_one(payload: Tensor, where: str, device: torch.device) -> Tensor | str:
    """One JPEG on ``device`` (device decoder, then Pillow), upright, or the reason it failed."""
    try:
        return _jpeg([payload], device)[0]
    except RuntimeError:
        pass
    try:
        return to_chw_tensor(decode_rgb(io.BytesIO(payload.numpy().tobytes()), where)).to(device)
    except UnreadableImageError as error:
        return error.reason


def decode_images(
    payloads: Sequence[Tensor], wheres: Sequence[str], device: torch.device
) -> list[Tensor | str]:
    """Decode a batch on ``device``, every image upright: all JPEGs in one call, image by image if
    that call fails; images decoded in the workers (not JPEGs) are moved to ``device``."""
    jpegs = [i for i, p in enumerate(payloads) if p.ndim == 1]
    out: list[Tensor | str] = [p.to(device) if p.ndim == 3 else "" for p in payloads]
    if jpegs:
        try:
            for i, image in zip(jpegs, _jpeg([payloads[i] for i in jpegs], device), strict=True):
                out[i] = image
        except RuntimeError:  # one bad file fails the whole call: find it
            for i in jpegs:
                out[i] = _decode_one(payloads[i], wheres[i], device)
    return out


def decode_on_device(batch: dict[str, Any], size: int, device: torch.device) -> dict[str, Any]:
    """Replace a :func:`collate_encoded` batch's payloads by ``image``: ``(B, 3, size, size)`` uint8.

    Images that fail to decode are dropped from the batch and listed in ``batch["skipped"]``.
    """
    images = decode_images(batch.pop("encoded"), batch["where"], device)
    keep = [i for i, image in enumerate(images) if isinstance(image, Tensor)]
    batch["skipped"] = list(batch.get("skipped", [])) + [
        (batch["where"][i], str(image)) for i, image in enumerate(images) if not isinstance(image, Tensor)
    ]
    # (B, 5): batch index 0 (each image is its own batch of one), x0, y0, x1, y1; one copy to the device.
    boxes = torch.cat([torch.zeros(len(batch["box"]), 1), batch["box"]], dim=1).to(device)
    crops = []
    for i in keep:
        image = images[i].float()  # type: ignore[union-attr]  # upright: EXIF applied by the decoders
        crops.append(
            roi_align(image[None], boxes[i : i + 1], output_size=size, sampling_ratio=-1, aligned=True)
        )
    if crops:
        out = torch.cat(crops)  # (B, 3, size, size)
        flip = batch["flip"][keep].to(device).view(-1, 1, 1, 1)
        out = torch.where(flip, out.flip(-1), out)
        batch["image"] = out.round_().clamp_(0, 255).to(torch.uint8)
    else:
        batch["image"] = torch.zeros((0, 3, size, size), dtype=torch.uint8, device=device)
    rows = torch.as_tensor(keep, dtype=torch.long)
    for name in ("label", "index"):
        batch[name] = batch[name][rows]
    for name in ("box", "flip", "orientation", "where"):
        batch.pop(name)
    return batch
