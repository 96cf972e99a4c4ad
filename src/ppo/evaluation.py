"""Evaluation on fresh episodes, with normalization statistics frozen: after training,
during training (every `eval_every` updates), and recorded to video."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from ppo.envs import make_env
from ppo.extras import require

if TYPE_CHECKING:
    from ppo.agent import PPO


def _mask(env: gym.Env, info: dict[str, Any]) -> Any:
    """The env's valid actions where it says (sb3-contrib's `action_masks()`, or
    `info["action_mask"]`); None otherwise."""
    if env.has_wrapper_attr("action_masks"):
        return env.get_wrapper_attr("action_masks")()
    return info.get("action_mask")


def run_episode(agent: PPO, env: gym.Env, deterministic: bool, seed: int,
                on_step: Any = None, rng: np.random.Generator | None = None) -> float:
    """The undiscounted return of one episode; `on_step(env)` is called before each step;
    sampled actions draw from `rng` (default: the agent's own stream). A recurrent policy's
    state is carried from step to step. An env that reports its episodes itself
    (RecordEpisodeStatistics, as the Atari pipeline does below its life-loss wrapper) plays
    on through the training episodes it ends early, and its reported return counts: the
    whole game's score."""
    obs, info = env.reset(seed=seed)
    reports = env.has_wrapper_attr("return_queue")
    total, state, start = 0.0, None, True
    while True:
        if on_step is not None:
            on_step(env)
        action, state = agent.predict(obs, state, episode_start=[start],
                                      deterministic=deterministic,
                                      action_masks=_mask(env, info), rng=rng)
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        start = terminated or truncated
        if not start:
            continue
        if "episode" in info:
            return float(info["episode"]["r"])
        if not reports:
            return total
        obs, info = env.reset()  # a life lost: the game goes on


def evaluate(agent: PPO, episodes: int, deterministic: bool, seed: int) -> np.ndarray:
    """Undiscounted returns of `episodes` full episodes in a separate env."""
    env = make_env(agent.config)
    try:
        return np.asarray([run_episode(agent, env, deterministic, seed + episode)
                           for episode in range(episodes)])
    finally:
        env.close()


class Evaluator:
    """Evaluation during training: `episodes` episodes on an env of its own, every `every`
    updates. Episode seeds and sampling noise come from streams apart from training's, so
    evaluating changes nothing in training (a resumed run stays exact)."""

    def __init__(self, make: Callable[[], gym.Env], every: int, episodes: int,
                 deterministic: bool, seed: int, best: float = -math.inf) -> None:
        self.make, self.every, self.episodes = make, every, episodes
        self.deterministic, self.seed, self.best = deterministic, seed, best
        self.env: gym.Env | None = None

    def due(self, update: int) -> bool:
        return update % self.every == 0

    def run(self, agent: PPO) -> dict[str, float]:
        """eval_return and eval_return_std of this evaluation, and its duration."""
        start = time.perf_counter()
        if self.env is None:
            self.env = self.make()
        rng = np.random.default_rng([self.seed, 4, agent.update])
        seeds = np.random.SeedSequence([self.seed, 3]).generate_state(self.episodes)
        returns = [run_episode(agent, self.env, self.deterministic, int(s), rng=rng)
                   for s in seeds]
        return {"eval_return": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
                "time_eval": time.perf_counter() - start}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


def record_video(agent: PPO, path: Path, deterministic: bool, seed: int) -> Path:
    """One episode rendered to an .mp4 (imageio's bundled ffmpeg: the video extra)."""
    require("video", "recording a video")
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
