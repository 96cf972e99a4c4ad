"""Generalized Advantage Estimation (Schulman et al. 2016) as one reverse scan over (T, N),
and the preparation of a rollout into the batch a learner trains on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ppo.config import Config
from ppo.spaces import Obs, obs_concat, obs_flatten, obs_take

if TYPE_CHECKING:
    from ppo.distributed import Replicas
    from ppo.rollout import Rollout, Sequences


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


@dataclass(frozen=True)
class GaeInputs:
    """What GAE needs from a rollout, kept so that targets can be computed again from other
    values (the advantages_per_epoch ablation)."""

    obs: Obs  # (T * N, ...): every step's observation
    successors: Obs  # (N + F, ...): s_T of each env, then the F final observations
    rewards: np.ndarray  # (T, N)
    terminated: np.ndarray  # (T, N)
    episode_end: np.ndarray  # (T, N)
    final_steps: tuple[np.ndarray, np.ndarray]  # (t, n) of the F final observations
    keep: np.ndarray  # flat indices of the steps trained on


@dataclass(frozen=True)
class Batch:
    """The transitions a learner trains on, with what was frozen at collection (pi_old's
    log-probs, the values) and the GAE targets."""

    obs: Obs
    actions: np.ndarray
    masks: np.ndarray | None  # valid actions of masked categorical heads
    logp_old: np.ndarray
    values: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    explained_variance: float
    gae_inputs: GaeInputs
    sequences: Sequences | None = None  # recurrent policies: every step is kept, (T, N) order


def prepare_batch(rollout: Rollout, evaluate: Callable, values: Callable, cfg: Config,
                  replicas: Replicas | None = None) -> Batch:
    """pi_old's log-probs and V(s) for the whole rollout in one pass (or as the policy
    recorded them while acting), V of the successor states for the bootstraps, then GAE
    once, before any epoch."""
    steps, n = rollout.rewards.shape
    obs = obs_flatten(rollout.obs, 2)
    actions = rollout.actions.reshape(steps * n, -1)
    masks = None if rollout.masks is None else rollout.masks.reshape(steps * n, -1)
    keep = np.flatnonzero(rollout.valid.reshape(-1))
    if replicas is not None:
        # Every rank must take as many minibatch steps: all train on the shortest batch.
        keep = keep[: replicas.min(len(keep))]
    if rollout.logp is not None:
        logp_old, value = rollout.logp.reshape(-1), rollout.values.reshape(-1)
    else:
        logp_old, value = evaluate(obs, actions, masks)
    inputs = GaeInputs(obs, obs_concat([rollout.last_obs, rollout.final_obs]),
                       rollout.rewards, rollout.terminated, rollout.episode_end,
                       rollout.final_steps, keep)
    successor_values = (values(inputs.successors) if rollout.successor_values is None
                        else rollout.successor_values)
    advantages, returns, explained = targets(inputs, value, successor_values, cfg, replicas)
    return Batch(obs_take(obs, keep), actions[keep], None if masks is None else masks[keep],
                 logp_old[keep], value[keep], advantages, returns, explained, inputs,
                 rollout.sequences)


def targets(inputs: GaeInputs, values: np.ndarray, successor_values: np.ndarray, cfg: Config,
            replicas: Replicas | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Advantages (normalized per batch if configured) and returns of the kept steps, and the
    critic's explained variance."""
    steps, n = inputs.rewards.shape
    values = values.reshape(steps, n)
    next_values = np.empty_like(values)
    next_values[:-1] = values[1:]
    next_values[-1] = successor_values[:n]
    next_values[inputs.final_steps] = successor_values[n:]
    advantages, returns = gae(inputs.rewards, values, next_values, inputs.terminated,
                              inputs.episode_end, cfg.gamma, cfg.gae_lambda)
    keep = inputs.keep
    advantages, returns = advantages.reshape(-1)[keep], returns.reshape(-1)[keep]
    explained = explained_variance(values.reshape(-1)[keep], returns)
    if cfg.norm_adv == "batch":
        mean, std = (advantages.mean(), advantages.std(ddof=1)) if replicas is None else (
            replicas.mean_std(advantages))
        advantages = (advantages - mean) / (std + 1e-8)
    return advantages, returns, explained


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """1 - Var(R - V) / Var(R): 1 is a perfect critic, 0 no better than a constant."""
    var = returns.var()
    return float("nan") if var == 0 else float(1.0 - (returns - values).var() / var)
