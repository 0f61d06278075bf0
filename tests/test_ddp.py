"""Every pretext and transfer module under DDP: 2 processes (gloo, CPU) through the CLI take the
same steps as 1 process on the same global batch (same losses, same weights within tolerance).

BatchNorm statistics are per process (SyncBatchNorm needs GPUs; on GPUs pass
``--trainer.sync_batchnorm true``), so BatchNorm layers are held in eval mode here; the
ResumableSampler gives rank r the samples r, r + 2, ... of the 1-process order (for detection,
arranged into single-orientation batches on every rank); SimCLR and CPC
draw their negatives from every process (``gather_with_grads``). Random on-device augmentations
come from each process's own stream, so the stochastic parts are fixed here (SimCLR's views,
CPC's per-patch augmentation); the online evaluators have their own DDP test
(tests/callbacks/test_online_eval.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
GLOBAL_BATCH = 16
STEPS = 2

CASES = {
    "rotation": ("pretrain/rotation_quickstart.yaml", {}),
    "colorization": ("pretrain/colorization_quick.yaml", {"prior_batches": 2}),
    "contrastive_patches": ("pretrain/contrastive_patches_quick.yaml", {"augment_patches": False}),
    "simclr": ("pretrain/simclr_quick.yaml", {"class_path": "ddp_helpers.FixedViewsSimCLR"}),
    "classification": ("transfer/quickstart_finetune.yaml", {"samples_per_class": None}),
    # RetinaNet: its loss is a mean over images (FCOS normalises by the batch's foreground count
    # and Faster R-CNN samples anchors at random, so neither is comparable step for step).
    "detection": ("transfer/detect_retinanet.yaml", {"backbone": "resnet10t", "fpn_channels": 32}),
}


def run(case: str, devices: int, tmp_path: Path) -> dict[str, object]:
    config, model_args = CASES[case]
    model_args = dict(model_args)
    data_args = {
        "image_size": 32,
        "batch_size": GLOBAL_BATCH // devices,
        "num_workers": 0,
        "synthetic_size": 64,
    }
    if "samples_per_class" in model_args:
        data_args["samples_per_class"] = model_args.pop("samples_per_class")
    if case == "detection":
        data_args.update(image_size=64, augment="flip")
    model: dict[str, object] = {"init_args": model_args}
    if "class_path" in model_args:
        model = {"class_path": model_args.pop("class_path"), "init_args": model_args}
    out = tmp_path / f"{case}_{devices}.pt"
    override = {
        "trainer": {
            "accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
            "max_steps": STEPS, "max_epochs": 1, "limit_val_batches": 0,
            "num_sanity_val_steps": 0, "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False,
            "callbacks": [
                {"class_path": "ddp_helpers.FrozenBatchNorm"},
                {"class_path": "ddp_helpers.SaveState", "init_args": {"path": str(out)}},
            ],
        },
        "model": model,
        "data": {"init_args": data_args},
    }  # fmt: skip
    cli("fit", config, override, tmp_path / f"{case}_{devices}.yaml")
    return torch.load(out, weights_only=True)


def cli(subcommand: str, config: str, override: dict[str, object], override_file: Path, *extra: str) -> str:
    """``visiontransfer SUBCOMMAND [EXTRA] --config CONFIG --config OVERRIDE`` in a subprocess, in
    the override's folder, with the test helpers importable; it must succeed. Returns its stdout."""
    override_file.write_text(yaml.safe_dump(override))
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests" / "helpers"), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "visiontransfer.cli",
        subcommand,
        *extra,
        "--config",
        str(CONFIGS / config),
    ]
    result = subprocess.run(
        [*command, "--config", str(override_file)], cwd=override_file.parent, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_take_the_same_steps_as_one(case: str, tmp_path: Path) -> None:
    one, two = run(case, 1, tmp_path), run(case, 2, tmp_path)
    assert len(one["losses"]) == len(two["losses"]) == STEPS  # type: ignore[arg-type]
    assert two["losses"] == pytest.approx(one["losses"], rel=2e-3, abs=1e-4)
    weights_one, weights_two = one["weights"], two["weights"]
    assert isinstance(weights_one, dict) and isinstance(weights_two, dict)
    assert weights_one.keys() == weights_two.keys()
    for name, value in weights_one.items():
        if value.is_floating_point():
            torch.testing.assert_close(weights_two[name], value, rtol=2e-3, atol=2e-4, msg=name)


WRITERS = {
    "classification": (
        "transfer/quickstart_finetune.yaml",
        "visiontransfer.callbacks.PredictionWriter",
        "csv",
    ),
    "detection": ("transfer/detect_retinanet.yaml", "visiontransfer.callbacks.DetectionWriter", "json"),
}


def predict(case: str, devices: int, tmp_path: Path) -> Path:
    """``visiontransfer predict`` with ``devices`` processes; the path of the writer's file."""
    config, writer, suffix = WRITERS[case]
    out = tmp_path / f"{case}_{devices}.{suffix}"
    data: dict[str, object] = {"batch_size": 2, "num_workers": 0, "synthetic_size": 64}
    model: dict[str, object] = {}
    if case == "detection":
        data["image_size"] = 64
        model = {"backbone": "resnet10t", "fpn_channels": 32}
    override = {
        "trainer": {
            "accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
            "logger": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path / str(devices)),
            "callbacks": [{"class_path": writer, "init_args": {"path": str(out)}}],
        },
        "model": {"init_args": model},
        "data": {"init_args": data},
    }  # fmt: skip
    cli("predict", config, override, tmp_path / f"predict_{case}_{devices}.yaml")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(WRITERS))
def test_predict_with_two_processes_writes_every_image_once(case: str, tmp_path: Path) -> None:
    """Each process predicts its share (the sampler pads with repeats); rank 0 writes them all."""
    one, two = predict(case, 1, tmp_path), predict(case, 2, tmp_path)
    if case == "classification":
        rows_one = [line.split(",") for line in one.read_text().splitlines()]
        rows_two = [line.split(",") for line in two.read_text().splitlines()]
        assert len(rows_two) == len(rows_one) > 2 and len({r[0] for r in rows_two}) == len(rows_two)
        for a, b in zip(rows_one[1:], rows_two[1:], strict=True):
            assert a[:2] == b[:2] and float(a[2]) == pytest.approx(float(b[2]), abs=1e-5)
        return
    images_one = json.loads(one.with_name(f"{one.stem}_images.json").read_text())["images"]
    images_two = json.loads(two.with_name(f"{two.stem}_images.json").read_text())["images"]
    assert images_two == images_one and len(images_one) > 2
    dets_one, dets_two = json.loads(one.read_text()), json.loads(two.read_text())
    assert [d["image_id"] for d in dets_two] == [d["image_id"] for d in dets_one]
    for a, b in zip(dets_one, dets_two, strict=True):
        assert a["bbox"] == pytest.approx(b["bbox"], abs=0.05) and a["score"] == pytest.approx(
            b["score"], abs=1e-4
        )


@pytest.mark.slow
def test_seeds_command_with_two_processes_and_a_logger(tmp_path: Path) -> None:
    """Fit (validation, confusion-matrix image in the log folder) and test per seed under DDP:
    rank-zero-only code must not call collectives (it hung here once), one summary is printed."""
    override = {
        "trainer": {
            "accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_epochs": 1,
            "enable_progress_bar": False, "default_root_dir": str(tmp_path),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}
            },
        },
        "data": {"init_args": {"num_workers": 0, "synthetic_size": 64}},
    }  # fmt: skip
    out = cli(
        "seeds", "transfer/quickstart_finetune.yaml", override, tmp_path / "seeds.yaml", "--seeds", "0", "1"
    )
    assert out.count("| test/top1 |") == 1
    assert list(tmp_path.rglob("val_confusion_epoch000.png"))
