"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check, tiny, on the CPU, over real
CIFAR-10 JPEGs packed into shards by its own --pack step; one results file with every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = (
    "environment", "throughput_rotation", "throughput_simclr", "throughput_dino", "jpeg_decode",
    "loss_agreement", "fsdp_dino_vit", "fsdp_mae", "compile",
)  # fmt: skip


def numbers(value: Any) -> list[float]:
    """Every finite number in a JSON value (booleans are not numbers here)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return []


def run(args: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    # The Python running the tests runs the check (--venv takes an executable).
    command = ["bash", str(SCRIPT), "--venv", sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_dry_run_records_every_step_with_a_result(cifar10_dir: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    packed = run(["--pack", str(cifar10_dir / "train"), str(shards), "--images", "240"], timeout=120)
    assert packed.returncode == 0, packed.stderr[-3000:]
    index = json.loads((shards / "index.json").read_text())
    assert index["samples"] + index["val_samples"] == 240 and index["val_samples"] >= 1

    out = tmp_path / "out" / "gpu_check.json"
    done = run(["--dry-run", "--data", str(shards), "--out", str(out)], timeout=540)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["mode"] == "dry-run" and results["complete"] is True
    assert list(results["steps"]) == list(STEPS)
    for name, step in results["steps"].items():
        assert step["status"] == "ok", (name, step.get("error"), step.get("log_tail"))
        assert "error" not in step
        assert numbers(step.get("result")), f"{name} recorded no numeric result"
        assert step.get("substituted"), f"{name}: the dry run's substitution is not recorded"
    steps = results["steps"]
    for method in ("rotation", "simclr", "dino"):
        row = steps[f"throughput_{method}"]["result"]["methods"][method]
        assert row["ceiling"] > 0 and row["pipeline_ratio"] > 0 and row["device_decode_ratio"] > 0
    assert steps["jpeg_decode"]["result"]["images"] == 240
    assert steps["jpeg_decode"]["result"]["device_images_per_s"] > 0
    assert steps["loss_agreement"]["result"]["max_rel_diff"] == 0.0  # CPU against CPU, same seed
    for name in ("fsdp_dino_vit", "fsdp_mae"):
        assert steps[name]["result"]["strategy"] == "ddp" and "fsdp" in steps[name]["substituted"]
        assert steps[name]["result"]["epochs"] == 1 and steps[name]["result"]["loss_finite"]
    assert steps["compile"]["result"]["methods"]["rotation"]["compiled_ratio"] > 0
    assert results["summary"]["statuses"] == {"ok": len(STEPS)}
    text = out.with_suffix(".txt").read_text()
    assert all(f"== {name}: ok" in text for name in STEPS) and "summary full_over_ceiling" in text
    assert out.with_suffix(".log").stat().st_size > 0
