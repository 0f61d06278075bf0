"""One kNN rule, two paths: the saved-embedding kNN (and linear probe) of ``visiontransfer classify``
equals the online evaluator's on the same real images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest

from visiontransfer.callbacks import OnlineEvaluation
from visiontransfer.data import PretrainDataModule
from visiontransfer.errors import ConfigError
from visiontransfer.features import classify


def test_saved_embedding_knn_equals_the_online_evaluator(
    image_tree: Path, rotation_ckpt: tuple[Path, Any], embed_small: Any, tmp_path: Path
) -> None:
    ckpt, model = rotation_ckpt
    # The evaluator's bank is train/ (val/ exists, so nothing is held out), its queries test/.
    online = OnlineEvaluation(root=str(image_tree), image_size=32, batch_size=4, k=5, probe_epochs=20)
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = L.Trainer(limit_val_batches=1, enable_checkpointing=False, callbacks=[online], **quiet)
    trainer.validate(model, PretrainDataModule(image_size=32, batch_size=4, synthetic_size=16, num_workers=0),
                     verbose=False)  # fmt: skip
    evaluated = online.history[-1]
    bank = embed_small(str(ckpt), tmp_path / "bank", root=str(image_tree / "train"))
    queries = embed_small(str(ckpt), tmp_path / "queries", root=str(image_tree / "test"))
    assert (len(bank), len(queries)) == (evaluated["bank_size"], evaluated["query_size"]) == (20, 10)
    result = classify(bank, queries, k=5, probe_epochs=20, out=str(tmp_path / "predictions"))
    assert result.metrics["knn_top1"] == pytest.approx(evaluated["online/knn_top1"], abs=1e-9)
    assert result.metrics["probe_top1"] == pytest.approx(evaluated["online/probe_top1"], abs=1 / 10 + 1e-9)
    lines = (tmp_path / "predictions" / "predictions.csv").read_text().splitlines()
    assert (
        lines[0] == "path,label,knn_class,knn_probability,probe_class,probe_probability" and len(lines) == 11
    )


def test_an_unlabeled_bank_is_refused(image_tree: Path, embed_small: Any, tmp_path: Path) -> None:
    bank = embed_small("test_resnet", tmp_path / "bank", root=str(image_tree / "test"), labels="none")
    with pytest.raises(ConfigError, match="has no labels"):
        classify(bank, bank)
