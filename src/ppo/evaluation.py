"""Evaluation on fresh episodes, with normalization statistics frozen, and video recording."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from ppo.envs import env_spec
from ppo.extras import require

if TYPE_CHECKING:
    from ppo.trainer import PPO


def evaluate(agent: PPO, episodes: int, deterministic: bool, seed: int) -> np.ndarray:
    """Undiscounted returns of `episodes` full episodes in a separate env."""
    env = gym.make(env_spec(agent.config.env_id))
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(agent.predict(obs, deterministic))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return np.asarray(returns)


def record_video(agent: PPO, path: Path, deterministic: bool, seed: int) -> Path:
    """One episode rendered to an .mp4 (imageio's bundled ffmpeg: the video extra)."""
    require("video", "recording a video")
    import imageio.v2 as imageio

    env = gym.make(env_spec(agent.config.env_id), render_mode="rgb_array")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fps = env.metadata.get("render_fps", 30)
    try:
        with imageio.get_writer(path, fps=fps, macro_block_size=1) as writer:
            obs, _ = env.reset(seed=seed)
            done = False
            while not done:
                writer.append_data(env.render())
                obs, _, terminated, truncated, _ = env.step(agent.predict(obs, deterministic))
                done = terminated or truncated
            writer.append_data(env.render())
    finally:
        env.close()
    return path
