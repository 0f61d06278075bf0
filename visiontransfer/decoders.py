"""Dense decoders: plain ``nn.Module``s that turn a backbone's multi-scale maps into per-pixel
outputs (segmentation logits, colours).

Both take the maps finest first (as :class:`~visiontransfer.backbones.FeatureBackbone` returns
them) and the output size, and return ``(B, out_channels, *size)``:

- :class:`FPNDecoder`: top-down fusion of every level, as the FPN of Lin et al. 2017 (CVPR),
  "Feature Pyramid Networks for Object Detection", predicting from the finest fused map;
- :class:`ASPPDecoder`: DeepLabV3's atrous spatial pyramid pooling head on the deepest map (Chen,
  Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic Image Segmentation",
  2017), torchvision's ``ASPP`` module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3 convolution (no bias), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize to ``size`` (no-op when it already is)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FPNDecoder(nn.Module):
    """A small FPN-style decoder: fuses multi-scale maps top-down and predicts a dense output.

    Each level gets a 1×1 lateral conv to ``width`` channels; going from the coarsest level to
    the finest, the running map is upsampled bilinearly, added to the next lateral map and
    smoothed by a 3×3 conv-BN-ReLU. Levels finer than the output are average-pooled to it; when
    the finest level is coarser than ``output_stride``, ×2 upsampling blocks (bilinear + 3×3
    conv-BN-ReLU) follow. Dropout, then a 1×1 conv gives the ``out_channels`` outputs, resized
    bilinearly to the requested size.

    Args:
        channels: Channels of each input map, finest first (``FeatureBackbone.channels``).
        reductions: Stride of each input map relative to the image (``FeatureBackbone.reductions``).
        out_channels: Output channels (classes, ab, ...).
        width: Channels inside the decoder (at least 8).
        output_stride: Stride relative to the image at which the last upsampling block stops
            (1: learned upsampling to full resolution; the finest map's stride: none).
        dropout: Dropout before the last 1×1 conv.
    """

    def __init__(
        self,
        channels: Sequence[int],
        reductions: Sequence[int],
        out_channels: int,
        width: int = 128,
        output_stride: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not channels or len(channels) != len(reductions):
            raise ValueError(
                f"need one reduction per level, got channels {channels}, reductions {reductions}"
            )
        if width < 8 or out_channels < 1 or output_stride < 1:
            raise ValueError(
                f"width={width} must be >= 8, out_channels={out_channels} and "
                f"output_stride={output_stride} >= 1"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        self.output_stride = output_stride
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooths = nn.ModuleList(conv_bn_relu(width, width) for _ in channels)
        ups = max(0, math.ceil(math.log2(min(reductions) / output_stride)))
        self.ups = nn.ModuleList(conv_bn_relu(width, width) for _ in range(ups))
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """Maps (finest first) → ``(B, out_channels, *size)``."""
        x: Tensor | None = None
        for i in reversed(range(len(features))):
            y = self.laterals[i](features[i])  # (B, width, h_i, w_i)
            if y.shape[-2] > size[0] or y.shape[-1] > size[1]:
                y = F.adaptive_avg_pool2d(y, size)
            if x is not None:
                y = y + _resize(x, (y.shape[-2], y.shape[-1]))
            x = self.smooths[i](y)
        assert x is not None
        for up in self.ups:
            x = up(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return _resize(self.head(self.dropout(x)), size)  # (B, out_channels, *size)


class ASPPDecoder(nn.Module):
    """DeepLabV3's head on the deepest map: torchvision's ``ASPP`` (a 1×1 conv, three 3×3 convs
    dilated by ``atrous_rates`` and image pooling, concatenated and projected to ``width``), a 3×3
    conv-BN-ReLU and a 1×1 conv to the outputs, resized bilinearly to the requested size. At
    ``width=256`` it is torchvision's ``DeepLabHead`` layer for layer (same state-dict keys after
    ``head.``).

    Args:
        in_channels: Channels of the deepest map.
        out_channels: Output channels (classes).
        atrous_rates: Dilations of the three 3×3 branches, in pixels of the deepest map (DeepLabV3:
            6, 12, 18 at output stride 16; rates beyond the map's size only see padding).
        width: Channels of the ASPP branches and the projection.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        atrous_rates: Sequence[int] = (12, 24, 36),
        width: int = 256,
    ) -> None:
        super().__init__()
        if len(atrous_rates) != 3 or any(r < 1 for r in atrous_rates):
            raise ValueError(f"atrous_rates={list(atrous_rates)} must be three dilations >= 1")
        if width < 8 or in_channels < 1 or out_channels < 1:
            raise ValueError(f"width={width} must be >= 8 (in_channels, out_channels >= 1)")
        self.head = nn.Sequential(
            ASPP(in_channels, list(atrous_rates), width),
            *conv_bn_relu(width, width),
            nn.Conv2d(width, out_channels, 1),
        )

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """Maps (the last, deepest, is used) → ``(B, out_channels, *size)``."""
        return _resize(self.head(features[-1]), size)
