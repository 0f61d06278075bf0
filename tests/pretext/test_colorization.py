"""Colorization (Zhang et al. 2016): losses, decoder, the module's contract, prior, image grid."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from PIL import Image

from visiontransfer.backbones import FeatureBackbone, create_backbone
from visiontransfer.color import rgb_to_lab
from visiontransfer.data import PretrainDataModule
from visiontransfer.imagelog import _send_to_loggers, log_image_grid
from visiontransfer.losses import colorization_class_loss, colorization_regression_loss
from visiontransfer.pretext.colorization import Colorization, ColorizationDecoder
from visiontransfer.pretext.lab import ab_bin_centers

TINY = {"backbone": "resnet10t", "small_input_stem": False, "decoder_width": 16}


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = {
        "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "num_sanity_val_steps": 0,
        "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": tmp_path,
        "logger": CSVLogger(tmp_path), "accelerator": "cpu", "log_every_n_steps": 1,
    }  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def _data() -> PretrainDataModule:
    return PretrainDataModule(image_size=32, batch_size=8, synthetic_size=32, num_workers=0)


# Losses ---------------------------------------------------------------------------------------


def test_regression_loss_hand_value() -> None:
    pred = torch.zeros(1, 2, 1, 1)
    true = torch.tensor([55.0, 220.0]).view(1, 2, 1, 1)
    # Scaled errors 0.5 and 2.0: smooth L1 (beta 1) gives 0.5·0.25 = 0.125 and 2 − 0.5 = 1.5.
    assert math.isclose(float(colorization_regression_loss(pred, true)), (0.125 + 1.5) / 2, rel_tol=1e-6)
    assert float(colorization_regression_loss(true, true)) == 0.0


def test_class_loss_hand_value() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).view(1, 2, 1, 2)  # (B, Q, H, W)
    targets = torch.tensor([[1.0, 0.5], [0.0, 0.5]]).view(1, 2, 1, 2)
    weights = torch.tensor([[[2.0, 1.0]]])  # (B, H, W)
    # Pixel 1: uniform over 2 bins, target bin 0: 2·ln 2. Pixel 2: p = (3/4, 1/4), target ½-½.
    pixel2 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    expected = (2 * math.log(2.0) + pixel2) / 2
    assert math.isclose(float(colorization_class_loss(logits, targets, weights)), expected, rel_tol=1e-6)


def test_loss_errors() -> None:
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        colorization_regression_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        colorization_regression_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="must be > 0"):
        colorization_regression_loss(torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1), scale=0.0)
    with pytest.raises(ValueError, match=r"\(B, Q, H, W\)"):
        colorization_class_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 2, 2), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        colorization_class_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2))


# Decoder and module contract ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "stem", "size", "stride"),
    [("resnet10t", True, 32, 1), ("resnet10t", False, 64, 2), ("convnext_atto", False, 64, 2),
     ("convnext_atto", True, 32, 4), ("resnet10t", False, 224, 4)],
)  # fmt: skip
def test_decoder_reaches_the_output_size(backbone: str, stem: bool, size: int, stride: int) -> None:
    pyramid = FeatureBackbone(create_backbone(backbone, in_chans=1, small_input_stem=stem))
    decoder = ColorizationDecoder(
        pyramid.channels, pyramid.reductions, out_channels=7, width=16, output_stride=stride
    )
    out = decoder(pyramid(torch.randn(2, 1, size, size)), (size // stride, size // stride))
    assert out.shape == (2, 7, size // stride, size // stride)


@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")
@pytest.mark.filterwarnings("ignore:Colorization. no colour prior")
@pytest.mark.parametrize("loss", ["classification", "regression"])
@pytest.mark.parametrize(("backbone", "stem"), [("resnet10t", True), ("convnext_atto", False)])
def test_loss_is_finite_and_reaches_the_backbone(loss: str, backbone: str, stem: bool) -> None:
    model = Colorization(loss=loss, backbone=backbone, small_input_stem=stem, decoder_width=16)  # type: ignore[arg-type]
    images = _images(2, 32)
    loss_value = model.training_step({"image": images, "label": torch.zeros(2), "index": torch.arange(2)}, 0)
    assert loss_value is not None and torch.isfinite(loss_value)
    loss_value.backward()
    grads = {n: p.grad for n, p in model.backbone.named_parameters()}
    dense = {n: g for n, g in grads.items() if not n.startswith("head.")}  # head.norm: pooled path only
    assert all(g is not None and torch.isfinite(g).all() for g in dense.values())
    assert any(float(g.abs().sum()) > 0 for g in dense.values() if g is not None)
    out = model(images)
    expected_channels = model.num_bins if loss == "classification" else 2
    assert out.shape == (2, expected_channels, 16, 16)


@pytest.mark.filterwarnings("ignore:Colorization. no colour prior")
@pytest.mark.parametrize("levels", [1, 2, 5])
def test_decoder_levels_take_the_deepest_maps(levels: int) -> None:
    model = Colorization(**{**TINY, "decoder_levels": levels})
    info = model.backbone.feature_info  # resnet10t: 5 levels, the deepest has num_features channels
    assert [lat.in_channels for lat in model.decoder.laterals] == [i["num_chs"] for i in info[-levels:]]
    out = model(_images(2, 64))  # the deepest map is 2x2: batch norm over 1x1 would pass no gradient
    assert out.shape == (2, model.num_bins, 32, 32)
    (out * torch.randn_like(out)).sum().backward()
    deepest = [p.grad for p in model.backbone.layer4.parameters()]  # type: ignore[union-attr]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in deepest)


def test_checkpoint_with_other_decoder_levels_names_the_flag(tmp_path: Path) -> None:
    old = Colorization(**{**TINY, "decoder_levels": 4})
    path = tmp_path / "old.ckpt"
    hparams = {k: v for k, v in old.hparams.items() if k != "decoder_levels"}  # made before the flag
    torch.save(
        {
            "state_dict": old.state_dict(),
            "hyper_parameters": hparams,
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    with pytest.raises(ValueError, match=r"--model\.decoder_levels=4"):
        Colorization.load_from_checkpoint(path)
    reloaded = Colorization.load_from_checkpoint(path, decoder_levels=4)
    assert torch.equal(reloaded.decoder.head.weight, old.decoder.head.weight)


def test_features_use_lightness_only() -> None:
    model = Colorization(**TINY).eval()
    images = _images(3, 32)
    feats = model.features(images)
    assert feats.shape == (3, model.num_features)
    lightness = rgb_to_lab(images.float() / 255.0)[:, :1]
    manual = model.backbone((lightness / 100.0 - 0.449) / 0.226)
    assert torch.allclose(feats, manual, atol=1e-4)
    assert next(model.backbone.parameters()).shape[1] == 1  # the first conv takes one channel


def test_empty_batch_is_skipped() -> None:
    model = Colorization(**TINY)
    batch = {
        "image": torch.empty(0, 3, 0, 0, dtype=torch.uint8),
        "label": torch.empty(0),
        "index": torch.empty(0),
    }
    assert model.training_step(batch, 0) is None


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"loss": "l2"}, "loss"), ({"soft_k": 0}, "soft_k"), ({"soft_k": 10_000}, "soft_k"),
     ({"soft_sigma": 0.0}, "soft_sigma"), ({"rebalance_lambda": 2.0}, "rebalance_lambda"),
     ({"temperature": 0.0}, "temperature"), ({"prior_batches": 0}, "prior_batches"),
     ({"output_stride": 3}, "output_stride"),
     ({"decoder_levels": 0}, "decoder_levels"), ({"decoder_levels": 9}, "decoder_levels"),
     ({"log_images_every_n_epochs": -1}, "log_images_every_n_epochs"),
     ({"grid_size": 2}, "grid_size"), ({"decoder_width": 4}, "decoder_width"),
     ({"in_chans": 3}, "in_chans")],
)  # fmt: skip
def test_bad_arguments_name_the_flag(kwargs: dict[str, Any], flag: str) -> None:
    with pytest.raises(ValueError, match=rf"--model\.{flag}"):
        Colorization(**{**TINY, **kwargs})


def test_hyperparameters_saved_for_reload() -> None:
    model = Colorization(backbone="resnet10t", loss="regression", grid_size=20, small_input_stem=True)
    assert model.hparams["loss"] == "regression" and model.hparams["grid_size"] == 20
    assert model.hparams["in_chans"] == 1 and model.hparams["small_input_stem"] is True
    assert Colorization(**dict(model.hparams)).num_bins == model.num_bins


# Colour prior ---------------------------------------------------------------------------------


def test_count_ab_bins_hand_values() -> None:
    model = Colorization(**TINY)
    grey = torch.full((1, 3, 4, 4), 128, dtype=torch.uint8)
    red = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    red[:, 0] = 255  # ab (80.1, 67.2): the (80, 70) bin
    counts = model.count_ab_bins([{"image": grey}, {"image": red}, {"image": grey[:0]}])
    centers = ab_bin_centers().tolist()
    assert counts.sum() == 16 + 4
    assert counts[centers.index([0.0, 0.0])] == 16 and counts[centers.index([80.0, 70.0])] == 4


def test_prior_from_datamodule_saved_and_not_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    L.seed_everything(0)
    model = Colorization(prior_batches=2, **TINY)
    assert not model.prior_ready
    calls: list[int] = []
    original = Colorization.count_ab_bins

    def counting(self: Colorization, batches: Any) -> torch.Tensor:
        calls.append(1)
        return original(self, batches)

    monkeypatch.setattr(Colorization, "count_ab_bins", counting)
    trainer = _trainer(tmp_path, limit_train_batches=1, limit_val_batches=0, logger=False)
    trainer.fit(model, _data())
    assert calls == [1] and model.prior_ready
    assert math.isclose(float(model.ab_prior.sum()), 1.0, rel_tol=1e-5)
    assert int((model.ab_prior > 0).sum()) > 5  # the embedded set is colourful
    state = model.state_dict()
    assert "ab_prior" in state and "ab_centers" not in state
    assert not any(k.startswith("pyramid.") for k in state)  # one copy of the backbone

    resumed = Colorization(prior_batches=2, **TINY)
    resumed.load_state_dict(state)
    resumed.trainer = trainer  # type: ignore[assignment]
    resumed.on_fit_start()
    assert calls == [1], "a restored prior must not be measured again"
    assert torch.equal(resumed.ab_prior, model.ab_prior)


def test_prior_with_plain_dataloaders(tmp_path: Path) -> None:
    data = _data()
    data.setup("fit")
    model = Colorization(prior_batches=1, **TINY)
    _trainer(tmp_path, limit_train_batches=1, limit_val_batches=0, logger=False).fit(
        model, train_dataloaders=data.train_dataloader()
    )
    assert model.prior_ready


@pytest.mark.filterwarnings("ignore:Colorization. no colour prior")
def test_rebalancing_weights_follow_the_prior() -> None:
    model = Colorization(**TINY)
    assert torch.equal(model.class_weights(), torch.ones(model.num_bins))  # no prior yet: no rebalancing
    prior = torch.full((model.num_bins,), 1e-4)
    grey = ab_bin_centers().tolist().index([0.0, 0.0])
    prior[grey] = 1.0
    model.ab_prior.copy_(prior / prior.sum())
    weights = model.class_weights()
    assert weights[grey] == weights.min() and weights.max() > 1.0


# Training end to end, image grid --------------------------------------------------------------


def test_fit_logs_metrics_and_image_grid_then_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    L.seed_everything(0)
    model = Colorization(prior_batches=2, lr=1e-3, **TINY)
    trainer = _trainer(tmp_path)
    trainer.fit(model, _data())
    metrics = trainer.callback_metrics
    for key in ("train/loss", "val/loss", "val/ab_mae"):
        assert torch.isfinite(metrics[key]), key
    png = Path(trainer.log_dir) / "images" / "val_colorization_epoch000.png"
    assert png.is_file()
    with Image.open(png) as grid:  # rows grey / predicted / true of 8 images of 32 px, 2 px padding
        assert grid.size == (8 * 34 + 2, 3 * 34 + 2) and grid.mode == "RGB"
    ckpt = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    assert "ab_prior" in torch.load(ckpt, weights_only=False)["state_dict"]

    monkeypatch.setattr(Colorization, "count_ab_bins", lambda *a: pytest.fail("prior measured on resume"))
    again = Colorization(prior_batches=2, lr=1e-3, **TINY)
    resume = _trainer(tmp_path, max_epochs=2)
    resume.fit(again, _data(), ckpt_path=ckpt)
    assert torch.equal(again.ab_prior, model.ab_prior)
    assert (Path(resume.log_dir) / "images" / "val_colorization_epoch001.png").is_file()


def test_regression_fit_and_images_disabled(tmp_path: Path) -> None:
    model = Colorization(loss="regression", log_images_every_n_epochs=0, **TINY)
    trainer = _trainer(tmp_path, limit_train_batches=1)
    trainer.fit(model, _data())
    assert torch.isfinite(trainer.callback_metrics["val/ab_mae"])
    assert not model.prior_ready  # regression needs no prior
    assert not (Path(trainer.log_dir) / "images").exists()


# imagelog -------------------------------------------------------------------------------------


class _Module(L.LightningModule):
    pass


def test_log_image_grid_writes_png_atomically(tmp_path: Path) -> None:
    module = _Module()
    images = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
    images[:, 0] = 255
    assert log_image_grid(module, "val/x", images, nrow=3) is None  # no trainer: nothing, no error
    module.trainer = _trainer(tmp_path)  # type: ignore[assignment]
    path = log_image_grid(module, "val/my grid!", images, nrow=3)
    assert path is not None and Path(path).name == "val_my_grid_epoch000.png"
    assert Path(path).parent == Path(tmp_path) / "lightning_logs" / "version_0" / "images"
    with Image.open(path) as png:
        assert png.size == (3 * 10 + 2, 2 * 10 + 2)
        assert png.getpixel((2, 2)) == (255, 0, 0) and png.getpixel((0, 0)) == (255, 255, 255)
    assert [p.name for p in Path(path).parent.iterdir()] == [Path(path).name]  # no temp file left
    floats = torch.rand(2, 3, 8, 8) * 2 - 0.5  # clamped to [0, 1]
    assert log_image_grid(module, "val/my grid!", floats, nrow=2) == path


def test_log_image_grid_without_logger_uses_root_dir(tmp_path: Path) -> None:
    module = _Module()
    module.trainer = _trainer(tmp_path, logger=False)  # type: ignore[assignment]
    path = log_image_grid(module, "grid", torch.rand(1, 3, 4, 4), nrow=1)
    assert path == str(tmp_path / "images" / "grid_epoch000.png")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        log_image_grid(module, "grid", torch.rand(3, 4, 4), nrow=1)


class _FakeTensorBoard(TensorBoardLogger):
    def __init__(self) -> None:  # no tensorboard needed
        self.added: list[tuple[str, tuple[int, ...], int]] = []

    @property
    def experiment(self) -> Any:
        return SimpleNamespace(
            add_image=lambda tag, img, global_step: self.added.append((tag, tuple(img.shape), global_step))
        )


class _ImageLogger(Logger):
    name, version = "fake", 0

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.images: list[Any] = []

    def log_image(self, key: str, images: list[Any], step: int | None = None) -> None:
        if self.fail:
            raise RuntimeError("offline")
        self.images.append((key, images[0].shape, step))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None: ...


def test_image_grid_goes_to_image_loggers() -> None:
    tensorboard, wandb_like, broken = _FakeTensorBoard(), _ImageLogger(), _ImageLogger(fail=True)
    trainer = SimpleNamespace(loggers=[tensorboard, broken, wandb_like], global_step=7)
    grid = torch.rand(3, 10, 20)
    with pytest.warns(UserWarning, match="could not log image"):
        _send_to_loggers(trainer, "val/colorization", grid)  # type: ignore[arg-type]
    assert tensorboard.added == [("val/colorization", (3, 10, 20), 7)]
    assert wandb_like.images == [("val/colorization", (10, 20, 3), 7)]
