"""Running statistics for observation normalization and reward scaling.

Kept here rather than in Gymnasium's wrappers because those leave `final_obs` unnormalized,
and the bootstrap value of a truncated episode must see the same inputs as every other value.
"""

from __future__ import annotations

import numpy as np

from ppo.spaces import Obs, vector_part, with_vector


class RunningMeanStd:
    """Mean and variance of a stream of batches (parallel algorithm of Chan et al.)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, batch: np.ndarray) -> None:
        batch_mean, batch_var, n = batch.mean(0), batch.var(0), batch.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var, self.count = m2 / total, total

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "var": self.var, "count": np.array(self.count)}

    def load(self, state: dict[str, np.ndarray]) -> None:
        self.mean, self.var = np.asarray(state["mean"]), np.asarray(state["var"])
        self.count = float(state["count"])


class ObsNormalizer:
    """(obs - mean) / std, clipped, on the columns where it makes sense (not one-hot or binary
    ones, nor images); `stats.update` is called only on training data, with the vector parts."""

    def __init__(self, columns: np.ndarray, clip: float) -> None:
        self.stats, self.clip = RunningMeanStd((len(columns),)), clip
        self.columns = None if columns.all() else columns

    def __call__(self, obs: Obs) -> Obs:
        if isinstance(obs, dict):
            return with_vector(obs, self._scale(vector_part(obs)))
        return self._scale(obs)

    def _scale(self, obs: np.ndarray) -> np.ndarray:
        scaled = (obs - self.stats.mean) / np.sqrt(self.stats.var + 1e-8)
        scaled = np.clip(scaled, -self.clip, self.clip).astype(np.float32)
        return scaled if self.columns is None else np.where(self.columns, scaled, obs)


class RewardScaler:
    """Divide rewards by the running std of the discounted return (Engstrom et al. 2020)."""

    def __init__(self, num_envs: int, gamma: float, clip: float) -> None:
        self.stats, self.gamma, self.clip = RunningMeanStd(), gamma, clip
        self.discounted_return = np.zeros(num_envs, np.float64)

    def __call__(self, rewards: np.ndarray, episode_end: np.ndarray,
                 valid: np.ndarray | None = None) -> np.ndarray:
        """valid masks out next-step reset steps, which are not part of any episode."""
        self.discounted_return = self.discounted_return * self.gamma + rewards
        counted = self.discounted_return if valid is None else self.discounted_return[valid]
        if len(counted):
            self.stats.update(counted)
        scaled = rewards / np.sqrt(self.stats.var + 1e-8)
        self.discounted_return[episode_end] = 0.0
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)
