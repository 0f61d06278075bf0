"""The resumable training order: per-rank split, seeds, and resuming mid-epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiontransfer.data.datasets import SyntheticDataset, collate_samples
from visiontransfer.data.sampling import ResumableLoader, ResumableSampler
from visiontransfer.data.transforms import train_transform


def _indices(batches: list[dict[str, torch.Tensor]]) -> list[int]:
    return [int(i) for b in batches for i in b["index"]]


def test_ranks_partition_the_epoch_and_seeds_do_not_depend_on_ranks() -> None:
    data = list(range(10))
    one = list(ResumableSampler(data, seed=3))
    two = [list(ResumableSampler(data, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    assert sorted(i for i, _ in one) == data
    assert sorted(i for part in two for i, _ in part) == data  # 10 = 2 × 5: no padding
    seed_of = dict(one)
    assert all(seed_of[i] == s for part in two for i, s in part)


def test_epochs_differ_and_repeat_under_the_same_seed() -> None:
    sampler = ResumableSampler(list(range(50)), seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert first != second
    again = ResumableSampler(list(range(50)), seed=0)
    again.set_epoch(1)
    assert list(again) == second


def test_padding_and_drop_last_match_distributed_sampler_sizes() -> None:
    data = list(range(7))
    padded = [list(ResumableSampler(data, num_replicas=2, rank=r)) for r in range(2)]
    assert [len(p) for p in padded] == [4, 4]
    cut = [list(ResumableSampler(data, num_replicas=2, rank=r, drop_last=True)) for r in range(2)]
    assert [len(p) for p in cut] == [3, 3]


def test_loader_resumes_mid_epoch_with_the_same_batches_and_augmentations() -> None:
    dataset = SyntheticDataset(np.arange(40), train_transform(32), image_size=32)

    def loader() -> ResumableLoader:
        return ResumableLoader(dataset, ResumableSampler(dataset, seed=1), batch_size=8, drop_last=True)

    full = loader()
    full.resumable_sampler.set_epoch(2)
    reference = list(full)
    interrupted = loader()
    interrupted.resumable_sampler.set_epoch(2)
    iterator = iter(interrupted)
    seen = [next(iterator), next(iterator)]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches_done": 2}
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert _indices(seen + rest) == _indices(reference)
    for got, want in zip(seen + rest, reference, strict=True):
        assert torch.equal(got["image"], want["image"])  # per-sample seeds: same crops and flips
    assert resumed.state_dict() == {"epoch": 2, "batches_done": 5}


def test_a_finished_epoch_resumes_with_the_next_one() -> None:
    data = SyntheticDataset(np.arange(16), train_transform(32), image_size=32)
    loader = ResumableLoader(data, ResumableSampler(data), batch_size=4, collate_fn=collate_samples)
    loader.load_state_dict({"epoch": 0, "batches_done": 4})
    assert loader.resumable_sampler.epoch == 1
    assert len(list(loader)) == 4


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentations_do_not_depend_on_the_number_of_workers(workers: int) -> None:
    dataset = SyntheticDataset(np.arange(16), train_transform(32), image_size=32)
    sampler = ResumableSampler(dataset, seed=5)
    batches = list(ResumableLoader(dataset, sampler, 4, num_workers=workers, collate_fn=collate_samples))
    single = list(ResumableLoader(dataset, ResumableSampler(dataset, seed=5), 4, collate_fn=collate_samples))
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(batches, single, strict=True))


def test_datamodule_carries_the_position_and_ends_limited_epochs() -> None:
    from types import SimpleNamespace

    from visiontransfer.data import PretrainDataModule

    dm = PretrainDataModule(image_size=32, batch_size=8, synthetic_size=64, num_workers=0)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, num_training_batches=2)  # type: ignore[assignment]
    loader = dm.train_dataloader()
    iterator = iter(loader)
    next(iterator)
    assert dm.state_dict()["train_loader"] == {"epoch": 0, "batches_done": 1}
    next(iterator)  # --trainer.limit_train_batches=2: Lightning ends the epoch here
    assert dm.state_dict()["train_loader"] == {"epoch": 0, "batches_done": 8}
    assert dm.state_dict()["data"]["images"]["train"] == 64  # the description for model cards
    fresh = PretrainDataModule(image_size=32, batch_size=8, synthetic_size=64, num_workers=0)
    fresh.setup("fit")
    fresh.load_state_dict(dm.state_dict())  # before the loader exists: applied when it is built
    assert fresh.train_dataloader().resumable_sampler.epoch == 1  # type: ignore[attr-defined]
