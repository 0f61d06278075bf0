"""Bad input at the command line (#15): a truncated checkpoint, a YAML syntax error, an export
folder that is a file or not empty, a full disk while checkpointing, an unwritable run folder.
Each gets one line naming the flag or file and the fix; nothing written earlier is lost."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

import visiontransfer
from visiontransfer import checkpoint_io
from visiontransfer.backbones.weights import CorruptCheckpointError
from visiontransfer.cli import main

REPO = Path(__file__).resolve().parents[1]
ROTATION = str(REPO / "configs" / "pretrain" / "rotation_quickstart.yaml")
FINETUNE = str(REPO / "configs" / "transfer" / "quickstart_finetune.yaml")
TINY_FIT = [
    "--model.backbone=resnet10t", "--model.head_hidden_dim=8", "--data.synthetic_size=32",
    "--data.batch_size=8", "--data.num_workers=0", "--data.image_size=32", "--trainer.max_epochs=2",
    "--trainer.limit_val_batches=0", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
]  # fmt: skip


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``visiontransfer ARGS`` in-process: exit status and the ``error:`` lines it printed."""
    try:
        main(args)
        code = 0
    except SystemExit as exited:
        code = int(exited.code or 0)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if "error:" in line]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def truncated(tmp_path_factory: pytest.TempPathFactory, rotation_checkpoint) -> Path:
    """A real RotNet checkpoint cut to half its bytes (a copy interrupted, a full disk)."""
    ckpt, _ = rotation_checkpoint(tmp_path_factory.mktemp("ckpt") / "good.ckpt")
    cut = ckpt.with_name("truncated.ckpt")
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return cut


def test_a_truncated_checkpoint_as_backbone_is_one_line(truncated: Path, capsys) -> None:
    code, lines = run(["fit", "--config", FINETUNE, f"--model.backbone={truncated}"], capsys)
    assert code == 2 and len(lines) == 1
    assert (
        "--model.backbone=" in lines[0]
        and "truncated.ckpt" in lines[0]
        and "truncated or not a checkpoint" in lines[0]
    )
    assert "Namespace(" not in lines[0]


def test_a_truncated_or_foreign_checkpoint_in_export_and_load_backbone(
    truncated: Path, tmp_path: Path, capsys
) -> None:
    code, lines = run(["export", str(truncated), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(lines) == 1 and "truncated or not a checkpoint" in lines[0]
    with pytest.raises(CorruptCheckpointError, match=r"truncated\.ckpt.*truncated or not a checkpoint"):
        visiontransfer.load_backbone(str(truncated))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="is empty"):
        visiontransfer.load_backbone(str(empty))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)  # a plain state dict, not Lightning's
    with pytest.raises(CorruptCheckpointError, match="not a Lightning checkpoint"):
        visiontransfer.load_backbone(str(foreign))


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    rotations: [0, 90\n    lr: 0.1\n")
    code, lines = run(["fit", "--config", ROTATION, "--config", str(bad)], capsys)
    assert code == 2 and len(lines) == 1
    assert "bad.yaml line" in lines[0] and "fix the YAML syntax there" in lines[0]
    assert "<unicode string>" not in lines[0]


def test_export_refuses_a_file_and_a_non_empty_folder_unless_overwrite(
    rotation_checkpoint, tmp_path: Path, capsys
) -> None:
    ckpt, _ = rotation_checkpoint(tmp_path / "model.ckpt")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    code, lines = run(["export", str(ckpt), "--out", str(a_file)], capsys)
    assert code == 2 and "--out=" in lines[0] and "is a file" in lines[0]
    assert a_file.read_text() == "mine"
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("kept")
    code, lines = run(["export", str(ckpt), "--out", str(out)], capsys)
    assert code == 2 and "exists and is not empty" in lines[0] and "--overwrite" in lines[0]
    code, _ = run(["export", str(ckpt), "--out", str(out), "--overwrite"], capsys)
    assert code == 0 and (out / "model.safetensors").is_file() and (out / "keep.txt").read_text() == "kept"


def test_a_full_disk_while_checkpointing_keeps_the_previous_one_and_is_one_line(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save

    def save_then_fill_the_disk(obj: dict, handle: object, *args: object, **kwargs: object) -> None:
        if obj["epoch"] >= 1:  # epoch 0's checkpoints are written; the disk is full after that
            handle.write(b"partial")  # type: ignore[attr-defined]
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", save_then_fill_the_disk)
    code, lines = run(["fit", "--config", ROTATION, *TINY_FIT, "--trainer.default_root_dir=run"], capsys)
    assert code == 1 and len(lines) == 1
    kept = list(Path("runs").rglob("*.ckpt"))
    folder = kept[0].parent
    assert "could not write checkpoint " in lines[0] and f" in {folder}: No space left on device" in lines[0]
    assert "--ckpt_path last" in lines[0]
    assert all(torch.load(p, weights_only=False)["epoch"] == 0 for p in kept)  # epoch 0's, loadable
    assert not [p for p in folder.iterdir() if p.suffix != ".ckpt"]  # no partial file left


def test_an_unwritable_run_folder_is_reported_before_training(tmp_path: Path, capsys) -> None:
    (tmp_path / "occupied").write_text("a file where the run folder should go")
    args = ["fit", "--config", ROTATION, *TINY_FIT, "--trainer.logger.init_args.save_dir=occupied/runs"]
    code, lines = run(args, capsys)
    assert code == 2 and len(lines) == 1
    assert "--trainer.logger.init_args.save_dir='occupied/runs' is not writable" in lines[0]
    assert not list(tmp_path.rglob("*.ckpt"))
