"""Statistics over a few runs, as Agarwal et al. (2021), "Deep Reinforcement Learning at the
Edge of the Statistical Precipice", recommend: the interquartile mean (IQM) with a 95%
stratified-bootstrap confidence interval, and performance profiles.

Scores are one number per run (e.g. the final return), as an array of runs, or of
runs x tasks when several tasks are aggregated (the bootstrap then resamples each task's runs
on their own: the strata).

Written here rather than taken from `rliable`, the paper's library: rliable 1.2.0 brings about
320 MB of dependencies (arch, statsmodels, pandas, scipy, seaborn) for these few lines of
NumPy, and with pandas 3 it fails to import (arch calls a pandas helper whose signature
changed). The definitions follow rliable's: IQM is scipy's `trim_mean(x, 0.25)` over all
scores, the interval is the percentile bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

BOOTSTRAP_REPS = 2000


class Estimate(NamedTuple):
    """A point estimate and its confidence interval."""

    value: float
    low: float
    high: float

    def format(self) -> str:
        from ppo.console import figure

        return f"{figure(self.value)} [{figure(self.low)}, {figure(self.high)}]"


def _runs_by_tasks(scores: ArrayLike) -> np.ndarray:
    x = np.asarray(scores, dtype=float)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"scores must be a non-empty array of runs (x tasks), got shape "
                         f"{np.shape(scores)}")
    if not np.isfinite(x).all():
        raise ValueError("scores must be finite")
    return x


def iqm(scores: ArrayLike) -> float:
    """Interquartile mean: the mean of the middle half of all scores, after dropping the
    lowest and highest quarter (n // 4 scores each; all of them for fewer than 4)."""
    x = np.sort(_runs_by_tasks(scores).ravel())
    cut = len(x) // 4
    return float(x[cut:len(x) - cut].mean())


def performance_profile(scores: ArrayLike, taus: ArrayLike) -> np.ndarray:
    """For each threshold tau, the fraction of runs scoring above it (averaged over tasks):
    the empirical tail distribution, non-increasing in tau."""
    x = _runs_by_tasks(scores)
    above = x[None, :, :] > np.asarray(taus, dtype=float)[:, None, None]
    return above.mean(axis=(1, 2))


def stratified_bootstrap(scores: ArrayLike, statistic: Callable[[np.ndarray], ArrayLike],
                         confidence: float = 0.95, reps: int = BOOTSTRAP_REPS,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile confidence interval (low, high) of `statistic` over resamples in which each
    task's runs are drawn with replacement, that task's run count at a time."""
    x = _runs_by_tasks(scores)
    runs, tasks = x.shape
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, runs, size=(reps, runs, tasks)), np.arange(tasks)]
    values = np.array([statistic(sample) for sample in samples])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail], axis=0)
    return low, high


def iqm_estimate(scores: ArrayLike, confidence: float = 0.95, reps: int = BOOTSTRAP_REPS,
                 seed: int = 0) -> Estimate:
    """IQM of the scores with its stratified-bootstrap confidence interval."""
    low, high = stratified_bootstrap(scores, iqm, confidence, reps, seed)
    return Estimate(iqm(scores), float(low), float(high))
