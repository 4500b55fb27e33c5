"""Means with 95% t-intervals (scipy's Student t), and the interquartile mean with a
stratified-bootstrap interval (rliable's convention; rliable 1.2.0 itself does not import beside
pandas 3, so the two pieces are written here on scipy and numpy)."""
from __future__ import annotations

import math
from typing import Sequence


def t975(dof: int) -> float:
    """The two-sided 95% quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


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
    from scipy.stats import trim_mean

    point = iqm(np.concatenate(groups))
    rng = np.random.default_rng(seed)
    # the resamples drawn one by one (the stream a loop would use), their IQMs in one vectorised call
    resamples = np.stack([np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups]) for _ in range(reps)])
    stats = trim_mean(resamples, 0.25, axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, float(lo), float(hi)


def instance_bootstrap_iqm(per_instance: dict[str, float], reps: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """(IQM, low, high) over instances, one value each (an instance's seed-averaged figure), with a
    95% percentile interval from resampling the instances: the interval covers the choice of
    instances, which is what varies when there is one seed, or one figure, per instance."""
    import numpy as np
    from scipy.stats import trim_mean

    values = np.asarray([v for v in per_instance.values() if v is not None and math.isfinite(v)], dtype=float)
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = trim_mean(values[rng.integers(0, len(values), (reps, len(values)))], 0.25, axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return iqm(values), float(lo), float(hi)


HIERARCHICAL_METHOD = ("mean over instances of each instance's mean; 95% percentile interval from {reps} "
                       "two-level bootstrap resamples: instances with replacement, then seeds with "
                       "replacement within each drawn instance (seeds sharing an instance are not "
                       "treated as independent)")


def hierarchical_bootstrap_mean(per_instance: dict[str, Sequence[float]], reps: int = 10000,
                                seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of the instance-level mean: each instance weighs the same however many
    seeds it has, and the interval covers both the choice of instances and the seeds within them."""
    import numpy as np

    groups = [np.asarray(v, dtype=float) for v in per_instance.values() if len(v)]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    point = float(np.mean([g.mean() for g in groups]))
    if len(groups) == 1 and len(groups[0]) == 1:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(groups), size=(reps, len(groups)))
    stats = np.empty(reps)
    for r in range(reps):
        stats[r] = np.mean([groups[i][rng.integers(0, len(groups[i]), len(groups[i]))].mean() for i in picks[r]])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, float(lo), float(hi)


def instance_level_intervals(per_instance: dict[str, Sequence[float]], reps: int = 10000) -> dict[str, float]:
    """The mean over instances with two 95% intervals: a two-level bootstrap (instances, then seeds
    within them) and, because a percentile bootstrap over few instances runs narrow, a Student t
    interval over the instance means. A difference is clear only where both exclude 0."""
    mean, lo, hi = hierarchical_bootstrap_mean(per_instance, reps=reps)
    t_mean, t_half = mean_ci95([sum(v) / len(v) for v in per_instance.values()])
    return {"mean": mean, "ci95_low": lo, "ci95_high": hi, "t95_low": t_mean - t_half, "t95_high": t_mean + t_half}


def sign_by_both_intervals(lo: float, hi: float, t_lo: float, t_hi: float) -> int:
    """The project's one rule for a paired difference (method A − method B): -1 when the bootstrap
    and the t interval both lie below 0, +1 when both lie above, 0 when they disagree or one is
    missing. A percentile bootstrap over few instances runs narrow, so neither decides alone."""
    if not all(math.isfinite(x) for x in (lo, hi, t_lo, t_hi)):
        return 0
    if hi < 0 and t_hi < 0:
        return -1
    if lo > 0 and t_lo > 0:
        return 1
    return 0


def probability_of_improvement(a: dict[str, Sequence[float]], b: dict[str, Sequence[float]], reps: int = 2000,
                               seed: int = 0) -> tuple[float, float, float]:
    """rliable's probability of improvement (Agarwal et al. 2021), for losses: the chance that a run
    of A ends lower than a run of B on the same instance, averaged over the instances both ran (per
    instance the Mann-Whitney statistic over every pair of their runs, ties counting half). The 95%
    interval comes from a stratified bootstrap, as rliable's: each instance's runs resampled within
    it; the instances held fixed."""
    import numpy as np

    names = sorted(set(a) & set(b))
    if not names:
        return math.nan, math.nan, math.nan
    xs = [np.asarray(a[n], dtype=np.float64) for n in names]
    ys = [np.asarray(b[n], dtype=np.float64) for n in names]

    def poi(xs_, ys_) -> float:
        return float(np.mean([np.mean((x[:, None] < y[None, :]) + 0.5 * (x[:, None] == y[None, :]))
                              for x, y in zip(xs_, ys_)]))

    rng = np.random.default_rng(seed)
    boots = [poi([x[rng.integers(len(x), size=len(x))] for x in xs], [y[rng.integers(len(y), size=len(y))] for y in ys])
             for _ in range(reps)]
    return poi(xs, ys), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def performance_profile(scores: Sequence[float], taus: Sequence[float]) -> list[float]:
    """rliable's performance profile: for each threshold tau, the share of runs whose score is
    above it (scores pooled over instances x seeds, higher is better)."""
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    return [float(np.mean(s > t)) if len(s) else math.nan for t in taus]
