"""Heads: plain ``nn.Module``s put on top of a backbone's pooled features."""

from __future__ import annotations

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
