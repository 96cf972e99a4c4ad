"""Evaluation on fresh episodes, with normalization statistics frozen, and video recording."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from ppo.envs import make_env

if TYPE_CHECKING:
    from ppo.agent import PPO


def _mask(env: gym.Env, info: dict[str, Any]) -> Any:
    """The env's valid actions where it says (sb3-contrib's `action_masks()`, or
    `info["action_mask"]`); None otherwise."""
    if env.has_wrapper_attr("action_masks"):
        return env.get_wrapper_attr("action_masks")()
    return info.get("action_mask")


def run_episode(agent: PPO, env: gym.Env, deterministic: bool, seed: int,
                on_step: Any = None) -> float:
    """The undiscounted return of one episode; `on_step(env)` is called before each step."""
    obs, info = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        if on_step is not None:
            on_step(env)
        action, _ = agent.predict(obs, deterministic=deterministic,
                                  action_masks=_mask(env, info))
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        done = terminated or truncated
    return total


def evaluate(agent: PPO, episodes: int, deterministic: bool, seed: int) -> np.ndarray:
    """Undiscounted returns of `episodes` full episodes in a separate env."""
    env = make_env(agent.config)
    try:
        return np.asarray([run_episode(agent, env, deterministic, seed + episode)
                           for episode in range(episodes)])
    finally:
        env.close()


def record_video(agent: PPO, path: Path, deterministic: bool, seed: int) -> Path:
    """One episode rendered to an .mp4 (imageio's bundled ffmpeg)."""
    import imageio.v2 as imageio

    env = make_env(agent.config, render_mode="rgb_array")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fps = env.metadata.get("render_fps", 30)
    try:
        with imageio.get_writer(path, fps=fps, macro_block_size=1) as writer:
            run_episode(agent, env, deterministic, seed,
                        on_step=lambda e: writer.append_data(e.render()))
            writer.append_data(env.render())
    finally:
        env.close()
    return path
