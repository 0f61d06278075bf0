"""Hand a module the first training batches when fitting starts, to measure data statistics from.

Colorization (Zhang et al. 2016, §2.2) rebalances its loss by the empirical colour distribution
of the training images. The module does not pull a loader itself: :class:`DataStatistics` (which
:class:`~visiontransfer.pretext.Colorization` adds through ``configure_callbacks``) takes the
first ``batches`` batches of the fit's own training data and gives them to the module's
``measure_from_batches``, once, unless the module says it already knows its statistics (a resumed
run restores them from the checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import lightning as L


@runtime_checkable
class MeasuresData(Protocol):
    """A module that measures statistics from training batches."""

    @property
    def statistics_ready(self) -> bool:
        """Whether the statistics are known (restored from a checkpoint, or measured)."""
        ...

    def measure_from_batches(self, batches: Iterable[Any]) -> None:
        """Measure the statistics from ``batches`` (collective under DDP: every rank calls it)."""
        ...


def first_batches(trainer: L.Trainer, count: int) -> Iterator[Any]:
    """The first ``count`` batches of the fit's training data (a datamodule's or plain loaders),
    from a loader of their own (the fit's loader is not built yet when fitting starts)."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        loader = datamodule.train_dataloader()
    else:  # trainer.fit(model, train_dataloaders=...): no public accessor before the loop runs
        loader = trainer.fit_loop._data_source.dataloader()
    for i, batch in enumerate(loader):
        if i >= count:
            break
        yield batch


class DataStatistics(L.Callback):
    """Give the module the first ``batches`` training batches when fitting starts (see the module
    docstring); a module that needs nothing measured is left alone.

    Args:
        batches: Training batches to measure on.
    """

    def __init__(self, batches: int = 50) -> None:
        if batches < 1:
            raise ValueError(f"DataStatistics batches={batches} must be >= 1")
        self.batches = batches

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(pl_module, MeasuresData) and not pl_module.statistics_ready:
            pl_module.measure_from_batches(first_batches(trainer, self.batches))
