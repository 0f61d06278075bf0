"""``visiontransfer classify``: classification from saved embeddings, no network training.

A labeled bank (e.g. the training images) classifies queries (e.g. the test images) two ways,
with the very rules of the online evaluator (:mod:`visiontransfer.probes`), so the saved-embedding
accuracy is the online evaluator's on the same images:

- **kNN** (:func:`~visiontransfer.probes.knn_predict`): the ``k`` most cosine-similar bank images
  vote for their class with weight ``exp(similarity / temperature)``;
- **linear probe** (:class:`~visiontransfer.probes.LinearProbe`): multinomial logistic regression
  on standardised features, trained on the bank.

Query labels are matched to the bank's classes by name; queries without a label (or with a class
the bank lacks) get predictions but don't count in the accuracies. Written: ``predictions.csv``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from visiontransfer.checkpoint_io import atomic_write
from visiontransfer.errors import ConfigError
from visiontransfer.features.store import Embeddings
from visiontransfer.probes import LinearProbe, knn_predict, topk_accuracy

CSV_NAME = "predictions.csv"
SIMILARITY_BLOCK = 1 << 26
"""Bank similarities held at once by the kNN (64 M floats: 256 MB), however large the bank."""


def query_labels(bank: Embeddings, queries: Embeddings) -> np.ndarray:
    """``(Q,)`` class index of each query in the bank's classes (by name), -1 where unknown."""
    names = queries.label_names()
    if names is None:
        return np.full(len(queries), -1, dtype=np.int64)
    lookup = {name: i for i, name in enumerate(bank.classes)}
    return np.asarray([lookup.get(name, -1) for name in names], dtype=np.int64)


def _bank(bank: Embeddings) -> tuple[Tensor, Tensor]:
    if bank.labels is None or not bank.classes:
        raise ConfigError(
            f"the bank {os.fspath(bank.folder or '')!r} has no labels: embed a class-per-folder "
            "tree or a manifest with a 'label' column"
        )
    known = bank.labels >= 0
    return torch.from_numpy(np.asarray(bank.vectors[known], dtype=np.float32)), torch.from_numpy(
        bank.labels[known]
    )


def knn_scores(bank: Embeddings, queries: Embeddings, k: int = 20, temperature: float = 0.07) -> Tensor:
    """``(Q, C)`` kNN vote scores of the queries (the online evaluator's defaults)."""
    feats, labels = _bank(bank)
    block = max(1, min(1024, SIMILARITY_BLOCK // max(1, len(feats))))
    query = torch.from_numpy(np.array(queries.vectors, dtype=np.float32))
    return knn_predict(query, feats, labels, len(bank.classes), k, temperature, chunk_size=block)


def probe_logits(
    bank: Embeddings, queries: Embeddings, epochs: int = 100, lr: float = 0.01, weight_decay: float = 1e-4
) -> Tensor:
    """``(Q, C)`` logits of a linear probe trained on the bank (the online evaluator's defaults)."""
    feats, labels = _bank(bank)
    probe = LinearProbe(epochs, lr, weight_decay)
    probe.fit(feats, labels, len(bank.classes))
    return probe.predict(torch.from_numpy(np.array(queries.vectors, dtype=np.float32)))


@dataclass
class Classification:
    """Predictions for every query.

    Attributes:
        queries: The classified embeddings.
        classes: The bank's class names.
        labels: ``(Q,)`` the queries' true classes in ``classes`` (-1: unknown).
        knn: ``(Q, C)`` kNN scores, or None.
        probe: ``(Q, C)`` probe logits, or None.
        metrics: ``knn_top1``, ``knn_top5`` (5 classes or more), ``probe_top1`` over the labeled queries.
    """

    queries: Embeddings
    classes: list[str]
    labels: np.ndarray
    knn: Tensor | None
    probe: Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """``path,label,knn_class,knn_probability,probe_class,probe_probability`` per query, atomically."""
        columns = [
            ("knn", self.knn, lambda s: s / s.sum(dim=1, keepdim=True).clamp_min(1e-12)),
            ("probe", self.probe, lambda s: s.softmax(dim=1)),
        ]
        present = [(name, probs(scores)) for name, scores, probs in columns if scores is not None]
        header = ["path", "label"] + [
            h for name, _ in present for h in (f"{name}_class", f"{name}_probability")
        ]

        def write(temp: str) -> None:
            with open(temp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                tops = [p.max(dim=1) for _, p in present]
                for q in range(len(self.queries)):
                    label = self.classes[self.labels[q]] if self.labels[q] >= 0 else ""
                    row = [self.queries.paths[q], label]
                    for top in tops:
                        row += [self.classes[int(top.indices[q])], f"{float(top.values[q]):.6f}"]
                    writer.writerow(row)

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, write)
        return target


def classify(
    bank: str | Embeddings,
    queries: str | Embeddings,
    k: int = 20,
    temperature: float = 0.07,
    knn: bool = True,
    linear_probe: bool = True,
    probe_epochs: int = 100,
    probe_lr: float = 0.01,
    probe_weight_decay: float = 1e-4,
    out: str | None = None,
) -> Classification:
    """Classify saved query embeddings by a labeled bank of saved embeddings.

    Args:
        bank: Labeled embeddings (folder or :class:`Embeddings`).
        queries: Embeddings to classify, made with the same backbone.
        k: Neighbours of the kNN vote.
        temperature: Temperature of the kNN vote weights.
        knn: Run the kNN classifier.
        linear_probe: Train and run the linear probe.
        probe_epochs: Full-batch passes of the probe over the bank.
        probe_lr: AdamW learning rate of the probe.
        probe_weight_decay: AdamW weight decay of the probe.
        out: Folder for ``predictions.csv`` (None: write nothing).

    Raises:
        ConfigError: an unlabeled bank, embeddings of different widths or backbones, bad ``k``.
    """
    banked = bank if isinstance(bank, Embeddings) else Embeddings.load(bank, "BANK")
    asked = queries if isinstance(queries, Embeddings) else Embeddings.load(queries, "QUERIES")
    if not (knn or linear_probe):
        raise ConfigError("nothing to do: enable the kNN classifier or the linear probe")
    if k < 1 or temperature <= 0:
        raise ConfigError(f"-k={k} must be >= 1 and --temperature={temperature} > 0")
    weights = [e.meta.get("plan", {}).get("weights") for e in (banked, asked)]
    if banked.dim != asked.dim or (None not in weights and weights[0] != weights[1]):
        raise ConfigError(
            "the bank and the queries were embedded with different backbones: embed both with one"
        )
    labels = query_labels(banked, asked)
    result = Classification(
        asked,
        list(banked.classes),
        labels,
        knn_scores(banked, asked, k, temperature) if knn else None,
        probe_logits(banked, asked, probe_epochs, probe_lr, probe_weight_decay) if linear_probe else None,
    )
    known = torch.from_numpy(labels >= 0)
    truth = torch.from_numpy(labels)[known]
    if known.any():
        if result.knn is not None:
            result.metrics["knn_top1"] = topk_accuracy(result.knn[known], truth, 1)
            if len(banked.classes) >= 5:
                result.metrics["knn_top5"] = topk_accuracy(result.knn[known], truth, 5)
        if result.probe is not None:
            result.metrics["probe_top1"] = topk_accuracy(result.probe[known], truth, 1)
    if out is not None:
        result.write_csv(Path(out, CSV_NAME))
    return result
