"""RotNet: labels match the rotated pixels; the module trains and predicts."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from visiontransfer.data import PretrainDataModule
from visiontransfer.errors import ConfigError
from visiontransfer.pretext import RotationPrediction
from visiontransfer.pretext.ops import rotate_batch


def test_rotation_labels_match_pixels() -> None:
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    rotated, labels = rotate_batch(images, (0, 90, 180, 270))
    assert rotated.shape == (12, 3, 8, 8)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for i, (img, label) in enumerate(zip(rotated, labels, strict=True)):
        source = images[i % 3].numpy()
        expected = np.rot90(source, k=int(label), axes=(1, 2))  # counter-clockwise, as numpy
        assert np.array_equal(img.numpy(), expected)
    # 90° counter-clockwise moves the top-right pixel to the top-left.
    one = torch.zeros(1, 1, 2, 2)
    one[0, 0, 0, 1] = 1
    assert rotate_batch(one, (0, 90))[0][1, 0, 0, 0] == 1


def test_rotation_subset_labels_index_the_set() -> None:
    rotated, labels = rotate_batch(torch.zeros(2, 1, 4, 4), (0, 180))
    assert rotated.shape[0] == 4 and labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("bad", [(0,), (0, 45), (0, 0, 90), (0, 360)])
def test_bad_rotation_sets(bad: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"^rotations="):
        rotate_batch(torch.zeros(1, 1, 4, 4), bad)
    with pytest.raises(ConfigError, match=r"^--model\.rotations="):
        RotationPrediction(backbone="test_resnet", rotations=bad)


def test_non_square_images_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(1, 3, 4, 6))


def test_module_trains_on_embedded_set(tmp_path) -> None:
    L.seed_everything(0)
    model = RotationPrediction(backbone="resnet10t", small_input_stem=False, head_hidden_dim=32, lr=1e-3)
    data = PretrainDataModule(image_size=32, batch_size=16, synthetic_size=64, num_workers=0)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=3, limit_val_batches=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, data)
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    assert 0.0 <= float(trainer.callback_metrics["val/rot_acc"]) <= 1.0
    changed = [not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters(), strict=True)]
    assert all(changed), "every backbone parameter must receive a gradient step"


def test_empty_batch_is_skipped() -> None:
    model = RotationPrediction(backbone="resnet10t", small_input_stem=False, head_hidden_dim=0)
    batch = {
        "image": torch.empty(0, 3, 0, 0, dtype=torch.uint8),
        "label": torch.empty(0),
        "index": torch.empty(0),
    }
    assert model.training_step(batch, 0) is None


def test_hyperparameters_saved_for_reload() -> None:
    model = RotationPrediction(backbone="resnet10t", rotations=(0, 180), small_input_stem=True)
    assert model.hparams["backbone"] == "resnet10t"
    assert tuple(model.hparams["rotations"]) == (0, 180)
    assert model.hparams["small_input_stem"] is True
