"""benchmarks/pretext_cifar10.py evaluates given checkpoints next to a random init, on real files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from benchmark_scripts import load_benchmark


def test_checkpoints_mode_prints_pretrained_and_random_figures(
    cifar_tree: Callable[..., Path],
    rotation_checkpoint: Callable[..., tuple[Path, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = load_benchmark("pretext_cifar10.py")
    ckpt, trained = rotation_checkpoint(tmp_path / "rotation.ckpt", backbone="resnet10t")
    loaded, random = module.from_checkpoint("rotation", str(ckpt), 0)
    for name, value in trained.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[name], value), name
    assert any(
        not torch.equal(random.backbone.state_dict()[n], v) for n, v in trained.backbone.state_dict().items()
    )
    data = tmp_path / "cifar"
    for split in ("train", "test"):
        cifar_tree(data / split, classes=("cat", "dog", "ship"), per_class=8, split=split)
    results = module.main([
        "--data", str(data), "--checkpoints", f"rotation={ckpt}", "--bank-per-class", "5",
        "--query", "12", "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    figures = results["methods"]["rotation"]
    assert set(figures["pretrained"]) == {"knn_top1", "probe_top1"} and figures["seconds"] is None
    assert "| rotation |" in capsys.readouterr().out
    assert (tmp_path / "out" / "results.json").is_file()
