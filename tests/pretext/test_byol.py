"""BYOL over the momentum teacher: the loss pairs each view's prediction with the teacher's
projection of the other view, and a fit updates the teacher once per optimizer step."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from visiontransfer.data import PretrainDataModule
from visiontransfer.pretext import BYOL

TINY = {
    "backbone": "test_resnet",
    "small_input_stem": False,
    "projection_dim": 8,
    "hidden_dim": 16,
    "blur": False,
}


def test_loss_is_two_minus_two_cosine_against_the_other_view() -> None:
    torch.manual_seed(0)
    model = BYOL(**TINY)
    batch = {"image": torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8), "index": torch.arange(3)}
    loss = model._step(batch, "train")
    views = model.normalize(model.views(batch, train=True))  # the same views: drawn from each image's seed
    with torch.no_grad():
        p = model.predictor(model.projector(model.backbone(views)))
        z = model.teacher(views)
    p1, p2, z1, z2 = p[:3], p[3:], z[:3], z[3:]
    expected = (
        (2 - 2 * F.cosine_similarity(p1, z2)).mean() + (2 - 2 * F.cosine_similarity(p2, z1)).mean()
    ) / 2
    assert loss is not None and loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fit_moves_the_teacher_once_per_step() -> None:
    L.seed_everything(0)
    model = BYOL(**TINY, base_momentum=0.9, lr=1e-2, warmup_epochs=0)
    before = [p.detach().clone() for p in model.teacher.parameters()]
    trainer = L.Trainer(
        max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, PretrainDataModule(image_size=32, batch_size=8, synthetic_size=64, num_workers=0))
    assert int(model.teacher.updates) == trainer.global_step == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.teacher.parameters(), strict=True))
    assert 0.9 <= trainer.callback_metrics["train/teacher_momentum"].item() < 1.0


def test_solarize_inverts_the_bright_pixels() -> None:
    from visiontransfer.pretext.augment import random_solarize

    x = torch.tensor([0.2, 0.5, 0.9]).view(1, 1, 1, 3).expand(2, 3, 1, 3)
    out = random_solarize(x, p=1.0)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.2, 0.5, 0.1]))
    assert torch.equal(random_solarize(x, p=0.0), x)
