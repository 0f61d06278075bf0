"""``mean_std``, the one mean ± std of the seeds commands and reports, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from visiontransfer.stats import mean_std


def test_mean_and_sample_std_by_hand() -> None:
    summary = mean_std([0.30, 0.32, 0.34])
    assert summary.mean == pytest.approx(0.32) and summary.std == pytest.approx(0.02) and summary.n == 3
    assert summary.format() == "0.320 ± 0.020" and summary.format(1) == "0.3 ± 0.0"
    assert mean_std([0.5]) == mean_std([0.5]) and mean_std([0.5]).std == 0.0


def test_nan_values_give_nan_not_an_error() -> None:
    summary = mean_std([0.4, math.nan])  # e.g. the IoU of a class absent from a small test set
    assert math.isnan(summary.mean) and math.isnan(summary.std) and summary.n == 2
    assert summary.format() == "nan ± nan"


def test_empty_is_an_error_naming_the_parameter() -> None:
    with pytest.raises(ValueError, match="values is empty"):
        mean_std([])
