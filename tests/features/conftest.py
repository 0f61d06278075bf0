"""Shared by the feature tests: a small real CIFAR-10 tree (with an unreadable file planted) and a
one-step RotNet checkpoint, made once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CLASSES = ("cat", "dog")


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory: pytest.TempPathFactory, cifar10_dir: Path, link_files: Any) -> Path:
    """``train/`` (10 images per class and a corrupt ``train/cat/broken.jpg``), ``val/`` (2 per class)
    and ``test/`` (5 per class) class-per-folder trees of CIFAR-10 symlinks."""
    root = tmp_path_factory.mktemp("tree")
    for split, start, count in (("train", 0, 10), ("val", 10, 2), ("test", 0, 5)):
        source = "test" if split == "test" else "train"
        for name in CLASSES:
            files = sorted((cifar10_dir / source / name).glob("*.jpg"))[start : start + count]
            link_files(files, root / split / name)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


@pytest.fixture(scope="session")
def rotation_ckpt(tmp_path_factory: pytest.TempPathFactory, rotation_checkpoint: Any) -> tuple[Path, Any]:
    """``(path, model)`` of a one-step RotNet (``test_resnet``) checkpoint."""
    return rotation_checkpoint(tmp_path_factory.mktemp("rotation") / "rotation.ckpt", backbone="test_resnet")


@pytest.fixture(scope="session")
def embed_small() -> Any:
    """``embed_small(backbone, out, **kwargs)``: :func:`visiontransfer.embed` at the tests' small
    settings (32 px, batches of 4, no workers, no progress bar)."""
    import visiontransfer

    def run(backbone: str, out: Path, **kwargs: Any) -> Any:
        settings = {"image_size": 32, "batch_size": 4, "num_workers": 0, "progress": False, **kwargs}
        return visiontransfer.embed(backbone, str(out), **settings)

    return run
