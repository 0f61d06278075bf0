"""The ``visiontransfer`` command: the console script run as a user runs it (a subprocess, on real
files), and its help and error lines in-process (the same ``main``; starting Python and Lightning
again costs ~15 s a test here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from visiontransfer.cli import main

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


def in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``visiontransfer ARGS`` in this process: exit status, stdout, stderr."""
    try:
        main(args)
        code = 0
    except SystemExit as exited:
        code = int(exited.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_subcommands(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = in_process(["--help"], capsys)
    assert code == 0
    for sub in ("fit", "validate", "test", "predict", "quickstart", "report", "export", "seeds", "shard"):
        assert sub in out


def test_unknown_key_is_a_clear_error(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = REPO / "configs" / "pretrain" / "rotation.yaml"
    code, _, err = in_process(["fit", "--config", str(config), "--model.init_args.backbone_nme=x"], capsys)
    assert code == 2 and "backbone_nme" in err


def test_bad_backbone_name_suggests(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = REPO / "configs" / "pretrain" / "rotation.yaml"
    code, _, err = in_process(["fit", "--config", str(config), "--model.backbone=resnet19"], capsys)
    assert code == 2 and "resnet19" in err and "resnet18" in err


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


def test_missing_data_root_names_flag(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = REPO / "configs" / "pretrain" / "rotation.yaml"
    args = ["fit", "--config", str(config), f"--data.root={tmp_path / 'nope'}", "--trainer.fast_dev_run=true"]
    code, _, err = in_process(args, capsys)
    assert code == 2 and "--data.root" in err and "nope" in err
