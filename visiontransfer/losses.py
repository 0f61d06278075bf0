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


AB_LOSS_SCALE = 110.0
"""ab values are divided by this (the half-width of the quantised ab square) before the
regression loss, so errors are in units of the ab range and smooth L1's ``beta`` is comparable
across scales."""


def colorization_regression_loss(
    pred_ab: Tensor, true_ab: Tensor, scale: float = AB_LOSS_SCALE, beta: float = 1.0
) -> Tensor:
    """Smooth L1 between predicted and true ab, both divided by ``scale`` (the regression baseline
    of Zhang et al. 2016, with smooth L1 instead of L2 for robustness).

    ``loss = mean( smooth_l1((pred − true) / scale; beta) )`` over every element, where
    ``smooth_l1(d) = 0.5·d²/beta`` for ``|d| < beta`` and ``|d| − 0.5·beta`` beyond.

    Args:
        pred_ab: ``(B, 2, H, W)`` predicted a, b in Lab units.
        true_ab: ``(B, 2, H, W)`` true a, b in Lab units.
        scale: Divides both before the loss (default 110: the ab range becomes about [-1, 1]).
        beta: Where smooth L1 turns from quadratic to linear, in scaled units.

    Returns:
        Scalar mean loss.
    """
    if pred_ab.shape != true_ab.shape or pred_ab.ndim != 4 or pred_ab.shape[1] != 2:
        raise ValueError(
            "colorization_regression_loss needs pred_ab and true_ab of one (B, 2, H, W) shape, got "
            f"{tuple(pred_ab.shape)} and {tuple(true_ab.shape)}"
        )
    if scale <= 0 or beta <= 0:
        raise ValueError(f"scale={scale} and beta={beta} must be > 0")
    return F.smooth_l1_loss(pred_ab / scale, true_ab / scale, beta=beta)


def colorization_class_loss(logits: Tensor, soft_targets: Tensor, weights_per_pixel: Tensor) -> Tensor:
    """Class-rebalanced multinomial cross-entropy of Zhang et al. 2016 (eq. 2).

    ``loss = mean_{b,h,w}( −v_bhw · Σ_q Z_bqhw · log softmax(logits)_bqhw )`` where ``Z`` are the
    soft-encoded targets and ``v = w[argmax_q Z]`` the rebalancing weight of each pixel's colour.
    The paper sums over pixels; we average, so the scale does not depend on the image size (with
    ``E_p[w] = 1`` it is that of a plain cross-entropy).

    Args:
        logits: ``(B, Q, H, W)`` unnormalised scores over the Q ab bins.
        soft_targets: ``(B, Q, H, W)`` target distribution per pixel (each sums to 1).
        weights_per_pixel: ``(B, H, W)`` rebalancing weight ``v`` of each pixel.

    Returns:
        Scalar mean loss.
    """
    if logits.ndim != 4 or logits.shape != soft_targets.shape:
        raise ValueError(
            "colorization_class_loss needs logits and soft_targets of one (B, Q, H, W) shape, got "
            f"{tuple(logits.shape)} and {tuple(soft_targets.shape)}"
        )
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(weights_per_pixel.shape) != expected:
        raise ValueError(
            f"weights_per_pixel must be (B, H, W) = {expected}, got {tuple(weights_per_pixel.shape)}"
        )
    cross_entropy = -(soft_targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)  # (B, H, W)
    return (weights_per_pixel * cross_entropy).mean()
