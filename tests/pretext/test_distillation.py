"""Distillation: teachers from every source (checkpoint, export, timm name with weights on disk),
projections, a fit on CIFAR-10 files in which the student approaches the teacher, checkpoints that
rebuild without the teacher's file, and the per-image feature cache (hits, resumes, bad entries)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from visiontransfer.data import PretrainDataModule
from visiontransfer.errors import ConfigError
from visiontransfer.export import export_backbone
from visiontransfer.pretext import Distillation
from visiontransfer.pretext.distillation import TeacherFeatureCache, image_fingerprint

STUDENT = {"backbone": "test_resnet", "small_input_stem": False}


def _batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (n, 3, 32, 32), generator=g).to(torch.uint8),
        "index": torch.arange(n),
    }


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def teacher_ckpt(
    tmp_path_factory: pytest.TempPathFactory, rotation_checkpoint: Callable[..., Any]
) -> tuple[Path, Any]:
    return rotation_checkpoint(tmp_path_factory.mktemp("teacher") / "rotation.ckpt", backbone="resnet10t")


def test_teacher_from_a_checkpoint_and_from_its_export(
    teacher_ckpt: tuple[Path, Any], tmp_path: Path
) -> None:
    ckpt, trained = teacher_ckpt
    model = Distillation(teacher=str(ckpt), **STUDENT)
    assert _same_weights(model.teacher, trained.backbone)
    assert not model.teacher.training and not any(p.requires_grad for p in model.teacher.parameters())
    assert model.hparams["teacher"] == "resnet10t" and model.hparams["teacher_weights"] is None
    export = export_backbone(ckpt, tmp_path / "export")
    assert _same_weights(Distillation(teacher=str(export), **STUDENT).teacher, trained.backbone)


def test_teacher_from_a_timm_name_with_weights_on_disk(tmp_path: Path) -> None:
    torch.manual_seed(7)
    timm_model = timm.create_model("resnet10t")
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # weights given: no random-init warning
        model = Distillation(teacher="resnet10t", teacher_weights=str(path), **STUDENT)
    own = model.teacher.state_dict()
    assert all(torch.equal(v, timm_model.state_dict()[k]) for k, v in own.items())
    assert model.teacher_spec.source == str(path.resolve())
    wrong = tmp_path / "other.safetensors"
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}, str(wrong)
    )
    with pytest.raises(ConfigError, match=r"^--model.teacher_weights=.*missing keys"):
        Distillation(teacher="resnet10t", teacher_weights=str(wrong), **STUDENT)
    with pytest.raises(ConfigError, match=r"--model.teacher='resnet10x' is not a timm model"):
        Distillation(teacher="resnet10x", **STUDENT)
    with pytest.raises(ConfigError, match=r"--model.teacher_weights=.* with --model.teacher_pretrained=true"):
        Distillation(teacher="resnet10t", teacher_weights=str(path), teacher_pretrained=True, **STUDENT)


def test_random_teacher_warns_and_projections_follow_the_widths() -> None:
    with pytest.warns(UserWarning, match="--model.teacher='resnet10t' is a random init"):
        model = Distillation(teacher="resnet10t", targets="both", **STUDENT)  # 512 vs 96 wide
    assert isinstance(model.projections["pooled"], nn.Linear)
    assert isinstance(model.projections["spatial"], nn.Conv2d)
    with pytest.warns(UserWarning):
        same = Distillation(teacher="test_resnet", **STUDENT)
    assert isinstance(same.projections["pooled"], nn.Identity)


def test_teacher_image_size_and_spatial_maps_of_other_sizes() -> None:
    """A ViT teacher at 64 px (4×4 map) for a CNN student at 32 px (1×1 map): resized, finite."""
    with pytest.warns(UserWarning):
        model = Distillation(teacher="test_vit", teacher_kwargs={"img_size": 64, "patch_size": 16},
                             teacher_image_size=64, targets="both", **STUDENT)  # fmt: skip
    targets = model.teacher_targets(_batch()["image"].float())
    assert targets["spatial"].shape == (4, 64, 4, 4) and targets["pooled"].shape == (4, 64)
    loss = model._step(_batch(), "train")
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())


@pytest.mark.parametrize(
    "kwargs,match",
    [({"targets": "logits"}, "--model.targets=logits"), ({"metric": "l1"}, "--model.metric=l1"),
     ({"feature_cache": "x"}, "needs --model.augment_views false"),
     ({"crop_scale_min": 0}, "crop_scale_min=0")],
)  # fmt: skip
def test_arguments_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Distillation(teacher="test_resnet", **STUDENT, **kwargs)


def test_fit_brings_the_student_to_the_teacher_and_the_checkpoint_rebuilds_without_it(
    cifar_tree: Callable[..., Path], teacher_ckpt: tuple[Path, Any], tmp_path: Path
) -> None:
    root = cifar_tree(tmp_path / "images", classes=("cat", "ship", "frog"), per_class=8)
    ckpt, trained = teacher_ckpt
    L.seed_everything(0)
    model = Distillation(teacher=str(ckpt), targets="both", lr=1e-2, warmup_epochs=0, **STUDENT)
    data = PretrainDataModule(root=str(root), image_size=32, batch_size=8, val_fraction=0.25, num_workers=0)
    trainer = L.Trainer(
        max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    first = trainer.validate(model, data, verbose=False)[0]["val/loss"]
    trainer.fit(model, data)
    last = trainer.callback_metrics["val/loss"].item()
    assert last < 0.8 * first  # cosine distance to the teacher on held-out images
    assert _same_weights(model.teacher, trained.backbone)  # frozen: untouched, statistics kept
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    export = export_backbone(tmp_path / "student.ckpt", tmp_path / "export")
    assert json.loads((export / "config.json").read_text())["architecture"] == "test_resnet"
    moved = tmp_path / "teacher_moved.ckpt"
    ckpt.rename(moved)  # the teacher's file is gone
    try:
        restored = Distillation.load_from_checkpoint(tmp_path / "student.ckpt")
    finally:
        moved.rename(ckpt)
    assert _same_weights(restored.teacher, trained.backbone)
    assert _same_weights(restored.backbone, model.backbone)


def test_feature_cache_serves_later_epochs_and_later_runs(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Distillation(teacher="resnet10t", targets="both", augment_views=False,
                             feature_cache=str(tmp_path / "cache"), **STUDENT)  # fmt: skip
    assert model.cache is not None
    model.cache.open()
    batch = _batch()
    live = model.teacher_targets(batch["image"].float())
    first = model.cached_targets(batch)
    assert (model.cache.hits, model.cache.misses) == (0, 4)
    second = model.cached_targets(batch)
    assert (model.cache.hits, model.cache.misses) == (4, 4)
    for name in ("pooled", "spatial"):
        torch.testing.assert_close(first[name], live[name])
        assert torch.equal(second[name], first[name])
    # A resumed or repeated run with the same teacher reads what was written.
    again = TeacherFeatureCache(tmp_path / "cache", model._cache_description())
    again.open()
    entries = again.load(batch["index"], image_fingerprint(batch["image"]))
    assert all(e is not None for e in entries)
    # Another image at the same index, or a broken file: recomputed and replaced.
    other = {"image": _batch(seed=1)["image"], "index": batch["index"]}
    (tmp_path / "cache" / "000000" / "3.safetensors").write_bytes(b"\x00" * 10)
    assert all(e is None for e in again.load(other["index"], image_fingerprint(other["image"])))
    assert again.load(batch["index"][3:], image_fingerprint(batch["image"][3:])) == [None]
    model.cached_targets(other)
    torch.testing.assert_close(
        model.cached_targets(other)["pooled"], model.teacher_targets(other["image"].float())["pooled"]
    )


def test_feature_cache_of_another_teacher_is_refused(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = Distillation(teacher="resnet10t", augment_views=False, feature_cache=str(tmp_path), **STUDENT)
        torch.manual_seed(1)
        other = Distillation(teacher="resnet10t", augment_views=False, feature_cache=str(tmp_path), **STUDENT)
    assert one.cache is not None and other.cache is not None
    one.cache.open()
    with pytest.raises(ConfigError, match=r"--model.feature_cache=.* holds the features of another teacher"):
        other.cache.open()
