"""Generalized Advantage Estimation (Schulman et al. 2016), written as plainly as possible.

This is the oracle the fast engine (ppo.advantages) is tested against, so it trades speed for
obviousness: float64 throughout and one explicit reverse loop over time for each env.
"""

from __future__ import annotations

import numpy as np


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    episode_end: np.ndarray,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and value targets for a (T, N) rollout: T steps of N envs.

    values[t] is V(s_t) and next_values[t] is V of the true successor of step t (the final
    observation where the episode ended at t; the bootstrap V(s_T) at t = T-1).
    terminated[t] drops the bootstrap: a terminal state has no future.
    episode_end[t] (terminated or truncated) cuts the recursion: A_{t+1} belongs to another
    episode. A truncation therefore still bootstraps from next_values[t].

        delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t
        A_t     = delta_t + gamma * lam * (1 - episode_end_t) * A_{t+1},   A_T = 0

    Returns (advantages, returns) in float64, with returns = advantages + values.
    """
    arrays = {
        "rewards": rewards,
        "values": values,
        "next_values": next_values,
        "terminated": terminated,
        "episode_end": episode_end,
    }
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    if len(shapes["rewards"]) != 2 or len(set(shapes.values())) != 1:
        raise ValueError(f"gae expects five 2-D (T, N) arrays of one shape, got {shapes}")

    r = np.asarray(rewards, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    v_next = np.asarray(next_values, dtype=np.float64)
    term = np.asarray(terminated, dtype=bool)
    end = np.asarray(episode_end, dtype=bool)

    steps, num_envs = r.shape
    advantages = np.zeros((steps, num_envs), dtype=np.float64)
    for n in range(num_envs):
        next_advantage = 0.0  # A_T = 0: nothing is known beyond the rollout but the bootstrap
        for t in reversed(range(steps)):
            bootstrap = 0.0 if term[t, n] else gamma * v_next[t, n]
            delta = r[t, n] + bootstrap - v[t, n]
            carry = 0.0 if end[t, n] else gamma * lam * next_advantage
            advantages[t, n] = delta + carry
            next_advantage = advantages[t, n]
    return advantages, advantages + v
