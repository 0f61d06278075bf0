"""Callbacks for long runs that die: a non-finite guard and a resume checkpoint.

* :class:`NonFiniteGuard` stops a run at the first non-finite loss or gradient, naming the step
  and the last good checkpoint, before the optimizer writes NaN into the weights (or skips such
  steps, on request).
* :class:`ResumeCheckpoint` keeps ``last.ckpt`` fresh every N steps, saves it when the job gets
  SIGTERM or SIGUSR1 (pre-emption, SLURM's warning signal) and then exits (requeueing a SLURM
  job), and carries the random-number state so a resumed run continues the same random stream.

The ``visiontransfer`` CLI adds both to every run; a config may list them to change settings.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint this run wrote (``last`` or best of any checkpoint callback)."""
    paths = []
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        for name in ("last_model_path", "best_model_path"):
            path = getattr(callback, name, "") or ""
            if path and os.path.isfile(path):
                paths.append(path)
    return max(paths, key=os.path.getmtime) if paths else None


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    if not tensors:
        return True
    norm = torch.nn.utils.get_total_norm(tensors, error_if_nonfinite=False)
    return bool(torch.isfinite(norm))


class NonFiniteGuard(L.Callback):
    """Stop (or skip the step) when the loss or a gradient is NaN or infinite.

    Checked before each optimizer step, so the weights in memory and in every checkpoint stay
    finite. Under DDP the gradients are already averaged, so every rank takes the same decision.
    With ``16-mixed`` precision the gradient scaler handles overflow itself and only the loss
    is checked.

    Args:
        action: ``stop``: raise :class:`NonFiniteLossError` naming the step and the last good
            checkpoint; ``skip``: drop the step's gradients and go on (counted in
            ``train/nonfinite_skipped``).
        max_consecutive_skips: With ``skip``, stop anyway after this many bad steps in a row.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_consecutive_skips: int = 20) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard action={action!r}: choose stop or skip")
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0
        self._in_a_row = 0
        self._flagged = False  # this step's gradients were already found non-finite

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._flagged = False

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if str(trainer.precision).startswith("16"):
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if _all_finite(grads):
            self._in_a_row = 0
            return
        self._bad_step(trainer, pl_module, "gradient")
        self._flagged = True
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None  # the optimizer skips parameters without gradients

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        if not bool(torch.isfinite(loss.detach()).all()) and not self._flagged:
            self._bad_step(trainer, pl_module, f"loss ({float(loss.detach().float().mean())})")
        pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False)

    def _bad_step(self, trainer: L.Trainer, pl_module: L.LightningModule, what: str) -> None:
        if self.action == "skip" and self._in_a_row < self.max_consecutive_skips:
            self.skipped += 1
            self._in_a_row += 1
            rank_zero_warn(f"non-finite {what} at global step {trainer.global_step}: step skipped")
            return
        last = last_good_checkpoint(trainer)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"non-finite {what} at global step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"{where}. Lower --model.lr or use gradient clipping (--trainer.gradient_clip_val), then "
            "resume with --ckpt_path last; or skip such steps with NonFiniteGuard(action=skip)"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


class Preempted(SystemExit):
    """Raised after the pre-emption checkpoint is saved; exits with 128 + the signal number."""


def capture_random_state() -> dict[str, Any]:
    """The random streams of this process: Python, NumPy, torch CPU and CUDA."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {  # plain types and tensors only: loadable with weights_only=True
        "python": random.getstate(),
        "numpy": [
            name,
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_random_state`."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeCheckpoint(L.Callback):
    """Keep ``last.ckpt`` current and save it on pre-emption signals.

    Writes ``last.ckpt`` into the folder of the run's ``ModelCheckpoint`` (else
    ``<log_dir>/checkpoints``) every ``every_n_train_steps`` steps, so a run killed mid-epoch
    loses at most that many steps: resume it with ``visiontransfer fit --config ... --ckpt_path
    last``. On one of ``signals`` (``SIGTERM`` from a scheduler, ``SIGUSR1`` from SLURM's
    ``--signal``), every process finishes its current step, the checkpoint is saved and the run
    exits with status 128 + the signal number; under SLURM with ``requeue`` the job is requeued.
    The checkpoint carries the random state of rank 0, restored on resume (other ranks reseed
    from the seed and the step).

    Args:
        every_n_train_steps: Steps between saves of ``last.ckpt`` (0: only on signals).
        signals: Signal names that trigger a save and a clean exit.
        requeue: Under SLURM, ``scontrol requeue`` the job after the pre-emption checkpoint.
    """

    def __init__(
        self,
        every_n_train_steps: int = 500,
        signals: list[str] | None = None,
        requeue: bool = True,
    ) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"ResumeCheckpoint every_n_train_steps={every_n_train_steps} must be >= 0")
        names = ["SIGTERM", "SIGUSR1"] if signals is None else signals
        unknown = [n for n in names if not isinstance(getattr(signal, n, None), signal.Signals)]
        if unknown:
            raise ValueError(f"ResumeCheckpoint signals: unknown {unknown}; e.g. SIGTERM, SIGUSR1")
        self.every_n_train_steps = every_n_train_steps
        self.signals = [signal.Signals[n] for n in names]
        self.requeue = requeue
        self.received: int | None = None
        self.last_model_path = ""
        self._pending_random_state: dict[str, Any] | None = None
        self._previous_handlers: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum  # acted on at the end of the current step: no I/O in a handler

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        for sig in self.signals:
            try:
                self._previous_handlers[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave the signals to Lightning
                return

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def path(self, trainer: L.Trainer) -> Path:
        """Where ``last.ckpt`` goes."""
        callback = trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None) if isinstance(callback, ModelCheckpoint) else None
        if folder is None:
            folder = os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")
        return Path(folder, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending_random_state is None:
            return
        if trainer.global_rank == 0:
            restore_random_state(self._pending_random_state)
        else:
            L.seed_everything(hash((trainer.global_rank, trainer.global_step)) % 2**31, verbose=False)
        self._pending_random_state = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        signalled = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        periodic = self.every_n_train_steps > 0 and trainer.checkpoint_callback is not None
        due = periodic and trainer.global_step % self.every_n_train_steps == 0
        if (due or signalled) and not getattr(trainer, "fast_dev_run", False):
            self.save(trainer)
        if signalled:
            self._exit(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` now (every rank must call this)."""
        path = self.path(trainer)
        # A ModelCheckpoint(save_last=True) in the same folder adopts the file instead of writing
        # a second one (last-v1.ckpt) at the end of the epoch.
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or not callback.save_last:
                continue
            if callback.dirpath is not None and Path(callback.dirpath) == path.parent:
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path, weights_only=False)  # full state, and no log line each time
        self.last_model_path = str(path)

    def _exit(self, trainer: L.Trainer) -> None:
        signum = self.received or signal.SIGTERM
        name = signal.Signals(signum).name
        rank_zero_info(
            f"{name}: saved {self.last_model_path} at step {trainer.global_step}; "
            "resume with the same command plus --ckpt_path last"
        )
        job = os.environ.get("SLURM_JOB_ID")
        if self.requeue and job and trainer.is_global_zero:
            array = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else job
            result = subprocess.run(["scontrol", "requeue", job], check=False)
            rank_zero_info(f"scontrol requeue {job}: exit status {result.returncode}")
        raise Preempted(128 + int(signum))

    def state_dict(self) -> dict[str, Any]:
        return {"random_state": capture_random_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_random_state = state_dict.get("random_state")
