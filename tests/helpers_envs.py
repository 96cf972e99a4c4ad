"""Tiny envs built for the tests: fixed-length episodes, spaces the engine refuses, bad values.

Importable as `helpers_envs` (pytest puts tests/ on sys.path), so the CLI can name them as
`--env helpers_envs:ClassName`.
"""

from __future__ import annotations

import copy
import os
import warnings

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
        self.received.append(copy.deepcopy(action))
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
    """A CounterEnv whose observation is {"x": [steps taken]}."""

    def __init__(self):
        super().__init__(3)
        self.observation_space = spaces.Dict({"x": spaces.Box(0.0, np.inf, (1,), np.float32)})

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        return {"x": obs}, info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return {"x": obs}, reward, terminated, truncated, info


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


# ---------------------------------------------------------------------- envs with known optima
# Each step shows a random context; the reward counts the parts of the action that match what
# that context asks for. Episodes last `length` steps, so the optimal return is known exactly:
# `optimal_return`, reached by `optimal_action(obs)`; a uniformly random policy earns
# `random_return` on average.


class _ContextTask(gym.Env):
    """Shared loop: draw a context, score the action against it, end after `length` steps."""

    metadata: dict = {"render_modes": []}
    length = 4

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.context = self._draw()
        return self._obs(), {}

    def step(self, action):
        reward = float(self._score(action))
        self.t += 1
        self.context = self._draw()
        return self._obs(), reward, self.t >= self.length, False, {}


class ContextualMultiDiscreteEnv(_ContextTask):
    """MultiDiscrete([3, 4, 2]) actions; the observation is a one-hot context c of 4, and
    component i should be (c + i) mod n_i: 1 reward per right component, 3 per step at best."""

    nvec = (3, 4, 2)
    contexts = 4

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 1.0, (self.contexts,), np.float32)
        self.action_space = spaces.MultiDiscrete(self.nvec)
        self.optimal_return = float(self.length * len(self.nvec))
        self.random_return = self.length * sum(1.0 / n for n in self.nvec)

    def _draw(self):
        return int(self.np_random.integers(self.contexts))

    def _obs(self):
        return np.eye(self.contexts, dtype=np.float32)[self.context]

    def _right(self, context: int) -> np.ndarray:
        return np.array([(context + i) % n for i, n in enumerate(self.nvec)])

    def _score(self, action):
        return int(np.sum(np.asarray(action) == self._right(self.context)))

    def optimal_action(self, obs) -> np.ndarray:
        return self._right(int(np.argmax(obs)))


class ContextualMultiBinaryEnv(_ContextTask):
    """MultiBinary(4) actions; the observation is 4 random bits b, and the right action is
    b XOR (1, 0, 1, 0): 1 reward per right bit, 4 per step at best."""

    mask = np.array([1, 0, 1, 0], dtype=np.int8)

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 1.0, (len(self.mask),), np.float32)
        self.action_space = spaces.MultiBinary(len(self.mask))
        self.optimal_return = float(self.length * len(self.mask))
        self.random_return = self.length * len(self.mask) / 2

    def _draw(self):
        return self.np_random.integers(0, 2, len(self.mask), dtype=np.int8)

    def _obs(self):
        return self.context.astype(np.float32)

    def _score(self, action):
        return int(np.sum(np.asarray(action) == (self.context ^ self.mask)))

    def optimal_action(self, obs) -> np.ndarray:
        return np.asarray(obs).round().astype(np.int8) ^ self.mask


class DictObsContextEnv(_ContextTask):
    """A nested Dict observation: {"cue": Discrete(3), "extra": Tuple(Box(1), MultiBinary(2))},
    plus a constant Text "mission" when `with_text`. Discrete(3) actions; the right action is
    (cue + first bit) mod 3, so both the Discrete part and the nested Tuple must be read.
    1 reward per right action."""

    def __init__(self, with_text: bool = True):
        parts = {
            "cue": spaces.Discrete(3),
            "extra": spaces.Tuple((spaces.Box(-1.0, 1.0, (1,), np.float32),
                                   spaces.MultiBinary(2))),
        }
        if with_text:
            parts["mission"] = spaces.Text(max_length=32, charset="abcdefghijklmnopqrstuvwxyz ")
        self.with_text = with_text
        self.observation_space = spaces.Dict(parts)
        self.action_space = spaces.Discrete(3)
        self.optimal_return = float(self.length)
        self.random_return = self.length / 3

    def _draw(self):
        return (int(self.np_random.integers(3)),
                self.np_random.uniform(-1, 1, 1).astype(np.float32),
                self.np_random.integers(0, 2, 2, dtype=np.int8))

    def _obs(self):
        cue, noise, bits = self.context
        obs = {"cue": cue, "extra": (noise, bits)}
        if self.with_text:
            obs["mission"] = "pick the right one"
        return obs

    def _score(self, action):
        return int(action) == self.optimal_action(self._obs())

    def optimal_action(self, obs) -> int:
        return (int(obs["cue"]) + int(obs["extra"][1][0])) % 3


class TupleObsContextEnv(DictObsContextEnv):
    """The same task with a Tuple observation: (cue, bits), no text."""

    def __init__(self):
        super().__init__(with_text=False)
        self.observation_space = spaces.Tuple((spaces.Discrete(3), spaces.MultiBinary(2)))

    def _obs(self):
        cue, _, bits = self.context
        return (cue, bits)

    def optimal_action(self, obs) -> int:
        return (int(obs[0]) + int(obs[1][0])) % 3


class DictActionContextEnv(_ContextTask):
    """Dict actions {"choice": Discrete(3), "switches": MultiBinary(2), "amount": Box(-1, 1)};
    the observation is a one-hot context c of 3. Reward per step: 1 if choice == c, plus 1 per
    switch equal to the bits of c, minus (amount - (c - 1) / 2)^2. At best 3 per step."""

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Dict({
            "choice": spaces.Discrete(3),
            "switches": spaces.MultiBinary(2),
            "amount": spaces.Box(-1.0, 1.0, (1,), np.float32),
        })
        self.optimal_return = 3.0 * self.length
        # choice 1/3, switches 1/2 each, amount uniform on [-1, 1]: E(a - t)^2 = 1/3 + t^2
        self.random_return = self.length * (1 / 3 + 1 - (1 / 3 + 1 / 6))

    def _draw(self):
        return int(self.np_random.integers(3))

    def _obs(self):
        return np.eye(3, dtype=np.float32)[self.context]

    def _right(self, c: int) -> dict:
        return {"choice": c, "switches": np.array([c & 1, c >> 1 & 1], dtype=np.int8),
                "amount": np.array([(c - 1) / 2], dtype=np.float32)}

    def _score(self, action):
        right = self._right(self.context)
        return (float(int(action["choice"]) == right["choice"])
                + float(np.sum(np.asarray(action["switches"]) == right["switches"]))
                - float((np.asarray(action["amount"])[0] - right["amount"][0]) ** 2))

    def optimal_action(self, obs) -> dict:
        return self._right(int(np.argmax(obs)))


class TupleActionContextEnv(_ContextTask):
    """Tuple actions (Discrete(3), MultiDiscrete([2, 2])); the observation is a one-hot
    context c of 3; the right action is (c, (c & 1, c >> 1 & 1)): 1 reward per right part
    (3 per step at best)."""

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Tuple((spaces.Discrete(3), spaces.MultiDiscrete([2, 2])))
        self.optimal_return = 3.0 * self.length
        self.random_return = self.length * (1 / 3 + 1)

    def _draw(self):
        return int(self.np_random.integers(3))

    def _obs(self):
        return np.eye(3, dtype=np.float32)[self.context]

    def _score(self, action):
        right = self.optimal_action(self._obs())
        return (float(int(action[0]) == right[0])
                + float(np.sum(np.asarray(action[1]) == right[1])))

    def optimal_action(self, obs) -> tuple:
        c = int(np.argmax(obs))
        return (c, np.array([c & 1, c >> 1 & 1], dtype=np.int64))


# ---------------------------------------------------------------------- action masking
class _MaskedChoiceTask(gym.Env):
    """Each step 2 of the 8 actions are valid, at random. The lower-numbered valid action earns
    1, the other 0. An invalid action earns -1 and ends the episode (`invalid="end"`) or only
    wastes the step (`invalid="waste"`). 8 steps an episode: the optimal return is 8; a policy
    sampling uniformly among the valid actions earns 4; uniformly among all actions, -0.83
    with `invalid="end"` (`random_return`: three quarters of the actions are invalid).

    The observation is the fraction of the episode elapsed: it says nothing about which actions
    are valid, so without the mask no policy does better than a guess, while with it the best
    policy is simple (prefer lower-numbered actions). `show_mask=True` observes the mask
    instead (as floats), which an unmasked policy can learn from.
    """

    metadata: dict = {"render_modes": []}
    n_actions, n_valid, length = 8, 2, 8

    def __init__(self, invalid: str = "end", show_mask: bool = False):
        if invalid not in ("end", "waste"):
            raise ValueError(f"invalid must be 'end' or 'waste', got {invalid!r}")
        self.invalid, self.show_mask = invalid, show_mask
        self.observation_space = spaces.Box(0.0, 1.0, (self.n_actions if show_mask else 1,),
                                            np.float32)
        self.action_space = spaces.Discrete(self.n_actions)
        self.optimal_return = float(self.length)
        self.valid_random_return = self.length / 2
        # Per step alive: 1/4 valid (worth 1/2 on average), 3/4 invalid (-1, and the end).
        self.random_return = ((1 / 8 - 3 / 4) * (1 - 0.25**self.length) / 0.75
                              if invalid == "end" else self.length * (1 / 8 - 3 / 4))

    def _draw(self) -> None:
        self.valid = np.zeros(self.n_actions, dtype=bool)
        self.valid[self.np_random.choice(self.n_actions, self.n_valid, replace=False)] = True

    def _info(self) -> dict:
        return {}

    def _obs(self) -> np.ndarray:
        if self.show_mask:
            return self.valid.astype(np.float32)
        return np.array([self.t / self.length], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self._draw()
        return self._obs(), self._info()

    def step(self, action):
        action = int(action)
        self.t += 1
        if self.valid[action]:
            reward = 1.0 if action == self.optimal_action() else 0.0
            terminated = self.t >= self.length
        else:
            reward = -1.0
            terminated = self.invalid == "end" or self.t >= self.length
        self._draw()
        return self._obs(), reward, terminated, False, self._info()

    def optimal_action(self, obs=None) -> int:
        """The best action now (the env's state, whatever the observation shows)."""
        return int(np.flatnonzero(self.valid)[0])


class MaskedChoiceEnv(_MaskedChoiceTask):
    """The masking task as sb3-contrib's MaskablePPO expects it: `action_masks()` returns a
    bool array, True where the action is valid."""

    def action_masks(self) -> np.ndarray:
        return self.valid.copy()


class InfoMaskedChoiceEnv(_MaskedChoiceTask):
    """The masking task with the mask in `info["action_mask"]` (reset and step infos; int8, 1
    for valid, as Gymnasium's Taxi gives it) and no `action_masks()` method."""

    def _info(self) -> dict:
        return {"action_mask": self.valid.astype(np.int8)}


class MaskedMultiChoiceEnv(gym.Env):
    """MultiDiscrete([8, 8]) with masking: two independent MaskedChoiceEnv-like choices per step.
    `action_masks()` is the concatenation of both components' masks (sb3-contrib's convention
    for MultiDiscrete). Reward per step: per component, 1 for its lower valid action, 0 for
    the other valid one, -1 for an invalid one; any invalid component ends the episode.
    Optimal return 2 * 8 = 16. As in MaskedChoiceEnv, the observation (the fraction of the
    episode elapsed) does not show the mask."""

    metadata: dict = {"render_modes": []}
    n_actions, n_valid, length = 8, 2, 8

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.MultiDiscrete([self.n_actions, self.n_actions])
        self.optimal_return = 2.0 * self.length

    def _draw(self) -> None:
        self.valid = np.zeros((2, self.n_actions), dtype=bool)
        for row in self.valid:
            row[self.np_random.choice(self.n_actions, self.n_valid, replace=False)] = True

    def action_masks(self) -> np.ndarray:
        return self.valid.reshape(-1).copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self._draw()
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        reward, ok = 0.0, True
        for row, a in zip(self.valid, np.asarray(action), strict=True):
            if not row[int(a)]:
                reward, ok = reward - 1.0, False
            elif int(a) == int(np.flatnonzero(row)[0]):
                reward += 1.0
        terminated = not ok or self.t >= self.length
        self._draw()
        obs = np.array([self.t / self.length], dtype=np.float32)
        return obs, reward, terminated, False, {}

    def optimal_action(self, obs=None) -> np.ndarray:
        """The best action now (the env's state; the observation does not show the mask)."""
        return np.array([np.flatnonzero(row)[0] for row in self.valid])


class Misbehaving(gym.Env):
    """Counts to `at` steps of the process, then misbehaves as `how` says: raise, a wrong
    observation shape or dtype, a string reward, a non-bool flag, a 4-tuple, ends the process
    ("exit": os._exit(9)) or raises SystemExit(3) ("systemexit"); `reset` raises from the
    reset after the first with how="reset"."""

    metadata: dict = {"render_modes": []}

    def __init__(self, how: str = "raise", at: int = 20):
        self.how, self.at, self.count, self.resets = how, at, 0, 0
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.resets += 1
        if self.how == "reset" and self.resets > 1:
            raise ValueError("no more levels")
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.count += 1
        out = (np.zeros(2, np.float32), 1.0, self.count % 5 == 0, False, {})
        if self.count < self.at:
            return out
        bad = {"raise": None, "shape": (np.zeros(3, np.float32), *out[1:]),
               "dtype": (np.array(["a", "b"], object), *out[1:]),
               "reward": (out[0], "1.0", *out[2:]), "flag": (*out[:2], "no", *out[3:]),
               "tuple": out[:4], "reset": out}.get(self.how)
        if self.how == "exit":
            os._exit(9)
        if self.how == "systemexit":
            raise SystemExit(3)
        if bad is None:
            raise RuntimeError("the simulator lost its license server")
        return bad


class HugeObservation(CounterEnv):
    """A one-hot observation of 10^12 values: no network could take it."""

    def __init__(self):
        super().__init__(3)
        self.observation_space = spaces.Discrete(10**12)


class ImageSideEnv(gym.Env):
    """A uint8 image with a bright square on the left or the right half; action 0 (left) or
    1 (right) earns 1 when it names the side. Episodes of `length` steps, a fresh side each
    step: the optimum is `length`, random play `length / 2`. `shape` is the image's layout
    (H, W), (H, W, C) or (C, H, W); `extra` adds a Dict observation with a vector part."""

    metadata: dict = {"render_modes": []}

    def __init__(self, shape: tuple[int, ...] = (40, 40, 1), length: int = 8,
                 extra: bool = False) -> None:
        self.shape, self.length, self.extra = shape, length, extra
        image = spaces.Box(0, 255, shape, np.uint8)
        self.observation_space = (spaces.Dict({"pixels": image,
                                               "noise": spaces.Box(-1, 1, (3,), np.float32)})
                                  if extra else image)
        self.action_space = spaces.Discrete(2)
        self.t, self.side = 0, 0

    def _obs(self):
        self.side = int(self.np_random.integers(2))
        channels_first = len(self.shape) == 3 and self.shape[0] < self.shape[2]
        height, width = self.shape[1:] if channels_first else self.shape[:2]
        plane = np.zeros((height, width), np.uint8)
        top = int(self.np_random.integers(0, height - 8))
        left = int(self.np_random.integers(0, width // 2 - 8)) + self.side * (width // 2)
        plane[top:top + 8, left:left + 8] = 255
        if len(self.shape) == 2:
            image = plane
        elif channels_first:
            image = np.repeat(plane[None], self.shape[0], 0)
        else:
            image = np.repeat(plane[..., None], self.shape[2], 2)
        if not self.extra:
            return image
        return {"pixels": image, "noise": self.np_random.uniform(-1, 1, 3).astype(np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.side)
        self.t += 1
        return self._obs(), reward, False, self.t >= self.length, {}


class RefuseInvalidActions(gym.Wrapper):
    """Raises on any action the masking envs above mark invalid (their `valid` array), so a
    run through this wrapper proves no invalid action was ever sent, whatever the path
    (training, evaluation during training, `ppo eval`). Usable as `--wrapper
    helpers_envs:RefuseInvalidActions`; the mask passes through (method and info alike)."""

    def step(self, action):
        valid = np.asarray(self.env.unwrapped.valid).reshape(-1, self.env.unwrapped.n_actions)
        chosen = np.atleast_1d(np.asarray(action)).astype(np.int64)
        if not valid[np.arange(len(chosen)), chosen].all():
            raise AssertionError(f"invalid action {action!r} sent; valid: {valid.astype(int)}")
        return self.env.step(action)


class SuccessInfoEnv(CounterEnv):
    """Episodes of 3 steps whose final info says `is_success`: 1.0 on every odd-numbered
    episode of this env (counting from 0), else 0.0; plus a text entry, which is no number.
    Steps before the last carry an `is_success` of -1, which must not count."""

    length = 3

    def __init__(self):
        super().__init__(self.length)
        self.finished = 0

    def step(self, action):
        obs, reward, terminated, truncated, _ = super().step(action)
        if not terminated:
            return obs, reward, terminated, truncated, {"is_success": -1.0}
        info = {"is_success": float(self.finished % 2), "outcome": "done"}
        self.finished += 1
        return obs, reward, terminated, truncated, info


class SequenceObservation(gym.ObservationWrapper):
    """Turns the observation into a Sequence: a space the engine does not take."""

    def __init__(self, env):
        super().__init__(env)
        self.observation_space = spaces.Sequence(spaces.Discrete(3))

    def observation(self, observation):
        return (0,)


class WarnsOnReset(CounterEnv):
    """A CounterEnv whose reset warns, as Gymnasium's env checker does; with `fail`, its
    first step then raises."""

    def __init__(self, fail: bool = False):
        super().__init__(terminate_at=5)
        self.fail = fail

    def reset(self, *, seed=None, options=None):
        warnings.warn("this env is an old friend", UserWarning, stacklevel=2)
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self.fail:
            raise RuntimeError("the simulator is gone")
        return super().step(action)
