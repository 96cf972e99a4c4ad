"""The collector: steps the envs under pi_old and records a rollout, minding episode boundaries.

Gymnasium 1.x vector envs reset a finished sub-env either on the same step (SAME_STEP: the
final observation arrives in info["final_obs"]) or on the next one (NEXT_STEP: the step after
an episode ends is a reset whose action is ignored). Both are handled: a transition never
crosses a reset, and a NEXT_STEP reset step is marked invalid so it is never trained on.

A recurrent policy's state is carried from step to step and across rollouts, reset where an
episode starts; the rollout keeps the state it started from, so that the learner can run the
LSTM over each env's sequence again.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import concatenate, create_empty_array

from ppo.envs import EnvError, EnvValueError, EnvWorkerError, StopTraining
from ppo.normalization import ObsNormalizer, RewardScaler
from ppo.policy import Policy
from ppo.spaces import (
    ActionSpec,
    Obs,
    ObsEncoder,
    ObservationError,
    obs_arrays,
    obs_concat,
    obs_copy,
    obs_empty,
    obs_equal,
    obs_from_arrays,
    obs_set,
    vector_part,
)

LAST_CHECKPOINT = "the last checkpoint is intact, resume with --resume"


@dataclass
class Sequences:
    """What a recurrent learner needs to run the LSTM over the rollout again: its state at
    the rollout's start and where episodes start."""

    initial_state: Any  # the policy's state before step 0, for the N envs
    starts: np.ndarray  # (T, N) bool: the observation at t begins an episode


@dataclass
class Rollout:
    """T steps of N envs. Observations are as the policy saw them (normalized if enabled);
    images stay uint8."""

    obs: Obs  # (T, N, width) float32, (T, N, *image) uint8, or a dict of such
    actions: np.ndarray  # (T, N, columns) as sampled (Gaussian ones unclipped)
    rewards: np.ndarray  # (T, N) float32, scaled if reward scaling is on
    terminated: np.ndarray  # (T, N) bool: no bootstrap
    episode_end: np.ndarray  # (T, N) bool: terminated or truncated, GAE is cut here
    valid: np.ndarray  # (T, N) bool: False on NEXT_STEP reset steps
    last_obs: Obs  # (N, ...): s_T, the bootstrap observation
    final_steps: tuple[np.ndarray, np.ndarray]  # (t, n) of SAME_STEP episode ends
    final_obs: Obs  # (F, ...): the true successor at those steps
    masks: np.ndarray | None = None  # (T, N, mask width) bool: the valid actions, if masked
    # Recorded while acting by policies that compute them anyway (torch ones):
    logp: np.ndarray | None = None  # (T, N) pi_old's log-probs of the actions taken
    values: np.ndarray | None = None  # (T, N) V(s)
    # Recurrent policies: V(last_obs) then V(final_obs), each with the state of its env then.
    successor_values: np.ndarray | None = None
    sequences: Sequences | None = None


class EpisodeStats:
    """Undiscounted returns and lengths of finished episodes, from raw env rewards, and the
    numbers their envs reported in `info` at the end (e.g. is_success).

    Envs wrapped in Gymnasium's RecordEpisodeStatistics report each episode's return and
    length themselves (`info["episode"]`); once they do, those are the episodes counted. An
    Atari env puts it below the wrappers that end a training episode at a life loss and clip
    rewards, so what it reports is the game: its score over all lives."""

    def __init__(self, num_envs: int, window: int = 100) -> None:
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)
        self.recent: deque[tuple[float, int]] = deque(maxlen=window)
        self.info: dict[str, deque[float]] = {}
        self.episodes = 0
        self.window = window
        self.from_info = False  # episodes as the envs report them, not as summed here

    def record(self, rewards: np.ndarray, valid: np.ndarray, ended: np.ndarray,
               reported: list[tuple[float, int]] | None = None) -> None:
        """Add a rollout's (T, N) raw rewards; finished episodes enter `recent` in the order
        they ended. Steps where valid is False (next-step resets) belong to no episode.
        `reported`: (return, length) of the episodes the envs reported, in order of ending.
        Once per rollout rather than per step: the per-step version cost ~1.5 us a step."""
        self.from_info = self.from_info or bool(reported)
        rewards = np.where(valid, rewards, 0.0)
        cum_returns, cum_lengths = np.cumsum(rewards, 0), np.cumsum(valid, 0, dtype=np.int64)
        # Cumulative sums at each env's last episode end within this rollout.
        base_returns = np.zeros_like(self.returns)
        base_lengths = np.zeros_like(self.lengths)
        for t, n in zip(*np.nonzero(ended), strict=True):  # row-major: in order of ending
            if not self.from_info:
                self.recent.append((float(self.returns[n] + cum_returns[t, n] - base_returns[n]),
                                    int(self.lengths[n] + cum_lengths[t, n] - base_lengths[n])))
                self.episodes += 1
            self.returns[n], self.lengths[n] = 0.0, 0
            base_returns[n], base_lengths[n] = cum_returns[t, n], cum_lengths[t, n]
        self.returns += cum_returns[-1] - base_returns
        self.lengths += cum_lengths[-1] - base_lengths
        if self.from_info:
            self.recent.extend(reported or [])
            self.episodes += len(reported or [])

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
                "episode_info": {k: list(v) for k, v in self.info.items()},
                "episodes_from_info": self.from_info}

    def load_state(self, state: dict[str, Any]) -> None:
        self.episodes = state["episodes"]
        self.from_info = state.get("episodes_from_info", False)
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
        name: str = "",
    ) -> None:
        """sde_sample_freq: with gSDE, steps between draws of the exploration matrices (-1:
        once per rollout); None without gSDE. `name`: how errors name the env (its id)."""
        self.envs, self.policy, self.rng, self.name = envs, policy, rng, name
        self.sde_sample_freq = sde_sample_freq
        self.encoder, self.action_spec = encoder, action_spec
        self.obs_normalizer, self.reward_scaler = obs_normalizer, reward_scaler
        self.next_step_reset = envs.metadata.get("autoreset_mode") == AutoresetMode.NEXT_STEP
        self.replayable = getattr(envs, "replayable_episodes", False)  # see episode_replay.py
        self.num_envs = envs.num_envs
        self.episodes = EpisodeStats(self.num_envs)
        self.obs: Obs | None = None
        self.pending_reset = np.zeros(self.num_envs, bool)
        # A recurrent policy's state, and which envs' current observation starts an episode.
        self.hidden: Any = None
        self.starts = np.ones(self.num_envs, bool)
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
        try:
            raw, info = self.envs.reset(seed=seed)
        except Exception as e:
            raise self._failure(e, "at the first reset") from None
        self.envs.action_space.seed(seed)
        self.obs = self._observe(raw, update=True)
        self.pending_reset[:] = False
        self.episodes.reset_partial()
        self._find_masks(info)
        self._fresh_state()
        if self._reports_episodes():
            self.episodes.from_info = True
        return resume is None

    def _fresh_state(self) -> None:
        if self.policy.recurrent:
            self.hidden = self.policy.initial_state(self.num_envs)
            self.starts = np.ones(self.num_envs, bool)

    def _reports_episodes(self) -> bool:
        """Whether the envs are wrapped in RecordEpisodeStatistics (found once, at reset:
        an Atari game may take several rollouts to end)."""
        try:
            return all(self.envs.call("has_wrapper_attr", "return_queue"))
        except Exception:  # a user's vector env may not relay calls
            return False

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
        try:
            snapshots = self.envs.call("snapshot") if replayable else [None]
        except Exception as e:
            raise self._failure(e, "while checkpointing") from None
        if any(snap is None for snap in snapshots):
            return arrays, meta
        if self.mask is not None:
            arrays["collector.mask"] = self.mask
        if self.policy.recurrent:
            arrays.update({"collector.lstm_h": self.hidden.h.cpu().numpy(),
                           "collector.lstm_c": self.hidden.c.cpu().numpy(),
                           "collector.starts": self.starts})
        arrays.update({**obs_arrays("collector.obs", self.obs),
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
        try:
            raw = self._stack(self.envs.call("restore", snapshots))
        except Exception as e:
            raise self._failure(e, "while restoring episodes") from None
        # The statistics already counted this observation before the checkpoint.
        obs = self._observe(raw, update=False)
        if not obs_equal(obs, obs_from_arrays("obs", arrays)):
            return False
        self.obs = obs
        if self.policy.recurrent:
            state = self.policy.initial_state(n)
            self.hidden = type(state)(*(torch.as_tensor(arrays[k], device=state.h.device)
                                       for k in ("lstm_h", "lstm_c")))
            self.starts = arrays["starts"].copy()
        self._find_masks({}, arrays.get("mask"))
        self.pending_reset[:] = False
        self.episodes.returns[:] = arrays["episode_returns"]
        self.episodes.lengths[:] = arrays["episode_lengths"]
        if self.reward_scaler is not None:
            self.reward_scaler.discounted_return[:] = arrays["discounted_return"]
        return True

    def _failure(self, error: Exception, when: str) -> EnvError:
        """One line naming the env, when, and what went wrong."""
        if isinstance(error, BrokenPipeError | EOFError | ConnectionResetError):
            processes = getattr(self.envs, "processes", [])
            dead = [i for i, p in enumerate(processes) if not p.is_alive()]
            which = f"env {dead[0]}'s worker process" if dead else "an env worker process"
            return EnvWorkerError(f"{self.name}: {which} died ({type(error).__name__}) {when}; "
                                  f"{LAST_CHECKPOINT}")
        if isinstance(error, EnvWorkerError):
            return EnvWorkerError(f"{self.name}: {error}")
        what = str(error) if isinstance(error, EnvError | ObservationError) else (
            f"raised {type(error).__name__}: {error}")
        joint = " " if what.startswith("(") else ": "
        return EnvError(f"env {self.name}{joint}{what} {when}; {LAST_CHECKPOINT}")

    def _non_finite(self, name: str, values: np.ndarray, step: int) -> None:
        """Name the first env whose row of `values` (one row per env) is not finite."""
        rows = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        env = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
        raise EnvValueError(f"env {self.name} (index {env}) returned a non-finite {name} near "
                            f"global step {step}; {LAST_CHECKPOINT}")

    def take_timings(self) -> tuple[float, float]:
        """Seconds spent in env.step and in choosing actions since the last call."""
        timings = (self.time_env, self.time_act)
        self.time_env = self.time_act = 0.0
        return timings

    def _observe(self, raw: Any, update: bool, step: int = -1) -> Obs:
        """Encoded and normalized observations; with update, the normalization statistics
        take them in. Non-finite ones stop the run (near global step `step`). Images are
        integers: always finite, never normalized."""
        try:
            obs = self.encoder(raw)
        except ObservationError as e:
            raise self._failure(e, f"near global step {step}") from None
        vector = vector_part(obs)
        if vector is not None and not np.isfinite(vector).all():
            self._non_finite("observation", vector, step)
        if self.obs_normalizer is None:
            return obs
        if update:
            self.obs_normalizer.stats.update(vector)
        return self.obs_normalizer(obs)

    def _stack(self, observations: list[Any]) -> Any:
        """A batch of single-env observations, as a vector env would return it."""
        if self.encoder.plain_box:
            return np.stack(observations)
        space = self.encoder.space
        return concatenate(space, observations, create_empty_array(space, len(observations)))

    def collect(self, steps: int, global_step: int) -> Rollout:
        n, spec, policy = self.num_envs, self.action_spec, self.policy
        obs_buf = obs_empty(self.obs, (steps, n))
        actions = np.empty((steps, n, spec.columns), spec.dtype)
        raw_rewards = np.empty((steps, n), np.float64)
        rewards = np.empty((steps, n), np.float32)  # as trained on: scaled, if scaling is on
        terminated = np.empty((steps, n), bool)
        episode_end = np.empty((steps, n), bool)
        valid = np.ones((steps, n), bool)
        masks = None if self.mask is None else np.empty((steps, *self.mask.shape), bool)
        logp = np.empty((steps, n), np.float32) if policy.records else None
        values = np.empty((steps, n), np.float32) if policy.records else None
        sequences = Sequences(self.hidden, np.empty((steps, n), bool)) if policy.recurrent else None
        noise = policy.noise(self.rng, (steps, n))
        # gSDE: new exploration matrices at the rollout's start, then every sde_sample_freq
        # steps, drawn from the action stream as they are needed.
        resample_every = None if self.sde_sample_freq is None else (
            steps if self.sde_sample_freq == -1 else self.sde_sample_freq)
        finished_info: list[dict[str, float]] = []
        reported: list[tuple[float, int]] = []
        final_t: list[int] = []
        final_n: list[np.ndarray] = []
        final_obs: list[Obs] = []
        final_values: list[np.ndarray] = []
        clock = time.perf_counter
        for t in range(steps):
            tick = clock()
            obs_set(obs_buf, t, self.obs)
            if masks is not None:
                masks[t] = self.mask
            if resample_every is not None and t % resample_every == 0:
                policy.resample_exploration(self.rng, n)
            if policy.records:
                taken = policy.step(self.obs, noise[t], self.mask, self.hidden, self.starts)
                action, logp[t], values[t] = taken.actions, taken.logp, taken.values
                if sequences is not None:
                    sequences.starts[t] = self.starts
                    self.hidden = taken.state
            else:
                action = policy.sample(self.obs, noise[t], self.mask)
            actions[t] = action
            # Gaussian actions are stored as drawn and clipped only on their way to the env.
            env_action = spec.to_env(action)
            tock = clock()
            try:
                raw_obs, reward, term, trunc, info = self.envs.step(env_action)
            except StopTraining:
                raise
            except Exception as e:
                raise self._failure(e, f"near global step {global_step + t * n}") from None
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
                ended_info = info if self.next_step_reset else info.get("final_info", {})
                finished_info += _numbers(ended_info, idx)
                reported += _reported_episodes(ended_info, idx)
                if not self.next_step_reset:
                    final_t.append(t)
                    final_n.append(idx)
                    final_obs.append(self._observe(self._stack(list(info["final_obs"][idx])),
                                                   False, global_step + t * n))
                    if sequences is not None:  # V(final obs), from the state its env had
                        final_values.append(policy.values(
                            final_obs[-1], self.hidden.take(idx), np.zeros(len(idx), bool)))
            # Observations steer the next action, so they are checked at once (in _observe);
            # rewards, once for the whole rollout below.
            self.obs = self._observe(raw_obs, True, global_step + t * n)
            if self.mask_from is not None:
                self.mask = self._masks(info)
            if self.next_step_reset:
                self.pending_reset = ended
            if sequences is not None:
                self.starts = ended
        if not np.isfinite(raw_rewards).all():
            t = int(np.flatnonzero(~np.isfinite(raw_rewards).all(1))[0])
            self._non_finite("reward", raw_rewards[t], global_step + t * n)
        self.episodes.record(raw_rewards, valid, episode_end, reported)
        self.episodes.record_info(finished_info)
        if final_obs:
            counts = [len(i) for i in final_n]
            steps_idx = (np.repeat(final_t, counts), np.concatenate(final_n))
            successors = obs_concat(final_obs)
        else:
            steps_idx = (np.zeros(0, np.int64), np.zeros(0, np.int64))
            successors = obs_empty(self.obs, (0,))
        if self.reward_scaler is None:
            rewards[:] = raw_rewards
        successor_values = None
        if sequences is not None:
            successor_values = np.concatenate(
                [policy.values(self.obs, self.hidden, self.starts), *final_values])
        return Rollout(obs_buf, actions, rewards, terminated, episode_end, valid,
                       obs_copy(self.obs), steps_idx, successors, masks, logp, values,
                       successor_values, sequences)


def _reported_episodes(info: dict[str, Any], envs: np.ndarray) -> list[tuple[float, int]]:
    """(return, length) that RecordEpisodeStatistics reported for the envs in `envs`."""
    episode = info.get("episode")
    if not isinstance(episode, dict):
        return []
    present = info.get("_episode")
    return [(float(episode["r"][i]), int(episode["l"][i])) for i in envs
            if present is None or present[i]]


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



