"""MAE: patchify and masking against hand-made cases, the ViT-only contract and its errors, a
fit on CIFAR-10 files, and the export: a plain timm ViT that ``load_backbone``, ``torch.hub`` and
timm load with identical features."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import timm
import torch

import visiontransfer
from visiontransfer.data import PretrainDataModule
from visiontransfer.errors import ConfigError
from visiontransfer.export import export_backbone
from visiontransfer.pretext import MAE
from visiontransfer.pretext.mae import patchify, random_masking

VIT = {
    "backbone": "test_vit",
    "small_input_stem": False,
    "backbone_kwargs": {"img_size": 32, "patch_size": 4},
}


def test_patchify_follows_the_token_order() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    patches = patchify(images, 2)  # (2, 4 patches, 2*2*3)
    assert patches.shape == (2, 4, 12)
    # Patch 1 is grid row 0, column 1: pixels (0..1, 2..3); inside it row, column, channel.
    expected = torch.stack([images[0, :, r, c] for r in (0, 1) for c in (2, 3)]).reshape(-1)
    torch.testing.assert_close(patches[0, 1], expected)
    # The same order as timm's patch embedding: a conv whose kernel is the patch, flattened
    # the same way, gives the patch's dot product with the kernel.
    conv = torch.nn.Conv2d(3, 1, 2, stride=2, bias=False)
    tokens = conv(images).flatten(2).transpose(1, 2)[..., 0]  # (2, 4)
    kernel = conv.weight[0].permute(1, 2, 0).reshape(-1)  # row, column, channel
    torch.testing.assert_close(patches @ kernel, tokens)
    with pytest.raises(ValueError, match="patch_size=3"):
        patchify(images, 3)


def test_random_masking_keeps_the_lowest_noise() -> None:
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.4, 0.6]])
    kept, mask, restore = random_masking(noise, keep=2)
    assert kept.tolist() == [[1, 3], [0, 2]]
    assert mask.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]
    # restore un-shuffles: kept tokens first, then masked, back into grid order.
    shuffled = torch.argsort(noise, dim=1)
    assert torch.equal(torch.gather(shuffled, 1, restore), torch.arange(4).expand(2, 4))
    with pytest.raises(ValueError, match="keep=5"):
        random_masking(noise, keep=5)


def test_a_non_vit_backbone_is_refused_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--model.backbone='resnet10t' is not a timm VisionTransformer"):
        MAE(backbone="resnet10t", small_input_stem=False)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"mask_ratio": 1.0}, r"--model.mask_ratio=1.0"), ({"mask_ratio": 0.999}, "keeps 0 of 64 patches"),
     ({"decoder_width": 30}, r"--model.decoder_width=30"), ({"input_size": 30}, "not a multiple")],
)  # fmt: skip
def test_arguments_are_checked(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        MAE(**VIT, **kwargs)  # type: ignore[arg-type]


def test_loss_is_on_masked_patches_and_gradients_reach_the_vit() -> None:
    model = MAE(**VIT, decoder_width=16, decoder_depth=1)
    batch = {"image": torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8), "index": torch.arange(3)}
    loss = model._step(batch, "train")
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    for name in ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.attn.qkv.weight"):
        assert model.backbone.get_parameter(name).grad is not None, name
    # The same image at the same index and epoch gets the same crop and mask: the same loss.
    model.zero_grad()
    again = model._step(batch, "train")
    assert again is not None and again.item() == pytest.approx(loss.item(), rel=1e-6)
    names = [n for n, _ in model.named_parameters()]
    assert "decoder.mask_token" in names and not any(
        "mask_token" in n for n in names if n.startswith("backbone.")
    )


@pytest.fixture(scope="module")
def mae_checkpoint(tmp_path_factory: pytest.TempPathFactory, cifar10_dir: Path) -> tuple[Path, MAE]:
    """A few steps of MAE on real CIFAR-10 JPEGs, saved as a checkpoint."""
    folder = tmp_path_factory.mktemp("mae")
    root = folder / "images"
    root.mkdir()
    for file in sorted((cifar10_dir / "train" / "airplane").glob("*.jpg"))[:20]:
        (root / file.name).symlink_to(file)
    L.seed_everything(0)
    model = MAE(**VIT, decoder_width=16, decoder_depth=1, lr=1e-3, warmup_epochs=0)
    data = PretrainDataModule(root=str(root), image_size=32, batch_size=8, val_fraction=0.2, num_workers=0)
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, data)
    assert trainer.global_step == 2 and "val/loss" in trainer.callback_metrics
    trainer.save_checkpoint(folder / "mae.ckpt")
    return folder / "mae.ckpt", model


def test_export_is_a_plain_vit_with_identical_features(
    mae_checkpoint: tuple[Path, MAE], tmp_path: Path
) -> None:
    ckpt, model = mae_checkpoint
    out = export_backbone(ckpt, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["visiontransfer"]["method"] == "MAE" and config["architecture"] == "test_vit"
    reference = model.backbone.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loaded = visiontransfer.load_backbone(str(out)).eval()
    assert set(loaded.state_dict()) == set(reference.state_dict())  # no decoder, no mask token
    hub = torch.hub.load(str(out), "backbone", source="local", trust_repo=True).eval()
    plain = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
    with torch.no_grad():
        expected = reference(x)
        for other in (loaded, hub, plain):
            torch.testing.assert_close(other(x), expected, rtol=0, atol=1e-5)


def test_checkpoint_rebuilds_and_features_are_pooled(mae_checkpoint: tuple[Path, MAE]) -> None:
    ckpt, model = mae_checkpoint
    restored = MAE.load_from_checkpoint(ckpt).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(restored.features(images), model.eval().features(images))
    assert restored.features(images).shape == (2, model.num_features)
