"""benchmarks/throughput.py runs end to end on real JPEGs and prints its table."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark


def test_throughput_prints_ceiling_pipeline_and_per_core_figures(
    cifar10_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_benchmark("throughput.py")
    figures = tmp_path / "throughput.json"
    module.main([
        "--data", str(cifar10_dir / "train" / "cat"), "--methods", "rotation", "--backbone", "resnet10t",
        "--batch-size", "8", "--steps", "2", "--warmup", "1", "--repeats", "1", "--workers", "0",
        "--pipeline-images", "40", "--decode-on-device", "--channels-last", "--json", str(figures),
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert "| rotation |" in out and "ratio" in out and "decode on device" in out
    assert "CPU data pipeline, one process: ours" in out
    written = json.loads(figures.read_text())
    row = written["methods"]["rotation"]
    assert row["ceiling"] > 0 and row["pipeline_ratio"] > 0 and row["device_decode_ratio"] > 0
    assert written["settings"]["channels_last"] is True and written["per_core"]["ours"] > 0


def test_throughput_times_a_detector_on_voc_files(
    raccoon_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_benchmark("throughput.py")
    figures = tmp_path / "detection.json"
    module.main([
        "--task", "detection", "--data", str(raccoon_dir.parent), "--backbone", "resnet10t",
        "--fpn-channels", "32", "--image-size", "128", "--batch-size", "2", "--steps", "2", "--warmup", "1",
        "--repeats", "1", "--workers", "0", "--profile", "3", "--json", str(figures),
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert "| fasterrcnn |" in out and "steps/s" in out and "where the main process's time goes" in out
    written = json.loads(figures.read_text())
    row = written["methods"]["fasterrcnn"]
    assert row["ceiling_steps"] > 0 and row["pipeline_steps"] > 0 and row["pipeline_ratio"] > 0
    assert row["pipeline_main_cpu"] > 0 and len(row["profile"]) == 3 and "per_core" not in written
    assert written["settings"]["task"] == "detection"


def test_throughput_detector_follows_the_data_size_and_can_take_torchvisions_pooling() -> None:
    from torchvision.ops import MultiScaleRoIAlign

    from visiontransfer.transfer.detection import CPUMultiScaleRoIAlign

    module = load_benchmark("throughput.py")
    args = argparse.Namespace(backbone="resnet10t", image_size=96, fpn_channels=16, roi_align="ours")
    ours = module.make_detector("fasterrcnn", args, 2)
    assert ours.detector.transform.min_size == (96,) and ours.detector.transform.max_size == 96
    assert isinstance(ours.detector.roi_heads.box_roi_pool, CPUMultiScaleRoIAlign)
    args.roi_align = "torchvision"
    pool = module.make_detector("fasterrcnn", args, 2).detector.roi_heads.box_roi_pool
    assert type(pool) is MultiScaleRoIAlign


def test_throughput_times_classification_fine_tuning(
    cifar_tree: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_benchmark("throughput.py")
    tree = cifar_tree(tmp_path / "cifar", per_class=12)
    module.main([
        "--task", "classification", "--data", str(tree), "--backbone", "resnet10t", "--batch-size", "4",
        "--steps", "2", "--warmup", "1", "--repeats", "1", "--workers", "0",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert "| classification |" in out and "CPU data pipeline" not in out
