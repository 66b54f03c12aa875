"""Summaries over seeds: mean with a 95% t-interval, and paired tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Return the mean and the two ends of a Student-t confidence interval of the mean.

    With fewer than two finite values the interval collapses to the mean.

    Example:
        >>> mean, low, high = mean_interval([1.0, 2.0, 3.0])
        >>> mean, round(low, 3), round(high, 3)
        (2.0, -0.484, 4.484)
    """
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def summarise(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Return mean, interval ends and seed count of ``value`` for every group of ``by``."""
    rows = []
    for key, group in frame.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, low, high = mean_interval(group[value].tolist())
        rows.append({**dict(zip(by, key)), "mean": mean, "low": low, "high": high, "n": int(group[value].notna().sum())})
    return pd.DataFrame(rows)


def paired_test(first, second) -> tuple[float, float]:
    """Return the mean difference ``first - second`` and the two-sided paired t-test p-value.

    The p-value is NaN with fewer than two pairs or identical differences.

    Example:
        >>> difference, p = paired_test([0.9, 0.8, 0.85], [0.8, 0.7, 0.8])
        >>> round(difference, 3), p < 0.1
        (0.083, True)
    """
    first = np.asarray(first, dtype=float)
    second = np.asarray(second, dtype=float)
    if first.shape != second.shape:
        raise ValueError(f"paired samples need equal lengths, got {len(first)} and {len(second)}")
    difference = float(np.mean(first - second)) if len(first) else math.nan
    if len(first) < 2 or np.allclose(first - second, (first - second)[0]):
        return difference, math.nan
    return difference, float(stats.ttest_rel(first, second).pvalue)


def format_number(value: float, digits: int = 3) -> str:
    """Format a number for a sentence: fixed point in [1e-3, 1e4), else scientific.

    Example:
        >>> format_number(0.12345), format_number(123456.0), format_number(float("nan"))
        ('0.123', '1.23e+05', 'n/a')
    """
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and not 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
