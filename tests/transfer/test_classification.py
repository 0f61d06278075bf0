"""Transfer to classification: head swap, freeze policies, gradual unfreezing (with resume and
DDP), layer-wise LR decay, metrics, predictions, and the CLI from a pretext checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch

from visiontransfer.callbacks import PredictionWriter
from visiontransfer.data import ClassificationDataModule, PretrainDataModule
from visiontransfer.pretext import RotationPrediction
from visiontransfer.transfer import ImageClassifier
from visiontransfer.transfer.freezing import backbone_stages, frozen_stage_count, layer_decay_scales

TINY = {"backbone": "resnet10t", "small_input_stem": False}


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path, limit_val_batches=1,
    )  # fmt: skip
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def _data(**kwargs) -> ClassificationDataModule:
    args = dict(image_size=32, batch_size=8, synthetic_size=64, num_workers=0)
    args.update(kwargs)
    return ClassificationDataModule(**args)


@pytest.fixture(scope="module")
def pretext_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pretext")
    L.seed_everything(0)
    model = RotationPrediction(head_hidden_dim=8, **TINY)
    trainer = _trainer(root, max_steps=2, limit_val_batches=0)
    trainer.fit(model, PretrainDataModule(image_size=32, batch_size=8, synthetic_size=16, num_workers=0))
    path = root / "pretext.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_head_swap_only_head_keys_are_new(pretext_ckpt: Path) -> None:
    pretext = torch.load(pretext_ckpt, weights_only=True)["state_dict"]
    model = ImageClassifier(backbone=str(pretext_ckpt), num_classes=10)
    keys = set(model.state_dict())
    backbone_keys = {k for k in pretext if k.startswith("backbone.")}
    assert backbone_keys <= keys
    assert {k.split(".")[0] for k in keys - backbone_keys} <= {"head", "metrics"}
    assert model.state_dict()["head.layers.0.weight"].shape == (10, model.num_features)
    for k in backbone_keys:
        assert torch.equal(model.state_dict()[k], pretext[k]), k
    assert model.backbone_spec.source is not None and model.backbone_spec.source.endswith("pretext.ckpt")


def test_linear_probe_keeps_backbone_and_bn_stats(pretext_ckpt: Path, tmp_path: Path) -> None:
    model = ImageClassifier(backbone=str(pretext_ckpt), num_classes=10, strategy="linear_probe", lr=0.05)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = None
    trainer = _trainer(tmp_path, max_steps=3)
    data = _data()
    trainer.fit(model, data)
    after = model.backbone.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"{key} changed in linear-probe mode (BN stats included)"
    assert head_before is None and model.head is not None
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert any(p.requires_grad for p in model.head.parameters())


def test_frozen_stages_and_bn_modes(tmp_path: Path) -> None:
    model = ImageClassifier(num_classes=3, frozen_stages=2, bn_mode="frozen", **TINY)
    stages = backbone_stages(model.backbone)
    names = dict(model.backbone.named_parameters())
    for name in stages[0] + stages[1]:
        assert not names[name].requires_grad
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    with pytest.raises(ValueError, match=r"--model\.frozen_stages"):
        ImageClassifier(num_classes=3, frozen_stages=99, **TINY)


def test_unfreeze_schedule_pure_function() -> None:
    # 5 stages, release one every 2 epochs, down to frozen_stages=1.
    assert [frozen_stage_count(5, 1, 2, e) for e in range(10)] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert frozen_stage_count(5, 2, 0, 7) == 2


class _Record(L.Callback):
    def __init__(self) -> None:
        self.frozen: dict[int, int] = {}
        self.changed: dict[int, set[int]] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:  # type: ignore[override]
        self.frozen[trainer.current_epoch] = pl_module.frozen_now()
        self._before = {k: v.detach().clone() for k, v in pl_module.backbone.named_parameters()}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:  # type: ignore[override]
        stage_of = {n: i for i, names in enumerate(pl_module.stages) for n in names}
        moved = {
            stage_of[k]
            for k, v in pl_module.backbone.named_parameters()
            if not torch.equal(v, self._before[k])
        }
        self.changed[trainer.current_epoch] = moved


def test_gradual_unfreezing_epochs_and_resume(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = ImageClassifier(num_classes=10, unfreeze_every_n_epochs=1, lr=1e-2, **TINY)
    n = len(model.stages)
    record = _Record()
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=-1)
    trainer = _trainer(
        tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[record, ckpt_cb], enable_checkpointing=True
    )
    trainer.fit(model, _data())
    assert record.frozen == {0: n, 1: n - 1}
    assert record.changed[0] == set(), "frozen stages moved in epoch 0"
    assert record.changed[1] == {n - 1}, "only the top stage may move in epoch 1"
    # Resume from the end of epoch 1 and train two more epochs: the schedule continues.
    resumed = ImageClassifier(num_classes=10, unfreeze_every_n_epochs=1, lr=1e-2, **TINY)
    record2 = _Record()
    trainer2 = _trainer(tmp_path, max_epochs=4, limit_train_batches=2, callbacks=[record2])
    trainer2.fit(resumed, _data(), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert record2.frozen == {2: n - 2, 3: n - 3}
    assert record2.changed[2] == {n - 2, n - 1}


def test_layer_decay_reaches_optimizer(tmp_path: Path) -> None:
    model = ImageClassifier(
        num_classes=10, layer_decay=0.5, lr=0.1, warmup_epochs=0, min_lr_ratio=1.0, **TINY
    )
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(model, _data())
    groups = trainer.optimizers[0].param_groups
    n = len(model.stages)
    expected = [*layer_decay_scales(n, 0.5), 1.0]
    for group in groups:
        assert group["lr"] == pytest.approx(0.1 * expected[group["stage"]]), group["stage"]
    assert {g["stage"] for g in groups} == set(range(n + 1))
    with pytest.raises(ValueError, match=r"--model\.layer_decay"):
        ImageClassifier(num_classes=3, layer_decay=1.5, **TINY)


def test_num_classes_declared_and_mismatch_named(tmp_path: Path) -> None:
    data = _data()
    model = ImageClassifier(num_classes=data.num_classes, class_names=data.classes, **TINY)
    assert model.hparams["num_classes"] == 10 and model.hparams["class_names"] == data.classes
    assert model.head(torch.zeros(1, model.num_features)).shape == (1, 10)  # built at construction
    _trainer(tmp_path, max_steps=1).fit(model, data)
    wrong = ImageClassifier(num_classes=3, **TINY)
    with pytest.raises(ValueError, match=r"--model\.num_classes=3 but the data has label [3-9]"):
        _trainer(tmp_path, max_steps=1).fit(wrong, _data())
    with pytest.raises(ValueError, match=r"--model\.class_names lists 2 names for --model\.num_classes=3"):
        ImageClassifier(num_classes=3, class_names=["a", "b"], **TINY)


def test_metrics_confusion_image_and_predictions(tmp_path: Path) -> None:
    model = ImageClassifier(num_classes=10, class_names=_data().classes, **TINY)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="cls")
    writer = PredictionWriter("predictions.csv")
    trainer = _trainer(
        tmp_path,
        max_steps=2,
        logger=logger,
        callbacks=[writer],
        limit_test_batches=2,
        limit_predict_batches=2,
    )
    data = _data()
    trainer.fit(model, data)
    metrics = trainer.test(model, data, verbose=False)[0]
    assert {"test/top1", "test/top5", "test/acc_triangle"} <= set(metrics)
    assert list(Path(trainer.log_dir, "images").glob("test_confusion_epoch*.png"))
    trainer.predict(model, data)
    with open(Path(trainer.log_dir, "predictions.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(data.datasets["predict"]) and rows[0]["predicted_class"] in data.classes
    assert 0 < float(rows[0]["probability"]) <= 1
