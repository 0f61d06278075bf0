"""Tar shards: writing, streaming across ranks and workers, resuming, training on them."""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from visiontransfer.cli import main as cli_main
from visiontransfer.data import ClassificationDataModule, PretrainDataModule
from visiontransfer.data.datasets import collate_samples
from visiontransfer.data.shards import ShardLoader, ShardStream, read_index, write_shards
from visiontransfer.data.transforms import eval_transform, train_transform
from visiontransfer.errors import ConfigError, MissingPathError
from visiontransfer.pretext import RotationPrediction
from visiontransfer.transfer import ImageClassifier

PER_CLASS = 12


@pytest.fixture
def shard_dir(
    cifar10_dir: Path, tmp_path: Path, link_files: Callable[[Iterable[Path], Path], list[Path]]
) -> Path:
    """60 real CIFAR-10 JPEGs of 5 classes in shards of 16 (and 6 held out for validation)."""
    tree = tmp_path / "tree"
    for cls in sorted(p.name for p in (cifar10_dir / "train").iterdir())[:5]:
        link_files(sorted((cifar10_dir / "train" / cls).iterdir())[:PER_CLASS], tree / cls)
    write_shards(str(tree), str(tmp_path / "shards"), shard_size=16, labeled=True, val_fraction=0.1)
    return tmp_path / "shards"


def keys(samples: Iterable[dict[str, Any]]) -> list[int]:
    return [int(s["index"]) for s in samples]


def test_shards_hold_the_original_bytes_labels_and_an_index(shard_dir: Path, tmp_path: Path) -> None:
    index = read_index(str(shard_dir))
    assert index["samples"] == 54 and index["val_samples"] == 6
    assert [s["samples"] for s in index["shards"]] == [16, 16, 16, 6]
    assert len(index["classes"]) == 5
    with tarfile.open(shard_dir / "shard-000000.tar") as tar:
        names = tar.getnames()
        first = tar.extractfile(names[0])
        assert first is not None and first.read()[:2] == b"\xff\xd8"  # JPEG bytes, not re-encoded
    assert names[0].endswith(".jpg") and names[1].endswith(".cls")


def test_one_stream_yields_every_training_image_once_with_its_label(shard_dir: Path) -> None:
    stream = ShardStream(str(shard_dir), eval_transform(32), buffer_size=8)
    samples = list(stream)
    assert len(samples) == len(stream) == 54
    assert len(set(keys(samples))) == 54
    assert all(s["image"].shape == (3, 32, 32) for s in samples)
    assert {s["label"] for s in samples} == set(range(5))


def test_ranks_get_equal_shares_and_epochs_reshuffle(shard_dir: Path) -> None:
    parts = []
    for rank in range(2):
        stream = ShardStream(str(shard_dir), eval_transform(32), buffer_size=8)
        stream.rank, stream.world_size = rank, 2
        parts.append(keys(stream))
    assert len(parts[0]) == len(parts[1]) == 27
    assert len(set(parts[0]) | set(parts[1])) >= 44  # shards dealt to ranks; the short one cycles
    stream = ShardStream(str(shard_dir), eval_transform(32), buffer_size=8)
    first = keys(stream)
    stream.epoch = 1
    assert keys(stream) != first and sorted(keys(stream)) == sorted(first)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_mid_epoch_with_the_same_batches(shard_dir: Path, workers: int) -> None:
    def loader() -> ShardLoader:
        stream = ShardStream(str(shard_dir), train_transform(32), buffer_size=8)
        return ShardLoader(stream, 8, num_workers=workers, collate_fn=collate_samples)

    reference = loader()
    list(reference)  # epoch 0
    full = list(reference)  # epoch 1
    assert sum(len(b["index"]) for b in full) == 54 and len(full) == len(reference) == 7
    interrupted = loader()
    list(interrupted)
    batches = iter(interrupted)
    seen = [next(batches) for _ in range(3)]
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches_done": 3}
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert [keys_of(b) for b in seen + rest] == [keys_of(b) for b in full]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(seen + rest, full, strict=True))


def keys_of(batch: dict[str, Any]) -> list[int]:
    return batch["index"].tolist()


def test_pretraining_reads_shards_through_the_datamodule(shard_dir: Path, tmp_path: Path) -> None:
    data = PretrainDataModule(shards=str(shard_dir), image_size=32, batch_size=8, num_workers=0)
    model = RotationPrediction(backbone="resnet10t", head_hidden_dim=16)
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, data)
    assert trainer.global_step == 7  # 54 images in batches of 8
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


def test_missing_index_and_shard_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(MissingPathError, match=r"--data\.shards=.*no index\.json.*visiontransfer shard"):
        PretrainDataModule(shards=str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        cli_main(["shard", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert "nowhere" in capsys.readouterr().err


def test_classification_reads_labeled_shards_through_the_datamodule(
    shard_dir: Path, cifar10_dir: Path, tmp_path: Path
) -> None:
    data = ClassificationDataModule(shards=str(shard_dir), image_size=32, batch_size=8, num_workers=0)
    assert data.num_classes == 5 and data.classes == sorted(data.classes)
    model = ImageClassifier(backbone="resnet10t", num_classes=data.num_classes, strategy="finetune", lr=1e-3)
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, data)
    assert trainer.global_step == 7  # 54 training images in batches of 8
    assert data.datasets["val"].samples == 6  # the val-* shards
    seen = {int(label) for batch in data.val_dataloader() for label in batch["label"]}
    assert seen <= set(range(5)) and seen  # labels stored in the shards, classes from index.json
    assert model.num_classes == 5


def test_classification_shard_errors_name_the_flag_and_the_fix(shard_dir: Path, tmp_path: Path) -> None:
    unlabeled = tmp_path / "unlabeled"
    write_shards(str(shard_dir.parent / "tree"), str(unlabeled), shard_size=16)
    with pytest.raises(ConfigError, match=r"--data\.shards=.*no labels.*--labeled"):
        ClassificationDataModule(shards=str(unlabeled))
    with pytest.raises(ConfigError, match=r"--data\.samples_per_class.*--data\.root or --data\.manifest"):
        ClassificationDataModule(shards=str(shard_dir), samples_per_class=2)
    with pytest.raises(ConfigError, match=r"one of --data\.root, --data\.manifest or --data\.shards"):
        ClassificationDataModule(shards=str(shard_dir), root=str(tmp_path))
    no_val = tmp_path / "no_val"
    write_shards(str(shard_dir.parent / "tree"), str(no_val), shard_size=16, labeled=True)
    with pytest.raises(ConfigError, match=r"no val-\* shards: give --data\.val_root"):
        ClassificationDataModule(shards=str(no_val)).setup("fit")
    with pytest.raises(ConfigError, match=r"no val-\* shards"):
        PretrainDataModule(shards=str(no_val)).setup("fit")


def test_cli_transfer_from_shards(shard_dir: Path, tmp_path: Path) -> None:
    cli_main([
        "fit", "--config", "configs/transfer/linear_probe.yaml", "--model.backbone", "resnet10t",
        "--model.small_input_stem", "false", "--data.shards", str(shard_dir), "--data.num_workers", "0",
        "--data.batch_size", "8", "--trainer.fast_dev_run", "2", "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
