"""Env construction and vectorization."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from ppo.config import Config, ConfigError, refuse_unnamed_imports
from ppo.episode_replay import ReplayableEpisodes
from ppo.extras import require

EnvSource = str | gym.Env | Callable[[], gym.Env] | VectorEnv

# Below this many envs a native vectorized env is slower than stepping Python envs in turn.
NATIVE_MIN_ENVS = 8


def load_wrapper(path: str) -> Callable[..., gym.Env]:
    """The wrapper class (or function) a 'module:Name' path names."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except Exception as e:
        raise ConfigError(f"cannot load wrapper {path!r}: {type(e).__name__}: {e}") from None


def make_env(cfg: Config, spec: EnvSpec | None = None, **make_kwargs: Any) -> gym.Env:
    """One env as the config describes it: gymnasium.make with its env_kwargs, then its
    wrappers in order. Errors are one line naming what failed."""
    spec = spec or env_spec(cfg.env_id)
    try:
        env = gym.make(spec, **cfg.env_kwargs, **make_kwargs)
    except Exception as e:  # an env's constructor can raise anything
        given = f" with {cfg.env_kwargs}" if cfg.env_kwargs else ""
        raise ConfigError(f"cannot make env {cfg.env_id!r}{given}: "
                          f"{type(e).__name__}: {e}") from None
    for wrapper in cfg.wrappers:
        try:
            env = load_wrapper(wrapper["path"])(env, **wrapper["kwargs"])
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"wrapper {wrapper['path']!r} failed on {cfg.env_id!r}: "
                              f"{type(e).__name__}: {e}") from None
    return env


def _make_replayable(make: Callable[[], gym.Env], index: int) -> gym.Env:
    return ReplayableEpisodes(make(), index)


def env_spec(env_id: str, origin: str | None = None) -> EnvSpec:
    """Spec of a registered id, of 'module:Id' (importing module registers Id), or of a
    'module:Class' entry point.

    `origin` says where env_id comes from: None when the user named it (the command line,
    or an argument in their own code); else the file it was read from (a checkpoint, a
    config file, a preset). An id with a module part imports that module, which runs its
    code, so one read from a file is refused (ConfigError) unless the user names it too.
    """
    if origin is not None:
        refuse_unnamed_imports({"env_id": env_id}, {}, origin)
    if ":" in env_id:
        module, name = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except Exception as e:
            raise ConfigError(f"cannot import {module!r} for env {env_id!r}: {e}") from None
        if name in gym.registry:
            return gym.spec(name)
        return EnvSpec(id=name, entry_point=env_id)
    if env_id.startswith("ALE/"):
        require("atari", f"env {env_id}")
        import ale_py

        gym.register_envs(ale_py)
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as e:
        raise ConfigError(f"unknown env id {env_id!r}: {e}") from None
    if str(spec.entry_point).startswith("gymnasium.envs.mujoco"):
        require("mujoco", f"env {env_id}")
    return spec


class InProcessVectorEnv(VectorEnv):
    """N envs stepped in turn in this process, each reset on the step its episode ends.

    Same-step autoreset semantics as Gymnasium's SyncVectorEnv, whose generic per-step
    info merging and copying cost ~17 us a step on LunarLander (as much as a third of the
    env itself). The only info kept is what training needs, in Gymnasium's batched layout:
    "final_obs" and "final_info" where episodes ended, and "action_mask" where envs give one.
    """

    def __init__(self, env_fns: list[Callable[[], gym.Env]]) -> None:
        self.envs = [fn() for fn in env_fns]
        self.num_envs = len(self.envs)
        first = self.envs[0]
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(first.observation_space, self.num_envs)
        self.action_space = batch_space(first.action_space, self.num_envs)
        self.metadata = {**first.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.spec = first.spec
        self.render_mode = first.render_mode
        # Arrays stack with np.array; Dict and Tuple observations or actions go through
        # Gymnasium's batching helpers.
        self._plain_obs = not isinstance(first.observation_space, spaces.Dict | spaces.Tuple)
        self._plain_actions = not isinstance(first.action_space, spaces.Dict | spaces.Tuple)

    def _batch(self, obs: list) -> Any:
        if self._plain_obs:
            # np.array, not np.stack: the same result for equal shapes, at a sixth of the cost.
            return np.array(obs)
        space = self.single_observation_space
        return concatenate(space, obs, create_empty_array(space, self.num_envs))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        obs, info = [], {}
        for i, (env, s) in enumerate(zip(self.envs, seeds, strict=True)):
            o, env_info = env.reset(seed=s, options=options)
            obs.append(o)
            if "action_mask" in env_info:
                info = self._add_info(info, {"action_mask": env_info["action_mask"]}, i)
        return self._batch(obs), info

    def step(self, actions: Any):
        obs, rewards, terminated, truncated = [], [], [], []
        info: dict = {}
        if not self._plain_actions:
            actions = list(iterate(self.action_space, actions))
        for i, env in enumerate(self.envs):
            o, reward, term, trunc, env_info = env.step(actions[i])
            if term or trunc:
                info = self._add_info(info, {"final_obs": o, "final_info": env_info}, i)
                o, env_info = env.reset()
            if env_info and "action_mask" in env_info:
                info = self._add_info(info, {"action_mask": env_info["action_mask"]}, i)
            obs.append(o)
            rewards.append(reward)
            terminated.append(term)
            truncated.append(trunc)
        return (self._batch(obs), np.array(rewards, np.float64), np.array(terminated, bool),
                np.array(truncated, bool), info)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return tuple(env.get_wrapper_attr(name)(*args, **kwargs) for env in self.envs)

    def close_extras(self, **kwargs) -> None:
        for env in self.envs:
            env.close()


def make_vector_env(cfg: Config, source: EnvSource | None = None) -> VectorEnv:
    """A vector env of cfg.num_envs copies; a passed Env instance allows only num_envs=1.

    Envs built here from single envs have replayable episodes (`replayable_episodes` is
    True), so a resumed run restores them mid-episode; a passed or native vector env does not.
    """
    if isinstance(source, VectorEnv):
        return source
    mode = cfg.vector
    if isinstance(source, gym.Env):
        if cfg.num_envs != 1:
            raise ConfigError("an Env instance gives one env; pass a factory for num_envs > 1")
        env_fns = [lambda: source]
    elif callable(source):
        env_fns = [source] * cfg.num_envs
    else:
        spec = env_spec(cfg.env_id)
        if mode == "auto":
            native = (spec.vector_entry_point is not None and cfg.num_envs >= NATIVE_MIN_ENVS
                      and not cfg.wrappers)
            mode = "native" if native else "sync"
        if mode == "native":
            if spec.vector_entry_point is None:
                raise ConfigError(f"{cfg.env_id} has no native vectorized implementation")
            if cfg.wrappers:
                raise ConfigError("wrappers apply to single envs; use vector sync or async")
            try:
                return gym.make_vec(spec, cfg.num_envs, vectorization_mode="vector_entry_point",
                                    **cfg.env_kwargs)
            except Exception as e:
                raise ConfigError(f"cannot make env {cfg.env_id!r}: {type(e).__name__}: "
                                  f"{e}") from None
        if mode == "async":  # the workers build their envs out of reach: check one here
            make_env(cfg, spec).close()
        env_fns = [partial(make_env, cfg, spec)] * cfg.num_envs
    env_fns = [partial(_make_replayable, fn, i) for i, fn in enumerate(env_fns)]
    try:
        if mode == "async":
            envs = gym.vector.AsyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
        else:
            envs = InProcessVectorEnv(env_fns)
    except ConfigError:
        raise
    except Exception as e:  # an env's constructor can raise anything; report it as one line
        raise ConfigError(f"cannot make env {cfg.env_id!r}: {type(e).__name__}: {e}") from None
    envs.replayable_episodes = True
    return envs
