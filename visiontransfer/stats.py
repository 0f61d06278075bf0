"""Mean ± standard deviation over seeds: the one summary that ``visiontransfer seeds`` and
``visiontransfer report`` (and their tables) use."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (0 for a single value) of ``n`` values."""

    mean: float
    std: float
    n: int

    def format(self, digits: int = 3) -> str:
        """``0.553 ± 0.012``."""
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def mean_std(values: Sequence[float]) -> MeanStd:
    """:class:`MeanStd` of ``values``; a NaN or infinite value (the IoU of a class absent from
    both truth and prediction) makes the std NaN, and the mean NaN or infinite, instead of an error.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("values is empty: nothing to summarise")
    if not all(math.isfinite(v) for v in values):  # statistics.stdev fails on them
        return MeanStd(sum(values) / len(values), math.nan, len(values))
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return MeanStd(statistics.fmean(values), std, len(values))
