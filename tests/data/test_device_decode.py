"""Decoding and cropping on the training device (``--data.decode_on_device``), run here on CPU."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from visiontransfer.data import PretrainDataModule
from visiontransfer.data.device_decode import (
    EncodedFileDataset,
    collate_encoded,
    crop_box,
    decode_images,
    decode_on_device,
)
from visiontransfer.data.index import PathTable
from visiontransfer.data.shards import write_shards
from visiontransfer.errors import ConfigError
from visiontransfer.pretext import RotationPrediction

CPU = torch.device("cpu")


def test_crop_box_stays_inside_the_image_and_follows_the_seed() -> None:
    for seed in range(200):
        x0, y0, x1, y1 = crop_box(50, 30, np.random.default_rng(seed), (0.2, 1.0))
        assert 0 <= x0 < x1 <= 50 and 0 <= y0 < y1 <= 30
        assert (x1 - x0) * (y1 - y0) <= 50 * 30 + 1e-6
    assert crop_box(50, 30, np.random.default_rng(7)) == crop_box(50, 30, np.random.default_rng(7))
    assert crop_box(50, 30, np.random.default_rng(7)) != crop_box(50, 30, np.random.default_rng(8))
    assert crop_box(40, 40, np.random.default_rng(0), (1.0, 1.0))[2] == pytest.approx(40, abs=6)


def test_every_valid_image_decodes_upright_as_pillow_does(image_zoo: Any) -> None:
    """JPEGs go through TorchCodec's decoder (EXIF applied); the rest through Pillow."""
    names = sorted(image_zoo.valid)
    dataset = EncodedFileDataset(PathTable("", [str(image_zoo.valid[n].path) for n in names]))
    samples = [dataset[(i, 0)] for i in range(len(names))]
    decoded = decode_images([s["encoded"] for s in samples], names, CPU)
    for name, image in zip(names, decoded, strict=True):
        assert isinstance(image, torch.Tensor), f"{name}: {image}"
        got = image.permute(1, 2, 0).numpy().astype(int)
        expected = image_zoo.valid[name].expected
        assert got.shape == expected.shape, name
        assert np.abs(got - expected).max() <= image_zoo.valid[name].atol + 2, name
    assert {samples[names.index(f"exif_orientation_{o}.jpg")]["orientation"] for o in (6, 8)} == {6, 8}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_decodes_as_pillow_turns_it(orientation: int, tmp_path: Path) -> None:
    """A real JPEG file with each EXIF orientation: the device decoder's image equals Pillow's
    (``exif_transpose``), and the header parse reports the upright size the crop box is drawn in."""
    from PIL import Image

    from visiontransfer.data.decode import load_rgb

    pixels = np.random.default_rng(orientation).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    path = tmp_path / "oriented.jpg"
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = orientation
    stored.save(path, quality=95, exif=exif.tobytes())
    expected = load_rgb(path)  # Pillow, EXIF applied
    sample = EncodedFileDataset(PathTable("", [str(path)]))[(0, 0)]
    image = decode_images([sample["encoded"]], [str(path)], CPU)[0]
    assert isinstance(image, torch.Tensor) and sample["orientation"] == orientation
    got = image.permute(1, 2, 0).numpy().astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected.astype(int)).max() <= 2


def test_broken_files_are_skipped_with_their_reason(image_zoo: Any) -> None:
    names = sorted(image_zoo.broken)
    dataset = EncodedFileDataset(
        PathTable("", [str(image_zoo.broken[n].path) for n in names]), max_pixels=10_000_000
    )
    batch = decode_on_device(collate_encoded([dataset[(i, 0)] for i in range(len(names))]), 16, CPU)
    assert batch["image"].shape == (0, 3, 16, 16)
    reasons = dict(batch["skipped"])
    assert sorted(Path(p).name for p in reasons) == names
    for name in names:
        reason = reasons[str(image_zoo.broken[name].path)]
        assert re.search(image_zoo.broken[name].reason + "|not a readable JPEG header", reason), (
            name,
            reason,
        )


def test_full_box_without_flip_is_the_decoded_image_and_flip_mirrors_it(cifar10_dir: Path) -> None:
    files = sorted((cifar10_dir / "train").rglob("*.jpg"))[:4]
    dataset = EncodedFileDataset(PathTable("", [str(f) for f in files]))
    batch = collate_encoded([dataset[(i, i)] for i in range(4)])
    reference = [t.clone() for t in decode_images(batch["encoded"], batch["where"], CPU)]
    batch["box"] = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).repeat(4, 1)
    batch["flip"] = torch.tensor([False, True, False, True])
    out = decode_on_device(batch, 32, CPU)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (4, 3, 32, 32)
    for i, image in enumerate(reference):
        expected = image.flip(-1) if i % 2 else image
        assert torch.equal(out["image"][i], expected)  # type: ignore[arg-type]
    assert out["index"].tolist() == [0, 1, 2, 3] and "encoded" not in out


def _tree(
    cifar10_dir: Path, tmp_path: Path, link_files: Callable[[Iterable[Path], Path], list[Path]]
) -> Path:
    for cls in sorted(p.name for p in (cifar10_dir / "train").iterdir())[:3]:
        link_files(sorted((cifar10_dir / "train" / cls).iterdir())[:20], tmp_path / "tree" / cls)
    return tmp_path / "tree"


def _first_batches(data: PretrainDataModule, n: int = 2) -> list[torch.Tensor]:
    data.setup("fit")
    batches = []
    for batch in data.train_dataloader():
        batches.append(data.on_before_batch_transfer(batch, 0)["image"])
        if len(batches) == n:
            break
    return batches


def test_datamodule_decodes_on_device_reproducibly_and_trains(
    cifar10_dir: Path, tmp_path: Path, link_files: Callable[[Iterable[Path], Path], list[Path]]
) -> None:
    tree = _tree(cifar10_dir, tmp_path, link_files)
    options = {"image_size": 24, "batch_size": 8, "decode_on_device": True, "val_fraction": 0.1}
    one = _first_batches(PretrainDataModule(root=str(tree), num_workers=0, **options))  # type: ignore[arg-type]
    two = _first_batches(PretrainDataModule(root=str(tree), num_workers=2, **options))  # type: ignore[arg-type]
    assert one[0].shape == (8, 3, 24, 24) and one[0].dtype == torch.uint8
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))  # per-sample seeds, not workers
    data = PretrainDataModule(root=str(tree), num_workers=0, **options)  # type: ignore[arg-type]
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(RotationPrediction(backbone="resnet10t", head_hidden_dim=16), data)
    assert trainer.global_step == 6  # 54 training images, batches of 8
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


def test_shards_decode_on_device(
    cifar10_dir: Path, tmp_path: Path, link_files: Callable[[Iterable[Path], Path], list[Path]]
) -> None:
    tree = _tree(cifar10_dir, tmp_path, link_files)
    write_shards(str(tree), str(tmp_path / "shards"), shard_size=16, val_fraction=0.1)
    data = PretrainDataModule(
        shards=str(tmp_path / "shards"), image_size=24, batch_size=8, num_workers=0, decode_on_device=True
    )
    batches = _first_batches(data, 3)
    assert [b.shape for b in batches] == [(8, 3, 24, 24)] * 3


def test_decode_on_device_needs_files_and_crop_flip(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--data\.decode_on_device true needs"):
        PretrainDataModule(decode_on_device=True)
    with pytest.raises(ConfigError, match=r"--data\.augment crop_flip"):
        PretrainDataModule(root=str(tmp_path), decode_on_device=True, augment="flip")
