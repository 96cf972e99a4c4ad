"""Restoring envs mid-episode on resume, without pickling them.

An env's state can't be saved in general (Box2D and MuJoCo hold it in C), but a seeded
Gymnasium env is a deterministic function of its reset seed and the actions taken since.
So every episode starts from a seed derived from (the env's seed, episode number), the
actions since are recorded, and a checkpoint keeps both: replaying them rebuilds the exact
state, and a resumed run continues as if it had never stopped.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# An episode longer than this stops being recorded (memory); on resume that env restarts.
MAX_RECORDED_STEPS = 100_000


def episode_seed(env_seed: int, episode: int) -> int:
    return int(np.random.SeedSequence([env_seed, episode]).generate_state(1)[0])


class ReplayableEpisodes(gym.Wrapper):
    """Seeds each episode of env `index` and records its actions; see the module docstring."""

    def __init__(self, env: gym.Env, index: int) -> None:
        super().__init__(env)
        self.index = index
        self.env_seed: int | None = None
        self.episode = 0
        self.actions: list[Any] | None = []
        # A wrapper whose episodes are not whole env episodes (Atari's life loss) says
        # `replays_episodes = False`: its envs are seeded once and never replayed. (Seeding
        # an ALE game reloads its ROM, ~0.1 s.)
        self.enabled = not (env.has_wrapper_attr("replays_episodes")
                            and not env.get_wrapper_attr("replays_episodes"))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if not self.enabled:
            return self.env.reset(seed=seed, options=options)
        if seed is not None:
            self.env_seed, self.episode = seed, 0
        else:
            self.episode += 1
        self.actions = []
        seed = None if self.env_seed is None else episode_seed(self.env_seed, self.episode)
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        if self.enabled and self.actions is not None:
            self.actions.append(action)
            if len(self.actions) > MAX_RECORDED_STEPS:
                self.actions = None
        return self.env.step(action)

    def snapshot(self) -> dict[str, Any] | None:
        """Where this env stands: None when its episode can't be replayed. Dict and Tuple
        actions are stored flattened (gymnasium.spaces.flatten)."""
        if not self.enabled or self.env_seed is None or self.actions is None:
            return None
        space = self.action_space
        if self._composite:
            actions = [spaces.flatten(space, a) for a in self.actions]
            empty = np.zeros((0, spaces.flatdim(space)), np.float64)
        else:
            actions, empty = self.actions, np.zeros((0, *space.shape), space.dtype)
        return {"env_seed": self.env_seed, "episode": self.episode,
                "actions": np.stack(actions) if actions else empty}

    @property
    def _composite(self) -> bool:
        return isinstance(self.action_space, spaces.Dict | spaces.Tuple)

    def restore(self, snapshots: list[dict[str, Any]]) -> np.ndarray:
        """Replay this env's entry of `snapshots` (one per env); returns the observation."""
        snap = snapshots[self.index]
        self.env_seed, self.episode = snap["env_seed"], snap["episode"]
        self.actions = []
        obs, _ = self.env.reset(seed=episode_seed(self.env_seed, self.episode))
        for action in snap["actions"]:
            if self._composite:
                action = spaces.unflatten(self.action_space, action)
            obs, *_ = self.step(action)
        return obs
