"""The embedding benchmark (``benchmarks/embed.py``) on tiny settings: every part runs and reports
sane figures. No timing is asserted: the figures depend on the machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

bench = load_benchmark("embed.py")


def test_throughput_and_faiss_parts(cifar10_dir: Path) -> None:
    args = [
        "--parts",
        "throughput",
        "faiss",
        "--data",
        str(cifar10_dir / "train"),
        "--backbone",
        "test_resnet",
    ]
    args += [
        "--image-size",
        "32",
        "--images",
        "24",
        "--batch-size",
        "8",
        "--repeats",
        "1",
        "--vectors",
        "3000",
    ]
    results = bench.main(args)
    throughput, search = results["throughput"], results["faiss"]
    assert throughput["images"] == 24 and throughput["ratio"] > 0
    assert search["nlist"] == 219 and 0 <= search["ivf_recall_at_10"] <= 1 and search["exact_build_s"] >= 0


def test_memory_child_measures_a_complete_run(tmp_path: Path) -> None:
    result = bench.memory_child(600, 256, str(tmp_path / "rows"))
    assert result["rows"] == 600 and result["dim"] == 96
    assert result["peak_with_load_mb"] >= result["peak_embed_and_merge_mb"] >= 0
    assert result["file_mb"] == pytest.approx(600 * 96 * 4 / 2**20, rel=0.01)
