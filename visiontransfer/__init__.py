"""visiontransfer: self-supervised pretraining and transfer learning for computer vision."""

import os

# albumentations checks online for a newer release at import: ~2 s lost offline (clusters).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"


def load_backbone(path: str, features_only: bool = False, num_classes: int = 0):  # type: ignore[no-untyped-def]
    """A plain timm model from a ``.ckpt``, an exported folder or a ``.safetensors`` file.

    See :func:`visiontransfer.export.load_backbone`.
    """
    from visiontransfer.export import load_backbone as _load

    return _load(path, features_only=features_only, num_classes=num_classes)


def embed(*args, **kwargs):  # type: ignore[no-untyped-def]
    """The pooled backbone features of every image of a folder, manifest or shard set, written in
    chunks to a folder and returned as :class:`~visiontransfer.features.Embeddings`.

    See :func:`visiontransfer.features.extract.embed`.
    """
    from visiontransfer.features.extract import embed as _embed

    return _embed(*args, **kwargs)


def neighbors(*args, **kwargs):  # type: ignore[no-untyped-def]
    """The nearest images of saved embeddings to query images.

    See :func:`visiontransfer.features.nearest.neighbors`.
    """
    from visiontransfer.features.nearest import neighbors as _neighbors

    return _neighbors(*args, **kwargs)


def export(checkpoint: str, out: str, format: str = "safetensors", **options):  # type: ignore[no-untyped-def]
    """Export a checkpoint's model into a hub-ready folder (``safetensors``, ``onnx`` or ``torch-export``).

    See :func:`visiontransfer.export.export` (after the first call, ``visiontransfer.export`` is that
    module, which is callable the same way).
    """
    from visiontransfer.export import export as _export

    return _export(checkpoint, out, format, **options)


def load_model(path: str, format: str | None = None):  # type: ignore[no-untyped-def]
    """The whole model of an export folder, ``.onnx`` / ``.pt2`` file or ``.ckpt``: ``(B, 3, H, W)``
    uint8 images → the task's outputs.

    See :func:`visiontransfer.deploy.runtime.load_model`.
    """
    from visiontransfer.deploy.runtime import load_model as _load

    return _load(path, format)
