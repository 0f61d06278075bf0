"""Shared fixtures: the real images of ``../shared/data`` (tests skip with a reason without them).

The data is never copied into the repository: tests build the small trees they need in
``tmp_path`` out of symbolic links to a few files.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))  # the tests' helper modules

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Under pytest-xdist (`make test` runs one worker per core) each worker, and every process a
    # test starts, computes on its share of the cores instead of all of them at once.
    _THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _THREADS)
    import torch

    torch.set_num_threads(int(_THREADS))

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
"""``../shared/data`` next to the repository (CI provides it)."""


def _require(path: Path, what: str) -> Path:
    if not path.is_dir():
        pytest.skip(
            f"{what} not found at {path.resolve()}: tests on real image files need "
            "../shared/data next to the repository (CI provides it)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder."""
    return _require(SHARED_DATA, "shared test data")


@pytest.fixture(scope="session")
def cifar10_dir(shared_data: Path) -> Path:
    """CIFAR-10 as ``{train,test}/<class>/NNNN.jpg`` (32x32 JPEG)."""
    return _require(shared_data / "cifar10", "CIFAR-10 sample")


@pytest.fixture(scope="session")
def raccoon_dir(shared_data: Path) -> Path:
    """Raccoon photos ``raccoon-N.jpg`` of various sizes (raccoon-150, -152, -161 are greyscale)."""
    return _require(shared_data / "raccoon" / "images", "raccoon images")


@pytest.fixture(scope="session")
def camvid_tree(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CamVid tree (8 train, 2 val, 3 test pairs, linked) with its ``classes.txt``."""
    camvid = _require(shared_data / "camvid" / "images" / "train", "CamVid").parents[1]
    root = tmp_path_factory.mktemp("camvid")
    for split, count in (("train", 8), ("val", 2), ("test", 3)):
        for image in sorted((camvid / "images" / split).glob("*.jpg"))[:count]:
            for kind, source in (
                ("images", image),
                ("masks", camvid / "masks" / split / f"{image.stem}.png"),
            ):
                (root / kind / split).mkdir(parents=True, exist_ok=True)
                os.symlink(source, root / kind / split / source.name)
    os.symlink(camvid / "classes.txt", root / "classes.txt")
    return root


def _link_files(files: Iterable[Path], folder: Path) -> list[Path]:
    """Symbolically link ``files`` into ``folder`` (created), keeping their names."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for file in files:
        link = folder / file.name
        os.symlink(file, link)
        links.append(link)
    return links


@pytest.fixture(scope="session")
def link_files() -> Callable[[Iterable[Path], Path], list[Path]]:
    """``link_files(files, folder)``: symbolically link files into ``folder`` (created)."""
    return _link_files


@pytest.fixture
def cifar_tree(cifar10_dir: Path) -> Callable[..., Path]:
    """Factory: ``cifar_tree(dest, classes=("cat", "dog"), per_class=4, split="train", start=0)``
    links ``per_class`` CIFAR-10 images of each class into ``dest/<class>/`` and returns ``dest``."""

    def make(
        dest: Path,
        classes: Iterable[str] = ("cat", "dog"),
        per_class: int = 4,
        split: str = "train",
        start: int = 0,
    ) -> Path:
        for name in classes:
            files = sorted((cifar10_dir / split / name).glob("*.jpg"))[start : start + per_class]
            assert len(files) == per_class, f"only {len(files)} CIFAR-10 {split}/{name} images"
            _link_files(files, dest / name)
        return dest

    return make


def _rotation_checkpoint(
    path: Path, backbone: str = "resnet10t", small_input_stem: bool = False
) -> tuple[Path, Any]:
    """Train a tiny RotNet one step on the embedded set and save its checkpoint at ``path``."""
    import lightning as L

    from visiontransfer.data import PretrainDataModule
    from visiontransfer.pretext import RotationPrediction

    L.seed_everything(0)
    model = RotationPrediction(backbone=backbone, small_input_stem=small_input_stem, head_hidden_dim=8)
    data = PretrainDataModule(image_size=32, batch_size=8, synthetic_size=16, num_workers=0)
    trainer = L.Trainer(
        max_steps=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=path.parent,
    )  # fmt: skip
    trainer.fit(model, data)
    trainer.save_checkpoint(path)
    return path, model


@pytest.fixture(scope="session")
def rotation_checkpoint() -> Callable[..., tuple[Path, Any]]:
    """``rotation_checkpoint(path, backbone=..., small_input_stem=...)``: a one-step RotNet .ckpt."""
    return _rotation_checkpoint
