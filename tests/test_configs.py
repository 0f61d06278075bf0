"""Every YAML in configs/ parses and instantiates its model and datamodule."""

import sys
from pathlib import Path

import lightning as L
import pytest

from visiontransfer.commands.lightning_cli import VisionTransferCLI, config_dir

CONFIGS = sorted(config_dir().rglob("*.yaml"))


def test_configs_exist() -> None:
    names = {p.relative_to(config_dir()).as_posix() for p in CONFIGS}
    assert "pretrain/rotation.yaml" in names
    assert "pretrain/rotation_quickstart.yaml" in names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(config_dir()).as_posix())
def test_config_instantiates(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["visiontransfer"])
    cli = VisionTransferCLI(args=["--config", str(config), "--trainer.logger=false"], run=False)
    assert isinstance(cli.model, L.LightningModule)
    assert isinstance(cli.datamodule, L.LightningDataModule)
    assert cli.trainer.max_epochs is not None and cli.trainer.max_epochs >= 1
