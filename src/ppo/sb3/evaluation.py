"""Stable-Baselines3's evaluate_policy, for any model with SB3's predict()."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from ppo.sb3.vec_env import DummyVecEnv


def evaluate_policy(model: Any, env: Any, n_eval_episodes: int = 10, deterministic: bool = True,
                    render: bool = False,
                    callback: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
                    reward_threshold: float | None = None, return_episode_rewards: bool = False,
                    warn: bool = True) -> tuple[float, float] | tuple[list[float], list[int]]:
    """Run `n_eval_episodes` episodes (spread evenly over a VecEnv's envs, each env
    contributing (n_eval_episodes + i) // n_envs of them, so that short episodes do not
    crowd out long ones) and return the mean and std of their returns, or the lists of
    returns and lengths. A return is info["episode"]["r"] where the env records its episodes
    (Monitor, RecordEpisodeStatistics: the env's own rewards, before reward-changing
    wrappers), else the sum of the rewards seen. `callback(locals, globals)` runs after every
    step; `reward_threshold` raises AssertionError when the mean falls short. `warn` is
    accepted for SB3's signature."""
    if isinstance(env, gym.Env):
        env = DummyVecEnv([lambda: env])
    n_envs = env.num_envs
    targets = np.array([(n_eval_episodes + i) // n_envs for i in range(n_envs)])
    counts = np.zeros(n_envs, int)
    returns = np.zeros(n_envs)
    lengths = np.zeros(n_envs, int)
    episode_rewards: list[float] = []
    episode_lengths: list[int] = []
    observations = env.reset()
    states = None
    episode_starts = np.ones(n_envs, bool)
    while (counts < targets).any():
        actions, states = model.predict(observations, state=states,
                                        episode_start=episode_starts,
                                        deterministic=deterministic)
        observations, rewards, dones, infos = env.step(actions)
        returns += rewards
        lengths += 1
        for i in range(n_envs):
            if counts[i] >= targets[i]:
                continue
            episode_starts[i] = dones[i]
            if callback is not None:
                callback(locals(), globals())
            if dones[i]:
                recorded = infos[i].get("episode")
                episode_rewards.append(float(recorded["r"]) if recorded else float(returns[i]))
                episode_lengths.append(int(recorded["l"]) if recorded else int(lengths[i]))
                counts[i] += 1
                returns[i], lengths[i] = 0.0, 0
        if render:
            env.render()
    mean, std = float(np.mean(episode_rewards)), float(np.std(episode_rewards))
    if reward_threshold is not None:
        assert mean > reward_threshold, (
            f"mean reward {mean:.2f} is below the threshold {reward_threshold:.2f}")
    if return_episode_rewards:
        return episode_rewards, episode_lengths
    return mean, std
