"""Config and input mistakes: one line naming the key or path and the fix, before any training."""

from __future__ import annotations

from pathlib import Path

import pytest

from visiontransfer.cli import main

REPO = Path(__file__).resolve().parents[1]
ROTATION = str(REPO / "configs" / "pretrain" / "rotation_quickstart.yaml")
CPC = str(REPO / "configs" / "pretrain" / "contrastive_patches_quick.yaml")
FINETUNE = str(REPO / "configs" / "transfer" / "quickstart_finetune.yaml")


def error_line(args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> str:
    """Run ``visiontransfer`` in-process; return its one-line error (exit status 2)."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    assert not list(tmp_path.rglob("*.ckpt")), "no training may start"
    return lines[0]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_misspelled_model_argument_suggests_the_right_one(capsys, tmp_path: Path) -> None:
    line = error_line(["fit", "--config", ROTATION, "--model.init_args.lrr=0.1"], capsys, tmp_path)
    assert "--model.init_args.lrr is not an argument of visiontransfer.pretext.RotationPrediction" in line
    assert "did you mean --model.init_args.lr?" in line


def test_misspelled_trainer_flag_suggests_the_right_one(capsys, tmp_path: Path) -> None:
    line = error_line(["fit", "--config", ROTATION, "--trainer.max_epocs=2"], capsys, tmp_path)
    assert "--trainer.max_epocs is not an option; did you mean --trainer.max_epochs?" in line


def test_misspelled_key_in_a_config_file(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(ROTATION).read_text().replace("max_epochs:", "max_epocs:"))
    line = error_line(["fit", "--config", str(bad)], capsys, tmp_path)
    assert "trainer.max_epocs" in line and "did you mean trainer.max_epochs?" in line


def test_wrong_type_names_the_key_and_the_type(capsys, tmp_path: Path) -> None:
    line = error_line(["fit", "--config", ROTATION, "--model.init_args.lr=fast"], capsys, tmp_path)
    assert "--model.init_args.lr=fast: expected a 'float'" in line


def test_unknown_class_path_suggests_a_class(capsys, tmp_path: Path) -> None:
    args = ["fit", "--config", ROTATION, "--model.class_path=visiontransfer.pretext.RotationPredictor"]
    line = error_line(args, capsys, tmp_path)
    assert "no such class; did you mean visiontransfer.pretext.RotationPrediction?" in line


def test_missing_data_folder_names_the_flag(capsys, tmp_path: Path) -> None:
    args = ["fit", "--config", ROTATION, f"--data.init_args.root={tmp_path / 'nowhere'}"]
    line = error_line(args, capsys, tmp_path)
    assert "--data.root=" in line and "nowhere" in line and "does not exist" in line


def test_image_smaller_than_the_patch_grid(capsys, tmp_path: Path) -> None:
    args = ["fit", "--config", CPC, "--data.init_args.image_size=16", "--trainer.fast_dev_run=true"]
    line = error_line(args, capsys, tmp_path)
    assert "--data.image_size=16" in line and "--model.patch_size" in line


def test_num_classes_disagreeing_with_the_data(capsys, tmp_path: Path) -> None:
    args = [
        "fit", "--config", FINETUNE, "--model.init_args.backbone=resnet10t",
        "--model.init_args.num_classes=3", "--trainer.fast_dev_run=true",
    ]  # fmt: skip
    line = error_line(args, capsys, tmp_path)
    assert "--model.num_classes=3 but the data has num_classes 10: drop --model.num_classes" in line


def test_trainer_refusal_is_one_line_naming_the_trainer(capsys, tmp_path: Path) -> None:
    args = ["fit", "--config", ROTATION, "--trainer.accelerator=cpu", "--trainer.strategy=fsdp"]
    line = error_line(args, capsys, tmp_path)
    assert "--trainer: The strategy `fsdp` requires a GPU accelerator" in line
