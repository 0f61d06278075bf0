"""BackboneSystem options shared by every module: memory layout and compilation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visiontransfer.pretext import RotationPrediction


def test_channels_last_keeps_the_outputs_and_changes_the_layout() -> None:
    torch.manual_seed(0)
    plain = RotationPrediction(backbone="resnet10t", head_hidden_dim=16).eval()
    fast = RotationPrediction(backbone="resnet10t", head_hidden_dim=16, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert fast.normalize(images).is_contiguous(memory_format=torch.channels_last)
    conv = next(m for m in fast.backbone.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast.features(images), plain.features(images), rtol=1e-4, atol=1e-4)


def test_compile_compiles_the_backbone_in_place_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[nn.Module] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: calls.append(self))
    model = RotationPrediction(backbone="resnet10t", head_hidden_dim=16, compile=True)
    keys = set(model.state_dict())
    model.configure_model()
    model.configure_model()
    assert calls == [model.backbone]
    assert set(model.state_dict()) == keys  # checkpoints and exports keep plain names
