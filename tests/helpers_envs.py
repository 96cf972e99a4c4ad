"""Tiny envs built for the tests: fixed-length episodes, spaces the engine refuses, bad values.

Importable as `helpers_envs` (pytest puts tests/ on sys.path), so the CLI can name them as
`--env helpers_envs:ClassName`.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class CounterEnv(gym.Env):
    """obs = [steps taken this episode], reward 1 per step; terminates after `terminate_at`
    steps when set (wrap in TimeLimit for a truncating variant)."""

    metadata: dict = {"render_modes": []}

    def __init__(self, terminate_at: int | None = None, action_space: spaces.Space | None = None):
        self.terminate_at = terminate_at
        self.observation_space = spaces.Box(0.0, np.inf, (1,), np.float32)
        self.action_space = action_space if action_space is not None else spaces.Discrete(2)
        self.t = 0
        self.received: list = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.received.append(np.array(action, copy=True))
        self.t += 1
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return np.array([float(self.t)], np.float32), 1.0, terminated, False, {}


def terminating(length: int = 3) -> gym.Env:
    return CounterEnv(terminate_at=length)


def truncating(length: int = 3) -> gym.Env:
    return gym.wrappers.TimeLimit(CounterEnv(), max_episode_steps=length)


class BoxActionEnv(CounterEnv):
    """A CounterEnv with a continuous action in [-1, 1]^2 that records what it receives."""

    def __init__(self, terminate_at: int | None = 5):
        super().__init__(terminate_at, spaces.Box(-1.0, 1.0, (2,), np.float32))


class DictObsEnv(CounterEnv):
    def __init__(self):
        super().__init__(3)
        self.observation_space = spaces.Dict({"x": spaces.Box(0.0, 1.0, (1,), np.float32)})


class MultiDiscreteActionEnv(CounterEnv):
    def __init__(self):
        super().__init__(3, spaces.MultiDiscrete([2, 3]))


class IntBoxActionEnv(CounterEnv):
    def __init__(self):
        super().__init__(3, spaces.Box(0, 5, (2,), np.int64))


class SequenceObsEnv(CounterEnv):
    def __init__(self):
        super().__init__(3)
        self.observation_space = spaces.Sequence(spaces.Discrete(3))


class TextActionEnv(CounterEnv):
    def __init__(self):
        super().__init__(3, spaces.Text(5))


class NaNRewardEnv(CounterEnv):
    """Returns a NaN reward on its third step."""

    def __init__(self):
        super().__init__(None)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, (float("nan") if self.t == 3 else reward), terminated, truncated, info
