"""``visiontransfer embed``: the pooled backbone features of every image of a source, on disk.

:func:`embed` runs a Lightning ``predict`` of :class:`FeatureExtractor` (a
:class:`~visiontransfer.system.BackboneSystem`: any backbone source, its own normalisation, the
CIE L lightness for a single-channel backbone) over
:class:`~visiontransfer.features.data.EmbeddingData` with
:class:`~visiontransfer.callbacks.embeddings.EmbeddingWriter`, which writes the rows chunk by
chunk into the output folder (:mod:`visiontransfer.features.store`). Killed, the same call resumes
with the chunks not yet written; with ``devices=N`` (or under ``torchrun`` / SLURM) every process
embeds its own chunks. The result is the :class:`~visiontransfer.features.store.Embeddings` the
folder loads into.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import Dataset

from visiontransfer import __version__
from visiontransfer.callbacks.embeddings import EmbeddingWriter
from visiontransfer.data.decode import DEFAULT_MAX_PIXELS
from visiontransfer.errors import ConfigError
from visiontransfer.features import store
from visiontransfer.features.data import EmbeddingData, Labels
from visiontransfer.features.store import Embeddings
from visiontransfer.system import BackboneSystem, is_backbone_file

_FLAG = re.compile(r"--(?:model|data)\.(\w+)")


def argument_flag(message: str) -> str:
    """Error messages of the reused constructors name ``--model.backbone``, ``--data.root``...;
    :func:`embed` and ``visiontransfer embed`` call them ``--backbone``, ``--root``."""
    return _FLAG.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


@contextmanager
def _arguments_named_as_embed() -> Iterator[None]:
    try:
        yield
    except ConfigError as error:
        raise type(error)(argument_flag(str(error))) from None


class FeatureExtractor(BackboneSystem):
    """Pooled backbone features for ``predict``: ``{"features": (B, D), "index": (B,)}``.

    The constructor is :class:`~visiontransfer.system.BackboneSystem`'s (``backbone`` is a timm
    name, or a pretext ``.ckpt``, transfer ``.ckpt``, export folder or ``.safetensors`` file).
    """

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        images = batch["image"]
        if images.shape[0] == 0:  # every file of the batch was unreadable
            return {
                "features": images.new_zeros((0, self.num_features), dtype=torch.float32),
                "index": batch["index"],
            }
        return {"features": self.features(images), "index": batch["index"]}


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of every weight and buffer: rows made with other weights are never mixed (a
    checkpoint overwritten by further training keeps its path, a random init depends on the seed)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_image_size(model: FeatureExtractor) -> int:
    """The size the backbone was trained at (its checkpoint's), else its timm default, else 224."""
    if model.backbone_spec.image_size:
        return int(model.backbone_spec.image_size)
    cfg: dict[str, Any] = getattr(model.backbone, "pretrained_cfg", {}) or {}
    size = cfg.get("input_size")
    return int(size[-1]) if size else 224


def build_extractor(
    backbone: str,
    pretrained: bool = False,
    small_input_stem: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> FeatureExtractor:
    """The feature extractor of ``backbone`` (a random init is drawn from ``seed``)."""
    with torch.random.fork_rng(devices=[]), _arguments_named_as_embed():
        torch.manual_seed(seed)
        return FeatureExtractor(
            backbone=backbone,
            pretrained=pretrained,
            small_input_stem=small_input_stem,
            backbone_kwargs=backbone_kwargs,
        )


def _plan(model: FeatureExtractor, data: EmbeddingData, settings: dict[str, Any]) -> dict[str, Any]:
    """What the rows are made of, in plain JSON types (``plan.json``, compared on resume)."""
    plan = {
        **settings,
        "architecture": model.backbone_spec.architecture,
        "weights": weights_fingerprint(model),
        "image_size": data.image_size,
        "source": data.describe_source(),
        "images": data.num_images,
        "chunk_size": data.chunk_size,
    }
    return json.loads(json.dumps(plan))


def embed(
    backbone: str,
    out: str,
    root: str | None = None,
    manifest: str | None = None,
    shards: str | None = None,
    dataset: Dataset[Any] | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    num_workers: int = -1,
    chunk_size: int = 10_000,
    dtype: str = "float32",
    normalize: bool = False,
    labels: Labels = "auto",
    pretrained: bool = False,
    small_input_stem: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    synthetic_size: int = 2048,
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    precision: str = "32-true",
    overwrite: bool = False,
    progress: bool = True,
) -> Embeddings:
    """Embed every image of a folder, manifest, shard set (or the embedded set) into ``out``.

    Args:
        backbone: A timm model name, or a pretext ``.ckpt``, transfer ``.ckpt``, export folder or
            ``.safetensors`` file (its architecture, stem and weights come from the file).
        out: Output folder (see :mod:`visiontransfer.features.store`). A folder holding these
            embeddings already is returned as it is; one with finished chunks of the same settings
            is resumed; one with other settings or other files is refused unless ``overwrite``.
        root: An image folder, read recursively; a class-per-folder tree gives labels.
        manifest: Instead: a text file of image paths, or a CSV with ``path`` (and ``label``).
        shards: Instead: a folder of tar shards written by ``visiontransfer shard``.
        dataset: Instead: a map-style dataset of samples (from Python only; unlabeled). With no
            source at all, the embedded procedural set.
        image_size: Side of the centre crops (default: the checkpoint's training size, else the
            timm model's input size, else 224).
        batch_size: Images per forward pass and process.
        num_workers: DataLoader workers per process (-1: one per core, at most 8).
        chunk_size: Images per chunk (rounded up to whole batches): the unit that is written,
            kept after a kill, and dealt to processes.
        dtype: ``float32`` or ``float16`` rows.
        normalize: L2-normalise the rows.
        labels: ``auto`` (labels where the source has classes) or ``none``.
        pretrained: With a timm name: timm's pretrained weights (downloads them).
        small_input_stem: With a timm name: remove the stem's early downsampling.
        backbone_kwargs: With a timm name: keyword arguments of ``timm.create_model``.
        seed: Seed of a random-init backbone and of the embedded set.
        max_pixels: Largest image decoded; larger ones are skipped as decompression bombs.
        synthetic_size: Images of the embedded set.
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``...).
        devices: Processes (devices) that share the work.
        strategy: Lightning strategy (``auto``; ``ddp`` with several devices).
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ``16-mixed``).
        overwrite: Replace what ``out`` holds.
        progress: Show a progress bar.

    Returns:
        The embeddings, loaded from ``out`` (rows memory-mapped).

    Raises:
        ConfigError: bad arguments, an unreadable source or backbone, an ``out`` in the way;
            the message names the argument (as ``--root``, ``--backbone``...).
    """
    if dtype not in store.DTYPES:
        raise ConfigError(f"--dtype={dtype!r} must be one of {', '.join(store.DTYPES)}")
    model = build_extractor(backbone, pretrained, small_input_stem, backbone_kwargs, seed)
    with _arguments_named_as_embed():
        data = EmbeddingData(
            out=out,
            root=root,
            manifest=manifest,
            shards=shards,
            dataset=dataset,
            image_size=image_size or default_image_size(model),
            batch_size=batch_size,
            num_workers=num_workers,
            chunk_size=chunk_size,
            labels=labels,
            max_pixels=max_pixels,
            synthetic_size=synthetic_size,
            seed=seed,
        )
        data.setup("predict")
    given = os.path.abspath(backbone) if is_backbone_file(backbone) else backbone
    settings = {
        "backbone": given,
        "pretrained": pretrained,
        "small_input_stem": small_input_stem,
        "backbone_kwargs": backbone_kwargs or {},
        "seed": seed,
        "dtype": dtype,
        "normalize": normalize,
        "labels": labels,
        "max_pixels": max_pixels,
    }
    plan = _plan(model, data, settings)
    if store.check_folder(out, plan, overwrite, "--out") == "complete":
        return Embeddings.load(out, "--out")
    meta = {"backbone_spec": model.backbone_spec.to_dict(), "classes": data.classes, "version": __version__}
    writer = EmbeddingWriter(out, plan, data.num_chunks, data.classes, dtype, normalize, overwrite, meta)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[writer],
        use_distributed_sampler=False,
        default_root_dir=out,
    )
    trainer.predict(model, datamodule=data, return_predictions=False)
    return Embeddings.load(out, "--out")


def embed_like(embeddings: Embeddings, out: str, backbone: str | None = None, **source: Any) -> Embeddings:
    """More images embedded exactly as ``embeddings`` were (backbone, image size, dtype,
    normalisation), e.g. the queries of a neighbour search.

    Args:
        embeddings: Saved embeddings whose settings to reuse.
        out: Output folder for the new rows.
        backbone: The backbone, where it has moved since (its weights must be the same).
        **source: ``root``, ``manifest``, ``shards`` or ``dataset``, and loader arguments
            (``batch_size``, ``num_workers``, ``labels``, ``progress``...).

    Raises:
        ConfigError: the backbone is gone, or its weights changed since.
    """
    plan = embeddings.meta["plan"]
    use = backbone or plan["backbone"]
    if is_backbone_file(use) and not os.path.exists(use):
        raise ConfigError(
            f"the backbone of these embeddings, {use!r}, no longer exists: pass --backbone with its new place"
        )
    keep = ("pretrained", "small_input_stem", "backbone_kwargs", "seed", "dtype", "normalize", "max_pixels")
    settings = {key: plan[key] for key in keep}
    made = embed(use, out, image_size=plan["image_size"], overwrite=True, **settings, **source)
    if made.meta["plan"]["weights"] != plan["weights"]:
        raise ConfigError(
            f"the backbone {use!r} holds other weights than when these embeddings were made "
            f"({embeddings.folder}): embed both sets with the same backbone"
        )
    return made
