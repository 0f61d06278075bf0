"""Losses: pure functions over tensors, each checked in tests against a hand-computed value."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(
    queries: Tensor,
    keys: Tensor,
    temperature: float = 1.0,
    positives: Tensor | None = None,
    exclude: Tensor | None = None,
) -> Tensor:
    """InfoNCE: each query must pick its positive key out of all keys (van den Oord et al. 2018).

    ``loss = mean_i( -log softmax_j(<q_i, k_j> / temperature)[positive(i)] )``. Callers decide
    whether to L2-normalise first (SimCLR does, CPC scores raw dot products).

    Args:
        queries: ``(N, D)``.
        keys: ``(M, D)``: the positives and every negative.
        temperature: Divides the scores; must be > 0.
        positives: ``(N,)`` index of each query's positive key; default ``arange(N)`` (key ``i``
            is the positive of query ``i``).
        exclude: ``(N, M)`` bool, True where a key is neither positive nor negative for a query
            (left out of its softmax, e.g. the query itself in SimCLR).

    Returns:
        Scalar mean loss.
    """
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(
            "info_nce needs (N, D) queries and (M, D) keys, "
            f"got {tuple(queries.shape)} and {tuple(keys.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if positives is None:
        if keys.shape[0] < queries.shape[0]:
            raise ValueError(f"{queries.shape[0]} queries but only {keys.shape[0]} keys")
        positives = torch.arange(queries.shape[0], device=queries.device)
    logits = queries @ keys.t() / temperature  # (N, M)
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, positives)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent, the SimCLR loss (Chen et al. 2020): InfoNCE over 2N views, cosine similarity.

    Each of the 2N projections must find the other view of its image among the 2N − 1 others
    (itself excluded).

    Args:
        z1: ``(N, D)`` projections of the first views.
        z2: ``(N, D)`` projections of the second views, row ``i`` the same image as ``z1[i]``.
        temperature: Softmax temperature.

    Returns:
        Scalar mean loss over the 2N anchors.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"nt_xent needs two (N, D) tensors of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    itself = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    return info_nce(z, z, temperature, positives, exclude=itself)
