"""Transfer to detection: Faster R-CNN, RetinaNet and FCOS on a timm backbone with an FPN — training
and evaluation steps, torchvision's label / class-count contract, anchors per stride, freezing,
checkpoint → export, COCO-format predictions, the CLI on the raccoon set, and Faster R-CNN's RoI
pooling on CPU against torchvision's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from visiontransfer.backbones import FeatureBackbone, create_backbone
from visiontransfer.callbacks import DetectionWriter
from visiontransfer.commands.lightning_cli import VisionTransferCLI, config_dir
from visiontransfer.data import PretrainDataModule
from visiontransfer.data.detection import DetectionDataModule, image_size
from visiontransfer.export import export_backbone, load_backbone
from visiontransfer.pretext import RotationPrediction
from visiontransfer.transfer import ObjectDetector
from visiontransfer.transfer.detection import CPUMultiScaleRoIAlign, TimmFPNBackbone

TINY = {"backbone": "resnet10t", "fpn_channels": 32, "min_size": 128}
DETECTORS = ("fasterrcnn", "retinanet", "fcos")


def _batch() -> dict:
    torch.manual_seed(0)
    images = [
        torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8),
        torch.randint(0, 256, (3, 128, 80), dtype=torch.uint8),
    ]
    images[0][:, 20:70, 30:90] = torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None]
    targets = [
        {"boxes": torch.tensor([[30.0, 20.0, 90.0, 70.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # a negative
    ]
    return {
        "image": images,
        "target": targets,
        "index": torch.arange(2),
        "orig_size": torch.tensor([[96, 128], [128, 80]]),
    }


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=tmp_path, num_sanity_val_steps=0,
    )  # fmt: skip
    defaults.update(kwargs)
    return L.Trainer(**defaults)


@pytest.mark.parametrize("detector", DETECTORS)
def test_training_and_evaluation_step(detector: str) -> None:
    model = ObjectDetector(detector=detector, num_classes=3, **TINY)
    model.train()
    batch = _batch()
    loss = model.training_step(batch, 0)
    assert loss is not None and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in backbone_grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.detector.parameters())
    model.eval()
    with torch.no_grad():
        model.validation_step(batch, 0)
        predictions = model(batch["image"])
    results = model.metrics["val"].compute()
    assert {"map", "map_50", "map_75", "map_per_class"} <= set(results)
    assert len(predictions) == 2
    for out, image in zip(predictions, batch["image"], strict=True):
        assert out["boxes"].shape[1] == 4 and out["scores"].shape == out["labels"].shape
        if len(out["labels"]):
            assert out["labels"].min() >= 1 and out["labels"].max() <= 3
            assert (out["boxes"][:, 2] <= image.shape[2] + 1e-3).all()
    assert model.training_step({**batch, "image": [], "target": []}, 0) is None


def test_torchvision_class_count_and_label_contract() -> None:
    frcnn = ObjectDetector(detector="fasterrcnn", num_classes=3, **TINY)
    assert frcnn.detector.roi_heads.box_predictor.cls_score.out_features == 4  # background counted
    retina = ObjectDetector(detector="retinanet", num_classes=3, **TINY)
    assert retina.detector.head.classification_head.num_classes == 3 and retina.label_offset == 1
    fcos = ObjectDetector(detector="fcos", num_classes=3, **TINY)
    assert fcos.detector.head.classification_head.num_classes == 3
    # images go in as [0, 1]: the detector normalises them with the backbone's own mean / std
    cfg = frcnn.backbone.pretrained_cfg
    assert frcnn.detector.transform.image_mean == list(cfg["mean"])
    assert frcnn._inputs([torch.full((3, 4, 4), 255, dtype=torch.uint8)])[0].max() == 1.0


def test_anchors_follow_strides() -> None:
    frcnn = ObjectDetector(detector="fasterrcnn", num_classes=1, **TINY)
    assert frcnn.strides == [4, 8, 16, 32, 64]
    assert frcnn.detector.rpn.anchor_generator.sizes == tuple((8.0 * s,) for s in frcnn.strides)
    assert frcnn.detector.rpn.anchor_generator.aspect_ratios[0] == (0.5, 1.0, 2.0)
    retina = ObjectDetector(detector="retinanet", num_classes=1, anchor_scale=4, **TINY)
    assert retina.strides == [8, 16, 32, 64, 128]
    assert [s[0] for s in retina.detector.anchor_generator.sizes] == [4.0 * s for s in retina.strides]
    fcos = ObjectDetector(detector="fcos", num_classes=1, **TINY)
    assert fcos.detector.anchor_generator.sizes == tuple((float(s),) for s in fcos.strides)


def test_fpn_backbone_levels() -> None:
    body = FeatureBackbone(create_backbone("resnet10t"), out_indices=(2, 3, 4))
    fpn = TimmFPNBackbone(body, out_channels=16, extra="p6p7")
    maps = fpn(torch.zeros(1, 3, 128, 128))
    assert list(maps) == ["0", "1", "2", "p6", "p7"] and fpn.strides == [8, 16, 32, 64, 128]
    assert [m.shape[-1] for m in maps.values()] == [16, 8, 4, 2, 1] and all(
        m.shape[1] == 16 for m in maps.values()
    )
    assert any(k.startswith("body.") for k in fpn.state_dict())
    with pytest.raises(ValueError, match=r"--model\.out_indices must name levels of increasing stride"):
        TimmFPNBackbone(FeatureBackbone(create_backbone("resnet10t"), out_indices=(4, 3)))


def test_freezing_and_batchnorm() -> None:
    model = ObjectDetector(detector="fasterrcnn", num_classes=1, trainable_stages=2, **TINY)
    stages = model.stages
    frozen = {n for s in stages[: len(stages) - 2] for n in s}
    for name, param in model.backbone.named_parameters():
        assert param.requires_grad == (name not in frozen), name
    model.train()
    assert not model.backbone.bn1.training  # bn_mode eval: every backbone BatchNorm in eval
    train_bn = ObjectDetector(
        detector="fasterrcnn", num_classes=1, trainable_stages=2, bn_mode="train", **TINY
    )
    train_bn.train()
    assert not train_bn.backbone.bn1.training and train_bn.backbone.layer4[0].bn1.training
    with pytest.warns(UserWarning, match="bn_mode=frozen on a randomly initialised backbone"):
        frozen_bn = ObjectDetector(detector="fcos", num_classes=1, bn_mode="frozen", **TINY)
    assert not frozen_bn.backbone.bn1.weight.requires_grad


def test_bad_arguments_name_the_flag() -> None:
    with pytest.raises(ValueError, match=r"--model\.detector='yolo'"):
        ObjectDetector(num_classes=1, detector="yolo", **TINY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"--model.trainable_stages=9 must be in \[0, 5\]"):
        ObjectDetector(num_classes=1, trainable_stages=9, **TINY)
    with pytest.raises(ValueError, match=r"--model\.anchor_scale does not apply to FCOS"):
        ObjectDetector(num_classes=1, detector="fcos", anchor_scale=4, **TINY)


@pytest.fixture(scope="module")
def pretext_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pretext")
    L.seed_everything(0)
    model = RotationPrediction(backbone="resnet10t", small_input_stem=False, head_hidden_dim=8)
    trainer = _trainer(root, max_steps=1, limit_val_batches=0)
    trainer.fit(model, PretrainDataModule(image_size=32, batch_size=4, synthetic_size=16, num_workers=0))
    path = root / "pretext.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_pretext_checkpoint_to_detector_to_export(pretext_ckpt: Path, tmp_path: Path) -> None:
    pretext = torch.load(pretext_ckpt, weights_only=True)["state_dict"]
    data = DetectionDataModule(image_size=64, synthetic_size=16, batch_size=2, num_workers=0)
    model = ObjectDetector(
        backbone=str(pretext_ckpt), fpn_channels=32, num_classes=data.num_classes, input_size=data.image_size
    )
    assert model.hparams["small_input_stem"] is False  # the stem came from the checkpoint
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, pretext[f"backbone.{k}"]), k
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(model, data)
    assert model.num_classes == 10 and model.detector.transform.min_size == (64,)
    assert "val/map_50" in trainer.callback_metrics
    keys = set(model.state_dict())
    assert not any(k.startswith("detector.backbone.body") for k in keys)  # the backbone is stored once
    assert {k.split(".")[0] for k in keys} == {"backbone", "detector"}
    ckpt = tmp_path / "detector.ckpt"
    trainer.save_checkpoint(ckpt)
    exported = load_backbone(export_backbone(ckpt, tmp_path / "export"))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(exported.state_dict()[k], v), k
    restored = ObjectDetector.load_from_checkpoint(ckpt, backbone="resnet10t")
    assert restored.num_classes == 10 and restored.detector.transform.min_size == (64,)


def test_predict_writes_coco_detections(raccoon_dir: Path, tmp_path: Path) -> None:
    data = DetectionDataModule(
        root=str(raccoon_dir.parent), train_split="data/train_labels.csv", val_split="data/test_labels.csv",
        image_size=128, batch_size=2, num_workers=0,
    )  # fmt: skip
    model = ObjectDetector(num_classes=1, detector_kwargs={"box_score_thresh": 0.0}, **TINY)
    writer = DetectionWriter(
        path=str(tmp_path / "det.json"), draw_dir=str(tmp_path / "drawn"), draw_threshold=0.0
    )
    trainer = _trainer(tmp_path, limit_predict_batches=2, callbacks=[writer])
    trainer.predict(model, data)
    detections = json.loads((tmp_path / "det.json").read_text())
    index = json.loads((tmp_path / "det_images.json").read_text())
    assert index["categories"] == [{"id": 1, "name": "raccoon"}] and len(index["images"]) == 4
    sizes = {i["id"]: image_size(i["file_name"]) for i in index["images"]}
    assert detections and {"image_id", "category_id", "bbox", "score"} <= set(detections[0])
    for det in detections:
        x, y, w, h = det["bbox"]
        width, height = sizes[det["image_id"]]
        assert det["category_id"] == 1 and w >= 0 and h >= 0
        assert x + w <= width + 0.5 and y + h <= height + 0.5  # original pixels, not the 128-px input
    drawn = sorted(p.name for p in (tmp_path / "drawn").iterdir())
    assert len(drawn) == 4 and all(name.startswith("raccoon-") for name in drawn)


@pytest.mark.parametrize("name", ["detect_fasterrcnn", "detect_retinanet", "detect_fcos"])
def test_cli_fast_dev_run_on_raccoon(
    name: str, raccoon_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visiontransfer"])
    cli = VisionTransferCLI(
        args=[
            "fit", "--config", str(config_dir() / "transfer" / f"{name}.yaml"), "--trainer.fast_dev_run=true",
            f"--data.root={raccoon_dir.parent}", "--data.train_split=data/train_labels.csv",
            "--data.val_split=data/test_labels.csv", "--data.image_size=128", "--data.batch_size=2",
            "--data.num_workers=0", "--model.backbone=resnet10t", "--model.fpn_channels=32",
            "--trainer.enable_progress_bar=false",
        ]
    )  # fmt: skip
    assert cli.trainer.state.finished
    assert cli.model.num_classes == 1 and cli.datamodule.classes == ["raccoon"]
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert {"val/map", "val/map_50", "val/map_75"} <= set(cli.trainer.callback_metrics)


def test_single_channel_backbone_sees_lightness() -> None:
    model = ObjectDetector(num_classes=3, in_chans=1, **TINY)  # e.g. a colorization backbone
    assert len(model.detector.transform.image_mean) == 1
    white = model._inputs([torch.full((3, 8, 8), 255, dtype=torch.uint8)])[0]
    assert white.shape == (1, 8, 8) and torch.allclose(white, torch.ones_like(white), atol=1e-3)
    model.train()
    loss = model.training_step(_batch(), 0)
    assert loss is not None and torch.isfinite(loss)


@pytest.mark.parametrize("levels", [1, 4])
def test_cpu_roi_pooling_matches_torchvision_forward_and_backward(levels: int) -> None:
    """The sparse-matrix RoIAlign gives torchvision's numbers and gradients: boxes across the image
    border and past the last pixel, boxes under a pixel wide, every level, images of a batch."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(24 // 2**k, 32 // 2**k) for k in range(levels)]  # strides 4, 8, 16, 32 of 96 x 128
    names = [str(k) for k in range(levels)]
    boxes = []
    for _ in range(2):
        corner = torch.rand(40, 2, generator=generator) * torch.tensor([150.0, 110.0]) - 12
        size = torch.rand(40, 2, generator=generator) ** 2 * 120 + 0.2
        boxes.append(torch.cat([corner, corner + size], 1).double())
    outputs = []
    for pool in (MultiScaleRoIAlign(names, 7, 2), CPUMultiScaleRoIAlign(names, 7, 2)):
        torch.manual_seed(1)
        maps = {n: torch.randn(2, 5, h, w, dtype=torch.float64, requires_grad=True)
                for n, (h, w) in zip(names, shapes, strict=True)}  # fmt: skip
        pooled = pool(maps, boxes, [(96, 128), (90, 120)])
        (pooled * torch.linspace(-1, 1, pooled.numel(), dtype=torch.float64).view_as(pooled)).sum().backward()
        outputs.append((pooled.detach(), [m.grad for m in maps.values()]))
    (reference, reference_grads), (ours, grads) = outputs
    assert ours.shape == (80, 5, 7, 7) and reference.abs().sum() > 0
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)
    for grad, expected in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-9)


def test_cpu_roi_pooling_keeps_the_dtype_and_takes_no_boxes() -> None:
    pool = CPUMultiScaleRoIAlign(["0"], 3, 2)
    maps = {"0": torch.randn(1, 4, 8, 8).bfloat16()}
    assert pool(maps, [torch.tensor([[0.0, 0.0, 16.0, 16.0]])], [(32, 32)]).dtype == torch.bfloat16
    assert pool({"0": torch.randn(1, 4, 8, 8)}, [torch.zeros(0, 4)], [(32, 32)]).shape == (0, 4, 3, 3)
    model = ObjectDetector(num_classes=2, **TINY)
    assert isinstance(model.detector.roi_heads.box_roi_pool, CPUMultiScaleRoIAlign)
