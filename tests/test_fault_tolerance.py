"""Fault tolerance: resume after SIGKILL, pre-emption signals, atomic checkpoints, NaN guard.

The kills are real: ``visiontransfer fit`` runs in a subprocess that SIGKILLs or signals itself
at a known step (``tests/helpers/fault_helpers.py``), then a second process resumes it.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from visiontransfer.callbacks import NonFiniteGuard, NonFiniteLossError, ResumeCheckpoint
from visiontransfer.callbacks.fault import Preempted
from visiontransfer.checkpoint_io import TEMP_SUFFIX, AtomicCheckpointIO, atomic_torch_save
from visiontransfer.commands.lightning_cli import find_last_checkpoint
from visiontransfer.data import PretrainDataModule
from visiontransfer.pretext import RotationPrediction

REPO = Path(__file__).resolve().parents[1]
HELPERS = REPO / "tests" / "helpers"
STEPS_PER_EPOCH = 4  # 128 embedded training images in batches of 32


def fit_config(
    tmp_path: Path, *extra_callbacks: dict[str, Any], every_n_train_steps: int = 3, name: str | None = None
) -> Path:
    """SimCLR (random views on the device: the RNG must be restored too) + online evaluation."""
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        {
            "class_path": "visiontransfer.callbacks.ResumeCheckpoint",
            "init_args": {"every_n_train_steps": every_n_train_steps},
        },
        {"class_path": "fault_helpers.RecordSteps", "init_args": {"path": "steps.txt"}},
        *extra_callbacks,
        {
            "class_path": "visiontransfer.callbacks.OnlineEvaluation",
            "init_args": {
                "image_size": 32,
                "samples_per_class": 6,
                "max_query": 48,
                "synthetic_size": 192,
                "batch_size": 64,
                "probe_epochs": 5,
            },
        },
    ]
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 3,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": "ft"},
            },
            "callbacks": callbacks,
        },
        "model": {
            "class_path": "visiontransfer.pretext.SimCLR",
            "init_args": {
                "backbone": "resnet10t",
                "small_input_stem": True,
                "projection_hidden_dim": 32,
                "projection_dim": 16,
                "lr": 1e-3,
                "warmup_epochs": 0.5,
            },
        },
        "data": {
            "class_path": "visiontransfer.data.PretrainDataModule",
            "init_args": {
                "image_size": 32,
                "batch_size": 32,
                "synthetic_size": 128,
                "val_fraction": 0.25,
                "num_workers": 0,
            },
        },
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name or f'fit{len(extra_callbacks)}'}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(config: Path, cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``visiontransfer fit`` started in a subprocess in ``cwd`` (output kept in ``cwd/log.txt``)."""
    cwd.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(HELPERS), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "visiontransfer.cli", "fit", "--config", str(config), *args]
    with (cwd / "log.txt").open("a") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=log, text=True)


def finish(runs: dict[str, tuple[subprocess.Popen[str], Path]]) -> dict[str, tuple[int, str]]:
    """Wait for every started run: its exit status and its output (``log.txt`` of its folder)."""
    codes = {name: process.wait(timeout=900) for name, (process, _) in runs.items()}
    return {name: (codes[name], (folder / "log.txt").read_text()) for name, (_, folder) in runs.items()}


def fit(config: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``visiontransfer fit`` in a subprocess, waited for."""
    cwd.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(HELPERS), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "visiontransfer.cli", "fit", "--config", str(config), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def step_losses(folder: Path) -> dict[int, float]:
    """Loss of each step (a re-run step keeps its last value)."""
    rows = [line.split("\t") for line in (folder / "steps.txt").read_text().splitlines()]
    return {int(step): float(loss) for step, _, loss in rows}


def last_metrics(folder: Path) -> dict[str, float]:
    """The last logged value of each metric over every version folder of the run."""
    values: dict[str, float] = {}
    for path in sorted(folder.glob("runs/ft/version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            values.update({k: float(v) for k, v in row.items() if v and k not in ("epoch", "step")})
    return values


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, str]]]:
    """Two phases of concurrent runs (each start costs ~15 s of imports, so they overlap):
    an uninterrupted reference, a run SIGKILLed mid-epoch and a run sent SIGTERM; then the two
    interrupted runs resumed with ``--ckpt_path last``."""
    root = tmp_path_factory.mktemp("faults")
    kill = {"class_path": "fault_helpers.KillAt", "init_args": {"step": KILL_STEP}}
    term = {"class_path": "fault_helpers.SignalAt", "init_args": {"step": 5, "signal_name": "SIGTERM"}}
    plain, killed, stopped = (fit_config(root / name, *extra, **kw) for name, extra, kw in (
        ("reference", (), {}), ("killed", (kill,), {}), ("sigterm", (term,), {"every_n_train_steps": 0})
    ))  # fmt: skip
    first = {name: (start(config, root / name), root / name) for name, config in
             (("reference", plain), ("killed", killed), ("sigterm", stopped))}  # fmt: skip
    results = finish(first)
    resume = {
        "killed": fit_config(root / "killed", name="resume"),
        "sigterm": fit_config(root / "sigterm", every_n_train_steps=0, name="resume"),
    }
    second = {
        f"{name}_resumed": (start(config, root / name, "--ckpt_path", "last"), root / name)
        for name, config in resume.items()
    }
    results.update(finish(second))
    return root, results


KILL_STEP = STEPS_PER_EPOCH + 3
"""Mid second epoch; last.ckpt is written at step 6."""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(killed_and_resumed) -> None:
    root, results = killed_and_resumed
    code, out = results["reference"]
    assert code == 0, out[-3000:]
    code, out = results["killed"]
    assert code == -signal.SIGKILL, out[-3000:]
    assert "visiontransfer run finished" not in out
    saved = torch.load(root / "killed/runs/ft/version_0/checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 6  # mid-epoch: 2 of the epoch's 4 batches done
    assert saved["PretrainDataModule"]["train_loader"] == {"epoch": 1, "batches_done": 2}
    assert saved["PretrainDataModule"]["data"]["images"] == {"train": 128, "val": 64, "predict": 64}

    code, out = results["killed_resumed"]
    assert code == 0, out[-3000:]
    assert "resuming from runs/ft/version_0/checkpoints/last.ckpt" in out

    want, got = step_losses(root / "reference"), step_losses(root / "killed")
    assert sorted(got) == sorted(want) == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    # Same batches, views, LR schedule and online evaluator state: the same numbers.
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-4), step
    final_want, final_got = last_metrics(root / "reference"), last_metrics(root / "killed")
    for key in ("val/loss", "online/knn_top1", "online/probe_top1", "train/loss"):
        assert final_got[key] == pytest.approx(final_want[key], abs=1e-4), key


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_then_resumes(killed_and_resumed) -> None:
    root, results = killed_and_resumed
    code, out = results["sigterm"]
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert "SIGTERM: saved" in out
    saved = torch.load(root / "sigterm/runs/ft/version_0/checkpoints/last.ckpt", weights_only=True)
    # The signal arrives after ResumeCheckpoint's hook of step 5 ran: it acts at the end of step 6.
    assert saved["global_step"] == 6
    code, out = results["sigterm_resumed"]
    assert code == 0, out[-3000:]
    # Step 6 trained and was saved, but the exit came before RecordSteps' hook: none redone or lost.
    recorded = sorted(step_losses(root / "sigterm"))
    assert recorded == [s for s in range(1, 3 * STEPS_PER_EPOCH + 1) if s != 6]


# -- in-process ----------------------------------------------------------------------------------
def tiny_rotation(**kwargs: Any) -> RotationPrediction:
    return RotationPrediction(backbone="resnet10t", head_hidden_dim=16, lr=1e-3, **kwargs)


def tiny_data() -> PretrainDataModule:
    return PretrainDataModule(
        image_size=32, batch_size=16, synthetic_size=64, num_workers=0, val_fraction=0.25
    )


def trainer(tmp_path: Path, callbacks: list[L.Callback], max_steps: int = 6) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )


def test_sigusr1_in_process_raises_preempted_after_saving(tmp_path: Path) -> None:
    sys.path.insert(0, str(HELPERS))
    try:
        from fault_helpers import SignalAt
    finally:
        sys.path.remove(str(HELPERS))
    resume = ResumeCheckpoint(every_n_train_steps=0)
    run = trainer(tmp_path, [resume, SignalAt(3, "SIGUSR1")])
    with pytest.raises(Preempted) as raised:
        run.fit(tiny_rotation(), tiny_data())
    assert raised.value.code == 128 + signal.SIGUSR1
    # Signalled in step 3's hooks after ResumeCheckpoint's: saved at the end of step 4.
    assert torch.load(resume.last_model_path, weights_only=True)["global_step"] == 4
    assert signal.getsignal(signal.SIGUSR1) is not resume._handler  # handlers given back


class NaNAtStep(RotationPrediction):
    """Returns a NaN loss at one training step."""

    def __init__(self, bad_step: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bad_step = bad_step

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        loss = super().training_step(batch, batch_idx)
        assert loss is not None
        return loss * float("nan") if self.global_step == self.bad_step else loss


def nan_model() -> NaNAtStep:
    return NaNAtStep(bad_step=2, backbone="resnet10t", head_hidden_dim=16, lr=1e-3)


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path: Path) -> None:
    resume = ResumeCheckpoint(every_n_train_steps=1)
    model = nan_model()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt")
    with pytest.raises(NonFiniteLossError, match=r"global step 2 .*last good checkpoint is .*last\.ckpt"):
        trainer(tmp_path, [NonFiniteGuard(), resume, checkpoint]).fit(model, tiny_data())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # stopped before the step
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_nan_loss_skipped_on_request(tmp_path: Path) -> None:
    guard = NonFiniteGuard(action="skip")
    model = nan_model()
    run = trainer(tmp_path, [guard], max_steps=5)
    run.fit(model, tiny_data())
    assert guard.skipped == 1 and run.global_step == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_guard_rejects_unknown_action() -> None:
    with pytest.raises(ValueError, match="stop or skip"):
        NonFiniteGuard(action="ignore")  # type: ignore[arg-type]


# -- atomic checkpoints --------------------------------------------------------------------------
def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"version": 1}, path)

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt  # as if killed between writing and renaming

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"version": 2}, path)
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}*"))


SLOW_WRITER = """
import sys, time, torch
from visiontransfer.checkpoint_io import atomic_torch_save

class Slow:
    def __reduce__(self):
        print("writing", flush=True)
        time.sleep(60)
        return (int, (0,))

atomic_torch_save({"version": 1}, sys.argv[1])
atomic_torch_save({"version": 2, "weights": torch.ones(1000), "slow": Slow()}, sys.argv[1])
"""


def test_sigkill_during_the_write_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    temporaries = list(path.parent.glob(f"*{TEMP_SUFFIX}*"))
    assert temporaries, "the second checkpoint is being written to a temporary file"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert torch.load(path, weights_only=True) == {"version": 1}
    atomic_torch_save({"version": 3}, path)  # the next save clears the dead writer's leftovers
    assert torch.load(path, weights_only=True) == {"version": 3}
    assert not list(path.parent.glob(f"*{TEMP_SUFFIX}*"))


# -- --ckpt_path last ----------------------------------------------------------------------------
def test_ckpt_path_last_finds_the_newest_across_versions(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "exp"
    for version, age in (("version_0", 100), ("version_1", 10), ("version_2", 50)):
        folder = root / version / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(b"x")
        os.utime(folder / "last.ckpt", (time.time() - age, time.time() - age))
    logger = L.pytorch.loggers.CSVLogger(save_dir=tmp_path / "runs", name="exp")
    run = L.Trainer(default_root_dir=tmp_path, logger=logger, enable_progress_bar=False)
    with pytest.warns(UserWarning, match="resuming from"):
        found = find_last_checkpoint(run)
    assert found == str(root / "version_1" / "checkpoints" / "last.ckpt")
    empty = L.Trainer(default_root_dir=tmp_path / "new", logger=False, enable_progress_bar=False)
    with pytest.warns(UserWarning, match="starting from the beginning"):
        assert find_last_checkpoint(empty) is None
