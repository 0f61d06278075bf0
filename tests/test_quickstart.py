"""``visiontransfer quickstart``: the embedded default and ``--data`` on real files, at tiny
budgets (``--fast``): every promised file, the verdict; the ``--minutes`` planner; TensorBoard."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from PIL import Image

from visiontransfer.commands import quickstart
from visiontransfer.commands.quickstart_data import prepare_folder, suggested_image_size

PROMISED = [
    "pretext.ckpt", "backbone/model.safetensors", "backbone/config.json", "backbone/hubconf.py",
    "report/cells.jsonl", "report/report.md", "report/report.png", "quickstart.html", "quickstart.png",
    "label_efficiency.png", "neighbours.png", "confusion.png",
]  # fmt: skip


def _check_outputs(out: Path, printed: str, result: dict) -> None:
    for name in PROMISED:
        assert (out / name).is_file(), name
    for picture in ("quickstart.png", "confusion.png", "neighbours.png"):
        with Image.open(out / picture) as image:
            assert image.format == "PNG" and image.width > 300
    verdict = [line for line in printed.splitlines() if line.startswith("at 10% of the labels")]
    assert len(verdict) == 1 and "pretrained against" in verdict[0] and "from scratch" in verdict[0]
    assert ("pretraining helped" in verdict[0]) != ("no clear gain" in verdict[0])
    assert f'visiontransfer.load_backbone("{out / "backbone"}")' in printed
    assert result["verdict"][0] == verdict[0]
    assert "visiontransfer fit --config" in (out / "report" / "report.md").read_text()


@pytest.fixture
def small_folder(
    tmp_path: Path, cifar10_dir: Path, link_files: Callable[[Iterable[Path], Path], list[Path]]
) -> Path:
    """A class-per-folder tree of 3 CIFAR-10 classes, 15 real JPEGs each (no train/test split)."""
    root = tmp_path / "photos"
    for name in ("cat", "ship", "truck"):
        link_files(sorted((cifar10_dir / "train" / name).glob("*.jpg"))[:15], root / name)
    return root


def test_quickstart_on_a_real_folder(
    small_folder: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "qs"
    args = ["--data", str(small_folder), "--fast", "--workers", "0", "--out", str(out), "--fractions", "0.1"]
    result = quickstart.main(args)
    printed = capsys.readouterr().out
    _check_outputs(out, printed, result)
    assert (out / "data" / "train" / "cat").is_dir() and len(
        list((out / "data" / "test" / "cat").iterdir())
    ) == 3
    cells = (out / "report" / "cells.jsonl").read_text().splitlines()
    assert len(cells) == 2  # pretrained and scratch, one seed (--fast)
    # Rerun: everything is found, nothing trains again (the confusion matrices come from the cells).
    from visiontransfer.commands import quickstart_summary

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cell was trained again for the summary")

    monkeypatch.setattr(quickstart_summary, "fit_then_test", no_training)
    again = quickstart.main(args)
    assert "(found)" in capsys.readouterr().out and again["rows"] == result["rows"]
    # Cells of an older release (no confusion matrix): the summary runs the first seed's two cells.
    import json

    from visiontransfer.commands.lightning_cli import fit_then_test

    cells_file = out / "report" / "cells.jsonl"
    old = [{k: v for k, v in json.loads(line).items() if k not in ("confusion", "classes")}
           for line in cells_file.read_text().splitlines()]  # fmt: skip
    cells_file.write_text("".join(json.dumps(c) + "\n" for c in old))
    runs: list[object] = []
    monkeypatch.setattr(
        quickstart_summary, "fit_then_test", lambda *a, **k: runs.append(a) or fit_then_test(*a, **k)
    )
    assert quickstart.main(args)["rows"] == result["rows"] and len(runs) == 2
    capsys.readouterr()
    # Another pretext into the same folder: refused in one line, the first run's files kept.
    with pytest.raises(SystemExit) as exited:
        quickstart.main([*args, "--pretext", "rotation"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"--out={out} holds a pretext run of other settings" in error and len(error.splitlines()) == 1
    assert (out / "pretext.ckpt").is_file()


def test_quickstart_on_the_embedded_set(tmp_path: Path, capsys) -> None:
    out = tmp_path / "qs"
    result = quickstart.main(["--fast", "--workers", "0", "--out", str(out)])
    _check_outputs(out, capsys.readouterr().out, result)


def test_prepare_folder_splits_each_class_and_keeps_train_test_trees(
    small_folder: Path, tmp_path: Path
) -> None:
    made = prepare_folder(str(small_folder), tmp_path / "made")
    counts = {split: sum(1 for _ in (made / split).rglob("*.jpg")) for split in ("train", "test")}
    assert counts == {"train": 36, "test": 9}
    assert prepare_folder(str(made), tmp_path / "other") == made  # train/ + test/ are used as they are
    assert suggested_image_size(made / "train") == 32  # CIFAR-sized


def test_minutes_picks_the_epochs_to_fit_the_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    options = argparse.Namespace(
        pretext="simclr", fractions=None, seeds=[0, 1, 2], image_size=None, data=None, workers=0, fast=False
    )
    plan = quickstart.default_plan(options)
    monkeypatch.setattr(quickstart, "_calibrate", lambda plan, out: (0.004, 0.002))  # s per image
    short, long = quickstart.budget_plan(plan, 2, tmp_path), quickstart.budget_plan(plan, 20, tmp_path)
    assert 1 <= short.pretrain_epochs < long.pretrain_epochs
    assert short.base_epochs <= long.base_epochs
    # Half of 2 minutes at 4 ms per image over 4096 images: 3 epochs.
    assert short.pretrain_epochs == int(60 / (0.004 * 4096)) and "--minutes 2" in short.notes[0]


def test_tensorboard_logger_option_gets_metrics_and_pictures(tmp_path: Path) -> None:
    """The README's TensorBoard option: a real colorization fit writes scalars and its picture grid
    to TensorBoard event files (``tensorboard`` is an optional extra, in the dev tools)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from visiontransfer.commands.lightning_cli import VisionTransferCLI, config_dir

    VisionTransferCLI(args=[
        "fit", "--config", str(config_dir() / "pretrain/colorization_quick.yaml"),
        "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={tmp_path}", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1", "--data.synthetic_size=96",
        "--data.batch_size=8", "--data.num_workers=0", "--model.prior_batches=1",
        f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {tmp_path}"
    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()
    assert "train/loss" in tags["scalars"] and "val/colorization" in tags["images"]


def test_minutes_steps_the_image_size_down_when_too_few_epochs_fit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = argparse.Namespace(
        pretext="simclr", fractions=None, seeds=[0], image_size=96, data=None, workers=0, fast=False
    )
    plan = quickstart.default_plan(options)
    monkeypatch.setattr(quickstart, "_calibrate", lambda plan, out: (0.02, 0.01))  # s per image at 96 px
    # 1 minute: half of it at 20 ms per image over 4096 images is 0.4 epochs at 96 px; at 32 px (a
    # ninth of the pixels) 3.3 epochs, the first size where MIN_PRETRAIN_EPOCHS fit.
    small = quickstart.budget_plan(plan, 1, tmp_path)
    assert small.image_size == 32 and small.pretrain_epochs == int(30 / (0.02 / 9 * 4096))
    assert "image size 32 px (from 96)" in small.notes[0]
    fixed = quickstart.budget_plan(plan, 1, tmp_path, fixed_size=True)  # --image-size given: kept
    assert fixed.image_size == 96 and fixed.pretrain_epochs == 1
    roomy = quickstart.budget_plan(plan, 60, tmp_path)
    assert roomy.image_size == 96
