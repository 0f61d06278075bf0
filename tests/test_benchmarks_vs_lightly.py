"""benchmarks/vs_lightly.py: its helpers (arguments, timing, memory, kNN, the shared recipe), our side
end to end on real files, and the whole comparison only with ``VT_BENCH_LIGHTLY=1`` (it installs
lightly into an environment of its own, from PyPI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from benchmark_scripts import load_benchmark

vs = load_benchmark("vs_lightly.py")


def test_quick_fills_only_what_is_not_given() -> None:
    args = vs.parse_args(["--quick", "--epochs", "3"])
    assert (args.images, args.epochs, args.repeats, args.batch_size) == (256, 3, 1, 64)
    full = vs.parse_args([])
    assert (full.images, full.epochs, full.repeats, full.batch_size, full.workers) == (5000, 3, 2, None, 2)
    assert full.frameworks == ["ours", "lightly"] and full.out.is_absolute()
    with pytest.raises(SystemExit):
        vs.parse_args(["--images", "0"])


def test_batch_images_reads_both_sides_batches() -> None:
    images = torch.zeros(5, 3, 4, 4)
    assert vs.batch_images({"image": images.to(torch.uint8), "label": torch.zeros(5)}) == 5
    assert vs.batch_images(([images, images], torch.zeros(5), ["a"] * 5)) == 5  # lightly's
    assert vs.batch_images((images, torch.zeros(5))) == 5
    assert vs.batch_images({"label": torch.zeros(3)}) == 0


def test_images_per_second_is_the_median_after_the_first_epoch() -> None:
    epochs = [
        {"seconds": 10.0, "images": 100},
        {"seconds": 1.0, "images": 100},
        {"seconds": 4.0, "images": 100},
    ]
    assert vs.images_per_second(epochs) == pytest.approx(62.5)
    assert vs.images_per_second(epochs[:1]) == pytest.approx(10.0)


def test_epoch_timer_leaves_out_what_follows_the_last_batch(tmp_path: Path) -> None:
    out = tmp_path / "timer.json"
    timer = vs.EpochTimer(str(out))
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), is_global_zero=True)
    for _ in range(2):
        timer.on_train_epoch_start(trainer, None)
        for _ in range(3):
            timer.on_train_batch_end(trainer, None, None, {"image": torch.zeros(4, 3, 2, 2)}, 0)
        last = timer._last
        timer.on_train_epoch_end(trainer, None)
        assert timer.epochs[-1]["seconds"] == pytest.approx(last - timer._start)
    written = json.loads(out.read_text())
    assert [e["images"] for e in written["epochs"]] == [12, 12] and written["cuda_peak_bytes"] is None


def test_peak_memory_counts_the_children_of_the_process(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time\n"
        "hold = 'b = bytearray(300 * 2**20); import time; time.sleep(3)'\n"
        "child = subprocess.Popen([sys.executable, '-c', hold])\n"
        "time.sleep(3.5); child.wait()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    with vs.PeakMemory(proc.pid, interval=0.1) as peak:
        proc.wait()
    assert peak.rss > 300 * 2**20, peak.rss  # the grandchild's 300 MiB are in the parent's tree
    tree = vs._proc_tree(os.getpid())
    assert tree[0] == os.getpid() and vs._proc_memory(os.getpid(), "Rss") > 0


def test_knn_and_saved_backbones_use_one_code_path(tmp_path: Path) -> None:
    bank = (torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), torch.tensor([0, 0, 1, 1]))
    query = (torch.tensor([[1.0, 0.05], [0.05, 1.0]]), torch.tensor([0, 1]))
    assert vs.knn_top1(bank, query, 2) == 1.0
    # A lightly run's backbone file comes back through the package's spec, weights strictly loaded.
    from safetensors.torch import save_file

    from visiontransfer.backbones import create_backbone

    hp = {"backbone": "resnet10t", "in_chans": 3, "small_input_stem": True, "backbone_kwargs": None}
    saved = create_backbone("resnet10t", small_input_stem=True)
    save_file({k: v.contiguous() for k, v in saved.state_dict().items()}, tmp_path / "backbone.safetensors")
    (tmp_path / "spec.json").write_text(json.dumps({"hp": hp}))
    loaded = vs.load_trained_backbone("lightly", tmp_path)
    for name, value in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    features = vs.embed(loaded, torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8), batch_size=2)
    assert features.shape == (3, loaded.num_features)


def test_both_sides_get_the_config_recipe(tmp_path: Path) -> None:
    hp = vs.recipe()
    assert (hp["lr"], hp["temperature"], hp["jitter_strength"], hp["crop_scale_min"]) == (0.3, 0.5, 0.5, 0.08)
    assert hp["optimizer"] == "sgd" and hp["blur"] is False and hp["small_input_stem"] is True
    assert hp["min_lr_ratio"] == 0.01 and hp["val_fraction"] == 0.02 and hp["batch_size"] == 256
    args = vs.parse_args(["--data", str(tmp_path / "cifar"), "--warmup-epochs", "1", "--batch-size", "32"])
    args.seed = 0
    root = args.data / "train"
    spec = vs.lightly_spec(args, hp, [str(root / "cat" / "0001.jpg")], tmp_path / "run")
    assert spec["filenames"] == [os.path.join("cat", "0001.jpg")] and spec["hp"]["warmup_epochs"] == 1.0
    cmd = vs.ours_command(args, tmp_path / "m.txt", tmp_path / "run", tmp_path / "timer.json")
    assert cmd[cmd.index("--config") + 1] == str(vs.CONFIG)
    assert cmd[cmd.index("--data.batch_size") + 1] == "32" and "--model.init_args.warmup_epochs" in cmd
    callback = json.loads(next(c for c in cmd if c.startswith("--trainer.callbacks+=")).split("=", 1)[1])
    assert callback["class_path"] == "vs_lightly.EpochTimer"


def test_dino_recipe_and_model_args_reach_both_sides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hp = vs.recipe(vs.CONFIGS["dino"])
    assert hp["method"] == "dino" and (hp["out_dim"], hp["local_crops"], hp["local_crop_size"]) == (
        4096,
        6,
        16,
    )
    assert hp["gradient_clip_val"] == 3.0 and hp["center_momentum"] == 0.9  # a trainer value, a class default
    assert hp["final_momentum"] == 1.0 and hp["optimizer"] == "adamw"
    args = vs.parse_args(
        ["--method", "dino", "--model-args", "small_input_stem=false", "--profile-steps", "2"]
    )
    assert args.config == vs.CONFIGS["dino"]
    assert vs.model_overrides(args) == {"small_input_stem": "false"}
    cmd = vs.ours_command(args, tmp_path / "m.txt", tmp_path / "run", tmp_path / "timer.json")
    assert "--model.init_args.small_input_stem=false" in cmd
    callbacks = [json.loads(c.split("=", 1)[1]) for c in cmd if c.startswith("--trainer.callbacks+=")]
    assert [c["class_path"] for c in callbacks] == ["vs_lightly.EpochTimer", "vs_lightly.StepProfiler"]
    assert callbacks[1]["init_args"] == {"out": str(tmp_path / "run" / "profile.txt"), "steps": 2}
    with pytest.raises(SystemExit, match="key=value"):
        vs.model_overrides(vs.parse_args(["--model-args", "small_input_stem"]))
    with pytest.raises(SystemExit):
        vs.parse_args(["--profile-steps", "-1"])
    assert "--profile-steps must be >= 0" in capsys.readouterr().err


def test_step_profiler_writes_the_table_of_its_window(tmp_path: Path) -> None:
    out = tmp_path / "profile.txt"
    profiler = vs.StepProfiler(str(out), steps=2, first=1)
    trainer = SimpleNamespace(global_step=0, is_global_zero=True)
    weight = torch.randn(64, 64)
    for step in range(5):
        trainer.global_step = step
        profiler.on_train_batch_start(trainer, None, None, step)
        torch.mm(weight, weight)  # the profiled work
        trainer.global_step = step + 1
        profiler.on_train_batch_end(trainer, None, None, None, step)
        assert out.is_file() == (step >= 2)  # steps 1 and 2, written after the second
    text = out.read_text()
    assert text.startswith("steps 1-2: ") and "aten::mm" in text and "Self CPU" in text


def _three_classes(cifar_tree: Callable[..., Path], data: Path) -> Path:
    """Real CIFAR-10 JPEGs of 3 classes: 16 training and 4 test images each."""
    cifar_tree(data / "train", classes=("cat", "dog", "ship"), per_class=16)
    cifar_tree(data / "test", classes=("cat", "dog", "ship"), per_class=4, split="test")
    return data


@pytest.mark.slow
def test_our_side_end_to_end(
    cifar_tree: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``visiontransfer fit`` with the injected timer, then the kNN of its checkpoint (no lightly)."""
    data = _three_classes(cifar_tree, tmp_path / "cifar")
    results = vs.main([
        "--data", str(data), "--frameworks", "ours", "--images", "40", "--epochs", "2", "--repeats", "1",
        "--batch-size", "16", "--workers", "0", "--bank-per-class", "4", "--query", "12",
        "--threads", "1", "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    (run,) = results["runs"]
    assert [e["images"] for e in run["epochs"]] == [32, 32]  # 39 training files, batches of 16
    assert run["images_per_s"] > 0 and run["peak_rss"] > 0 and 0 <= run["knn_top1"] <= 1
    assert results["setup"]["train_images"] == 39 and "ratio" not in results["summary"]
    assert "| ours 0 |" in capsys.readouterr().out
    assert (tmp_path / "out" / "results.json").is_file()


@pytest.mark.skipif(
    os.environ.get("VT_BENCH_LIGHTLY") != "1",
    reason="installs lightly from PyPI into an environment of its own and trains both sides: "
    "set VT_BENCH_LIGHTLY=1",
)
def test_comparison_with_lightly_end_to_end(
    cifar_tree: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _three_classes(cifar_tree, tmp_path / "cifar")
    results = vs.main([
        "--data", str(data), "--images", "40", "--epochs", "2", "--repeats", "1", "--batch-size", "16",
        "--workers", "1", "--bank-per-class", "4", "--query", "12", "--threads", "1",
        "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    assert [r["framework"] for r in results["runs"]] == ["ours", "lightly"]
    assert [e["images"] for e in results["runs"][1]["epochs"]] == [32, 32]
    assert results["summary"]["ratio"]["images_per_s"] > 0
    assert "| lightly 0 |" in capsys.readouterr().out
