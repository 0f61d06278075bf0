"""The transfer CLI on real CIFAR-10 files: pretext checkpoint → transfer checkpoint → export,
and several seeds in one command."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest

from visiontransfer.cli import main as cli_main
from visiontransfer.commands.lightning_cli import VisionTransferCLI, config_dir
from visiontransfer.data import PretrainDataModule
from visiontransfer.export import load_backbone
from visiontransfer.pretext import RotationPrediction

CLASSES = ("airplane", "cat", "ship")


@pytest.fixture
def cifar_split(tmp_path: Path, cifar_tree: Callable[..., Path]) -> Path:
    root = tmp_path / "cifar"
    cifar_tree(root / "train", CLASSES, per_class=12, split="train")
    cifar_tree(root / "test", CLASSES, per_class=4, split="test")
    return root


def _pretext_ckpt(tmp_path: Path, images: Path) -> Path:
    L.seed_everything(0)
    model = RotationPrediction(backbone="resnet10t", small_input_stem=True, head_hidden_dim=8)
    trainer = L.Trainer(
        max_steps=2, limit_val_batches=0, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(model, PretrainDataModule(root=str(images), image_size=32, batch_size=8, num_workers=0))
    path = tmp_path / "pretext.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_cli_pretext_to_transfer_on_real_files(
    cifar_split: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pretext = _pretext_ckpt(tmp_path, cifar_split / "train")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visiontransfer"])
    cli = VisionTransferCLI(
        args=[
            "fit", "--config", str(config_dir() / "transfer" / "finetune.yaml"),
            f"--model.backbone={pretext}", f"--data.root={cifar_split}", "--data.samples_per_class=8",
            "--data.batch_size=8", "--data.num_workers=0", "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
        ]
    )  # fmt: skip
    assert cli.datamodule.num_classes == 3 and cli.model.num_classes == 3
    assert list(cli.datamodule.train_label_counts()) == [8, 8, 8]
    last = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert last.is_file()
    # The transfer checkpoint exports like a pretext one, with the pretext's architecture and stem.
    cli_main(["export", str(last), "--out", str(tmp_path / "exported")])
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["visiontransfer"]["small_input_stem"] is True
    assert config["visiontransfer"]["method"] == "ImageClassifier"
    assert load_backbone(tmp_path / "exported").num_features == cli.model.num_features


def test_seeds_command_reports_mean_and_std(
    cifar_split: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visiontransfer"])
    summary = tmp_path / "summary.json"
    cli_main(
        [
            "seeds", "--seeds", "0", "1", "--summary", str(summary),
            "--config", str(config_dir() / "transfer" / "scratch.yaml"), "--model.backbone=resnet10t",
            f"--data.root={cifar_split}", "--data.samples_per_class=4", "--data.batch_size=8",
            "--data.num_workers=0", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "| test/top1 |" in out and "±" in out
    data = json.loads(summary.read_text())
    assert set(data["per_seed"]) == {"0", "1"}
    assert data["summary"]["test/top1"]["n"] == 2
