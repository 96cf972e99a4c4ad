"""Stable-Baselines3's vectorized-env API (`reset()` returns the observations alone, `step()`
returns (obs, rewards, dones, infos) with a list of info dicts, a finished episode's last
observation in info["terminal_observation"] and the env reset at once) over Gymnasium's vector
envs, and the bridge the other way, through which ppo trains on any such env, SB3's own
DummyVecEnv and SubprocVecEnv included.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers import RecordEpisodeStatistics

from ppo.config import ConfigError


def _unbatch(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Gymnasium's batched info (key -> array over envs, `_key` -> which envs have it) as one
    dict per env."""
    infos: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, values in info.items():
        if key.startswith("_"):
            continue
        present = info.get(f"_{key}", np.ones(n, bool))
        nested = _unbatch(values, n) if isinstance(values, dict) else None
        for i in np.flatnonzero(present):
            infos[i][key] = nested[i] if nested is not None else values[i]
    return infos


def _one(obs: Any, i: int) -> Any:
    """Env i's observation from a batch (Dict observations are dicts of batches)."""
    return {k: _one(v, i) for k, v in obs.items()} if isinstance(obs, dict) else obs[i]


def _tile(images: list[np.ndarray]) -> np.ndarray:
    """Frames side by side in a near-square grid, as SB3's render does."""
    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    blank = np.zeros_like(images[0])
    grid = [np.concatenate(images[r * cols:(r + 1) * cols] + [blank] * max(
        0, (r + 1) * cols - n), axis=1) for r in range(rows)]
    return np.concatenate(grid, axis=0)


class VecEnv:
    """SB3's VecEnv API over a Gymnasium vector env that resets episodes on the step they
    end (SAME_STEP autoreset). `observation_space`/`action_space` are one env's, as in SB3."""

    def __init__(self, envs: VectorEnv) -> None:
        self.gym_env = envs
        self.num_envs = envs.num_envs
        self.observation_space = envs.single_observation_space
        self.action_space = envs.single_action_space
        self.render_mode = envs.render_mode
        self.reset_infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        self._seeds: list[int | None] = [None] * self.num_envs
        self._options: dict[str, Any] | None = None
        self._actions: Any = None

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seeds env i with seed + i at the next reset (random when None)."""
        if seed is None:
            seed = int(np.random.randint(0, np.iinfo(np.uint32).max, dtype=np.uint32))
        self._seeds = [seed + i for i in range(self.num_envs)]
        return self._seeds

    def set_options(self, options: dict[str, Any] | None = None) -> None:
        """Options passed to every env at the next reset."""
        self._options = options

    def reset(self) -> Any:
        seed = self._seeds[0]
        obs, info = self.gym_env.reset(seed=seed, options=self._options)
        self.reset_infos = _unbatch(info, self.num_envs)
        self._seeds, self._options = [None] * self.num_envs, None
        return obs

    def step_async(self, actions: Any) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        obs, rewards, terminated, truncated, info = self.gym_env.step(self._actions)
        dones = terminated | truncated
        infos = _unbatch({k: v for k, v in info.items()
                          if k not in ("final_obs", "_final_obs", "final_info", "_final_info")},
                         self.num_envs)
        if dones.any():
            finals = _unbatch(info.get("final_info", {}), self.num_envs)
            for i in np.flatnonzero(dones):
                self.reset_infos[i] = infos[i]  # the info of the reset that followed
                infos[i] = {**finals[i], "terminal_observation": info["final_obs"][i],
                            "TimeLimit.truncated": bool(truncated[i] and not terminated[i])}
        return obs, np.asarray(rewards, np.float32), dones, infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        self.step_async(actions)
        return self.step_wait()

    def render(self, mode: str | None = None) -> np.ndarray | None:
        """The envs' frames tiled (rgb_array); nothing to return in human mode, which renders
        as the envs step. The mode is the one the envs were made with."""
        if self.render_mode is None or (mode is not None and mode != self.render_mode
                                        and not (mode == "human"
                                                 and self.render_mode == "rgb_array")):
            warnings.warn(f"render({mode!r}): the envs were made with render_mode "
                          f"{self.render_mode!r}; pass render_mode to the env constructor "
                          "(env_kwargs)", stacklevel=2)
            return None
        frames = self.gym_env.render()
        if self.render_mode != "rgb_array" or not frames:
            return None
        return _tile(list(frames))

    def get_images(self) -> Sequence[np.ndarray | None]:
        return list(self.gym_env.render() or [])

    def get_attr(self, name: str, indices: Any = None) -> list[Any]:
        values = self.gym_env.get_attr(name)
        return [values[i] for i in self._indices(indices)]

    def set_attr(self, name: str, value: Any, indices: Any = None) -> None:
        if indices is not None and list(self._indices(indices)) != list(range(self.num_envs)):
            raise ConfigError("set_attr on some envs only is not supported; set it on all")
        self.gym_env.set_attr(name, value)

    def env_method(self, name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        results = self.gym_env.call(name, *args, **kwargs)
        return [results[i] for i in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        def wrapped(env: gym.Env) -> bool:
            while isinstance(env, gym.Wrapper):
                if isinstance(env, wrapper_class):
                    return True
                env = env.env
            return False

        envs = getattr(self.gym_env, "envs", None)
        if envs is None:
            raise ConfigError("env_is_wrapped needs in-process envs (DummyVecEnv)")
        return [wrapped(envs[i]) for i in self._indices(indices)]

    def _indices(self, indices: Any) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)

    @property
    def unwrapped(self) -> VecEnv:
        return self

    def close(self) -> None:
        self.gym_env.close()


class DummyVecEnv(VecEnv):
    """The envs stepped one after another in this process (SB3's DummyVecEnv)."""

    def __init__(self, env_fns: list[Callable[[], gym.Env]]) -> None:
        super().__init__(SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP))

    @property
    def envs(self) -> list[gym.Env]:
        return list(self.gym_env.envs)


class SubprocVecEnv(VecEnv):
    """Each env in a process of its own (SB3's SubprocVecEnv); `start_method` is
    multiprocessing's (default: forkserver where available, else spawn, as SB3)."""

    def __init__(self, env_fns: list[Callable[[], gym.Env]],
                 start_method: str | None = None) -> None:
        import multiprocessing

        if start_method is None:
            methods = multiprocessing.get_all_start_methods()
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        super().__init__(AsyncVectorEnv(env_fns, context=start_method,
                                        autoreset_mode=AutoresetMode.SAME_STEP))


def make_vec_env(env_id: str | Callable[..., gym.Env], n_envs: int = 1, seed: int | None = None,
                 start_index: int = 0, monitor_dir: str | None = None,
                 wrapper_class: Callable[..., gym.Env] | None = None,
                 env_kwargs: dict[str, Any] | None = None, vec_env_cls: type | None = None,
                 vec_env_kwargs: dict[str, Any] | None = None,
                 monitor_kwargs: dict[str, Any] | None = None,
                 wrapper_kwargs: dict[str, Any] | None = None) -> VecEnv:
    """SB3's make_vec_env: `n_envs` copies of an env (an id, or a function making one), each
    recording its episodes' return and length in info["episode"] as SB3's Monitor does
    (Gymnasium's RecordEpisodeStatistics), then `wrapper_class`; env i is seeded with
    seed + start_index + i. `vec_env_cls`: DummyVecEnv (default) or SubprocVecEnv, ours or
    SB3's. No monitor files are written: monitor_dir is refused."""
    if monitor_dir is not None or monitor_kwargs:
        raise ConfigError("make_vec_env: monitor_dir/monitor_kwargs write SB3's Monitor CSV "
                          "files, which ppo.sb3 does not; episode returns and lengths are in "
                          "info['episode']")

    def maker(rank: int) -> Callable[[], gym.Env]:
        def make() -> gym.Env:
            kwargs = dict(env_kwargs or {})
            env = gym.make(env_id, **kwargs) if isinstance(env_id, str) else env_id(**kwargs)
            env = RecordEpisodeStatistics(env)
            if wrapper_class is not None:
                env = wrapper_class(env, **(wrapper_kwargs or {}))
            if seed is not None:
                env.action_space.seed(seed + start_index + rank)
            return env

        return make

    venv = (vec_env_cls or DummyVecEnv)([maker(i) for i in range(n_envs)],
                                        **(vec_env_kwargs or {}))
    if seed is not None:
        venv.seed(seed + start_index)
    return venv


class GymnasiumView(VectorEnv):
    """An SB3-API vec env seen as a Gymnasium vector env (SAME_STEP autoreset), which the
    engine trains on. `on_step(locals)` runs after every step, as SB3 calls its callbacks."""

    def __init__(self, venv: Any) -> None:
        self.venv = venv
        self.num_envs = venv.num_envs
        self.single_observation_space = venv.observation_space
        self.single_action_space = venv.action_space
        self.observation_space = batch_space(venv.observation_space, self.num_envs)
        self.action_space = batch_space(venv.action_space, self.num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}
        self.render_mode = getattr(venv, "render_mode", None)
        self.on_step: Callable[[dict[str, Any]], None] | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.venv.seed(seed)
        return self.venv.reset(), {}

    def step(self, actions: Any):
        obs, rewards, dones, infos = self.venv.step(actions)
        dones = np.asarray(dones, bool)
        truncated = dones & np.array([bool(i.get("TimeLimit.truncated", False)) for i in infos])
        info: dict[str, Any] = {}
        if dones.any():
            final_obs = np.empty(self.num_envs, object)
            for i in np.flatnonzero(dones):
                final_obs[i] = infos[i]["terminal_observation"]
            info = {"final_obs": final_obs, "_final_obs": dones}
        if self.on_step is not None:
            self.on_step({"actions": actions, "new_obs": obs, "rewards": rewards,
                          "dones": dones, "infos": infos})
        return obs, np.asarray(rewards, np.float64), dones & ~truncated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        self.venv.close()
