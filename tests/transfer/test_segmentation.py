"""Transfer to semantic segmentation: decoders, the loss and metrics with the ignore index (against
hand-computed values), the shared freezing policy, class weights, the deployable network
(torch.export), a CLI fit → test → predict on real CamVid files, export and reload, and an exact
mid-epoch resume."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.classification import MulticlassJaccardIndex
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from visiontransfer.backbones import FeatureBackbone, create_backbone
from visiontransfer.callbacks import ResumeCheckpoint
from visiontransfer.cli import main as cli_main
from visiontransfer.commands.lightning_cli import VisionTransferCLI, config_dir
from visiontransfer.data.segmentation import SegmentationDataModule
from visiontransfer.decoders import ASPPDecoder, FPNDecoder
from visiontransfer.errors import ConfigError
from visiontransfer.export import load_backbone
from visiontransfer.losses import median_frequency_weights, segmentation_cross_entropy
from visiontransfer.pretext.colorization import ColorizationDecoder
from visiontransfer.transfer import SemanticSegmenter
from visiontransfer.transfer.segmentation import segmentation_scores

TINY = {"backbone": "resnet10t", "decoder_width": 16}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=tmp_path, num_sanity_val_steps=0,
    )  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


# -- decoders ------------------------------------------------------------------------------------
def test_fpn_decoder_is_the_colorization_decoder_and_shapes() -> None:
    body = FeatureBackbone(create_backbone("resnet10t"))
    fpn = FPNDecoder(body.channels, body.reductions, 5, width=16, output_stride=2)
    same = ColorizationDecoder(body.channels, body.reductions, 5, width=16, output_stride=2)
    assert same.load_state_dict(fpn.state_dict()) is not None  # the same layers, the same keys
    fpn.eval(), same.eval()
    maps = body(torch.randn(2, 3, 64, 96))
    with torch.no_grad():
        assert torch.allclose(fpn(maps, (32, 48)), same(maps, (32, 48)), atol=1e-6)
        assert fpn(maps, (50, 70)).shape == (2, 5, 50, 70)
    with pytest.raises(ValueError, match="one reduction per level"):
        FPNDecoder([8, 16], [4], 3)


def test_aspp_decoder_is_torchvisions_deeplab_head() -> None:
    decoder = ASPPDecoder(64, 7, atrous_rates=(2, 4, 6), width=256)
    head = DeepLabHead(64, 7, atrous_rates=(2, 4, 6))
    decoder.head.load_state_dict(head.state_dict())  # layer for layer, key for key
    decoder.eval(), head.eval()
    x = torch.randn(2, 64, 6, 8)
    with torch.no_grad():
        assert torch.allclose(decoder([torch.zeros(1), x], (6, 8)), head(x), atol=1e-5)
        assert decoder([x], (24, 32)).shape == (2, 7, 24, 32)
    with pytest.raises(ValueError, match=r"atrous_rates=\[1, 2\] must be three"):
        ASPPDecoder(8, 2, atrous_rates=(1, 2))


# -- loss and metrics with the ignore index --------------------------------------------------------
def test_cross_entropy_ignores_the_ignore_index_and_weights_classes() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]], requires_grad=True)  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 255]]])
    loss = segmentation_cross_entropy(logits, target)
    assert loss.item() == pytest.approx(-np.log(np.exp(2) / (np.exp(2) + 1)))  # pixel 0 alone
    loss.backward()
    assert torch.all(logits.grad[..., 1] == 0)  # the ignored pixel gets no gradient
    moved = logits.detach().clone()
    moved[..., 1] = 50.0  # anything at the ignored pixel
    assert segmentation_cross_entropy(moved, target).item() == pytest.approx(loss.item())
    both = torch.tensor([[[0, 1]]])
    p0, p1 = np.exp(2) / (np.exp(2) + 1), np.exp(1) / (np.exp(1) + 1)
    weighted = segmentation_cross_entropy(logits.detach(), both, weight=torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx((-np.log(p0) - 3 * np.log(p1)) / 4)  # weighted mean
    none = segmentation_cross_entropy(logits, torch.full((1, 1, 2), 255))
    assert none.item() == 0.0 and none.requires_grad  # no labeled pixel: 0, not NaN
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) logits and a \(B, H, W\) target"):
        segmentation_cross_entropy(logits, target[0])
    with pytest.raises(ValueError, match="one value per class"):
        segmentation_cross_entropy(logits, target, weight=torch.ones(3))


def test_median_frequency_weights_by_hand() -> None:
    # frequencies 10/100, 30/50, 5/20 (pixels of the class / of the images it appears in);
    # median 0.25 → weights 2.5, 0.4167, 1; a class never seen gets 1.
    weights = median_frequency_weights(torch.tensor([10, 30, 5, 0]), torch.tensor([100, 50, 20, 0]))
    assert weights.tolist() == pytest.approx([2.5, 0.25 / 0.6, 1.0, 1.0])
    with pytest.raises(ValueError, match="present_pixels >= class_pixels"):
        median_frequency_weights(torch.tensor([5]), torch.tensor([2]))


def test_iou_against_a_hand_computed_confusion_matrix() -> None:
    model = SemanticSegmenter(num_classes=3, **TINY)
    metric = model.metrics["val"]
    target = torch.tensor([[0, 0, 0, 1, 1, 2, 255, 255]])
    predicted = torch.tensor([[0, 0, 1, 1, 2, 2, 1, 0]])  # the last two are ignored, whatever they say
    metric.update(predicted[:, :4], target[:, :4])  # two batches: the whole set is what counts
    metric.update(predicted[:, 4:], target[:, 4:])
    confusion = metric.compute()
    assert confusion.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]  # rows true, columns predicted
    scores = segmentation_scores(confusion)
    # IoU = TP / (TP + FP + FN): class 0 2/(2+0+1), class 1 1/(1+1+1), class 2 1/(1+1+0)
    assert scores["iou"].tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 2])
    assert scores["miou"].item() == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    assert scores["pixel_accuracy"].item() == pytest.approx(4 / 6)
    assert scores["mean_accuracy"].item() == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    jaccard = MulticlassJaccardIndex(3, average=None, ignore_index=255)
    assert torch.allclose(jaccard(predicted, target).double(), scores["iou"])  # torchmetrics agrees
    per_batch = [segmentation_scores(torch.tensor(m)) for m in ([[2, 1, 0], [0, 1, 0], [0, 0, 0]],)]
    assert per_batch[0]["miou"] != scores["miou"]  # a batch's mIoU is not the set's
    absent = segmentation_scores(torch.tensor([[3, 0], [0, 0]]))
    assert torch.isnan(absent["iou"][1]) and absent["miou"].item() == 1.0  # never seen, never predicted


# -- the module ------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["fpn", "deeplabv3"])
def test_logits_at_the_input_size_and_gradients(decoder: str) -> None:
    model = SemanticSegmenter(num_classes=4, decoder=decoder, atrous_rates=(1, 2, 3), **TINY)
    images = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    masks = torch.randint(0, 4, (2, 50, 70))
    masks[:, :5] = 255
    loss = model.training_step({"image": images, "mask": masks}, 0)
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert model(images).shape == (2, 4, 50, 70)
    assert model.training_step({"image": images[:0], "mask": masks[:0]}, 0) is None
    assert {k.split(".")[0] for k in model.state_dict()} == {"backbone", "decoder", "class_weight"}


def test_freezing_bn_and_layer_decay_are_the_shared_policy(tmp_path: Path) -> None:
    probe = SemanticSegmenter(num_classes=3, strategy="linear_probe", **TINY)
    assert not any(p.requires_grad for p in probe.backbone.parameters())
    assert all(p.requires_grad for p in probe.decoder.parameters())
    probe.train()
    assert not probe.backbone.bn1.training and probe.decoder.smooths[0][1].training
    model = SemanticSegmenter(
        num_classes=11, layer_decay=0.5, lr=0.1, warmup_epochs=0, min_lr_ratio=1.0, **TINY
    )
    data = SegmentationDataModule(image_size=32, batch_size=4, synthetic_size=16, num_workers=0)
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, data)
    groups = model.trainer.optimizers[0].param_groups
    top = len(model.stages)
    decoder_ids = {id(p) for p in model.decoder.parameters()}
    for group in groups:
        expected = 0.1 if group["stage"] == top else 0.1 * 0.5 ** (top - group["stage"])
        assert group["lr"] == pytest.approx(expected)
        if any(id(p) in decoder_ids for p in group["params"]):
            assert group["stage"] == top  # the decoder is head: full lr


def test_bad_arguments_name_the_flag() -> None:
    cases = [
        ({"num_classes": 1}, r"--model.num_classes=1 must be >= 2"),
        ({"num_classes": 3, "decoder": "unet"}, r"--model.decoder='unet'"),
        ({"num_classes": 3, "ignore_index": 2}, r"--model.ignore_index=2 is a class"),
        ({"num_classes": 3, "class_weights": [1.0, 2.0]}, r"--model.class_weights lists 2 weights"),
        ({"num_classes": 3, "class_weights": "inverse"}, r"--model.class_weights='inverse'"),
        ({"num_classes": 3, "dropout": 1.0}, r"--model.dropout=1.0 must be in \[0, 1\)"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            SemanticSegmenter(**{**TINY, **kwargs})


def test_masks_outside_the_classes_name_the_fix() -> None:
    model = SemanticSegmenter(num_classes=3, **TINY)
    batch = {"image": torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "mask": torch.full((2, 32, 32), 7)}
    with pytest.raises(
        ConfigError, match=r"masks hold \[7\].*--model.num_classes=3.*--model.ignore_index=255"
    ):
        model.training_step(batch, 0)


def test_class_weights_given_or_measured(tmp_path: Path) -> None:
    given = SemanticSegmenter(num_classes=3, class_weights=[1.0, 2.0, 0.5], **TINY)
    assert given.class_weight.tolist() == [1.0, 2.0, 0.5]
    data = SegmentationDataModule(image_size=32, batch_size=8, synthetic_size=32, num_workers=0)
    measured = SemanticSegmenter(num_classes=11, class_weights="median_frequency", weight_batches=2, **TINY)
    assert not measured.statistics_ready
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(measured, data)
    weights = measured.class_weight
    assert measured.statistics_ready and weights[0] < 1 < weights[1:].max()  # the background is common
    restored = SemanticSegmenter(num_classes=11, class_weights="median_frequency", **TINY)
    restored.load_state_dict(measured.state_dict())
    assert restored.statistics_ready and torch.equal(restored.class_weight, weights)  # not measured again


def test_single_channel_backbone_sees_lightness() -> None:
    model = SemanticSegmenter(num_classes=3, in_chans=1, **TINY)  # e.g. a colorization backbone
    images = torch.randint(0, 256, (2, 3, 32, 40), dtype=torch.uint8)
    assert model(images).shape == (2, 3, 32, 40)
    grey = images.float().mean(1, keepdim=True).expand(-1, 3, -1, -1).round().byte()
    assert model.normalize(grey).shape[1] == 1


def test_inference_model_is_plain_and_exports(tmp_path: Path) -> None:
    model = SemanticSegmenter(
        num_classes=4, decoder="deeplabv3", atrous_rates=(1, 2, 3), backbone="test_resnet"
    )
    model.train()
    network = model.inference_model()
    assert not isinstance(network, L.LightningModule) and not network.training and model.training
    images = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        expected = model(images)
        assert torch.allclose(network(images), expected, atol=1e-5)
    exported = torch.export.export(network, (images,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(images), expected, atol=1e-5)


# -- CLI on real files: fit → test → predict, export, reload ---------------------------------------
def test_cli_fit_test_predict_export_on_camvid(
    camvid_tree: Path, rotation_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pretext, _ = rotation_checkpoint(tmp_path / "rotation.ckpt")  # resnet10t, one step
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visiontransfer"])
    common = [
        "--config", str(config_dir() / "transfer" / "segment_fpn.yaml"), f"--data.root={camvid_tree}",
        "--data.image_size=96", "--data.crop_size=64", "--data.batch_size=4", "--data.num_workers=0",
        "--model.decoder_width=16", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    fit = VisionTransferCLI(args=["fit", *common, f"--model.backbone={pretext}", "--trainer.max_epochs=1"])
    assert fit.model.num_classes == 11 and fit.model.class_names[-1] == "bicyclist"
    assert {"val/miou", "val/pixel_accuracy"} <= set(fit.trainer.callback_metrics)
    log_dir = Path(fit.trainer.log_dir)
    assert list((log_dir / "images").glob("val_segmentation_epoch000.png"))  # image / truth / prediction
    last = log_dir / "checkpoints" / "last.ckpt"
    test = VisionTransferCLI(args=["test", *common, f"--ckpt_path={last}"])
    metrics = test.trainer.callback_metrics
    assert 0 <= float(metrics["test/miou"]) <= 1 and "test/iou_road" in metrics and "test/iou_sky" in metrics
    predict = VisionTransferCLI(args=["predict", *common, f"--ckpt_path={last}"])
    out = Path(predict.trainer.log_dir)
    rows = list(csv.DictReader((out / "segmentation.csv").open()))
    assert len(rows) == 3 and all(Path(r["path"]).parent.name == "test" for r in rows)
    for row in rows:
        with Image.open(row["mask"]) as mask:
            assert mask.size == (240, 180) and mask.mode == "P"  # the original size, class indices
            assert set(np.unique(np.asarray(mask))) <= set(range(11))
        with Image.open(row["overlay"]) as overlay:
            assert overlay.size == (240, 180) and overlay.mode == "RGB"
    # The whole module reloads without data; its backbone exports like the others.
    restored = SemanticSegmenter.load_from_checkpoint(last)
    images = torch.randint(0, 256, (1, 3, 45, 60), dtype=torch.uint8)
    restored.eval(), predict.model.eval()
    with torch.no_grad():
        assert torch.allclose(restored(images), predict.model(images), atol=1e-5)
    assert restored.class_names == fit.model.class_names
    cli_main(["export", str(last), "--out", str(tmp_path / "exported")])
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["visiontransfer"]["method"] == "SemanticSegmenter"
    exported = load_backbone(tmp_path / "exported")
    for key, value in restored.backbone.state_dict().items():
        assert torch.equal(exported.state_dict()[key], value), key


# -- resume mid-epoch ------------------------------------------------------------------------------
class _Losses(L.Callback):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.losses[trainer.global_step] = float(outputs["loss"] if isinstance(outputs, dict) else outputs)


class _PreemptAt(L.Callback):
    """Ask ResumeCheckpoint to save and stop after step ``step`` (as SIGTERM would); put it before
    the ResumeCheckpoint, which acts at the end of the same step."""

    def __init__(self, resume: ResumeCheckpoint, step: int) -> None:
        self.resume, self.step = resume, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step == self.step:
            self.resume.received = 15


def _resumable_fit(tmp_path: Path, *callbacks: L.Callback, ckpt_path: str | None = None) -> SemanticSegmenter:
    L.seed_everything(0)
    model = SemanticSegmenter(num_classes=11, backbone="resnet10t", decoder_width=16, dropout=0.2, lr=1e-3)
    data = SegmentationDataModule(image_size=32, batch_size=8, synthetic_size=48, num_workers=0)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer = _trainer(
        tmp_path,
        max_epochs=1,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=[checkpoint, *callbacks],
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model


def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = _Losses()
    uninterrupted = _resumable_fit(tmp_path / "a", reference)
    assert sorted(reference.losses) == list(range(1, 7))  # 48 training scenes: 6 batches of 8
    first = _Losses()
    resume = ResumeCheckpoint(every_n_train_steps=0, signals=[])
    with pytest.raises(SystemExit):
        _resumable_fit(tmp_path / "b", first, _PreemptAt(resume, 3), resume)
    saved = torch.load(tmp_path / "b" / "ck" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and saved["SegmentationDataModule"]["train_loader"]["batches_done"] == 3
    rest = _Losses()
    resumed = _resumable_fit(
        tmp_path / "b", ResumeCheckpoint(signals=[]), rest, ckpt_path=str(tmp_path / "b/ck/last.ckpt")
    )
    got = {**first.losses, **rest.losses}
    assert sorted(got) == sorted(reference.losses)
    for step, loss in reference.losses.items():
        assert got[step] == pytest.approx(loss, abs=1e-5), step  # same batches, crops, dropout, schedule
    for key, value in uninterrupted.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


# -- the label-efficiency report in mIoU -----------------------------------------------------------
def test_report_runs_segmentation_recipes_in_miou(
    camvid_tree: Path,
    rotation_checkpoint,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from visiontransfer.commands import report

    monkeypatch.setattr(sys, "argv", ["visiontransfer"])
    pretext, _ = rotation_checkpoint(tmp_path / "rotation.ckpt")
    out = tmp_path / "report"
    report.main([
        "--data", str(camvid_tree), "--backbones", f"rot={pretext}", "--recipes", "segment_fpn",
        "--metric", "test/miou", "--fractions", "0.5", "--seeds", "0", "--image-size", "64",
        "--batch-size", "4", "--base-epochs", "2", "--workers", "0", "--out", str(out),
    ])  # fmt: skip
    cells = report.load_cells(out / report.CELLS)
    assert [(c.backbone, c.labels, c.metric) for c in cells] == [
        ("rot", 4, "test/miou"),
        ("scratch", 4, "test/miou"),
    ]
    assert all(0 <= c.score <= 1 for c in cells)
    text = (out / report.REPORT_MD).read_text()
    assert "`test/miou`" in text and "50% (4 labels)" in text and "| scratch | segment_fpn |" in text
    (camvid_tree / "images" / "test").rename(tmp_path / "moved")
    try:  # a segmentation set without a test split is named
        with pytest.raises(SystemExit):
            report.main(
                ["--data", str(camvid_tree), "--backbones", str(pretext), "--out", str(tmp_path / "x")]
            )
    finally:
        (tmp_path / "moved").rename(camvid_tree / "images" / "test")
    assert (
        "has no test/ split: give a folder with images/<split>/ with masks/<split>/"
        in capsys.readouterr().err
    )
