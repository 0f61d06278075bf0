"""What the DDP tests run: callbacks and modules loaded by ``class_path``, and the jobs that
``ddp_harness`` runs in 2 processes (and the tests in 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch import Tensor

from visiontransfer.callbacks import OnlineEvaluation
from visiontransfer.data import ClassificationDataModule, PretrainDataModule
from visiontransfer.pretext import RotationPrediction, SimCLR
from visiontransfer.transfer import ImageClassifier


class SaveState(L.Callback):
    """At the end of training, rank 0 saves the weights and every step's loss to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        # The loss of the global batch: the mean of the processes' (equal-sized) batch losses.
        self.losses.append(float(trainer.strategy.reduce(loss.detach(), reduce_op="mean")))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            weights = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
            torch.save({"weights": weights, "losses": self.losses}, self.path)


class FrozenBatchNorm(L.Callback):
    """Hold every BatchNorm layer in eval mode: per-sample computation, so one process and two
    compute the same (on GPUs ``--trainer.sync_batchnorm true`` does it for training mode;
    SyncBatchNorm does not run on CPU)."""

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for module in pl_module.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


class FixedViewsSimCLR(SimCLR):
    """SimCLR with deterministic views (the image and its mirror): its random views come from each
    process's own stream, so only fixed views make one process and two comparable."""

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        x = images.float()
        return x, x.flip(-1)


# -- jobs: fn(devices, **kwargs), run with 1 process in the test and with 2 by ddp_harness ----------
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
GLOBAL_BATCH = 16
STEPS = 2

FIT_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "rotation": ("pretrain/rotation_quickstart.yaml", {}),
    "colorization": ("pretrain/colorization_quick.yaml", {"prior_batches": 2}),
    "contrastive_patches": ("pretrain/contrastive_patches_quick.yaml", {"augment_patches": False}),
    "simclr": ("pretrain/simclr_quick.yaml", {"class_path": "ddp_helpers.FixedViewsSimCLR"}),
    # DINO and MAE draw their views and masks per image from its seed: no need to fix them.
    "dino": ("pretrain/dino_quick.yaml", {}),
    "mae": ("pretrain/mae_quick.yaml", {}),
    "classification": ("transfer/quickstart_finetune.yaml", {"samples_per_class": None}),
    # RetinaNet: its loss is a mean over images (FCOS normalises by the batch's foreground count
    # and Faster R-CNN samples anchors at random, so neither is comparable step for step).
    "detection": ("transfer/detect_retinanet.yaml", {"backbone": "resnet10t", "fpn_channels": 32}),
    "segmentation": ("transfer/segment_quick.yaml", {"dropout": 0.0}),  # no random dropout masks
}
"""Config and model arguments of each module the 1-vs-2-process test fits. SGD for all: Adam's
first steps are ``lr · sign(g)``, so a gradient near zero whose sign the sum order flips moves a
weight by ``2 · lr``; SGD's step is linear in the gradient."""


def _cli(subcommand_args: list[str], override: dict[str, Any], out: Path) -> Any:
    """The CLI of ``args`` plus an ``override`` config written beside ``out``."""
    from visiontransfer.commands.lightning_cli import VisionTransferCLI

    override_file = out.with_suffix(".yaml")
    override_file.write_text(yaml.safe_dump(override))
    return VisionTransferCLI(args=[*subcommand_args, "--config", str(override_file)], run=False)


def _trainer_override(devices: int) -> dict[str, Any]:
    return {
        "accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
        "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
    }  # fmt: skip


def fit_case(devices: int, case: str, out: str) -> None:
    """Fit ``case`` for :data:`STEPS` steps on the same global batch; rank 0 saves weights and losses
    to ``out/<case>_<devices>.pt``."""
    config, model_args = FIT_CASES[case]
    model_args = {"optimizer": "sgd", "lr": 0.05, "warmup_epochs": 0, **model_args}
    data_args: dict[str, Any] = {
        "image_size": 32, "batch_size": GLOBAL_BATCH // devices, "num_workers": 0, "synthetic_size": 64,
    }  # fmt: skip
    if "samples_per_class" in model_args:
        data_args["samples_per_class"] = model_args.pop("samples_per_class")
    if case == "detection":
        data_args.update(image_size=64, augment="flip")
    model: dict[str, Any] = {"init_args": model_args}
    if "class_path" in model_args:
        model = {"class_path": model_args.pop("class_path"), "init_args": model_args}
    path = Path(out) / f"{case}_{devices}.pt"
    trainer = {
        **_trainer_override(devices), "max_steps": STEPS, "max_epochs": 1, "limit_val_batches": 0,
        "num_sanity_val_steps": 0, "enable_checkpointing": False,
        "callbacks": [{"class_path": "ddp_helpers.FrozenBatchNorm"},
                      {"class_path": "ddp_helpers.SaveState", "init_args": {"path": str(path)}}],
    }  # fmt: skip
    cli = _cli(["--config", str(CONFIGS / config)], {"trainer": trainer, "model": model,
               "data": {"init_args": data_args}}, path)  # fmt: skip
    cli.trainer.fit(cli.model, cli.datamodule)


WRITER_CASES = {
    "classification": (
        "transfer/quickstart_finetune.yaml",
        "visiontransfer.callbacks.PredictionWriter",
        "csv",
    ),
    "detection": ("transfer/detect_retinanet.yaml", "visiontransfer.callbacks.DetectionWriter", "json"),
}


def predict_case(devices: int, case: str, out: str) -> None:
    """``predict`` with a writer: ``out/<case>_<devices>.<csv|json>``."""
    config, writer, suffix = WRITER_CASES[case]
    path = Path(out) / f"{case}_{devices}.{suffix}"
    data: dict[str, Any] = {"batch_size": 2, "num_workers": 0, "synthetic_size": 64}
    model: dict[str, Any] = {}
    if case == "detection":
        data["image_size"] = 64
        model = {"backbone": "resnet10t", "fpn_channels": 32}
    trainer = {**_trainer_override(devices), "default_root_dir": str(Path(out) / f"{case}_{devices}"),
               "callbacks": [{"class_path": writer, "init_args": {"path": str(path)}}]}  # fmt: skip
    override = {"trainer": trainer, "model": {"init_args": model}, "data": {"init_args": data}}
    torch.manual_seed(0)
    cli = _cli(["--config", str(CONFIGS / config)], override, path.with_name(f"predict_{case}_{devices}"))
    cli.trainer.predict(cli.model, cli.datamodule)


ONLINE_EVAL = {"samples_per_class": 5, "max_query": 25, "synthetic_size": 256, "probe_epochs": 20}
"""A small labeled set: 50 bank images, 25 queries (an uneven split over 2 ranks)."""


class RecordingEvaluation(OnlineEvaluation):
    """Keeps the features and labels every embedding gathered."""

    recorded: list[tuple[Tensor, Tensor]]

    def embed(self, trainer: Any, pl_module: Any, dataset: Any, positions: Any) -> tuple[Tensor, Tensor]:
        feats, labels = super().embed(trainer, pl_module, dataset, positions)
        self.recorded.append((feats.cpu(), labels.cpu()))
        return feats, labels


def online_eval_case(devices: int, weights: str, out: str) -> None:
    """Validate a fixed RotNet with the online evaluator; every rank saves what it computed."""
    model = RotationPrediction(backbone="resnet10t", small_input_stem=False, head_hidden_dim=0)
    model.load_state_dict(torch.load(weights, weights_only=True))
    callback = RecordingEvaluation(batch_size=1, **ONLINE_EVAL)
    callback.recorded = []
    trainer = L.Trainer(
        **_trainer_override(devices), enable_checkpointing=False, limit_val_batches=1, callbacks=[callback]
    )
    data = PretrainDataModule(image_size=32, batch_size=16, synthetic_size=64, num_workers=0)
    trainer.validate(model, data, verbose=False)
    result = {
        "history": callback.history,
        "recorded": callback.recorded,
        "probe": callback.probe.state_dict(),
    }
    torch.save(result, Path(out) / f"online_eval_{devices}_rank{trainer.global_rank}.pt")


class CheckSynchronised(L.Callback):
    """At the end of training, rank 0 writes whether every rank holds the same parameters."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        everyone = pl_module.all_gather(flat)
        if trainer.is_global_zero:
            same = bool(torch.allclose(everyone[0], everyone[-1]))
            Path(self.path).write_text(f"{same} {pl_module.frozen_now()}")  # type: ignore[operator]


def unfreeze_case(devices: int, out: str) -> None:
    """Gradual unfreezing for 3 epochs: ``out/unfreeze_<devices>.txt`` says whether the ranks agree."""
    L.seed_everything(0)
    model = ImageClassifier(num_classes=10, unfreeze_every_n_epochs=1, lr=1e-2, backbone="resnet10t",
                            small_input_stem=False)  # fmt: skip
    data = ClassificationDataModule(image_size=32, batch_size=4, synthetic_size=64, num_workers=0)
    trainer = L.Trainer(
        **_trainer_override(devices), max_epochs=3, limit_train_batches=2, limit_val_batches=0,
        enable_checkpointing=False, callbacks=[CheckSynchronised(str(Path(out) / f"unfreeze_{devices}.txt"))],
    )  # fmt: skip
    trainer.fit(model, data)


EMBED_IMAGES = 36
"""Images of the embedded set in the embedding case: 9 chunks of 4, dealt 5 / 4 to 2 processes."""


def embed_case(devices: int, out: str) -> None:
    """``visiontransfer.embed`` of the embedded set in chunks of 4: ``out/embed_<devices>/``."""
    import visiontransfer

    visiontransfer.embed(
        "test_resnet", str(Path(out) / f"embed_{devices}"), synthetic_size=EMBED_IMAGES, image_size=32,
        batch_size=4, chunk_size=4, num_workers=0, accelerator="cpu", devices=devices,
        strategy="ddp" if devices > 1 else "auto", progress=False,
    )  # fmt: skip
