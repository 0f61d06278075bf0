"""Training order that survives a kill: a seeded, per-rank sampler and a DataLoader with state.

Lightning restores model, optimizer and loop counters from a checkpoint, but a plain DataLoader
starts its epoch again from the first batch (and Lightning re-creates the iterator with the
sampler's epoch still at 0). :class:`ResumableLoader` implements Lightning's ``state_dict`` /
``load_state_dict`` protocol for data loaders, so a run resumed from a mid-epoch checkpoint
sees exactly the batches the interrupted run had not seen yet, in the same order.

Each sample also carries its own augmentation seed, drawn from ``(seed, epoch, index)``: what
an image looks like in an epoch does not depend on the number of workers or processes, or on
where a run was resumed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence, Sized
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

SeededIndex = tuple[int, int]
"""What :class:`ResumableSampler` yields: ``(dataset index, augmentation seed)``."""


def resume_position(state: dict[str, int], batches_per_epoch: int) -> tuple[int, int]:
    """``(epoch, batches done in it)`` to continue from a loader's saved state: the next epoch from
    its start when the saved one was complete."""
    epoch, done = int(state["epoch"]), int(state["batches_done"])
    return (epoch + 1, 0) if done >= batches_per_epoch else (epoch, done)


class ResumableSampler(DistributedSampler):  # type: ignore[type-arg]
    """A seeded shuffle of the dataset, split across ranks, that can start mid-epoch.

    A subclass of ``DistributedSampler`` so that Lightning keeps it under DDP instead of wrapping
    it: each of ``num_replicas`` ranks takes every ``num_replicas``-th sample of the epoch's
    permutation (padded by repetition, or cut with ``drop_last``, to a multiple of the ranks).

    Args:
        dataset: The dataset (only its length is used).
        num_replicas: Number of processes sharing the epoch (Lightning's ``trainer.world_size``).
        rank: This process's rank (``trainer.global_rank``).
        shuffle: Permute the samples each epoch (else dataset order).
        seed: Seed of the permutations and of the per-sample augmentation seeds.
        drop_last: Cut the epoch to a multiple of the ranks instead of padding it.
        group_ids: Group of every dataset index (e.g. landscape / portrait). When given, the epoch
            is arranged so that every batch of ``batch_size`` on every rank holds one group (the
            leftovers of all groups form the last, mixed batches): less padding in batches of
            images of different shapes.
        batch_size: Batch size per rank; needed with ``group_ids``.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        group_ids: Sequence[int] | None = None,
        batch_size: int = 1,
    ) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.start = 0
        """Samples of this rank's share to skip at the next ``__iter__`` (then reset to 0)."""
        if group_ids is not None and len(group_ids) != len(dataset):
            raise ValueError(f"{len(group_ids)} group ids for a dataset of {len(dataset)}")
        self.group_ids = None if group_ids is None else list(group_ids)
        self.batch_size = batch_size

    def _grouped(self, order: np.ndarray) -> np.ndarray:
        """``order`` rearranged into runs of ``batch_size × ranks`` same-group indices, taken in
        order of completion; each rank's stride through a run is one single-group batch."""
        assert self.group_ids is not None
        run = self.batch_size * self.num_replicas
        buckets: dict[int, list[int]] = defaultdict(list)
        arranged: list[int] = []
        for index in order:
            bucket = buckets[self.group_ids[index]]
            bucket.append(int(index))
            if len(bucket) == run:
                arranged += bucket
                bucket.clear()
        leftovers = [i for group in sorted(buckets) for i in buckets[group]]
        return np.asarray(arranged + leftovers, dtype=np.int64)

    def epoch_order(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's dataset indices for the current epoch, and the seed of every dataset index."""
        n = len(self.dataset)  # type: ignore[arg-type]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        seeds = rng.integers(0, 2**31 - 1, size=n)  # by dataset index: independent of the ranks
        if self.group_ids is not None:
            order = self._grouped(order)
        if self.drop_last:
            order = order[: self.total_size]
        elif self.total_size > n:
            order = np.concatenate([order, np.resize(order, self.total_size - n)])
        return order[self.rank : self.total_size : self.num_replicas], seeds

    def __iter__(self) -> Iterator[SeededIndex]:  # type: ignore[override]
        mine, seeds = self.epoch_order()
        start, self.start = self.start, 0
        for index in mine[start:]:
            yield int(index), int(seeds[index])


class ResumableLoader(DataLoader):  # type: ignore[type-arg]
    """A DataLoader over a :class:`ResumableSampler` whose position is saved in checkpoints.

    ``state_dict`` records the epoch and how many batches of it were handed out; Lightning saves
    it with the loop state and calls ``load_state_dict`` before iterating again. Batches are
    counted as they are yielded, which matches the batches trained on because Lightning does
    not prefetch from loaders of known length.
    """

    def __init__(self, dataset: Any, sampler: ResumableSampler, batch_size: int, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.resumable_sampler = sampler
        self._batches_done = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        skipped = self.resumable_sampler.start // self.batch_size  # type: ignore[operator]
        self._batches_done = skipped
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Position in the training order: epoch and batches done in it."""
        return {"epoch": int(self.resumable_sampler.epoch), "batches_done": self._batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after the last batch done (or with the next epoch, if the epoch was complete)."""
        epoch, done = resume_position(state, len(self))
        self.resumable_sampler.set_epoch(epoch)
        self.resumable_sampler.start = done * self.batch_size  # type: ignore[operator]
