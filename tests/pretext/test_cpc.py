"""CPC v2: patch grid, causal context (proved by gradients), loss."""

from __future__ import annotations

import pytest
import torch

from visiontransfer.pretext.cpc import CausalContext, ContrastivePatches, cpc_loss
from visiontransfer.pretext.ops import extract_patches, patch_grid_size


def test_patches_are_the_right_pixels() -> None:
    images = torch.arange(2 * 3 * 12 * 12).view(2, 3, 12, 12)
    patches = extract_patches(images, patch_size=4, stride=2)
    assert patches.shape == (2, 5, 5, 3, 4, 4)
    assert torch.equal(patches[1, 2, 3], images[1, :, 4:8, 6:10])


def test_grid_size_and_errors() -> None:
    assert patch_grid_size(32, 8, 4) == 7
    assert patch_grid_size(240, 64, 32) == 6
    with pytest.raises(ValueError, match=r"^patch_size=32 is larger than image_size=16"):
        patch_grid_size(16, 32, 8)
    with pytest.raises(ValueError, match="square"):
        extract_patches(torch.zeros(1, 3, 8, 16), 4, 2)


def test_context_at_row_r_does_not_see_rows_below() -> None:
    torch.manual_seed(0)
    net = CausalContext(in_channels=6, width=8, depth=3)
    z = torch.randn(2, 6, 7, 7, requires_grad=True)
    out = net(z)
    for r in range(7):
        grad = torch.autograd.grad(out[:, :, r].sum(), z, retain_graph=True)[0]
        assert grad[:, :, r + 1 :].abs().sum() == 0, f"context row {r} depends on rows below it"
        assert grad[:, :, : r + 1].abs().sum() > 0, f"context row {r} ignores the rows above"


def test_cpc_loss_prefers_correct_predictions() -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 16, 4, 4)
    predictors = torch.nn.ModuleList([torch.nn.Conv2d(16, 16, 1, bias=False)])
    with torch.no_grad():
        predictors[0].weight.copy_(torch.eye(16).view(16, 16, 1, 1) * 10)
    # Context that equals the true next row predicts perfectly -> loss near 0.
    context = torch.zeros_like(z)
    context[:, :, :-1] = z[:, :, 1:]
    good = cpc_loss(z, context, predictors)
    bad = cpc_loss(z, torch.randn_like(z), predictors)
    assert good < 0.05 < bad


def test_cpc_loss_needs_two_rows() -> None:
    with pytest.raises(ValueError, match="no row to predict"):
        cpc_loss(
            torch.randn(1, 4, 1, 1), torch.randn(1, 4, 1, 1), torch.nn.ModuleList([torch.nn.Conv2d(4, 4, 1)])
        )


def test_module_shapes_and_gradients() -> None:
    model = ContrastivePatches(backbone="resnet10t", small_input_stem=False, patch_size=16, patch_stride=8,
                               prediction_steps=2, context_width=32, context_depth=1)  # fmt: skip
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    z = model.encode_patches(images, augment=True)
    assert z.shape == (3, model.num_features, 4, 4)
    assert model.features(images).shape == (3, model.num_features)
    loss = cpc_loss(z, model.context(z), model.predictors)
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
