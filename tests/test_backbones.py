"""Backbones: timm models by name, pooled or multi-scale, and the small-input stem.

Tiny timm models (``test_*``, ``resnet18``, ``regnetx_002``) at 32–64 px keep this file fast;
nothing is downloaded (``pretrained`` stays False).
"""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import Conv2dSame, ScaledStdConv2d
from torch import nn

from visiontransfer.backbones import (
    FeatureBackbone,
    adapt_stem_for_small_images,
    check_model_name,
    create_backbone,
    normalization,
)

VIT_KWARGS = {"img_size": 32, "patch_size": 4}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _plain(name: str, **kwargs) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- create_backbone


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", None),
        ("test_resnet", None),
        ("test_convnext", None),
        ("test_efficientnet", None),
        ("regnetx_002", None),
        ("test_vit", VIT_KWARGS),
    ],
)
def test_create_backbone_is_pooled_with_the_models_own_width(name: str, kwargs: dict | None) -> None:
    model = create_backbone(name, backbone_kwargs=kwargs)
    reference = _plain(name, **(kwargs or {}))
    assert model.num_features == reference.num_features > 0
    assert model.stem_factor == 1
    assert list(model.state_dict()) == list(reference.state_dict())
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, model.num_features)


def test_create_backbone_accepts_a_pretrained_tag_without_downloading() -> None:
    model = create_backbone("test_resnet.r160_in1k")
    assert model.num_features == _plain("test_resnet").num_features


def test_wrong_name_names_it_and_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="resnet19") as error:
        create_backbone("resnet19")
    message = str(error.value)
    assert "did you mean" in message and "resnet18" in message
    with pytest.raises(ValueError, match="zzqqxxjj") as error:
        check_model_name("zzqqxxjj")
    assert "did you mean" not in str(error.value)


def test_source_prefixed_names_pass_the_name_check() -> None:
    # timm reads the architecture from the Hub repo or folder; no lookup happens here
    check_model_name("hf-hub:timm/resnet18.a1_in1k")
    check_model_name("local-dir:/models/my_resnet")


@pytest.mark.parametrize("key", ["num_classes", "in_chans", "pretrained", "features_only"])
def test_backbone_kwargs_must_not_set_reserved_keys(key: str) -> None:
    with pytest.raises(ValueError, match=f"backbone_kwargs.*{key}"):
        create_backbone("test_resnet", backbone_kwargs={key: 1})


@pytest.mark.parametrize("name", ["resnet18", "test_convnext"])
@pytest.mark.parametrize("small", [False, True])
def test_one_input_channel(name: str, small: bool) -> None:
    model = create_backbone(name, in_chans=1, small_input_stem=small)
    first = model.get_submodule(model.pretrained_cfg["first_conv"])
    assert first.in_channels == 1 and first.weight.shape[1] == 1
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, model.num_features)
    mean, std = normalization(model, in_chans=1)
    assert len(mean) == len(std) == 1


# ----------------------------------------------------------------------------- small_input_stem


def test_small_input_stem_resnet18_keeps_a_4x4_map_at_32px() -> None:
    x = torch.randn(2, 3, 32, 32)
    plain = create_backbone("resnet18")
    small = create_backbone("resnet18", small_input_stem=True)
    assert small.stem_factor == 4
    with torch.no_grad():
        assert plain.forward_features(x).shape == (2, 512, 1, 1)
        assert small.forward_features(x).shape == (2, 512, 4, 4)
        assert small(x).shape == (2, 512)
    conv = small.conv1
    assert conv.stride == (1, 1) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)


@pytest.mark.parametrize(
    ("name", "factor"),
    [("test_convnext", 4), ("test_efficientnet", 2), ("regnetx_002", 2), ("test_resnet", 4)],
)
def test_small_input_stem_grows_the_map_by_the_stem_factor(name: str, factor: int) -> None:
    x = torch.randn(1, 3, 64, 64)
    plain = create_backbone(name)
    small = create_backbone(name, small_input_stem=True)
    assert small.stem_factor == factor
    with torch.no_grad():
        h_plain = plain.forward_features(x).shape[-1]
        h_small = small.forward_features(x).shape[-1]
    assert h_small == h_plain * factor


@pytest.mark.parametrize(
    "name", ["resnet18", "test_resnet", "test_convnext", "test_efficientnet", "regnetx_002", "test_nfnet"]
)
def test_small_input_stem_keeps_the_state_dict_keys(name: str) -> None:
    plain = _shapes(_plain(name))
    small = _shapes(create_backbone(name, small_input_stem=True))
    assert list(small) == list(plain)
    changed = {k for k in plain if plain[k] != small[k]}
    first = _plain(name).pretrained_cfg["first_conv"]
    assert changed <= {f"{first}.weight"}  # only a replaced kernel changes shape


def test_small_input_stem_only_reshapes_a_large_or_patchify_kernel() -> None:
    assert _shapes(create_backbone("resnet18", small_input_stem=True))["conv1.weight"] == (64, 3, 3, 3)
    assert _shapes(create_backbone("test_convnext", small_input_stem=True))["stem.0.weight"] == (24, 3, 3, 3)
    # a 3×3/2 stem keeps its (possibly pretrained) weights, only the stride goes
    plain = _plain("test_efficientnet")
    small = create_backbone("test_efficientnet", small_input_stem=True)
    small.conv_stem.load_state_dict(plain.conv_stem.state_dict())
    torch.testing.assert_close(small.conv_stem.weight, plain.conv_stem.weight)
    assert small.conv_stem.stride == (1, 1) and plain.conv_stem.stride == (2, 2)


def test_small_input_stem_rejects_a_vit_and_points_to_backbone_kwargs() -> None:
    with pytest.raises(ValueError, match="backbone_kwargs") as error:
        create_backbone("test_vit", small_input_stem=True, backbone_kwargs=VIT_KWARGS)
    assert "test_vit" in str(error.value) and "patch" in str(error.value)


class _Stem(nn.Module):
    """A tiny stand-in for timm stems the registry models above don't cover cheaply."""

    def __init__(self, conv: nn.Conv2d, pad: bool = False) -> None:
        super().__init__()
        self.pretrained_cfg = {"first_conv": "stem.conv", "architecture": "tiny"}
        self.stem = nn.Sequential()
        self.stem.add_module("conv", conv)
        if pad:  # BiT (resnetv2): an explicit pad layer that only serves the max-pool
            self.stem.add_module("pad", nn.ConstantPad2d(1, 0.0))
        self.stem.add_module("pool", nn.MaxPool2d(3, 2, padding=0 if pad else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


def test_small_input_stem_keeps_weight_standardized_convs_and_their_gain() -> None:
    model = _Stem(ScaledStdConv2d(3, 8, 7, stride=2, padding=3))
    keys = list(model.state_dict())
    assert "stem.conv.gain" in keys
    assert adapt_stem_for_small_images(model) == 4
    assert type(model.stem.conv) is ScaledStdConv2d
    assert list(model.state_dict()) == keys
    assert model.stem.conv.scale == pytest.approx(1.0 / (3 * 3 * 3) ** 0.5)  # gamma / sqrt(fan-in)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 8, 16, 16)


def test_small_input_stem_keeps_tf_same_padding_dynamic() -> None:
    model = _Stem(Conv2dSame(3, 8, 7, stride=2))
    assert adapt_stem_for_small_images(model) == 4
    assert type(model.stem.conv) is Conv2dSame and model.stem.conv.padding == (0, 0)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 15, 15)).shape == (1, 8, 15, 15)


def test_small_input_stem_removes_the_pad_layer_of_a_removed_pool() -> None:
    model = _Stem(nn.Conv2d(3, 8, 7, stride=2, padding=3), pad=True)
    assert adapt_stem_for_small_images(model) == 4
    assert isinstance(model.stem.pad, nn.Identity) and isinstance(model.stem.pool, nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 8, 16, 16)


def test_small_input_stem_needs_a_strided_first_conv() -> None:
    model = _Stem(nn.Conv2d(3, 8, 3, stride=1, padding=1))
    with pytest.raises(ValueError, match="no stride to remove"):
        adapt_stem_for_small_images(model)


# ----------------------------------------------------------------------------- FeatureBackbone


def _check_maps(backbone: FeatureBackbone, size: int, in_chans: int = 3) -> list[torch.Tensor]:
    with torch.no_grad():
        maps = backbone(torch.randn(2, in_chans, size, size))
    assert len(maps) == len(backbone.channels) == len(backbone.reductions) == len(backbone.out_indices)
    for feature, channels, reduction in zip(maps, backbone.channels, backbone.reductions, strict=True):
        assert feature.shape == (2, channels, size // reduction, size // reduction)
    return maps


def test_feature_backbone_resnet18_levels_and_strides() -> None:
    plain = FeatureBackbone(create_backbone("resnet18"))
    assert plain.out_indices == (1, 2, 3, 4)  # the last four of five levels
    assert plain.channels == [64, 128, 256, 512]
    assert plain.reductions == [4, 8, 16, 32]
    _check_maps(plain, 64)
    small = FeatureBackbone(create_backbone("resnet18", small_input_stem=True))
    assert small.channels == [64, 128, 256, 512]
    assert small.reductions == [1, 2, 4, 8]
    _check_maps(small, 32)
    every = FeatureBackbone(create_backbone("resnet18", small_input_stem=True), out_indices=(0, 1, 2, 3, 4))
    assert every.reductions == [1, 1, 2, 4, 8]
    _check_maps(every, 32)


@pytest.mark.parametrize(
    ("name", "n_levels", "factor"),
    [("test_convnext", 4, 4), ("test_efficientnet", 5, 2), ("regnetx_002", 5, 2)],
)
@pytest.mark.parametrize("small", [False, True])
def test_feature_backbone_matches_the_maps(name: str, n_levels: int, factor: int, small: bool) -> None:
    model = create_backbone(name, small_input_stem=small)
    backbone = FeatureBackbone(model)
    assert backbone.out_indices == tuple(range(n_levels - 4, n_levels))
    info = model.feature_info
    assert backbone.channels == [info[i]["num_chs"] for i in backbone.out_indices]
    expected = [info[i]["reduction"] // (factor if small else 1) for i in backbone.out_indices]
    assert backbone.reductions == expected
    _check_maps(backbone, 64)


def test_feature_backbone_on_a_vit() -> None:
    backbone = FeatureBackbone(create_backbone("test_vit", backbone_kwargs=VIT_KWARGS))
    assert backbone.reductions == [4, 4, 4, 4]
    _check_maps(backbone, 32)


def test_feature_backbone_with_one_input_channel() -> None:
    backbone = FeatureBackbone(create_backbone("test_convnext", in_chans=1, small_input_stem=True))
    _check_maps(backbone, 32, in_chans=1)


def test_feature_backbone_returns_levels_in_the_order_asked() -> None:
    backbone = FeatureBackbone(create_backbone("resnet18"), out_indices=(4, 1, -1))
    assert backbone.out_indices == (4, 1, 4)
    assert backbone.channels == [512, 64, 512]
    maps = _check_maps(backbone, 64)
    torch.testing.assert_close(maps[0], maps[2])


@pytest.mark.parametrize("bad", [(5,), (-6,), (0, 7), (), (1.0,), (True,)])
def test_feature_backbone_rejects_invalid_out_indices(bad: tuple) -> None:
    with pytest.raises(ValueError, match="out_indices"):
        FeatureBackbone(create_backbone("resnet18"), out_indices=bad)


def test_feature_backbone_needs_forward_intermediates() -> None:
    with pytest.raises(ValueError, match="forward_intermediates"):
        FeatureBackbone(nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize(
    ("name", "small"), [("resnet18", False), ("resnet18", True), ("test_convnext", True)]
)
def test_feature_backbone_state_dict_is_the_plain_timm_one_under_model(name: str, small: bool) -> None:
    backbone = FeatureBackbone(create_backbone(name, small_input_stem=small))
    plain = list(_plain(name).state_dict())
    assert list(backbone.state_dict()) == [f"model.{k}" for k in plain]
    # ... so a pooled backbone's weights load into the dense form and back
    pooled = create_backbone(name, small_input_stem=small)
    backbone.load_state_dict({f"model.{k}": v for k, v in pooled.state_dict().items()})
    torch.testing.assert_close(backbone.model.state_dict(), pooled.state_dict())


# ----------------------------------------------------------------------------- normalization


def test_normalization_per_channel_and_averaged_for_one_channel() -> None:
    model = create_backbone("resnet18")
    mean, std = normalization(model)
    assert mean == pytest.approx(model.pretrained_cfg["mean"]) and len(mean) == 3
    assert std == pytest.approx(model.pretrained_cfg["std"]) and len(std) == 3
    assert all(isinstance(v, float) for v in mean + std)
    grey_mean, grey_std = normalization(create_backbone("resnet18", in_chans=1), in_chans=1)
    assert grey_mean == pytest.approx((sum(mean) / 3,))
    assert grey_std == pytest.approx((sum(std) / 3,))
    vit_mean, vit_std = normalization(create_backbone("test_vit", backbone_kwargs=VIT_KWARGS))
    assert vit_mean == pytest.approx(timm.create_model("test_vit").pretrained_cfg["mean"])
    assert len(vit_std) == 3


def test_normalization_without_a_pretrained_cfg_uses_imagenet_statistics() -> None:
    mean, std = normalization(nn.Identity(), in_chans=3)
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
