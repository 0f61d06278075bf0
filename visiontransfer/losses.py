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


def dino_loss(
    student: Tensor,
    teacher: Tensor,
    center: Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> Tensor:
    """The DINO loss (Caron et al. 2021, eq. 1 and Algorithm 1): cross-entropy between the
    centred and sharpened teacher distribution of one view and the student's of every other view.

    ``P_t = softmax((t − center) / teacher_temperature)``,
    ``log P_s = log_softmax(s / student_temperature)``,
    ``loss = mean over pairs (i, j), i ≠ j, of mean_b( −Σ_k P_t[i, b, k] · log P_s[j, b, k] )``,
    where ``i`` runs over the teacher's views and ``j`` over the student's (view ``i`` of both is
    the same crop, so that pair is skipped).

    Args:
        student: ``(Vs, B, K)`` student outputs for ``Vs`` views (global ones first).
        teacher: ``(Vt, B, K)`` teacher outputs for the first ``Vt <= Vs`` views (the global ones).
        center: ``(K,)`` running mean of the teacher outputs (centering).
        student_temperature: Softmax temperature of the student; must be > 0.
        teacher_temperature: Softmax temperature of the teacher (sharpening); must be > 0.

    Returns:
        Scalar mean loss.
    """
    if student.ndim != 3 or teacher.ndim != 3 or student.shape[1:] != teacher.shape[1:]:
        raise ValueError(
            "dino_loss needs (Vs, B, K) student and (Vt, B, K) teacher outputs, "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if teacher.shape[0] > student.shape[0] or student.shape[0] < 2:
        raise ValueError(
            f"{teacher.shape[0]} teacher views for {student.shape[0]} student views: need Vt <= Vs, Vs >= 2"
        )
    if center.shape != (student.shape[2],):
        raise ValueError(f"center must be (K,) = ({student.shape[2]},), got {tuple(center.shape)}")
    for name, value in (
        ("student_temperature", student_temperature),
        ("teacher_temperature", teacher_temperature),
    ):
        if value <= 0:
            raise ValueError(f"{name}={value} must be > 0")
    targets = F.softmax((teacher.float() - center) / teacher_temperature, dim=-1)  # (Vt, B, K)
    log_probs = F.log_softmax(student.float() / student_temperature, dim=-1)  # (Vs, B, K)
    cross = -torch.einsum("tbk,sbk->ts", targets, log_probs) / student.shape[1]  # (Vt, Vs)
    same = torch.eye(teacher.shape[0], student.shape[0], dtype=torch.bool, device=cross.device)
    return cross[~same].mean()


def masked_patch_mse(
    pred: Tensor, target: Tensor, mask: Tensor, normalize_target: bool = True, eps: float = 1e-6
) -> Tensor:
    """The MAE loss (He et al. 2022): mean squared error on the masked patches only.

    With ``normalize_target`` every target patch is normalised by its own mean and variance first
    (the paper's "normalised pixels"; the variance unbiased, as in the reference code):
    ``t' = (t − mean(t)) / sqrt(var(t) + eps)``. ``loss = Σ_{b,l} mask·mean_p((pred − t')²) / Σ mask``.

    Args:
        pred: ``(B, L, P)`` predicted pixels of each of the L patches (P values each).
        target: ``(B, L, P)`` true pixels.
        mask: ``(B, L)``, 1 where a patch was masked (hidden from the encoder), 0 where visible.
        normalize_target: Normalise each target patch (needs P >= 2).
        eps: Added to the variance.

    Returns:
        Scalar mean loss over the masked patches (0 when none is masked).
    """
    if pred.shape != target.shape or pred.ndim != 3 or mask.shape != pred.shape[:2]:
        raise ValueError(
            "masked_patch_mse needs pred and target of one (B, L, P) shape and a (B, L) mask, got "
            f"{tuple(pred.shape)}, {tuple(target.shape)} and {tuple(mask.shape)}"
        )
    if normalize_target and pred.shape[2] < 2:
        raise ValueError(f"normalize_target needs patches of >= 2 values, got P={pred.shape[2]}")
    if eps <= 0:
        raise ValueError(f"eps={eps} must be > 0")
    mask = mask.float()
    if normalize_target:
        target = (target - target.mean(dim=-1, keepdim=True)) / (
            target.var(dim=-1, keepdim=True) + eps
        ).sqrt()
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def feature_distillation_loss(student: Tensor, teacher: Tensor, metric: str = "cosine") -> Tensor:
    """Distance between student and teacher features, per vector along dim 1, averaged.

    Works for pooled features ``(B, D)`` and feature maps ``(B, D, H, W)`` (one vector per
    location). ``cosine``: ``mean(1 − cos(s, t))`` (the scale of the teacher's features does not
    matter); ``mse``: ``mean((s − t)²)`` over every element (feature regression, FitNets).

    Args:
        student: ``(B, D)`` or ``(B, D, H, W)`` student features (projected to the teacher's width).
        teacher: Teacher features of the same shape (targets: no gradient flows into them).
        metric: ``cosine`` or ``mse``.

    Returns:
        Scalar mean loss.
    """
    if student.shape != teacher.shape or student.ndim not in (2, 4):
        raise ValueError(
            "feature_distillation_loss needs student and teacher features of one (B, D) or (B, D, H, W) "
            f"shape, got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    target = teacher.detach().float()
    if metric == "cosine":
        return (1.0 - F.cosine_similarity(student.float(), target, dim=1, eps=1e-8)).mean()
    if metric == "mse":
        return F.mse_loss(student.float(), target)
    raise ValueError(f"metric={metric!r} must be 'cosine' or 'mse'")


def segmentation_cross_entropy(
    logits: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = 255
) -> Tensor:
    """Per-pixel cross-entropy of semantic segmentation, ignored pixels left out.

    ``loss = Σ_p w[y_p] · (−log softmax(logits_p)[y_p]) / Σ_p w[y_p]`` over the pixels ``p`` whose
    label ``y_p`` is not ``ignore_index`` (``w = 1`` without ``weight``): ``F.cross_entropy``'s
    weighted mean. A batch without any labeled pixel gives 0 (with a gradient of 0), not NaN.

    Args:
        logits: ``(B, C, H, W)`` unnormalised class scores.
        target: ``(B, H, W)`` integer labels in ``0..C-1``, or ``ignore_index``.
        weight: ``(C,)`` class weights (e.g. :func:`median_frequency_weights`), or None.
        ignore_index: Label of pixels without a class (void, padding).

    Returns:
        Scalar mean loss.
    """
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"segmentation_cross_entropy needs (B, C, H, W) logits and a (B, H, W) target, got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if weight is not None and tuple(weight.shape) != (logits.shape[1],):
        raise ValueError(
            f"weight must have one value per class ({logits.shape[1]}), got {tuple(weight.shape)}"
        )
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target.long(), weight=weight, ignore_index=ignore_index)


def median_frequency_weights(class_pixels: Tensor, present_pixels: Tensor) -> Tensor:
    """Median frequency balancing (Eigen & Fergus 2015, used by SegNet): ``w_c = median(f) / f_c``
    with ``f_c`` = pixels of class ``c`` / pixels of the images where ``c`` appears.

    Rare classes get weights above 1, frequent ones below. A class never seen gets weight 1.

    Args:
        class_pixels: ``(C,)`` labeled pixels of each class.
        present_pixels: ``(C,)`` labeled pixels of the images in which each class appears.

    Returns:
        ``(C,)`` float weights.
    """
    if class_pixels.ndim != 1 or class_pixels.shape != present_pixels.shape:
        raise ValueError(
            "median_frequency_weights needs class_pixels and present_pixels of one (C,) shape, got "
            f"{tuple(class_pixels.shape)} and {tuple(present_pixels.shape)}"
        )
    if bool((class_pixels < 0).any()) or bool((present_pixels < class_pixels).any()):
        raise ValueError("class_pixels must be >= 0 and present_pixels >= class_pixels (they include them)")
    seen = class_pixels > 0
    weights = torch.ones(class_pixels.shape, dtype=torch.float64, device=class_pixels.device)
    if not bool(seen.any()):
        return weights.float()
    frequency = class_pixels[seen].double() / present_pixels[seen].double()
    weights[seen] = frequency.quantile(0.5) / frequency  # the median (the mean of the middle two)
    return weights.float()
