"""Wrappers shipped with the package: observations for tasks that need memory, and the
preprocessing of pixel observations.

`HideCartPoleVelocities` turns CartPole into a partially observed task: the policy sees the
cart position and the pole angle, not their velocities, so a feed-forward policy cannot tell
a pole falling from one rising and must infer the velocities from past observations (a
recurrent policy can). Use it as a wrapper, `HideCartPoleVelocities(gym.make("CartPole-v1"))`,
or through the env id this module registers with Gymnasium:

    gym.make("ppo.wrappers:CartPoleNoVelocity-v1")

(Gymnasium imports the module named before the colon, which registers the id.)

`PixelPreprocessing` repeats each action over a few frames and turns the frames into small
stacked grayscale images, as the RL Zoo prepares CarRacing for a CNN policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import FrameStackObservation, GrayscaleObservation, ResizeObservation


class ObservationSubset(gym.ObservationWrapper):
    """Keep only the given entries of a flat Box observation, in the given order."""

    def __init__(self, env: gym.Env, indices: Sequence[int]) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"ObservationSubset needs a flat Box observation, got {space}")
        self.indices = np.asarray(list(indices), dtype=np.int64)
        if self.indices.size == 0 or np.any(self.indices < 0) or np.any(
                self.indices >= space.shape[0]):
            raise ValueError(f"indices must be a non-empty subset of 0..{space.shape[0] - 1}, "
                             f"got {list(indices)}")
        self.observation_space = spaces.Box(space.low[self.indices], space.high[self.indices],
                                            dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.indices]


class HideCartPoleVelocities(ObservationSubset):
    """CartPole's observation without its velocities: [cart position, pole angle]."""

    POSITION, ANGLE = 0, 2

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env, (self.POSITION, self.ANGLE))


class RepeatAction(gym.Wrapper):
    """Each action repeated for `skip` frames, rewards summed, stopping at an episode's end
    (the RL Zoo's FrameSkip: no max over frames)."""

    def __init__(self, env: gym.Env, skip: int) -> None:
        super().__init__(env)
        if skip < 1:
            raise ValueError(f"skip must be >= 1, got {skip}")
        self.skip = skip

    def step(self, action: Any):
        total = 0.0
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


def PixelPreprocessing(env: gym.Env, frame_skip: int = 2, size: int = 64,
                       grayscale: bool = True, frame_stack: int = 2) -> gym.Env:
    """Actions repeated `frame_skip` times, frames resized to size x size, grayscale, the last
    `frame_stack` stacked: (frame_stack, size, size) uint8 observations in grayscale, for a
    CNN policy (the RL Zoo's CarRacing pipeline)."""
    if frame_skip > 1:
        env = RepeatAction(env, frame_skip)
    env = ResizeObservation(env, (size, size))
    if grayscale:
        env = GrayscaleObservation(env, keep_dim=False)
    return FrameStackObservation(env, frame_stack) if frame_stack > 1 else env


def make_cartpole_no_velocity(**kwargs: Any) -> gym.Env:
    """CartPole-v1's dynamics with the velocities hidden; the time limit comes from the
    registration, as for CartPole-v1."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    return HideCartPoleVelocities(CartPoleEnv(**kwargs))


if "CartPoleNoVelocity-v1" not in gym.registry:
    gym.register(
        id="CartPoleNoVelocity-v1",
        entry_point=make_cartpole_no_velocity,
        max_episode_steps=500,
        reward_threshold=475.0,
    )
