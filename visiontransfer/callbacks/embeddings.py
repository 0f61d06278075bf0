"""The writer of ``visiontransfer embed``: ``predict`` features into a chunked, resumable folder.

:class:`EmbeddingWriter` runs with :class:`~visiontransfer.features.data.EmbeddingData` (whose
batches say which chunk they belong to) and a module whose ``predict_step`` returns
``{"features": (B, D), "index": (B,)}``. Each process keeps the rows of its open chunks only and
writes a chunk, atomically, when its last batch has come; at the end of the epoch the processes
meet, rank 0 merges the chunks into the final files (see :mod:`visiontransfer.features.store`)
and the others wait for it, so every process returns with the folder complete.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch.nn.functional as F

from visiontransfer.features import store


class EmbeddingWriter(L.Callback):
    """Write predicted features chunk by chunk into ``out`` and merge them at the end.

    Args:
        out: The embeddings folder.
        plan: The settings the rows are made with (``plan.json``; a folder with another plan is
            refused before the run, see :func:`~visiontransfer.features.store.check_folder`).
        num_chunks: Chunks of the source (all of them, not only this process's).
        classes: Class names of the source's labels (empty: unlabeled).
        dtype: ``float32`` or ``float16`` rows.
        normalize: L2-normalise every row (in float32, before the cast).
        overwrite: Remove what an earlier run left in ``out`` before starting.
        meta: Extra entries of ``meta.json`` (backbone, source, ...).
    """

    def __init__(
        self,
        out: str,
        plan: dict[str, Any],
        num_chunks: int,
        classes: list[str] | None = None,
        dtype: str = "float32",
        normalize: bool = False,
        overwrite: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if dtype not in store.DTYPES:
            raise ValueError(f"EmbeddingWriter dtype={dtype!r} must be one of {', '.join(store.DTYPES)}")
        self.out = out
        self.plan = plan
        self.num_chunks = num_chunks
        self.classes = list(classes or [])
        self.dtype = dtype
        self.normalize = normalize
        self.overwrite = overwrite
        self.meta = dict(meta or {})
        self.dim: int | None = None
        self.written = 0
        self.result: dict[str, Any] | None = None
        self._open: dict[int, list[tuple[np.ndarray, np.ndarray, list[str], np.ndarray]]] = {}
        self._unreadable: dict[int, list[tuple[str, str]]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Rank 0 prepares the folder; Lightning's barrier after the setup hooks holds the other
        # processes until then, and the loaders list the finished chunks after it.
        if trainer.is_global_zero:
            store.start(self.out, self.plan, self.overwrite)
        self.dim = getattr(pl_module, "num_features", None)

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(batch, dict) or store.BATCH_CHUNK not in batch:
            raise TypeError("EmbeddingWriter needs the batches of visiontransfer.features.data.EmbeddingData")
        chunk = int(batch[store.BATCH_CHUNK])
        features = outputs["features"].detach().float().flatten(1)
        if self.normalize:
            features = F.normalize(features, dim=1)
        rows = features.cpu().numpy().astype(self.dtype, copy=False)
        labels = batch["label"].cpu().numpy()
        index = outputs["index"].cpu().numpy()
        self._open.setdefault(chunk, []).append((rows, index, list(batch[store.BATCH_PATHS]), labels))
        self._unreadable.setdefault(chunk, []).extend(batch[store.BATCH_UNREADABLE])
        if rows.shape[0]:
            self.dim = rows.shape[1]  # what the module gives, whatever it calls num_features
        if batch[store.BATCH_CHUNK_LAST]:
            self._write(chunk, trainer.global_rank)

    def _write(self, chunk: int, rank: int) -> None:
        parts = self._open.pop(chunk)
        dim = self.dim or 0
        vectors = np.concatenate(
            [p[0].reshape(-1, dim) if p[0].size else np.zeros((0, dim), self.dtype) for p in parts]
        ).astype(self.dtype, copy=False)
        labels = np.concatenate([p[3] for p in parts]).astype(np.int64)
        done = store.Chunk(
            number=chunk,
            vectors=vectors,
            index=np.concatenate([p[1] for p in parts]).astype(np.int64),
            paths=[path for p in parts for path in p[2]],
            labels=labels if self.classes else None,
            skipped=self._unreadable.pop(chunk, []),
        )
        store.write_chunk(self.out, done, self.classes, rank)
        self.written += 1

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._open:
            raise RuntimeError(
                f"EmbeddingWriter: chunks {sorted(self._open)} did not end (their last batch never came)"
            )
        trainer.strategy.barrier("embeddings: chunks written")
        if trainer.is_global_zero:
            self.result = store.merge_chunks(self.out, self.num_chunks, {**self.meta, "plan": self.plan})
        trainer.strategy.barrier("embeddings: merged")
