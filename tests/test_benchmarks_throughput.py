"""benchmarks/throughput.py runs end to end on real JPEGs and prints its table."""

from __future__ import annotations

import json
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
