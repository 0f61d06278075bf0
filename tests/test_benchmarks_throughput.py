"""benchmarks/throughput.py runs end to end on real JPEGs and prints its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def test_throughput_prints_ceiling_pipeline_and_per_core_figures(
    cifar10_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module
    spec.loader.exec_module(module)
    module.main([
        "--data", str(cifar10_dir / "train" / "cat"), "--methods", "rotation", "--backbone", "resnet10t",
        "--batch-size", "8", "--steps", "2", "--warmup", "1", "--repeats", "1", "--workers", "0",
        "--pipeline-images", "40", "--decode-on-device",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert "| rotation |" in out and "ratio" in out and "decode on device" in out
    assert "CPU data pipeline, one process: ours" in out
