"""Log an image grid or a confusion matrix from a LightningModule: a PNG in the run's log folder,
and to the logger.

The PNG always goes to ``{log_dir}/images/{tag}_epoch{E:03d}.png`` (``log_dir`` as
``trainer.log_dir`` resolves it); a TensorBoard logger also gets ``add_image``, a logger with a
``log_image`` method (Weights & Biases, ...) gets that. Nothing here may stop a training run:
a missing trainer or folder, or a logger that fails, only means no image (with a warning).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from visiontransfer.checkpoint_io import atomic_write


def log_folder(trainer: L.Trainer) -> str | None:
    """``trainer.log_dir`` without its collective broadcast, for code that runs on rank zero only
    (under DDP every rank must call ``trainer.log_dir``, or the run hangs)."""
    loggers = trainer.loggers
    if not loggers:
        return trainer.default_root_dir
    if isinstance(loggers[0], (TensorBoardLogger, CSVLogger)):
        return loggers[0].log_dir
    return loggers[0].save_dir


def _to_grid(images: Tensor, nrow: int) -> Tensor:
    """``(N, 3, H, W)`` float in [0, 1] or uint8 → ``(3, H', W')`` float grid in [0, 1]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"log_image_grid needs (N, 3, H, W) images with N >= 1, got {tuple(images.shape)}")
    if nrow < 1:
        raise ValueError(f"nrow={nrow} must be >= 1")
    images = images.detach().cpu()
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float().clamp(0.0, 1.0)
    return make_grid(images, nrow=nrow, padding=2, pad_value=1.0)


def _save_png(grid: Tensor, path: Path) -> None:
    """Write ``grid`` as a PNG atomically (a temporary file in the same folder, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)  # (H, W, 3)
    atomic_write(path, lambda temp: Image.fromarray(array).save(temp, format="PNG"))


def _send_to_loggers(trainer: L.Trainer, tag: str, grid: Tensor) -> None:
    """Hand the grid to every logger that takes images; a failing logger only warns."""
    for logger in trainer.loggers:
        try:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, global_step=trainer.global_step)
            elif hasattr(logger, "log_image"):  # WandbLogger, NeptuneLogger, ...
                array = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
                logger.log_image(key=tag, images=[array], step=trainer.global_step)
        except Exception as error:  # never stop training for a picture
            rank_zero_warn(f"{type(logger).__name__} could not log image {tag!r}: {error}")


def log_image_grid(module: L.LightningModule, tag: str, images: Tensor, nrow: int = 8) -> str | None:
    """Save ``images`` as one grid PNG in the run's log folder and send it to image loggers.

    Call it on rank zero only (it does no collective operation).

    Args:
        module: The LightningModule; its trainer gives the folder, epoch, step and loggers.
        tag: Name of the image, e.g. ``val/colorization`` (``/`` and other characters that
            don't belong in a file name become ``_`` in the file name).
        images: ``(N, 3, H, W)`` float in [0, 1] (clamped) or uint8.
        nrow: Images per row of the grid.

    Returns:
        The path of the saved PNG, or ``None`` when there is no trainer or log folder, or
        writing failed.
    """
    grid = _to_grid(images, nrow)  # (3, H', W')
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return None
    try:
        log_dir = log_folder(trainer)
    except Exception as error:
        rank_zero_warn(f"no log folder for image {tag!r}: {error}")
        log_dir = None
    saved = None
    if log_dir:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", tag).strip("_.") or "image"
        path = Path(log_dir) / "images" / f"{name}_epoch{trainer.current_epoch:03d}.png"
        try:
            _save_png(grid, path)
            saved = str(path)
        except OSError as error:
            rank_zero_warn(f"could not save image {tag!r} to {path}: {error}")
    _send_to_loggers(trainer, tag, grid)
    return saved


def save_confusion_matrix(
    module: L.LightningModule, tag: str, matrix: Tensor, names: list[str]
) -> str | None:
    """Render a confusion matrix (rows: true, columns: predicted) to PNG in the log folder."""
    if module.trainer.logger is None:  # no logger, no log folder: don't write into the cwd
        return None
    log_dir = log_folder(module.trainer)  # rank zero only: not the collective trainer.log_dir
    if not log_dir:
        return None
    from visiontransfer.visualize import confusion_figure

    fig = confusion_figure(matrix, names, f"{tag}, epoch {module.current_epoch}")
    folder = os.path.join(log_dir, "images")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{tag}_epoch{module.current_epoch:03d}.png")
    atomic_write(path, lambda temp: fig.savefig(temp, dpi=100, format="png"))
    with Image.open(path) as image:  # the same picture to TensorBoard & co.
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1).float() / 255.0
    _send_to_loggers(module.trainer, tag, pixels)
    return path
