"""OnlineEvaluation: the kNN vote, the linear probe, logging, checkpoints and DDP."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from visiontransfer.callbacks import OnlineEvaluation, RunSummary
from visiontransfer.data import PretrainDataModule
from visiontransfer.pretext import RotationPrediction
from visiontransfer.probes import LinearProbe, knn_predict, topk_accuracy

REPO = Path(__file__).resolve().parents[2]
SMALL = {"samples_per_class": 5, "max_query": 25, "synthetic_size": 256, "probe_epochs": 20}
"""A small labeled set: 50 bank images, 25 queries (an uneven split over 2 ranks)."""


def _model() -> RotationPrediction:
    torch.manual_seed(0)
    return RotationPrediction(backbone="resnet10t", small_input_stem=False, head_hidden_dim=0)


def _data() -> PretrainDataModule:
    return PretrainDataModule(image_size=32, batch_size=16, synthetic_size=64, num_workers=0)


def _trainer(tmp_path: Path, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = {
        "max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1, "logger": False,
        "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
        "default_root_dir": tmp_path, "callbacks": callbacks, "accelerator": "cpu", "devices": 1,
    }  # fmt: skip
    options.update(kwargs)
    return L.Trainer(**options)


def _equal(a: Any, b: Any) -> bool:
    """Deep equality of nested dicts / lists / tensors / numbers (NaN equals NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


# -- kNN -------------------------------------------------------------------------------------------
def test_knn_predict_hand_example() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.0]])  # cos to [1,0]: 1, 0, .707, -1
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[2.0, 0.0], [0.0, -1.0]])  # second: cos -1 to bank[1], 0 to bank[0], bank[3]
    scores = knn_predict(query, bank, labels, num_classes=3, k=2, temperature=0.5)
    r = math.sqrt(0.5)
    # query 0: neighbours bank[0] (sim 1, class 0) and bank[2] (sim r, class 1).
    # query 1: sims 0, -1, -r, 0; top 2 are bank[0] and bank[3] (sim 0, classes 0 and 2).
    expected = torch.tensor(
        [[math.exp(1 / 0.5), math.exp(r / 0.5), 0.0], [math.exp(0.0), 0.0, math.exp(0.0)]]
    )
    assert torch.allclose(scores, expected, rtol=1e-5)
    # k larger than the bank takes the whole bank; query chunks don't change the result.
    everything = knn_predict(query, bank, labels, 3, k=10, temperature=0.5, chunk_size=1)
    w = [math.exp(s / 0.5) for s in (1.0, 0.0, r, -1.0)]
    assert torch.allclose(everything[0], torch.tensor([w[0], w[1] + w[2], w[3]]), rtol=1e-5)
    assert topk_accuracy(scores, torch.tensor([0, 2]), 1) == 0.5  # query 1: a tie, argmax picks 0
    assert topk_accuracy(scores, torch.tensor([1, 2]), 2) == 1.0


@pytest.mark.parametrize(("k", "temperature", "match"), [(0, 0.1, "k=0"), (1, 0.0, "temperature=0.0")])
def test_knn_predict_rejects_bad_arguments(k: int, temperature: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        knn_predict(torch.ones(1, 2), torch.ones(3, 2), torch.zeros(3), 2, k, temperature)


# -- linear probe ----------------------------------------------------------------------------------
def _clusters(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 well-separated Gaussian clusters in 32-D with a large common offset and scale."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 32, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.arange(4).repeat_interleave(n_per_class)
    feats = centres[labels] + torch.randn(len(labels), 32, generator=g)
    return feats * 50 + 100, labels  # standardisation must undo the offset and scale


@pytest.mark.parametrize("batch_size", [None, 32])
def test_probe_learns_separable_features(batch_size: int | None) -> None:
    train, train_labels = _clusters(50, seed=1)
    test, test_labels = _clusters(25, seed=2)
    epochs = 100 if batch_size is None else 10
    probe = LinearProbe(epochs=epochs, lr=0.01, weight_decay=1e-4, batch_size=batch_size)
    probe.fit(train, train_labels, num_classes=4)
    assert topk_accuracy(probe.predict(test), test_labels) >= 0.99
    # Deterministic: the same data and seed train the same probe (what keeps DDP ranks equal).
    again = LinearProbe(epochs=probe.epochs, lr=0.01, weight_decay=1e-4, batch_size=batch_size)
    again.fit(train, train_labels, num_classes=4)
    assert _equal(probe.state_dict(), again.state_dict())


def test_probe_warm_starts_and_survives_a_shape_change() -> None:
    feats, labels = _clusters(10, seed=3)
    probe = LinearProbe(epochs=5, lr=0.01, weight_decay=0.0)
    probe.fit(feats, labels, 4)
    restored = LinearProbe(epochs=5, lr=0.01, weight_decay=0.0)
    restored.load_state_dict(probe.state_dict())
    assert _equal(restored.state_dict(), probe.state_dict())  # before the next fit too
    restored.fit(feats, labels, 4, evaluation=1)
    optimizer = restored.state_dict()["optimizer"]  # type: ignore[index]
    assert int(optimizer["state"][0]["step"]) == 10  # AdamW went on from step 5
    with pytest.warns(UserWarning, match="starting a new probe"):
        restored.fit(feats[:, :8], labels, 4, evaluation=2)
    assert restored.state_dict()["weight"].shape == (4, 8)  # type: ignore[index]


# -- arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "OnlineEvaluation k=0 must be >= 1"),
        ({"temperature": 0.0}, "OnlineEvaluation temperature=0.0 must be > 0"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"every_n_epochs": 0}, "every_n_epochs=0"),
        ({"samples_per_class": 0}, "samples_per_class=0"),
        ({"max_query": 0}, "max_query=0"),
        ({"probe_lr": 0.0}, "probe_lr=0.0"),
        ({"knn": False, "linear_probe": False}, "nothing to do"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OnlineEvaluation(**kwargs)


def test_missing_root_names_the_callback(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"OnlineEvaluation\(root="):
        OnlineEvaluation(root=str(tmp_path / "nowhere"))


def test_module_without_features_is_refused(tmp_path: Path) -> None:
    callback = OnlineEvaluation(**SMALL)
    with pytest.raises(TypeError, match="features"):
        callback.setup(_trainer(tmp_path, []), L.LightningModule(), "fit")


# -- in a run --------------------------------------------------------------------------------------
def test_logs_metrics_every_n_epochs_and_in_validate(tmp_path: Path) -> None:
    model = _model()
    callback = OnlineEvaluation(every_n_epochs=2, **SMALL)
    trainer = _trainer(tmp_path, [callback], max_epochs=3, num_sanity_val_steps=1)
    trainer.fit(model, _data())
    # Not the sanity check, not epoch 0; epoch 1 (every 2nd) and epoch 2 (the last).
    assert [entry["epoch"] for entry in callback.history] == [1, 2]
    for entry in callback.history:
        assert entry["bank_size"] == 50 and entry["query_size"] == 25
    for name in ("online/knn_top1", "online/knn_top5", "online/probe_top1"):
        value = float(trainer.callback_metrics[name])
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(callback.history[-1][name])
    assert model.training and all(m.training for m in model.modules())  # train modes restored
    results = trainer.validate(model, _data(), verbose=False)
    assert len(callback.history) == 3
    assert results[0]["online/knn_top1"] == pytest.approx(callback.history[-1]["online/knn_top1"])


def test_features_are_gathered_in_dataset_order(tmp_path: Path) -> None:
    model = _model().eval()
    callback = OnlineEvaluation(batch_size=7, **SMALL)
    callback.prepare()
    trainer = _trainer(tmp_path, [callback])
    trainer.strategy.connect(model)
    model.trainer = trainer  # type: ignore[assignment]
    queries = callback._queries
    assert queries is not None and callback._query_positions is not None
    with torch.no_grad():
        feats, labels = callback.embed(trainer, model, queries, callback._query_positions)
        samples = [queries[int(i)] for i in callback._query_positions]
        direct = model.features(torch.stack([s["image"] for s in samples]))
    assert torch.allclose(feats, direct, atol=1e-5)
    assert labels.tolist() == [s["label"] for s in samples]


def test_state_dict_round_trip(tmp_path: Path) -> None:
    callback = OnlineEvaluation(**SMALL)
    assert callback.state_dict()["probe"] is None
    _trainer(tmp_path, [callback]).fit(_model(), _data())
    state = callback.state_dict()
    assert state["last_epoch"] == 0 and len(state["history"]) == 1
    assert state["probe"]["weight"].shape == (10, 512)
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)  # plain, safely loadable data
    fresh = OnlineEvaluation(**SMALL)
    fresh.load_state_dict(loaded)
    assert _equal(fresh.state_dict(), state)
    assert fresh.last_metrics == callback.last_metrics and fresh.history == callback.history


class _Spy(L.Callback):
    """Copies the online evaluator's state when training (re)starts, before any evaluation."""

    def __init__(self, target: OnlineEvaluation) -> None:
        self.target = target
        self.seen: dict[str, Any] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen = self.target.state_dict()


def test_resume_restores_the_state(tmp_path: Path) -> None:
    def checkpoint() -> ModelCheckpoint:
        return ModelCheckpoint(tmp_path / "ckpt", monitor="online/knn_top1", mode="max", save_last=True)

    first = OnlineEvaluation(**SMALL)
    _trainer(tmp_path, [first, checkpoint()], enable_checkpointing=True).fit(_model(), _data())
    last = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=False)["callbacks"][first.state_key]
    assert _equal(saved, first.state_dict())

    second = OnlineEvaluation(**SMALL)
    spy = _Spy(second)
    trainer = _trainer(tmp_path, [second, spy, checkpoint()], max_epochs=2, enable_checkpointing=True)
    trainer.fit(_model(), _data(), ckpt_path=last)
    assert spy.seen is not None and _equal(spy.seen, saved)
    assert [entry["epoch"] for entry in second.history] == [0, 1]
    assert _equal(second.history[0], saved["history"][0])
    # The probe went on from the restored weights and AdamW state: two evaluations of steps.
    steps = second.state_dict()["probe"]["optimizer"]["state"][0]["step"]
    assert int(steps) == 2 * SMALL["probe_epochs"]


def test_cifar_style_root_uses_train_as_bank_and_test_as_queries(tmp_path: Path, cifar_tree: Any) -> None:
    classes = ("cat", "dog", "ship")
    cifar_tree(tmp_path / "cifar" / "train", classes, per_class=6, split="train")
    cifar_tree(tmp_path / "cifar" / "test", classes, per_class=4, split="test")
    callback = OnlineEvaluation(root=str(tmp_path / "cifar"), samples_per_class=3, max_query=10, k=3)
    trainer = _trainer(tmp_path, [callback])
    trainer.validate(_model(), _data(), verbose=False)
    assert callback._queries is callback.datamodule.datasets["test"]
    entry = callback.history[-1]
    assert entry["bank_size"] == 9 and entry["query_size"] == 10
    assert "online/knn_top5" not in entry  # 3 classes: no top-5
    assert 0.0 <= entry["online/knn_top1"] <= 1.0


def test_exported_with_run_summary() -> None:
    import visiontransfer.callbacks as callbacks

    assert {"OnlineEvaluation", "RunSummary"} <= set(callbacks.__all__)
    assert RunSummary.__module__ == "visiontransfer.callbacks.summary"
