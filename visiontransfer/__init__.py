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
