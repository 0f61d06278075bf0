"""Every pretext and transfer module under DDP: 2 processes (gloo, CPU) take the same steps as 1
process on the same global batch (same losses, same weights within tolerance); writers write
every predicted image once; the online evaluator gathers the same bank on every rank; gradual
unfreezing keeps the ranks in step; and ``visiontransfer seeds`` runs through Lightning's own
launcher with a logger.

The 2-process runs are jobs of ``tests/helpers/ddp_helpers.py`` run in one launch
(``ddp_harness``); the 1-process runs of the same jobs run in this process. BatchNorm statistics
are per process (SyncBatchNorm needs GPUs; on GPUs pass ``--trainer.sync_batchnorm true``), so
BatchNorm layers are held in eval mode in the fits; the ResumableSampler gives rank r the samples
r, r + 2, ... of the 1-process order (for detection, arranged into single-orientation batches on
every rank); SimCLR and CPC draw their negatives from every process (``gather_with_grads``).
Random on-device augmentations come from each process's own stream, so the stochastic parts are
fixed here (SimCLR's views, CPC's per-patch augmentation).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from ddp_harness import job, launch
from ddp_helpers import (
    EMBED_IMAGES,
    FIT_CASES,
    STEPS,
    WRITER_CASES,
    embed_case,
    fit_case,
    online_eval_case,
    predict_case,
)

from visiontransfer.pretext import RotationPrediction
from visiontransfer.transfer.freezing import backbone_stages

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every 2-process job of this file, in one launch; the folder holds their outputs."""
    folder = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    weights = folder / "rotation_weights.pt"
    model = RotationPrediction(backbone="resnet10t", small_input_stem=False, head_hidden_dim=0)
    torch.save(model.state_dict(), weights)
    jobs = [job("ddp_helpers:fit_case", case=case, out=str(folder)) for case in FIT_CASES]
    jobs += [job("ddp_helpers:predict_case", case=case, out=str(folder)) for case in WRITER_CASES]
    jobs += [job("ddp_helpers:online_eval_case", weights=str(weights), out=str(folder))]
    jobs += [job("ddp_helpers:unfreeze_case", out=str(folder))]
    jobs += [job("ddp_helpers:embed_case", out=str(folder))]
    launch(jobs, folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FIT_CASES))
def test_two_processes_take_the_same_steps_as_one(case: str, two_processes: Path, tmp_path: Path) -> None:
    fit_case(devices=1, case=case, out=str(tmp_path))
    one = torch.load(tmp_path / f"{case}_1.pt", weights_only=True)
    two = torch.load(two_processes / f"{case}_2.pt", weights_only=True)
    assert len(one["losses"]) == len(two["losses"]) == STEPS
    assert two["losses"] == pytest.approx(one["losses"], rel=2e-3, abs=1e-4)
    weights_one, weights_two = one["weights"], two["weights"]
    assert weights_one.keys() == weights_two.keys()
    for name, value in weights_one.items():
        if value.is_floating_point():
            torch.testing.assert_close(weights_two[name], value, rtol=2e-3, atol=2e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(WRITER_CASES))
def test_predict_with_two_processes_writes_every_image_once(
    case: str, two_processes: Path, tmp_path: Path
) -> None:
    """Each process predicts its share (the sampler pads with repeats); rank 0 writes them all."""
    predict_case(devices=1, case=case, out=str(tmp_path))
    suffix = WRITER_CASES[case][2]
    one, two = tmp_path / f"{case}_1.{suffix}", two_processes / f"{case}_2.{suffix}"
    if case == "classification":
        rows_one = [line.split(",") for line in one.read_text().splitlines()]
        rows_two = [line.split(",") for line in two.read_text().splitlines()]
        assert len(rows_two) == len(rows_one) > 2 and len({r[0] for r in rows_two}) == len(rows_two)
        for a, b in zip(rows_one[1:], rows_two[1:], strict=True):
            assert a[:2] == b[:2] and float(a[2]) == pytest.approx(float(b[2]), abs=1e-5)
        return
    images_one = json.loads(one.with_name(f"{one.stem}_images.json").read_text())["images"]
    images_two = json.loads(two.with_name(f"{two.stem}_images.json").read_text())["images"]
    assert images_two == images_one and len(images_one) > 2
    dets_one, dets_two = json.loads(one.read_text()), json.loads(two.read_text())
    assert [d["image_id"] for d in dets_two] == [d["image_id"] for d in dets_one]
    for a, b in zip(dets_one, dets_two, strict=True):
        assert a["bbox"] == pytest.approx(b["bbox"], abs=0.05)
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def _equal(a: Any, b: Any) -> bool:
    """Deep equality of nested dicts / lists / tensors / numbers (NaN equals NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@pytest.mark.slow
def test_online_evaluation_gathers_the_same_bank_on_every_rank(two_processes: Path, tmp_path: Path) -> None:
    online_eval_case(devices=1, weights=str(two_processes / "rotation_weights.pt"), out=str(tmp_path))
    load = lambda path: torch.load(path, weights_only=False)  # noqa: E731
    rank0, rank1 = (load(two_processes / f"online_eval_2_rank{r}.pt") for r in (0, 1))
    single = load(tmp_path / "online_eval_1_rank0.pt")
    # Every rank holds the same gathered bank and queries, in dataset order, as one process does.
    recorded = zip(rank0["recorded"], rank1["recorded"], single["recorded"], strict=True)
    for (f0, y0), (f1, y1), (fs, ys) in recorded:
        assert torch.equal(f0, f1) and torch.equal(y0, y1)
        assert torch.equal(y0, ys) and torch.allclose(f0, fs, atol=1e-5)
    assert [f.shape[0] for f, _ in rank0["recorded"]] == [50, 25]
    # Identical metrics and probe on both ranks, and the same as a single process.
    assert _equal(rank0["probe"], rank1["probe"])
    h0, h1, hs = rank0["history"][0], rank1["history"][0], single["history"][0]
    for name in ("online/knn_top1", "online/knn_top5", "online/probe_top1"):
        assert h0[name] == h1[name] == hs[name]


@pytest.mark.slow
def test_gradual_unfreezing_keeps_the_ranks_in_step(two_processes: Path) -> None:
    same, frozen = (two_processes / "unfreeze_2.txt").read_text().split()
    assert same == "True", "ranks diverged: unfrozen stages were not synchronised"
    # After 3 epochs (current_epoch is 3 at the end) three stages have been released.
    backbone = RotationPrediction(backbone="resnet10t", small_input_stem=False).backbone
    assert int(frozen) == len(backbone_stages(backbone)) - 3


@pytest.mark.slow
def test_embed_with_two_processes_writes_every_image_once(two_processes: Path, tmp_path: Path) -> None:
    """Each process embeds its own chunks (5 and 4 of 9); rank 0 merges them: every image once, in
    order, the same rows as one process writes."""
    from visiontransfer.features import Embeddings

    embed_case(devices=1, out=str(tmp_path))
    one, two = Embeddings.load(tmp_path / "embed_1"), Embeddings.load(two_processes / "embed_2")
    assert two.index.tolist() == one.index.tolist() == list(range(EMBED_IMAGES))
    assert two.meta["written_by_ranks"] == [0, 1] and one.meta["written_by_ranks"] == [0]
    assert list(two.paths) == list(one.paths) and two.labels.tolist() == one.labels.tolist()
    torch.testing.assert_close(
        torch.from_numpy(two.vectors[:]), torch.from_numpy(one.vectors[:]), rtol=1e-4, atol=1e-5
    )


@pytest.mark.slow
def test_seeds_command_with_two_processes_and_a_logger(tmp_path: Path) -> None:
    """``visiontransfer seeds`` with ``--trainer.devices 2``: Lightning's launcher re-runs the command
    line for rank 1; fit (validation, confusion-matrix image in the log folder) and test per seed;
    rank-zero-only code must not call collectives (it hung here once), one summary is printed."""
    override = {
        "trainer": {
            "accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_epochs": 1,
            "enable_progress_bar": False, "default_root_dir": str(tmp_path),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}
            },
        },
        "data": {"init_args": {"num_workers": 0, "synthetic_size": 64}},
    }  # fmt: skip
    override_file = tmp_path / "seeds.yaml"
    override_file.write_text(yaml.safe_dump(override))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    config = CONFIGS / "transfer" / "quickstart_finetune.yaml"
    command = [sys.executable, "-m", "visiontransfer.cli", "seeds", "--seeds", "0", "1"]
    command += ["--config", str(config), "--config", str(override_file)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("| test/top1 |") == 1
    assert list(tmp_path.rglob("val_confusion_epoch000.png"))
