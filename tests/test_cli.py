"""The ``visiontransfer`` console script, run as a user runs it: a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10"
needs_cifar = pytest.mark.skipif(
    not CIFAR.is_dir(), reason=f"real CIFAR-10 files not found at {CIFAR} (see DEVELOPERS.md)"
)


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("visiontransfer", path=str(Path(sys.executable).parent)) or "visiontransfer"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def small_image_folder(tmp_path: Path, per_class: int = 8) -> Path:
    """A folder of real CIFAR-10 JPEGs in nested class folders (read as unlabeled images)."""
    root = tmp_path / "images"
    for cls in sorted(p.name for p in (CIFAR / "train").iterdir())[:4]:
        (root / cls).mkdir(parents=True)
        for src in sorted((CIFAR / "train" / cls).iterdir())[:per_class]:
            shutil.copy(src, root / cls / src.name)
    return root


def test_help_lists_subcommands(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for sub in ("fit", "validate", "test", "predict", "quickstart"):
        assert sub in result.stdout


def test_unknown_key_is_a_clear_error(tmp_path: Path) -> None:
    config = REPO / "configs" / "pretrain" / "rotation.yaml"
    result = run_cli("fit", "--config", str(config), "--model.init_args.backbone_nme=x", cwd=tmp_path)
    assert result.returncode != 0
    assert "backbone_nme" in result.stderr


def test_bad_backbone_name_suggests(tmp_path: Path) -> None:
    config = REPO / "configs" / "pretrain" / "rotation.yaml"
    result = run_cli("fit", "--config", str(config), "--model.backbone=resnet19", cwd=tmp_path)
    assert result.returncode != 0
    assert "resnet19" in result.stderr and "resnet18" in result.stderr


@needs_cifar
def test_fit_rotation_on_real_folder(tmp_path: Path) -> None:
    root = small_image_folder(tmp_path)
    config = REPO / "configs" / "pretrain" / "rotation.yaml"
    result = run_cli(
        "fit", "--config", str(config), f"--data.root={root}", "--data.batch_size=8",
        "--data.num_workers=0", "--data.val_fraction=0.25", "--model.backbone=resnet10t",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "visiontransfer run finished." in result.stdout
    ckpts = list((tmp_path / "runs" / "rotation").rglob("*.ckpt"))
    assert any(p.name == "last.ckpt" for p in ckpts), ckpts
    metrics = next((tmp_path / "runs" / "rotation").rglob("metrics.csv")).read_text()
    assert "val/rot_acc" in metrics and "train/loss" in metrics


def test_missing_data_root_names_flag(tmp_path: Path) -> None:
    config = REPO / "configs" / "pretrain" / "rotation.yaml"
    result = run_cli(
        "fit", "--config", str(config), f"--data.root={tmp_path / 'nope'}", "--trainer.fast_dev_run=true",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--data.root" in result.stderr and "nope" in result.stderr


def test_quickstart_runs_and_reports(tmp_path: Path) -> None:
    result = run_cli("quickstart", "--fast", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pretrained" in result.stdout and "from scratch" in result.stdout
    assert "checkpoints:" in result.stdout and "logs:" in result.stdout
    assert (tmp_path / "runs" / "quickstart_rotation").is_dir()
    assert (tmp_path / "runs" / "quickstart_transfer").is_dir()
