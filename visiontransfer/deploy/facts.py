"""What a checkpoint records about its run, for ``config.json`` and the model card: the data it was
fitted on (the datamodule's :meth:`~visiontransfer.data.base.ImageDataModule.describe`, saved at fit
time), the metrics it holds (logged last, and the best scores of its ``ModelCheckpoint``
callbacks), and where its backbone came from (the pretext checkpoint or export it started from,
when that file is still there; else what the previous export recorded)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from visiontransfer.backbones import BackboneSpec
from visiontransfer.backbones.weights import (
    CONFIG,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    read_checkpoint,
)
from visiontransfer.transfer.base import METRICS_KEY, scalar_metrics


def data_description(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The ``describe()`` record a datamodule saved in the checkpoint (source, images per split,
    image size), else what its hyperparameters say (None: nothing recorded)."""
    for value in checkpoint.values():
        record = value.get("data") if isinstance(value, dict) else None
        if isinstance(record, dict) and "datamodule" in record:
            return dict(record)
    hparams = checkpoint.get("datamodule_hyper_parameters")
    if isinstance(hparams, dict) and hparams:
        given = {k: hparams[k] for k in ("root", "manifest", "shards") if hparams.get(k)}
        source = ", ".join(f"--data.{k}={v!r}" for k, v in given.items()) or "the embedded procedural set"
        return {"datamodule": checkpoint.get("datamodule_hparams_name"), "source": source, "images": {},
                "image_size": hparams.get("image_size")}  # fmt: skip
    return None


def recorded_metrics(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Metrics the checkpoint holds: ``logged`` (the last value of each, when it was written),
    ``best`` (monitor → best score of each ``ModelCheckpoint``), ``epoch`` and ``step``."""
    best: dict[str, float] = {}
    for name, state in (checkpoint.get("callbacks") or {}).items():
        if not str(name).startswith("ModelCheckpoint") or not isinstance(state, dict):
            continue
        score, monitor = state.get("best_model_score"), state.get("monitor")
        value = float(score) if isinstance(score, Tensor | float | int) else None
        if monitor and value is not None and math.isfinite(value):
            best[str(monitor)] = value
    return {"logged": scalar_metrics(checkpoint.get(METRICS_KEY) or {}), "best": best,
            "epoch": checkpoint.get("epoch"), "step": checkpoint.get("global_step")}  # fmt: skip


def pretraining(spec: BackboneSpec) -> dict[str, Any] | None:
    """Where the backbone's weights came from before this run: the file's method, hyperparameters
    and data (read from the pretext ``.ckpt`` or export, when it is still there), or just its path."""
    source = spec.source
    if not source or spec.method is None:
        return None
    record: dict[str, Any] = {"source": source}
    if os.path.isfile(source):
        try:
            earlier = read_checkpoint(source)
        except (CorruptCheckpointError, UnsafeCheckpointError, OSError):
            return record
        block = earlier.get("visiontransfer") or {}
        record.update(method=block.get("method"), hyperparameters=block.get("hyperparameters") or {},
                      data=data_description(earlier))  # fmt: skip
    elif Path(source, CONFIG).is_file():
        config = json.loads(Path(source, CONFIG).read_text()).get("visiontransfer", {})
        provenance = config.get("provenance", {})
        record.update(method=config.get("method"), hyperparameters=config.get("hyperparameters") or {},
                      data=provenance.get("data"))  # fmt: skip
    return record
