"""The CamVid segmentation benchmark (``benchmarks/segment_camvid.py``): the paired per-seed gain
against hand-computed values, and the whole script on a small CamVid tree (both backbones
fine-tuned and tested, the table and the gain written, a rerun trains nothing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

bench = load_benchmark("segment_camvid.py")


def _run(backbone: str, seed: int, miou: float) -> dict[str, object]:
    return {"backbone": backbone, "seed": seed, "test/miou": miou}


def test_paired_gains_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [
        _run("random init", 0, 0.30), _run("pretrained", 0, 0.32),
        _run("random init", 1, 0.31), _run("pretrained", 1, 0.30),
        _run("random init", 2, 0.29), _run("pretrained", 2, 0.32),
        _run("random init", 3, 0.25),  # no pretrained run for seed 3: not paired
    ]  # fmt: skip
    gains = bench.paired_gains(runs)
    assert list(gains) == [0, 1, 2]
    assert [round(g, 6) for g in gains.values()] == [0.02, -0.01, 0.03]
    line = bench.print_gains(runs)
    # mean (0.02 - 0.01 + 0.03) / 3 = 0.0133; sample std sqrt((0.0067² + 0.0233² + 0.0167²) / 2) = 0.0208
    assert line.endswith("seed 0 +0.020, seed 1 -0.010, seed 2 +0.030; +0.013 ± 0.021 mIoU (3 seeds)")
    assert capsys.readouterr().out.strip() == line
    assert bench.print_gains([_run("random init", 0, 0.3)]) == ""


def test_script_on_a_small_camvid_tree(
    camvid_tree: Path, rotation_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pretext, _ = rotation_checkpoint(tmp_path / "rotation.ckpt")  # resnet10t, one step
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["segment_camvid.py"])
    out = tmp_path / "bench"
    argv = [
        "--backbone", str(pretext), "--data", str(camvid_tree), "--epochs", "1", "--image-size", "96",
        "--crop-size", "64", "--batch-size", "4", "--workers", "0", "--seeds", "0", "1",
        "--recipe-args=--model.decoder_width 16", "--out", str(out),
    ]  # fmt: skip
    runs = bench.main(argv)
    assert [(r["backbone"], r["seed"]) for r in runs] == [
        ("random init", 0),
        ("pretrained", 0),
        ("random init", 1),
        ("pretrained", 1),
    ]
    for run in runs:
        assert run["labels"] == 8 and 0 <= run["test/miou"] <= 1 and "test/iou_bicyclist" in run
        assert run["command"].endswith("--data.crop_size=64 --model.decoder_width 16")  # split as flags
    results = (out / "segment_results.md").read_text()
    assert "| random init |" in results and "| pretrained |" in results
    assert "paired by seed: seed 0 " in results and "(2 seeds)" in results
    stored = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(stored) == 4
    again = bench.main(argv)  # every run found: nothing trains, the same figures come back
    assert [r["test/miou"] for r in again] == [r["test/miou"] for r in runs]
    assert len((out / "runs.jsonl").read_text().splitlines()) == 4
