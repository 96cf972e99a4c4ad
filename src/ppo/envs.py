"""Env construction and vectorization."""

from __future__ import annotations

import importlib
import numbers
import signal
import sys
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from ppo.config import Config, ConfigError, check_memory, refuse_unnamed_imports
from ppo.episode_replay import ReplayableEpisodes
from ppo.extras import require
from ppo.spaces import ActionSpec, ObsEncoder

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


class StopTraining(Exception):
    """Raised from an env's step to end training at once (ppo.sb3 does, when a callback
    returns False); the collector lets it through instead of reporting the env as broken."""


class EnvError(RuntimeError):
    """An env misbehaved: it raised, or returned what Gymnasium's API does not allow."""


class EnvValueError(EnvError):
    """An env returned NaN or Inf."""


class EnvWorkerError(EnvError):
    """A subprocess env worker died."""


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
# Types a step's reward and flags may have, checked by type before the slower isinstance.
_FLAGS = frozenset({bool, np.bool_})
_REALS = frozenset({float, int, np.float64, np.float32, np.int64, np.int32})


def _check_step(result: Any, index: int) -> None:
    """Gymnasium's step contract, cheaply: 5 values, a real reward, boolean flags."""
    if type(result) is not tuple or len(result) != 5:
        got = f"{len(result)} values" if isinstance(result, tuple) else type(result).__name__
        raise EnvError(f"(index {index}): step returned {got}, not Gymnasium's 5 (observation, "
                       "reward, terminated, truncated, info)")
    _, reward, terminated, truncated, _ = result
    if type(reward) not in _REALS and not isinstance(reward, numbers.Real | np.number):
        raise EnvError(f"(index {index}): step returned a reward of type "
                       f"{type(reward).__name__} ({reward!r}), not a number")
    for name, flag in (("terminated", terminated), ("truncated", truncated)):
        if type(flag) not in _FLAGS:
            raise EnvError(f"(index {index}): step returned {name} = {flag!r}, not a bool")


def _check_reset(result: Any, index: int) -> tuple[Any, dict]:
    if type(result) is not tuple or len(result) != 2 or not isinstance(result[1], dict):
        raise EnvError(f"(index {index}): reset returned {type(result).__name__}, not "
                       "Gymnasium's (observation, info)")
    return result


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
            o, env_info = _check_reset(_call(env.reset, i, "reset", seed=s, options=options), i)
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
            try:
                result = env.step(actions[i])
            except Exception as e:  # an env can raise anything: name it, in one line
                raise EnvError(f"(index {i}) raised {type(e).__name__} in step: {e}") from None
            _check_step(result, i)
            o, reward, term, trunc, env_info = result
            if term or trunc:
                info = self._add_info(info, {"final_obs": o, "final_info": env_info}, i)
                o, env_info = _check_reset(_call(env.reset, i, "reset"), i)
            if env_info and "action_mask" in env_info:
                info = self._add_info(info, {"action_mask": env_info["action_mask"]}, i)
            obs.append(o)
            rewards.append(reward)
            terminated.append(term)
            truncated.append(trunc)
        return (self._batch(obs), np.array(rewards, np.float64), np.array(terminated, bool),
                np.array(truncated, bool), info)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return tuple(_call(env.get_wrapper_attr(name), i, name, *args, **kwargs)
                     for i, env in enumerate(self.envs))

    def close_extras(self, **kwargs) -> None:
        for env in self.envs:
            env.close()


def _call(method: Callable[..., Any], index: int, name: str, *args: Any, **kwargs: Any) -> Any:
    try:
        return method(*args, **kwargs)
    except Exception as e:  # an env can raise anything: name it, in one line
        raise EnvError(f"(index {index}) raised {type(e).__name__} in {name}: {e}") from None


def close_quietly(envs: VectorEnv) -> None:
    """Close envs whose workers may be dead or mid-call, without tracebacks or warnings.
    SubprocessVectorEnv's close never raises and kills the workers that don't answer; for
    another vector env, an error on closing is dropped and the worker processes it lists in
    `processes` (as Gymnasium's AsyncVectorEnv does) are killed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            envs.close()
        except Exception:
            for process in getattr(envs, "processes", []):
                if process.is_alive():
                    process.kill()
                    process.join()


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
            # A recurrent policy resets its state on the step an episode ends (same-step
            # resets); native vector envs reset on the next one.
            native = (spec.vector_entry_point is not None and cfg.num_envs >= NATIVE_MIN_ENVS
                      and not cfg.wrappers and cfg.policy != "lstm")
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
        env_fns = [partial(make_env, cfg, spec)] * cfg.num_envs
    env_fns = [partial(_make_replayable, fn, i) for i, fn in enumerate(env_fns)]
    try:
        if mode == "async":
            from ppo.subprocess_vector import SubprocessVectorEnv  # it imports this module

            # It makes one env here first, for the spaces: the workers build theirs out of
            # reach, so that one is also the check that an env can be made at all.
            envs = SubprocessVectorEnv(env_fns)
        else:
            envs = InProcessVectorEnv(env_fns)
    except (ConfigError, EnvError):
        raise
    except Exception as e:  # an env's constructor can raise anything; report it as one line
        raise ConfigError(f"cannot make env {cfg.env_id!r}: {type(e).__name__}: {e}") from None
    envs.replayable_episodes = True
    return envs


def single_env_maker(cfg: Config, source: EnvSource | None) -> Callable[[], Any] | None:
    """How to build one more env like the training ones (for evaluation), if there is a way."""
    if source is None:
        return lambda: make_env(cfg)
    if callable(source) and not isinstance(source, gym.Env | VectorEnv):
        return source
    return None


class OpenedEnvs(NamedTuple):
    """The training envs and what the networks need to know of them."""

    envs: VectorEnv
    make_one: Callable[[], Any] | None  # one more env like them (evaluation), if there is a way
    name: str  # for messages: the env id, or the class of the user's env
    encoder: ObsEncoder
    action_spec: ActionSpec


def open_envs(cfg: Config, source: EnvSource | None, verbose: bool,
              builtin_network: bool) -> OpenedEnvs:
    """The vector env the config (or the user's `source`) describes, with its spaces'
    encoder and action heads; spaces ppo cannot take, and (for the built-in networks) runs
    that could not fit in memory, are refused before anything large is allocated."""
    envs = make_vector_env(cfg, source)
    spec = getattr(envs, "spec", None)
    name = cfg.env_id if source is None else (spec.id if spec else type(source).__name__)
    try:
        encoder = ObsEncoder(envs.single_observation_space)
        action_spec = ActionSpec(envs.single_action_space)
    except ConfigError as e:
        close_quietly(envs)
        raise ConfigError(f"env {name}: {e}") from None
    if builtin_network:
        # Images are stored a byte a pixel: as float32 columns, a fourth of that.
        image_bytes = sum(int(np.prod(shape)) for shape in encoder.image_shapes().values())
        try:
            check_memory(cfg, encoder.width + -(-image_bytes // 4), action_spec.num_params)
        except ConfigError:
            close_quietly(envs)
            raise
    if encoder.dropped and verbose:
        print(f"note: observation parts {', '.join(encoder.dropped)} are text and are not "
              "shown to the networks", file=sys.stderr)
    return OpenedEnvs(envs, single_env_maker(cfg, source), name, encoder, action_spec)
