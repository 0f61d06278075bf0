"""The contract every pretext module keeps: forward, finite loss, gradients reach the backbone,
``features`` gives pooled vectors, and a fast_dev_run through the CLI with each config."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

from visiontransfer import pretext
from visiontransfer.commands.lightning_cli import VisionTransferCLI, config_dir
from visiontransfer.data import PretrainDataModule
from visiontransfer.export import export_backbone, load_backbone
from visiontransfer.pretext.base import PretextModule

TINY = {"backbone": "resnet10t", "small_input_stem": False}
METHODS: dict[str, Callable[[], PretextModule]] = {
    "rotation": lambda: pretext.RotationPrediction(head_hidden_dim=16, **TINY),
    "contrastive_patches": lambda: pretext.ContrastivePatches(
        patch_size=16, patch_stride=8, prediction_steps=2, context_width=16, context_depth=1, **TINY
    ),
    "simclr": lambda: pretext.SimCLR(projection_hidden_dim=16, **TINY),
    "dino": lambda: pretext.DINO(out_dim=32, hidden_dim=16, bottleneck_dim=8, local_crops=2, **TINY),
    "mae": lambda: pretext.MAE(
        backbone="test_vit",
        small_input_stem=False,
        backbone_kwargs={"img_size": 32, "patch_size": 4},
        decoder_width=16,
        decoder_depth=1,
    ),
    "distillation": lambda: pretext.Distillation(teacher="test_resnet", targets="both", **TINY),
    "byol": lambda: pretext.BYOL(projection_dim=8, hidden_dim=16, **TINY),
}
if hasattr(pretext, "Colorization"):
    METHODS["colorization"] = lambda: pretext.Colorization(decoder_width=16, prior_batches=1, **TINY)


def _batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    return {"image": images, "label": torch.zeros(4, dtype=torch.int64), "index": torch.arange(4)}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_contract(name: str) -> None:
    model = METHODS[name]()
    model.train()
    batch = _batch()
    loss = model._step(batch, "train")  # type: ignore[attr-defined]
    assert loss is not None and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)
    model.eval()
    with torch.no_grad():
        feats = model.features(batch["image"])
    assert feats.shape == (4, model.num_features)
    empty = {"image": batch["image"][:0], "label": batch["label"][:0], "index": batch["index"][:0]}
    assert model._step(empty, "train") is None  # type: ignore[attr-defined]


PRETRAIN_CONFIGS = sorted((config_dir() / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("config", PRETRAIN_CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run_each_config(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visiontransfer"])
    cli = VisionTransferCLI(
        args=[
            "fit", "--config", str(config), "--trainer.fast_dev_run=true", "--data.batch_size=4",
            "--data.num_workers=0", "--data.synthetic_size=32", "--trainer.enable_progress_bar=false",
        ]
    )  # fmt: skip
    assert cli.trainer.state.finished
    assert any(k.endswith("loss") for k in cli.trainer.callback_metrics)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_exports_a_backbone_that_reloads(name: str, tmp_path: Path) -> None:
    """``visiontransfer export`` works on the checkpoint of every pretext module."""
    model = METHODS[name]()
    trainer = L.Trainer(
        max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, PretrainDataModule(batch_size=8, num_workers=0, synthetic_size=32))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    folder = export_backbone(tmp_path / "model.ckpt", tmp_path / "export")
    config = json.loads((Path(folder) / "config.json").read_text())
    assert config["visiontransfer"]["method"] == type(model).__name__
    backbone = load_backbone(folder).eval()
    x = torch.rand(2, config["pretrained_cfg"]["input_size"][0], 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), model.backbone(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"hue": 0.6}, "--model.hue=0.6"), ({"grayscale_p": -0.1}, "--model.grayscale_p=-0.1")],
)
def test_simclr_view_options_are_checked_naming_the_flag(kwargs: dict[str, float], flag: str) -> None:
    from visiontransfer.errors import ConfigError

    with pytest.raises(ConfigError, match=flag.replace(".", r"\.")):
        pretext.SimCLR(projection_hidden_dim=16, **TINY, **kwargs)  # type: ignore[arg-type]
