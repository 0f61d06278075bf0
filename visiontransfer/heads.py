"""Heads: plain ``nn.Module``s put on top of a backbone's features."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn


class MLPHead(nn.Module):
    """Linear layer, or an MLP with one hidden layer (Linear → BatchNorm → ReLU → Linear).

    Args:
        in_features: Width of the input features (the backbone's ``num_features``).
        out_features: Outputs (classes, rotations, projection size, ...).
        hidden_dim: Width of the hidden layer; 0 makes the head a single linear layer.
        dropout: Dropout before the last linear layer.
    """

    def __init__(
        self, in_features: int, out_features: int, hidden_dim: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1 or hidden_dim < 0:
            raise ValueError(
                f"MLPHead needs in_features, out_features >= 1 and hidden_dim >= 0, got "
                f"{in_features}, {out_features}, {hidden_dim}"
            )
        layers: list[nn.Module] = []
        width = in_features
        if hidden_dim:
            layers += [nn.Linear(in_features, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            width = hidden_dim
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_features)`` → ``(B, out_features)``."""
        return self.layers(x)


class DINOHead(nn.Module):
    """The DINO projection head (Caron et al. 2021, sec. 3.1 and appendix): an MLP to a bottleneck,
    L2 normalisation, and a weight-normalised linear layer (unit-norm rows, no bias) to ``out_dim``
    prototypes.

    Args:
        in_features: Width of the backbone's pooled features.
        out_dim: Output dimension K (paper: 65536; a few thousand suffice for small sets).
        hidden_dim: Width of the hidden layers (paper: 2048).
        bottleneck_dim: Width before the normalised last layer (paper: 256).
        layers: Linear layers of the MLP (paper: 3), GELU between them.
    """

    def __init__(
        self,
        in_features: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
    ) -> None:
        super().__init__()
        if min(in_features, out_dim, hidden_dim, bottleneck_dim, layers) < 1:
            raise ValueError(
                "DINOHead needs in_features, out_dim, hidden_dim, bottleneck_dim, layers >= 1, got "
                f"{in_features}, {out_dim}, {hidden_dim}, {bottleneck_dim}, {layers}"
            )
        widths = [in_features] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        mlp: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            mlp += [nn.Linear(a, b)] + ([nn.GELU()] if i < layers - 1 else [])
        self.mlp = nn.Sequential(*mlp)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_features)`` → ``(B, out_dim)`` logits."""
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.last_layer.weight, dim=1))  # weight norm with g = 1


class MAEDecoder(nn.Module):
    """The light MAE decoder (He et al. 2022, sec. 3): encoded visible tokens are embedded to the
    decoder width, mask tokens fill the hidden positions, fixed 2-D sine-cosine position
    embeddings are added, a few transformer blocks run over the full grid, and a linear layer
    predicts every patch's pixels.

    Args:
        embed_dim: Width of the encoder's tokens.
        grid_size: Patches per side of the image.
        patch_pixels: Values per patch to predict (``patch_size² · in_chans``).
        num_prefix_tokens: Class/register tokens before the patch tokens (passed through the
            blocks, dropped from the output).
        width: Decoder width (paper: 512).
        depth: Transformer blocks (paper: 8; 1 already learns well).
        heads: Attention heads.
    """

    pos_embed: Tensor

    def __init__(
        self,
        embed_dim: int,
        grid_size: int,
        patch_pixels: int,
        num_prefix_tokens: int = 1,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        if min(embed_dim, grid_size, patch_pixels, width, depth, heads) < 1 or num_prefix_tokens < 0:
            raise ValueError(
                "MAEDecoder needs embed_dim, grid_size, patch_pixels, width, depth, heads >= 1 and "
                f"num_prefix_tokens >= 0, got {embed_dim}, {grid_size}, {patch_pixels}, {width}, {depth}, "
                f"{heads}, {num_prefix_tokens}"
            )
        if width % heads or width % 4:
            raise ValueError(f"width={width} must be a multiple of heads={heads} and of 4")
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = nn.Linear(embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        pos = build_sincos2d_pos_embed([grid_size, grid_size], dim=width)  # (G*G, width)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)
        self.blocks = nn.Sequential(
            *[Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, patch_pixels)

    def forward(self, tokens: Tensor, restore: Tensor) -> Tensor:
        """Pixels of every patch.

        Args:
            tokens: ``(B, num_prefix_tokens + K, embed_dim)`` encoder output for the K kept patches.
            restore: ``(B, L)`` index of each patch of the grid in the kept-then-masked order
                (``argsort`` of the shuffle that chose the kept patches).

        Returns:
            ``(B, L, patch_pixels)`` in grid order.
        """
        x = self.embed(tokens)
        prefix, kept = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        b, length = restore.shape
        fill = self.mask_token.expand(b, length - kept.shape[1], -1)
        patches = torch.cat([kept, fill], dim=1)  # (B, L, width): kept first, then masked
        patches = torch.gather(patches, 1, restore.unsqueeze(-1).expand(-1, -1, patches.shape[2]))
        x = torch.cat([prefix, patches + self.pos_embed], dim=1)
        x = self.norm(self.blocks(x))
        return self.pred(x[:, self.num_prefix_tokens :])
