"""The standard Atari pipeline (Mnih et al. 2015; Machado et al. 2018; Huang et al. 2022), on
Gymnasium's AtariPreprocessing and FrameStackObservation:

- up to 30 no-op actions at the start of a game, frame skip 4 with a max over the last two
  frames, 84x84 grayscale (AtariPreprocessing);
- the game's score and length recorded over whole games (RecordEpisodeStatistics, below the
  wrappers that follow, so the logged episodic return is the game score over all lives);
- the loss of a life ends the training episode, the game goes on (EpisodicLife);
- FIRE pressed after a reset in the games that wait for it (FireOnReset);
- rewards clipped to their sign, for learning only;
- the last 4 frames stacked: observations are (4, 84, 84) uint8.

Use it with `--preset atari`, or as a wrapper: `--wrapper ppo.atari:AtariWrapper`, on an env
made with frameskip=1 (the wrapper skips frames itself). ALE/ ids need the Atari extra,
`pip install -e ".[atari]"` (ale-py, whose wheel ships the game ROMs).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import (
    AtariPreprocessing,
    FrameStackObservation,
    RecordEpisodeStatistics,
    TransformReward,
)

NOOP, FIRE = 0, 1


def _ale(env: gym.Env) -> Any:
    return env.unwrapped.ale


class EpisodicLife(gym.Wrapper):
    """A life lost ends the training episode (terminated); the game is reset only once it is
    over, otherwise the next episode continues it from the next life. Values then learn that
    a lost life ends the reward stream (Mnih et al. 2015). Its episodes are parts of games,
    which a resumed run cannot replay (episode_replay.py): the envs start fresh games."""

    replays_episodes = False

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = _ale(self.env).lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self.game_over:
            obs, info = self.env.reset(seed=seed, options=options)
        else:  # one no-op step out of the frame where the life was lost
            obs, _, terminated, truncated, info = self.env.step(NOOP)
            if terminated or truncated:
                obs, info = self.env.reset(seed=seed, options=options)
        self.game_over = False
        self.lives = _ale(self.env).lives()
        return obs, info


class FireOnReset(gym.Wrapper):
    """Press FIRE, then the next action, after each reset, for games that wait for FIRE to
    start (Breakout launches its ball this way), as Stable-Baselines3's FireResetEnv."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.env.reset(seed=seed, options=options)
        for action in (FIRE, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                return self.env.reset(seed=seed, options=options)
        return obs, info


def needs_fire(env: gym.Env) -> bool:
    meanings = env.unwrapped.get_action_meanings()
    return len(meanings) >= 3 and meanings[FIRE] == "FIRE"


def AtariWrapper(env: gym.Env, noop_max: int = 30, frame_skip: int = 4, screen_size: int = 84,
                 terminal_on_life_loss: bool = True, clip_reward: bool = True,
                 frame_stack: int = 4) -> gym.Env:
    """The pipeline of the module docstring around an ALE env made with frameskip=1."""
    env = AtariPreprocessing(env, noop_max=noop_max, frame_skip=frame_skip,
                             screen_size=screen_size, terminal_on_life_loss=False,
                             grayscale_obs=True)
    env = RecordEpisodeStatistics(env)
    if terminal_on_life_loss:
        env = EpisodicLife(env)
    if needs_fire(env):
        env = FireOnReset(env)
    if clip_reward:
        env = TransformReward(env, np.sign)
    return FrameStackObservation(env, frame_stack) if frame_stack > 1 else env
