"""benchmarks/quickstart_tuning.py: both quickstart arms over the same grid, real fits, tiny sizes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from benchmark_scripts import load_benchmark


def test_tuning_runs_both_arms_over_the_grid_and_names_the_best(
    tmp_path: Path, rotation_checkpoint: Callable[..., tuple[Path, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = rotation_checkpoint(tmp_path / "rotation.ckpt", backbone="test_resnet", small_input_stem=True)[0]
    tuning = load_benchmark("quickstart_tuning.py")
    args = ["--ckpt", str(ckpt), "--lrs", "1e-3", "3e-3", "--epochs", "2", "3", "--seeds", "0", "1",
            "--labeled-images", "96", "--workers", "0"]  # fmt: skip
    results = tuning.main(args)
    # Scratch: every (lr, epochs); pretrained: every lr at the first epoch count.
    assert set(results) == {("scratch", lr, e) for lr in (1e-3, 3e-3) for e in (2, 3)} | {
        ("pretrained", lr, 2) for lr in (1e-3, 3e-3)
    }
    assert all(len(v) == 2 and all(0.0 <= s <= 1.0 for s in v) for v in results.values())
    printed = capsys.readouterr().out
    assert (
        printed.count("test top-1") == 6
        and "best pretrained: lr" in printed
        and "best scratch: lr" in printed
    )
    with pytest.raises(SystemExit):
        tuning.main(["--ckpt", str(tmp_path / "missing.ckpt")])
    assert "missing.ckpt: no such file" in capsys.readouterr().err
