"""DINO: per-image multi-crop views, the schedules, a real fit on CIFAR-10 files (EMA teacher,
center, frozen last layer), ViT support and its errors, and an exact resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from visiontransfer.data import PretrainDataModule
from visiontransfer.errors import ConfigError
from visiontransfer.pretext import DINO
from visiontransfer.pretext.augment import SampleRandom, multi_crop
from visiontransfer.pretext.dino import default_local_size, linear_warmup

REPO = Path(__file__).resolve().parents[2]
HELPERS = REPO / "tests" / "helpers"
HEAD = {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}
VIT = {"backbone": "test_vit", "small_input_stem": False}


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def test_views_depend_on_the_image_and_its_seed_not_on_the_batch() -> None:
    images = _images(4).float() / 255
    full = multi_crop(images, 32, 16, 2, generator=SampleRandom(torch.arange(4), 0, 0, 3))
    pick = torch.tensor([2, 0])
    part = multi_crop(images[pick], 32, 16, 2, generator=SampleRandom(pick, 0, 0, 3))
    assert full[0].shape == (8, 3, 32, 32) and full[1] is not None and full[1].shape == (8, 3, 16, 16)
    assert part[1] is not None
    for view in range(2):  # view-major: rows view * B + i
        torch.testing.assert_close(part[0][view * 2 : view * 2 + 2], full[0][view * 4 + pick])
        torch.testing.assert_close(part[1][view * 2 : view * 2 + 2], full[1][view * 4 + pick])
    other_epoch = multi_crop(images, 32, 16, 2, generator=SampleRandom(torch.arange(4), 0, 0, 4))
    assert not torch.equal(other_epoch[0], full[0])
    assert not torch.equal(full[0][:4], full[0][4:])  # the two global views differ


def test_sample_random_errors() -> None:
    with pytest.raises(ValueError, match="keys"):
        SampleRandom(torch.arange(2), -1)
    with pytest.raises(ValueError, match="a batch of 3 images"):
        multi_crop(torch.rand(3, 3, 8, 8), 8, 4, 0, generator=SampleRandom(torch.arange(2)))


def test_schedules() -> None:
    assert linear_warmup(0, 10, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(10, 10, 0.04, 0.07) == linear_warmup(99, 10, 0.04, 0.07) == 0.07
    assert linear_warmup(3, 0, 0.04, 0.07) == 0.07  # no warm-up
    assert [default_local_size(s) for s in (32, 64, 224)] == [16, 24, 96]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"student_temperature": 0}, "--model.student_temperature=0 must be > 0"),
        ({"local_crops": -1}, "--model.local_crops=-1"),
        ({"center_momentum": 1.0}, "--model.center_momentum=1.0"),
        ({"base_momentum": 0.99, "final_momentum": 0.9}, "--model.base_momentum=0.99"),
        ({"local_crop_scale": (0.5, 0.2)}, "--model.local_crop_scale"),
    ],
)
def test_arguments_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DINO(backbone="test_resnet", small_input_stem=False, **HEAD, **kwargs)


def test_vits_need_dynamic_sizes_for_local_crops() -> None:
    strict = {"img_size": 32, "patch_size": 4, "dynamic_img_size": False}
    with pytest.raises(ConfigError, match="dynamic_img_size: true"):
        DINO(**VIT, backbone_kwargs=strict, local_crops=2, **HEAD)
    with pytest.raises(ConfigError, match=r"--data.image_size=64 but the ViT was built for 32"):
        DINO(**VIT, backbone_kwargs=strict, local_crops=0, input_size=64, **HEAD)
    dynamic = {**strict, "dynamic_img_size": True}
    with pytest.raises(ConfigError, match=r"--model.local_crop_size=14 is not a multiple"):
        DINO(**VIT, backbone_kwargs=dynamic, local_crops=2, local_crop_size=14, input_size=32, **HEAD)
    model = DINO(**VIT, backbone_kwargs=dynamic, local_crops=2, input_size=32, **HEAD)
    batch = {"image": _images(4), "index": torch.arange(4)}
    loss = model._step(batch, "train")
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    assert model.backbone.pos_embed.grad is not None  # type: ignore[union-attr]


def test_fit_on_cifar_files(cifar_tree: Callable[..., Path], tmp_path: Path) -> None:
    """Real JPEGs: the teacher follows the student once per optimizer step, the center moves,
    the head's last layer stays fixed during its frozen first epoch and trains after it."""
    root = cifar_tree(tmp_path / "images", classes=("cat", "ship"), per_class=20)
    L.seed_everything(0)
    model = DINO(backbone="resnet10t", small_input_stem=False, **HEAD, local_crops=2, base_momentum=0.9,
                 freeze_last_layer_epochs=1, warmup_teacher_temperature=0.04, teacher_temperature=0.06,
                 teacher_temperature_warmup_epochs=1, lr=1e-2, warmup_epochs=0)  # fmt: skip
    last_layer = model.head.last_layer.weight.detach().clone()
    data = PretrainDataModule(root=str(root), image_size=32, batch_size=8, val_fraction=0.2, num_workers=0)

    class Watch(L.Callback):
        after_first_epoch: torch.Tensor | None = None

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
            if trainer.current_epoch == 0:
                self.after_first_epoch = pl_module.head.last_layer.weight.detach().clone()

    watch = Watch()
    trainer = L.Trainer(
        max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[watch],
    )  # fmt: skip
    trainer.fit(model, data)
    assert trainer.global_step == 8 and int(model.teacher.updates) == 8
    assert watch.after_first_epoch is not None and torch.equal(watch.after_first_epoch, last_layer)
    assert not torch.equal(model.head.last_layer.weight, last_layer)
    assert model.center.abs().sum() > 0
    teacher_backbone = model.teacher.module[0]
    differs = [
        not torch.equal(a, b)
        for a, b in zip(teacher_backbone.parameters(), model.backbone.parameters(), strict=True)
    ]
    assert any(differs)
    assert trainer.callback_metrics["train/teacher_temperature"].item() == pytest.approx(0.06)
    assert 0.9 < trainer.callback_metrics["train/teacher_momentum"].item() <= 1.0
    with torch.no_grad():
        assert model.eval().features(_images(2)).shape == (2, 512)


# -- exact resume after SIGKILL ------------------------------------------------------------------
STEPS_PER_EPOCH = 4  # 128 embedded images in batches of 32


def _config(tmp_path: Path, *extra_callbacks: dict[str, Any]) -> Path:
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        {"class_path": "visiontransfer.callbacks.ResumeCheckpoint", "init_args": {"every_n_train_steps": 2}},
        {"class_path": "fault_helpers.RecordSteps", "init_args": {"path": "steps.txt"}},
        *extra_callbacks,
    ]
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
            "enable_model_summary": False, "callbacks": callbacks,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": "runs", "name": "dino"}},
        },
        "model": {
            "class_path": "visiontransfer.pretext.DINO",
            "init_args": {"backbone": "resnet10t", "small_input_stem": False, **HEAD, "local_crops": 2,
                          "base_momentum": 0.9, "teacher_temperature": 0.06,
                          "teacher_temperature_warmup_epochs": 1, "freeze_last_layer_epochs": 0.5,
                          "lr": 1e-3, "warmup_epochs": 0.5},
        },
        "data": {
            "class_path": "visiontransfer.data.PretrainDataModule",
            "init_args": {"image_size": 32, "batch_size": 32, "synthetic_size": 128, "val_fraction": 0.25,
                          "num_workers": 0},
        },
    }  # fmt: skip
    path = tmp_path / f"dino{len(extra_callbacks)}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(HELPERS), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "visiontransfer.cli", "fit", "--config", str(config), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _losses(folder: Path) -> dict[int, float]:
    rows = [line.split("\t") for line in (folder / "steps.txt").read_text().splitlines()]
    return {int(step): float(loss) for step, _, loss in rows}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Teacher weights, its momentum position, the center and the views all continue exactly."""
    from visiontransfer.commands.lightning_cli import VisionTransferCLI

    reference = tmp_path / "reference"
    reference.mkdir()
    monkeypatch.chdir(reference)
    monkeypatch.setattr(sys, "argv", ["visiontransfer"])
    VisionTransferCLI(args=["fit", "--config", str(_config(tmp_path))])  # in this process: cheaper
    monkeypatch.chdir(tmp_path)

    kill = {"class_path": "fault_helpers.KillAt", "init_args": {"step": STEPS_PER_EPOCH + 3}}
    killed = _fit(_config(tmp_path, kill), tmp_path / "killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    saved = torch.load(tmp_path / "killed/runs/dino/version_0/checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 6 and int(saved["state_dict"]["teacher.updates"]) == 6
    assert saved["PretrainDataModule"]["train_loader"] == {"epoch": 1, "batches_done": 2}

    resumed = _fit(_config(tmp_path), tmp_path / "killed", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = _losses(reference), _losses(tmp_path / "killed")
    assert sorted(got) == sorted(want) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-4), step
    final_want = torch.load(reference / "runs/dino/version_0/checkpoints/last.ckpt", weights_only=True)
    final_got = torch.load(tmp_path / "killed/runs/dino/version_1/checkpoints/last.ckpt", weights_only=True)
    for key in ("center", "teacher.updates", "teacher.module.1.last_layer.weight"):
        torch.testing.assert_close(
            final_got["state_dict"][key], final_want["state_dict"][key], atol=1e-5, rtol=0
        )
