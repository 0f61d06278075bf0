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
    override_file = tmp_path / f"{case}_{devices}.yaml"
    override_file.write_text(yaml.safe_dump(override))
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests" / "helpers"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "visiontransfer.cli", "fit", "--config", str(CONFIGS / config)]
    result = subprocess.run(
        [*command, "--config", str(override_file)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out, weights_only=True)


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
