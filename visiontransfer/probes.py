"""Classification from frozen features, shared by the online evaluator and the saved-embedding tools.

* :func:`knn_predict`: weighted k-nearest-neighbour voting with cosine similarity (Wu et al.,
  "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018), with
  :func:`topk_accuracy` to score it;
* :class:`LinearProbe`: a linear classifier (multinomial logistic regression) on standardised
  features, deterministic and warm-startable.

:class:`~visiontransfer.callbacks.OnlineEvaluation` runs them on features it embeds during
pretraining; :mod:`visiontransfer.features.classify` on embeddings saved by ``visiontransfer
embed``. One rule, two paths: the same images give the same kNN accuracy either way.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn


# -- kNN -----------------------------------------------------------------------------------------
def knn_predict(
    query_feats: Tensor,
    bank_feats: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores of weighted k-nearest-neighbour voting with cosine similarity.

    Features are L2-normalised; each query takes its ``k`` most similar bank entries (all of them
    if the bank is smaller) and each neighbour adds ``exp(similarity / temperature)`` to the score
    of its class (Wu et al. 2018, as in InstDisc and MoCo's kNN monitor).

    Args:
        query_feats: ``(Q, D)`` query features.
        bank_feats: ``(N, D)`` bank features, ``N >= 1``.
        bank_labels: ``(N,)`` class indices of the bank, in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.
        k: Neighbours per query, ``>= 1``.
        temperature: Softness of the vote weights, ``> 0``.
        chunk_size: Queries per similarity block (bounds memory at ``chunk_size × N`` floats).

    Returns:
        ``(Q, C)`` float32 scores (the summed vote weights; the prediction is the argmax), on the
        device of ``bank_feats``.
    """
    if k < 1:
        raise ValueError(f"knn_predict k={k} must be >= 1")
    if temperature <= 0:
        raise ValueError(f"knn_predict temperature={temperature} must be > 0")
    if bank_feats.shape[0] == 0:
        raise ValueError("knn_predict needs a non-empty bank")
    device = bank_feats.device
    bank = F.normalize(bank_feats.float(), dim=1)
    labels = bank_labels.to(device=device, dtype=torch.long)
    k = min(k, bank.shape[0])
    blocks = []
    for start in range(0, query_feats.shape[0], chunk_size):
        queries = F.normalize(query_feats[start : start + chunk_size].to(device).float(), dim=1)
        top_sim, top_idx = (queries @ bank.T).topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = labels[top_idx]
        scores = torch.zeros(queries.shape[0], num_classes, device=device)
        rows = torch.arange(queries.shape[0], device=device)
        # One neighbour rank at a time: each (row, class) is written once per step, so the sums
        # are deterministic (scatter_add_ uses atomics on GPUs), the same on every DDP rank.
        for j in range(k):
            scores[rows, votes[:, j]] += weights[:, j]
        blocks.append(scores)
    return torch.cat(blocks) if blocks else torch.zeros(0, num_classes, device=device)


def topk_accuracy(scores: Tensor, labels: Tensor, k: int = 1) -> float:
    """Share of rows of ``scores`` (``(Q, C)``) whose true label is among the ``k`` highest."""
    if scores.shape[0] == 0:
        return float("nan")
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (top == labels.to(top.device).view(-1, 1)).any(dim=1).float().mean().item()


# -- linear probe --------------------------------------------------------------------------------
def _to_cpu(tree: Any) -> Any:
    return apply_to_collection(tree, Tensor, lambda t: t.detach().cpu().clone())


class LinearProbe:
    """A linear classifier on standardised features, trained anew at each evaluation from the
    weights (and AdamW state) of the previous one.

    Training is deterministic: zero-initialised weights, and a ``torch.Generator`` seeded with
    ``seed + evaluation`` for the mini-batch order. So given identical features, every DDP rank
    trains an identical probe.

    Args:
        epochs: Passes over the features per evaluation (full-batch: one step each).
        lr: AdamW learning rate.
        weight_decay: AdamW (decoupled) weight decay.
        batch_size: Mini-batch size; None trains full-batch.
        seed: Seed of the mini-batch order.
    """

    def __init__(
        self, epochs: int, lr: float, weight_decay: float, batch_size: int | None = None, seed: int = 0
    ) -> None:
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed
        self.layer: nn.Linear | None = None
        self.optimizer: torch.optim.AdamW | None = None
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self._pending: dict[str, Any] | None = None  # restored state, applied at the next fit

    def _build(self, dim: int, num_classes: int, device: torch.device) -> None:
        """Create the layer and optimizer, from the pending (restored) state when it fits."""
        layer = nn.Linear(dim, num_classes).to(device)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        pending, self._pending = self._pending, None
        if pending is not None:
            shape = tuple(pending["weight"].shape)
            if shape == (num_classes, dim):
                layer.load_state_dict({"weight": pending["weight"], "bias": pending["bias"]})
                if pending.get("optimizer") is not None:
                    optimizer.load_state_dict(pending["optimizer"])
                    for group in optimizer.param_groups:  # the arguments of this run win
                        group["lr"], group["weight_decay"] = self.lr, self.weight_decay
            else:
                warnings.warn(
                    f"LinearProbe: the restored probe is {shape[1]}→{shape[0]} but the "
                    f"features are {dim}→{num_classes} classes; starting a new probe",
                    stacklevel=2,
                )
        self.layer, self.optimizer = layer, optimizer

    def fit(self, feats: Tensor, labels: Tensor, num_classes: int, evaluation: int = 0) -> None:
        """Train on ``(N, D)`` features and ``(N,)`` labels, warm-starting from the current weights."""
        with torch.inference_mode(False), torch.enable_grad():
            # Clones outside inference mode: the features may be inference tensors (validation).
            x, y = feats.detach().float().clone(), labels.detach().long().clone()
            layer = self.layer
            moved = layer is not None and layer.weight.device != x.device
            if moved or (layer is not None and layer.weight.shape != (num_classes, x.shape[1])):
                self.load_state_dict(self.state_dict())  # rebuilt below: moved, or a mismatch warned of
            if self.layer is None:
                self._build(x.shape[1], num_classes, x.device)
            assert self.layer is not None and self.optimizer is not None
            self.mean = x.mean(dim=0)
            self.std = x.std(dim=0, correction=0).clamp_min(1e-6)
            x = (x - self.mean) / self.std
            n = x.shape[0]
            batch = n if self.batch_size is None else min(self.batch_size, n)
            generator = torch.Generator().manual_seed(self.seed + evaluation)
            self.layer.train()
            for _ in range(self.epochs):
                order = torch.randperm(n, generator=generator).to(x.device) if batch < n else None
                for start in range(0, n, batch):
                    rows = order[start : start + batch] if order is not None else slice(None)
                    loss = F.cross_entropy(self.layer(x[rows]), y[rows])
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
            self.layer.eval()

    @torch.no_grad()
    def predict(self, feats: Tensor) -> Tensor:
        """``(Q, C)`` logits of ``(Q, D)`` features, standardised with the training statistics."""
        if self.layer is None or self.mean is None or self.std is None:
            raise RuntimeError("LinearProbe.predict before fit")
        x = (feats.float().to(self.mean.device) - self.mean) / self.std
        return self.layer(x)

    def state_dict(self) -> dict[str, Any] | None:
        """Weights, optimizer state and standardisation statistics (CPU copies); None before any fit."""
        if self.layer is None or self.optimizer is None:
            return None if self._pending is None else _to_cpu(self._pending)
        return _to_cpu(
            {
                "weight": self.layer.weight,
                "bias": self.layer.bias,
                "optimizer": self.optimizer.state_dict(),
                "mean": self.mean,
                "std": self.std,
            }
        )

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore a :meth:`state_dict`; applied when the next :meth:`fit` knows the device."""
        self.layer, self.optimizer = None, None
        self._pending = None if state is None else _to_cpu(state)
        self.mean = None if state is None or state.get("mean") is None else state["mean"].clone()
        self.std = None if state is None or state.get("std") is None else state["std"].clone()
