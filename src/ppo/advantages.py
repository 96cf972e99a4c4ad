"""Generalized Advantage Estimation (Schulman et al. 2016): one reverse scan over (T, N)."""

from __future__ import annotations

import numpy as np


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    episode_end: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns for a rollout, computed once, before any epoch.

    next_values[t] is V of the true successor of step t: the final observation where the
    episode ended at t, the bootstrap V(s_T) at the rollout's end. A termination drops the
    bootstrap; any episode end (termination or time-limit truncation) cuts the recursion.
    Returns (advantages, returns) with returns = advantages + values, as float32.
    """
    deltas = rewards + gamma * np.where(terminated, 0.0, next_values) - values
    carry = np.where(episode_end, 0.0, gamma * lam)
    advantages = np.empty_like(deltas)
    running = np.zeros(deltas.shape[1:], dtype=deltas.dtype)
    for t in range(deltas.shape[0] - 1, -1, -1):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages.astype(np.float32), (advantages + values).astype(np.float32)
