"""The collector: steps the envs under pi_old and records a rollout, minding episode boundaries.

Gymnasium 1.x vector envs reset a finished sub-env either on the same step (SAME_STEP: the
final observation arrives in info["final_obs"]) or on the next one (NEXT_STEP: the step after
an episode ends is a reset whose action is ignored). Both are handled: a transition never
crosses a reset, and a NEXT_STEP reset step is marked invalid so it is never trained on.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import concatenate, create_empty_array

from ppo.normalization import ObsNormalizer, RewardScaler
from ppo.policy import Policy
from ppo.spaces import ActionSpec, ObsEncoder


class EnvValueError(RuntimeError):
    """An env returned NaN or Inf: names the step and env index."""


class EnvWorkerError(RuntimeError):
    """A subprocess env worker died: names the env index."""


@dataclass
class Rollout:
    """T steps of N envs. Observations are as the policy saw them (normalized if enabled)."""

    obs: np.ndarray  # (T, N, width) float32
    actions: np.ndarray  # (T, N, columns) as sampled (Gaussian ones unclipped)
    rewards: np.ndarray  # (T, N) float32, scaled if reward scaling is on
    terminated: np.ndarray  # (T, N) bool: no bootstrap
    episode_end: np.ndarray  # (T, N) bool: terminated or truncated, GAE is cut here
    valid: np.ndarray  # (T, N) bool: False on NEXT_STEP reset steps
    last_obs: np.ndarray  # (N, width): s_T, the bootstrap observation
    final_steps: tuple[np.ndarray, np.ndarray]  # (t, n) of SAME_STEP episode ends
    final_obs: np.ndarray  # (F, width): the true successor at those steps
    masks: np.ndarray | None = None  # (T, N, mask width) bool: the valid actions, if masked


class EpisodeStats:
    """Undiscounted returns and lengths of finished episodes, from raw env rewards, and the
    numbers their envs reported in `info` at the end (e.g. is_success)."""

    def __init__(self, num_envs: int, window: int = 100) -> None:
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)
        self.recent: deque[tuple[float, int]] = deque(maxlen=window)
        self.info: dict[str, deque[float]] = {}
        self.episodes = 0
        self.window = window

    def record(self, rewards: np.ndarray, valid: np.ndarray, ended: np.ndarray) -> None:
        """Add a rollout's (T, N) raw rewards; finished episodes enter `recent` in the order
        they ended. Steps where valid is False (next-step resets) belong to no episode.
        Once per rollout rather than per step: the per-step version cost ~1.5 us a step."""
        rewards = np.where(valid, rewards, 0.0)
        cum_returns, cum_lengths = np.cumsum(rewards, 0), np.cumsum(valid, 0, dtype=np.int64)
        # Cumulative sums at each env's last episode end within this rollout.
        base_returns = np.zeros_like(self.returns)
        base_lengths = np.zeros_like(self.lengths)
        for t, n in zip(*np.nonzero(ended), strict=True):  # row-major: in order of ending
            self.recent.append((float(self.returns[n] + cum_returns[t, n] - base_returns[n]),
                                int(self.lengths[n] + cum_lengths[t, n] - base_lengths[n])))
            self.episodes += 1
            self.returns[n], self.lengths[n] = 0.0, 0
            base_returns[n], base_lengths[n] = cum_returns[t, n], cum_lengths[t, n]
        self.returns += cum_returns[-1] - base_returns
        self.lengths += cum_lengths[-1] - base_lengths

    def reset_partial(self) -> None:
        """Forget unfinished episodes (after the envs were reset on resume)."""
        self.returns[:] = 0.0
        self.lengths[:] = 0

    def record_info(self, entries: list[dict[str, float]]) -> None:
        """Add the end-of-episode info numbers of episodes, in the order they ended."""
        for entry in entries:
            for key, value in entry.items():
                self.info.setdefault(key, deque(maxlen=self.window)).append(value)

    def info_means(self) -> dict[str, float]:
        """Mean of each info number over the last episodes that reported it."""
        return {f"info/{key}": float(np.mean(values)) for key, values in self.info.items()}

    def state(self) -> dict[str, Any]:
        """The finished episodes, for a checkpoint's metadata."""
        return {"episodes": self.episodes, "recent_episodes": list(self.recent),
                "episode_info": {k: list(v) for k, v in self.info.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        self.episodes = state["episodes"]
        self.recent.clear()
        self.recent.extend(tuple(e) for e in state["recent_episodes"])
        self.info = {}
        self.record_info([{k: v} for k, values in state.get("episode_info", {}).items()
                          for v in values])

    def mean_return(self) -> float:
        return float(np.mean([r for r, _ in self.recent])) if self.recent else float("nan")

    def mean_length(self) -> float:
        return float(np.mean([n for _, n in self.recent])) if self.recent else float("nan")


class Collector:
    """Owns the envs' current state between rollouts: observation, pending resets, episodes."""

    def __init__(
        self,
        envs: VectorEnv,
        policy: Policy,
        encoder: ObsEncoder,
        action_spec: ActionSpec,
        rng: np.random.Generator,
        obs_normalizer: ObsNormalizer | None,
        reward_scaler: RewardScaler | None,
        sde_sample_freq: int | None = None,
    ) -> None:
        """sde_sample_freq: with gSDE, steps between draws of the exploration matrices (-1:
        once per rollout); None without gSDE."""
        self.envs, self.policy, self.rng = envs, policy, rng
        self.sde_sample_freq = sde_sample_freq
        self.encoder, self.action_spec = encoder, action_spec
        self.obs_normalizer, self.reward_scaler = obs_normalizer, reward_scaler
        self.next_step_reset = envs.metadata.get("autoreset_mode") == AutoresetMode.NEXT_STEP
        self.replayable = getattr(envs, "replayable_episodes", False)  # see episode_replay.py
        self.num_envs = envs.num_envs
        self.episodes = EpisodeStats(self.num_envs)
        self.obs: np.ndarray | None = None
        self.pending_reset = np.zeros(self.num_envs, bool)
        self.time_env = self.time_act = 0.0
        self._resume: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None
        # Invalid-action masking, for categorical heads: from `info["action_mask"]` or an
        # `action_masks()` method (sb3-contrib's convention), decided at the first reset.
        self.mask_from: str | None = None
        self.mask: np.ndarray | None = None

    def start(self, seed: int, replay: bool = True) -> bool:
        """Put the envs where training continues: mid-episode as a loaded checkpoint left
        them, where they can be replayed (and `replay`), else fresh episodes from `seed`.
        Returns False when a checkpoint's episodes had to be given up."""
        resume, self._resume = self._resume, None
        if resume is not None and replay and self._replay(*resume):
            return True
        raw, info = self.envs.reset(seed=seed)
        self.envs.action_space.seed(seed)
        self.obs = self._observe(raw, update=True)
        self.pending_reset[:] = False
        self.episodes.reset_partial()
        self._find_masks(info)
        return resume is None

    def _find_masks(self, info: dict[str, Any], stored: np.ndarray | None = None) -> None:
        """Where the envs' action masks come from, and the current ones (`stored`: those a
        checkpoint kept, for masks that only come in `info`)."""
        if not self.action_spec.mask_size:
            return
        if hasattr(self.envs, "call") and all(self.envs.call("has_wrapper_attr", "action_masks")):
            self.mask_from = "method"
        elif "action_mask" in info or stored is not None:
            self.mask_from = "info"
        if self.mask_from == "info" and stored is not None:
            self.mask = stored
        else:
            self.mask = None if self.mask_from is None else self._masks(info)

    def _masks(self, info: dict[str, Any]) -> np.ndarray:
        """The valid actions of each env's current observation, (N, mask width) bool."""
        if self.mask_from == "method":
            masks = np.stack(self.envs.call("action_masks"))
        else:
            masks = info["action_mask"]
        masks = np.asarray(masks, bool).reshape(self.num_envs, -1)
        if masks.shape[1] != self.action_spec.mask_size:
            raise EnvValueError(f"action masks have {masks.shape[1]} entries per env, the "
                                f"action space needs {self.action_spec.mask_size}")
        return masks

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and metadata for a checkpoint: normalization statistics, finished episodes,
        and what a resumed run needs to continue the episodes in progress exactly (nothing
        when the envs can't be replayed, see episode_replay.py)."""
        arrays: dict[str, np.ndarray] = {}
        for prefix, normalizer in (("obs_norm", self.obs_normalizer),
                                   ("reward_norm", self.reward_scaler)):
            if normalizer is not None:
                arrays.update({f"{prefix}.{k}": v for k, v in normalizer.stats.state().items()})
        meta: dict[str, Any] = {**self.episodes.state(), "collector": {}}
        replayable = self.replayable and self.obs is not None
        snapshots = self.envs.call("snapshot") if replayable else [None]
        if any(snap is None for snap in snapshots):
            return arrays, meta
        if self.mask is not None:
            arrays["collector.mask"] = self.mask
        arrays.update({"collector.obs": self.obs,
                       "collector.episode_returns": self.episodes.returns,
                       "collector.episode_lengths": self.episodes.lengths})
        if self.reward_scaler is not None:
            arrays["collector.discounted_return"] = self.reward_scaler.discounted_return
        for i, snap in enumerate(snapshots):
            arrays[f"collector.actions.{i}"] = snap["actions"]
        meta["collector"] = {"env_seeds": [snap["env_seed"] for snap in snapshots],
                             "episodes": [snap["episode"] for snap in snapshots]}
        return arrays, meta

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """The counterpart of `state`; the episodes in progress are replayed by `start`."""
        for prefix, normalizer in (("obs_norm", self.obs_normalizer),
                                   ("reward_norm", self.reward_scaler)):
            if normalizer is not None:
                normalizer.stats.load({k[len(prefix) + 1:]: v for k, v in arrays.items()
                                       if k.startswith(prefix + ".")})
        self.episodes.load_state(meta)
        self._resume = ({k[len("collector."):]: v for k, v in arrays.items()
                         if k.startswith("collector.")}, meta["collector"])

    def _replay(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bool:
        """Replay the episodes in progress from `state()`. False when that is impossible
        (other envs, or an env that is not deterministic)."""
        n = self.num_envs
        if not (self.replayable and meta and len(meta["env_seeds"]) == n):
            return False
        snapshots = [{"env_seed": meta["env_seeds"][i], "episode": meta["episodes"][i],
                      "actions": arrays[f"actions.{i}"]} for i in range(n)]
        raw = self._stack(self.envs.call("restore", snapshots))
        # The statistics already counted this observation before the checkpoint.
        obs = self._observe(raw, update=False)
        if not np.array_equal(obs, arrays["obs"]):
            return False
        self.obs = obs
        self._find_masks({}, arrays.get("mask"))
        self.pending_reset[:] = False
        self.episodes.returns[:] = arrays["episode_returns"]
        self.episodes.lengths[:] = arrays["episode_lengths"]
        if self.reward_scaler is not None:
            self.reward_scaler.discounted_return[:] = arrays["discounted_return"]
        return True

    def take_timings(self) -> tuple[float, float]:
        """Seconds spent in env.step and in choosing actions since the last call."""
        timings = (self.time_env, self.time_act)
        self.time_env = self.time_act = 0.0
        return timings

    def _observe(self, raw: Any, update: bool, step: int = -1) -> np.ndarray:
        """Encoded and normalized observations; with update, the normalization statistics
        take them in. Non-finite ones stop the run (near global step `step`)."""
        obs = self.encoder(raw)
        if not np.isfinite(obs).all():
            _raise_non_finite("observation", obs, step)
        if self.obs_normalizer is None:
            return obs
        if update:
            self.obs_normalizer.stats.update(obs)
        return self.obs_normalizer(obs)

    def _stack(self, observations: list[Any]) -> Any:
        """A batch of single-env observations, as a vector env would return it."""
        if self.encoder.plain_box:
            return np.stack(observations)
        space = self.encoder.space
        return concatenate(space, observations, create_empty_array(space, len(observations)))

    def collect(self, steps: int, global_step: int) -> Rollout:
        n, spec = self.num_envs, self.action_spec
        obs_buf = np.empty((steps, n, self.obs.shape[-1]), np.float32)
        actions = np.empty((steps, n, spec.columns), spec.dtype)
        raw_rewards = np.empty((steps, n), np.float64)
        rewards = np.empty((steps, n), np.float32)  # as trained on: scaled, if scaling is on
        terminated = np.empty((steps, n), bool)
        episode_end = np.empty((steps, n), bool)
        valid = np.ones((steps, n), bool)
        masks = None if self.mask is None else np.empty((steps, *self.mask.shape), bool)
        noise = self.policy.noise(self.rng, (steps, n))
        # gSDE: new exploration matrices at the rollout's start, then every sde_sample_freq
        # steps, drawn from the action stream as they are needed.
        resample_every = None if self.sde_sample_freq is None else (
            steps if self.sde_sample_freq == -1 else self.sde_sample_freq)
        finished_info: list[dict[str, float]] = []
        final_t: list[int] = []
        final_n: list[np.ndarray] = []
        final_obs: list[np.ndarray] = []
        clock = time.perf_counter
        for t in range(steps):
            tick = clock()
            obs_buf[t] = self.obs
            if masks is not None:
                masks[t] = self.mask
            if resample_every is not None and t % resample_every == 0:
                self.policy.resample_exploration(self.rng, n)
            action = self.policy.sample(self.obs, noise[t], self.mask)
            actions[t] = action
            # Gaussian actions are stored as drawn and clipped only on their way to the env.
            env_action = spec.to_env(action)
            tock = clock()
            try:
                raw_obs, reward, term, trunc, info = self.envs.step(env_action)
            except (BrokenPipeError, EOFError, ConnectionResetError) as e:
                raise _dead_worker(self.envs, e) from None
            self.time_act += tock - tick
            self.time_env += clock() - tock
            ended = term | trunc
            raw_rewards[t], terminated[t], episode_end[t] = reward, term, ended
            # Only a next-step reset makes a step invalid; the common case skips the mask.
            step_valid = None
            if self.next_step_reset and self.pending_reset.any():
                step_valid = valid[t] = ~self.pending_reset
            if self.reward_scaler is not None:
                rewards[t] = self.reward_scaler(reward, ended, step_valid)
            # Same-step resets put the true successors in info; an empty info means none.
            if info and ended.any():
                idx = np.flatnonzero(ended)
                finished_info += _numbers(info if self.next_step_reset else
                                          info.get("final_info", {}), idx)
                if not self.next_step_reset:
                    final_t.append(t)
                    final_n.append(idx)
                    final_obs.append(self._observe(self._stack(list(info["final_obs"][idx])),
                                                   False, global_step + t * n))
            # Observations steer the next action, so they are checked at once (in _observe);
            # rewards, once for the whole rollout below.
            self.obs = self._observe(raw_obs, True, global_step + t * n)
            if self.mask_from is not None:
                self.mask = self._masks(info)
            if self.next_step_reset:
                self.pending_reset = ended
        if not np.isfinite(raw_rewards).all():
            t = int(np.flatnonzero(~np.isfinite(raw_rewards).all(1))[0])
            _raise_non_finite("reward", raw_rewards[t], global_step + t * n)
        self.episodes.record(raw_rewards, valid, episode_end)
        self.episodes.record_info(finished_info)
        if final_obs:
            counts = [len(i) for i in final_n]
            steps_idx = (np.repeat(final_t, counts), np.concatenate(final_n))
            successors = np.concatenate(final_obs)
        else:
            steps_idx = (np.zeros(0, np.int64), np.zeros(0, np.int64))
            successors = np.zeros((0, self.obs.shape[-1]), np.float32)
        if self.reward_scaler is None:
            rewards[:] = raw_rewards
        return Rollout(obs_buf, actions, rewards, terminated, episode_end, valid,
                       self.obs.copy(), steps_idx, successors, masks)


def _numbers(info: dict[str, Any], envs: np.ndarray) -> list[dict[str, float]]:
    """For each env in `envs`, the numeric scalars of a batched info dict (Gymnasium's layout:
    key -> array over envs, `_key` -> which envs have it)."""
    found: list[dict[str, float]] = [{} for _ in envs]
    for key, values in info.items():
        if key.startswith("_") or not isinstance(values, np.ndarray) or values.ndim != 1:
            continue
        if values.dtype.kind not in "biuf" or key in ("final_obs", "action_mask"):
            continue
        present = info.get(f"_{key}")
        for entry, i in zip(found, envs, strict=True):
            if present is None or present[i]:
                entry[key] = float(values[i])
    return found


def _dead_worker(envs: VectorEnv, error: Exception) -> EnvWorkerError:
    processes = getattr(envs, "processes", [])
    dead = [i for i, p in enumerate(processes) if not p.is_alive()]
    which = f"env {dead[0]}'s worker process" if dead else "an env worker process"
    return EnvWorkerError(f"{which} died ({type(error).__name__}); the last checkpoint is "
                          "intact, resume with --resume")


def _raise_non_finite(name: str, values: np.ndarray, step: int) -> None:
    """Name the first env whose row of `values` (one row per env) is not finite."""
    rows = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    env = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
    raise EnvValueError(f"env {env} returned a non-finite {name} near global step {step}")
