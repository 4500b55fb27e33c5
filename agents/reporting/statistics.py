"""Means with 95% t-intervals, and the interquartile mean with a stratified-bootstrap interval."""
from __future__ import annotations

import math
from typing import Sequence

# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t975(dof: int) -> float:
    return _T975[dof - 1] if 1 <= dof <= len(_T975) else 1.96


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% interval); half-width is nan for a single value."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n == 1:
        return m, float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, t975(n - 1) * sd / math.sqrt(n)


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle half (scipy's 25%-trimmed mean), robust to the
    one instance whose scale dwarfs the others."""
    from scipy.stats import trim_mean

    return float(trim_mean(list(values), 0.25)) if len(values) else float("nan")


def stratified_bootstrap_iqm(per_instance: dict[str, Sequence[float]], reps: int = 5000,
                             seed: int = 0) -> tuple[float, float, float]:
    """(IQM, low, high): IQM over every instance's runs, with a 95% percentile interval from a
    stratified bootstrap that resamples runs within each instance (rliable's convention: runs of one
    instance are exchangeable, instances are fixed)."""
    import numpy as np

    groups = [np.asarray(v, dtype=float) for v in per_instance.values() if len(v)]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    point = iqm(np.concatenate(groups))
    rng = np.random.default_rng(seed)
    stats = [iqm(np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])) for _ in range(reps)]
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, float(lo), float(hi)
