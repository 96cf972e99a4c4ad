"""The PPO loop of the seed: rollout under pi_old, GAE once, K epochs of clipped minibatch
updates, promote pi_old. `PPO.iteration` is that loop; the rest is bookkeeping around it.
With algo trpo, step 3 is TRPO's update instead (trpo.py); everything else is shared."""

from __future__ import annotations

import datetime
import json
import signal
import sys
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch
from gymnasium import spaces
from threadpoolctl import threadpool_limits

from ppo.advantages import gae
from ppo.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_atomic,
)
from ppo.config import Config, ConfigError, from_dict
from ppo.distributed import join_from_env
from ppo.envs import EnvSource, check_action_space, encode_obs, make_vector_env, obs_dim
from ppo.learner import TorchLearner
from ppo.metrics import MetricsLogger
from ppo.normalization import ObsNormalizer, RewardScaler
from ppo.numpy_learner import NumpyLearner
from ppo.policy import ActorCritic, InferencePolicy
from ppo.rollout import Collector, Rollout
from ppo.trpo import TRPOLearner, critic_parameters


class NonFiniteError(RuntimeError):
    """Too many minibatch steps in a row produced NaN/Inf; none of them was applied."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; the current update finished and a checkpoint was written."""

    def __init__(self, signum: int, update: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after update {update}")
        self.signum = signum


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks between updates, so a stop never
    interrupts a half-applied update or a checkpoint write."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class PPO:
    """PPO-Clip agent: `PPO(Config(env_id=...)).learn()`, then `predict`, `save`, `PPO.load`."""

    def __init__(self, config: Config, env: EnvSource | None = None, verbose: bool = True) -> None:
        self.config = cfg = config.validate()
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device cuda requested but torch sees no CUDA device")
        # Under torchrun this process is one rank of several that train one model together.
        self.replicas = join_from_env(cfg.device, cfg.dist_timeout)
        self.rank = 0 if self.replicas is None else self.replicas.rank
        self.world_size = 1 if self.replicas is None else self.replicas.world_size
        self.device = torch.device(cfg.device) if self.replicas is None else self.replicas.device
        self.verbose = verbose and self.rank == 0
        torch.set_num_threads(cfg.threads)
        # NumPy's BLAS too: the fast path's small matmuls only lose to thread hand-offs, and
        # on a busy machine they lose ten-fold.
        threadpool_limits(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.envs = make_vector_env(cfg, env)
        self.obs_space = self.envs.single_observation_space
        self.action_space = self.envs.single_action_space
        dim = obs_dim(self.obs_space)
        check_action_space(self.action_space)
        self.model = ActorCritic(
            dim, self.action_space, cfg.hidden_sizes, cfg.shared_trunk, cfg.init_log_std
        ).to(self.device)
        if cfg.algo == "trpo":  # Adam fits the critic; the actor takes natural-gradient steps
            if self.replicas is not None:
                raise ConfigError("algo trpo runs in one process; distributed training is PPO's")
            self.optimizer = torch.optim.Adam(critic_parameters(self.model), lr=cfg.lr,
                                              eps=cfg.adam_eps)
            self.learner = TRPOLearner(self.model, self.optimizer, cfg)
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr,
                                              eps=cfg.adam_eps)
            use_numpy = cfg.learner == "numpy" or (cfg.learner == "auto" and cfg.device == "cpu")
            self.learner = (NumpyLearner if use_numpy else TorchLearner)(
                self.model, self.optimizer, cfg, self.replicas)
        self.obs_normalizer = ObsNormalizer(dim, cfg.obs_clip) if cfg.normalize_obs else None
        reward_scaler = (
            RewardScaler(cfg.num_envs, cfg.gamma, cfg.reward_clip) if cfg.normalize_reward else None
        )
        # Separate streams, so that changing one use of randomness leaves the others alone.
        # Each rank samples its own actions; rank 0 as a single process would.
        self.action_rng = np.random.default_rng([cfg.seed, 1, self.rank] if self.rank else
                                                [cfg.seed, 1])
        self.shuffle_rng = np.random.default_rng([cfg.seed, 2])
        self.policy = InferencePolicy(self.model)
        self.collector = Collector(
            self.envs, self.policy, self.action_rng, self.obs_normalizer, reward_scaler
        )
        self.global_step = 0
        self.update = 0
        self.nonfinite_streak = 0
        # Rank 0 alone writes the run directory: metrics, TensorBoard, config, checkpoints.
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir and self.rank == 0 else None
        self._envs_ready = False
        self._resume_point: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None

    # ------------------------------------------------------------------ the seed's loop
    def iteration(self) -> dict[str, Any]:
        """One PPO iteration; returns its diagnostics."""
        cfg, timings = self.config, {}
        start = time.perf_counter()
        self._ensure_envs_reset()
        if cfg.anneal_lr:
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * (1.0 - self.global_step / cfg.total_timesteps)

        # 1. collect a batch with the current policy, pi_old
        with self._pooled():
            rollout = self.collector.collect(cfg.rollout_steps, self.global_step)
        self.global_step += cfg.batch_size * self.world_size
        timings["env"], timings["act"] = self.collector.take_timings()

        # 2. compute advantages once, from the values alive at collection
        tick = time.perf_counter()
        obs, actions, keep = self._freeze(rollout)
        batch_size = len(keep)
        timings["advantages"] = time.perf_counter() - tick

        # 3. K epochs of optimization on the same batch, freshly shuffled each time
        tick = time.perf_counter()
        stats: list[np.ndarray] = []
        epochs_run = 0
        if cfg.algo == "trpo":  # one trust-region policy step, then K epochs of the critic
            stats.append(self.learner.update(self.shuffle_rng))
            self._count_nonfinite(stats[-1][5])
            epochs_run = cfg.epochs
        else:
            stop = False
            for epoch in range(cfg.epochs):
                epochs_run += 1
                if cfg.pitfall_recompute_advantages and epoch > 0:
                    self._advantages(rollout, keep, self.learner.evaluate(obs, actions)[1])
                order = self.shuffle_rng.permutation(batch_size)
                for first in range(0, batch_size, cfg.minibatch_size):
                    stats.append(self.learner.step(order[first : first + cfg.minibatch_size],
                                                   kl_limit=cfg.target_kl))
                    self._count_nonfinite(stats[-1][5])
                    stop = cfg.target_kl is not None and stats[-1][0] > cfg.target_kl
                    if stop:
                        break
                if stop:
                    break

        # 4. promote the current policy to "old"
        self.policy.load(self.model)
        self.update += 1
        timings["optimize"] = time.perf_counter() - tick

        means = np.mean(stats, axis=0).tolist()
        elapsed = time.perf_counter() - start
        row = {
            "update": self.update,
            "global_step": self.global_step,
            "episodic_return": self.collector.episodes.mean_return(),
            "episodic_length": self.collector.episodes.mean_length(),
            "episodes": self.collector.episodes.episodes,
            "approx_kl": means[0], "clipfrac": means[1], "policy_loss": means[2],
            "value_loss": means[3], "entropy": means[4], "nonfinite_steps": int(sum(
                s[5] for s in stats)),
            "explained_variance": self.explained_variance,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "epochs_run": epochs_run,
            "sps": cfg.batch_size * self.world_size / elapsed,
            **{f"time_{k}": v for k, v in timings.items()},
            "time_total": elapsed,
        }
        return row if self.replicas is None else self.replicas.average_metrics(row)

    def _ensure_envs_reset(self) -> None:
        """Reset the envs once. A resumed run replays the episodes it was in the middle of,
        and so continues exactly; where it can't, it starts fresh episodes seeded by the
        update count (not replaying its very first ones). A checkpoint holds rank 0's
        episodes, so other ranks of a distributed run start fresh ones."""
        if self._envs_ready:
            return
        resume_point, self._resume_point = self._resume_point, None
        with self._pooled():
            restored = (resume_point is not None and self.rank == 0
                        and self.collector.restore(*resume_point))
            if not restored:
                if resume_point is not None and self.verbose:
                    print("note: the envs could not be restored mid-episode (not replayable or "
                          "not deterministic); resuming with fresh episodes", file=sys.stderr)
                self.collector.reset(
                    seed=self.config.seed + self.update + self.rank * self.config.num_envs)
        self._envs_ready = True

    def _pooled(self) -> AbstractContextManager:
        """Statistics the collector gathers inside this block end up on every rank alike."""
        return nullcontext() if self.replicas is None else self.replicas.pooling(self.collector)

    def _count_nonfinite(self, skipped: float) -> None:
        self.nonfinite_streak = self.nonfinite_streak + 1 if skipped else 0
        if self.nonfinite_streak >= self.config.max_nonfinite_steps:
            raise NonFiniteError(
                f"{self.nonfinite_streak} minibatch steps in a row had a NaN/Inf loss or "
                f"gradient (update {self.update + 1}); none was applied, the last checkpoint "
                "is intact. Lower lr or check the env's rewards")

    def _freeze(self, rollout: Rollout):
        """log pi_old(a|s) and V(s) for the whole rollout in one pass, then GAE; hands the
        learner the valid transitions (`keep`)."""
        steps, n = rollout.rewards.shape
        obs = rollout.obs.reshape(steps * n, -1)
        actions = rollout.actions.reshape(steps * n, *rollout.actions.shape[2:])
        keep = np.flatnonzero(rollout.valid.reshape(-1))
        if self.replicas is not None:
            # Every rank must take as many minibatch steps: all train on the shortest batch.
            keep = keep[: self.replicas.min(len(keep))]
        logp_old, values = self.learner.evaluate(obs, actions)
        self.learner.load_batch(obs[keep], actions[keep], logp_old[keep], values[keep])
        self._advantages(rollout, keep, values)
        return obs, actions, keep

    def _advantages(self, rollout: Rollout, keep: np.ndarray, values: np.ndarray) -> None:
        """GAE from these values (bootstrapped from the successor states' values), normalized
        per batch if configured, into the learner; records the critic's explained variance."""
        steps, n = rollout.rewards.shape
        values = values.reshape(steps, n)
        successors = self.learner.values(np.concatenate([rollout.last_obs, rollout.final_obs]))
        next_values = np.empty_like(values)
        next_values[:-1] = values[1:]
        next_values[-1] = successors[:n]
        next_values[rollout.final_steps] = successors[n:]
        advantages, returns = gae(
            rollout.rewards, values, next_values, rollout.terminated, rollout.episode_end,
            self.config.gamma, self.config.gae_lambda,
        )
        advantages, returns = advantages.reshape(-1)[keep], returns.reshape(-1)[keep]
        self.explained_variance = _explained_variance(values.reshape(-1)[keep], returns)
        if self.config.norm_adv == "batch":
            mean, std = self._mean_std(advantages)
            advantages = (advantages - mean) / (std + 1e-8)
        self.learner.set_advantages(advantages, returns)

    def _mean_std(self, x: np.ndarray) -> tuple[float, float]:
        """Mean and std (ddof=1) of x, together with the other ranks' x if any."""
        if self.replicas is None:
            return x.mean(), x.std(ddof=1)
        return self.replicas.mean_std(x)

    # ------------------------------------------------------------------ running
    def learn(self, total_timesteps: int | None = None) -> PPO:
        """Train until `total_timesteps` more steps (default: until config.total_timesteps).

        With a run directory, writes metrics.csv, TensorBoard events and checkpoints there.
        """
        cfg = self.config
        end_step = cfg.total_timesteps if total_timesteps is None else (
            self.global_step + total_timesteps)
        if total_timesteps is not None:
            self.config = cfg = cfg.replace(total_timesteps=end_step)
        self._ensure_envs_reset()
        if self.run_dir is not None:
            self._claim_run_dir()
        steps_per_update = cfg.batch_size * self.world_size
        total_updates = self.update + max(0, -(-(end_step - self.global_step) // steps_per_update))
        logger = MetricsLogger(self.run_dir, self.verbose, cfg.tensorboard,
                               total_updates, self.update + 1, cfg.algo == "ppo")
        try:
            with StopSignals() as signals:
                while self.global_step < end_step and not self._stopping(signals):
                    row = self.iteration()
                    logger.log(row)
                    if self.run_dir is not None and self.update % cfg.checkpoint_every == 0:
                        self._checkpoint()
            if self.run_dir is not None:
                self._checkpoint()
        finally:
            logger.close()
        if signals.received is not None:
            raise Interrupted(signals.received, self.update)
        return self

    def _stopping(self, signals: StopSignals) -> bool:
        """True once a stop signal arrived, on any rank: all stop after the same update."""
        if self.replicas is not None:
            signals.received = self.replicas.max(signals.received or 0) or None
        return signals.received is not None

    def _checkpoint(self) -> None:
        path = checkpoint_path(self.run_dir, self.update)
        try:
            self.save(path)
        except OSError as e:
            try:
                previous = f"the previous one, {latest_checkpoint(self.run_dir).name}, is intact"
            except CheckpointError:
                previous = "there is no earlier checkpoint"
            raise CheckpointError(
                f"could not write checkpoint {path}: {e.strerror or e}; {previous}") from None

    def _claim_run_dir(self) -> None:
        """Create the run directory; a fresh agent refuses one that already holds a run."""
        config_file = self.run_dir / "config.toml"
        if self.update == 0 and config_file.exists():
            raise ConfigError(
                f"{self.run_dir} already holds a run; use --resume or another --run-dir")
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.config = self.config.replace(run_dir=str(self.run_dir))
        write_atomic(config_file, tomli_w.dumps(self.config.to_dict()).encode())

    def predict(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Action(s) for one raw observation or a batch; normalization applied, frozen."""
        single = np.asarray(obs).shape == self.obs_space.shape or (
            isinstance(self.obs_space, spaces.Discrete) and np.ndim(obs) == 0)
        raw = np.asarray(obs)[None] if single else np.asarray(obs)
        x = encode_obs(self.obs_space, raw)
        if self.obs_normalizer is not None:
            x = self.obs_normalizer(x)
        if self.device.type == "cpu":
            action = self.policy.act(x, self.action_rng, deterministic)
        else:
            with torch.no_grad():
                action = self.model.act(torch.as_tensor(x, device=self.device),
                                        deterministic).cpu().numpy()
        if isinstance(self.action_space, spaces.Box):
            action = np.clip(action, self.action_space.low, self.action_space.high)
        return action[0] if single else action

    # ------------------------------------------------------------------ persistence
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        for index, slots in opt["state"].items():
            for slot, value in slots.items():
                tensors[f"optim.{index}.{slot}"] = torch.as_tensor(value)
        tensors["rng.torch"] = torch.get_rng_state()
        if self.obs_normalizer is not None:
            for k, v in self.obs_normalizer.stats.state().items():
                tensors[f"obs_norm.{k}"] = torch.as_tensor(v)
        scaler = self.collector.reward_scaler
        if scaler is not None:
            for k, v in scaler.stats.state().items():
                tensors[f"reward_norm.{k}"] = torch.as_tensor(v)
        in_progress, in_progress_meta = self.collector.state()
        for k, v in in_progress.items():
            tensors[f"collector.{k}"] = torch.as_tensor(v)
        meta = {
            "config": self.config.to_dict(),
            "update": self.update,
            "global_step": self.global_step,
            "episodes": self.collector.episodes.episodes,
            "recent_episodes": list(self.collector.episodes.recent),
            "lr": self.optimizer.param_groups[0]["lr"],
            "nonfinite_streak": self.nonfinite_streak,
            "collector": in_progress_meta,
            "rng": {"action": self.action_rng.bit_generator.state,
                    "shuffle": self.shuffle_rng.bit_generator.state},
            "spaces": _describe_spaces(self.obs_space, self.action_space),
            "saved_at": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        return tensors, meta

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, *self.state())
        return path

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                   source: Path) -> None:
        expected = _describe_spaces(self.obs_space, self.action_space)
        if meta["spaces"] != expected:
            raise CheckpointError(
                f"{source} was trained on observation/action spaces {meta['spaces']}, "
                f"this env has {expected}")
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(model_state)
        except RuntimeError as e:
            raise CheckpointError(f"{source} does not fit this network: "
                                  f"{str(e).splitlines()[0]}") from None
        opt = self.optimizer.state_dict()
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, slot = key.split(".")
                opt["state"].setdefault(int(index), {})[slot] = value
        for group in opt["param_groups"]:
            group["lr"] = meta["lr"]
        self.optimizer.load_state_dict(opt)
        self.learner.bind()
        torch.set_rng_state(tensors["rng.torch"])
        if self.obs_normalizer is not None:
            self.obs_normalizer.stats.load(_prefixed(tensors, "obs_norm.", source))
        if self.collector.reward_scaler is not None:
            self.collector.reward_scaler.stats.load(_prefixed(tensors, "reward_norm.", source))
        # The checkpoint holds rank 0's action stream; the other ranks start new ones, apart
        # from those of the run's start and of any other resume.
        self.action_rng.bit_generator.state = meta["rng"]["action"] if self.rank == 0 else (
            np.random.default_rng([self.config.seed, 1, self.rank, meta["update"]])
            .bit_generator.state)
        self.shuffle_rng.bit_generator.state = meta["rng"]["shuffle"]
        self.update, self.global_step = meta["update"], meta["global_step"]
        episodes = self.collector.episodes
        episodes.episodes = meta["episodes"]
        episodes.recent.extend(tuple(e) for e in meta["recent_episodes"])
        self.nonfinite_streak = meta.get("nonfinite_streak", 0)
        in_progress = {k[len("collector."):]: v.numpy() for k, v in tensors.items()
                       if k.startswith("collector.")}
        self._resume_point = (in_progress, meta.get("collector", {}))
        self._envs_ready = False
        self.policy.load(self.model)

    @classmethod
    def load(cls, path: str | Path, env: EnvSource | None = None, verbose: bool = False,
             **overrides: Any) -> PPO:
        """Rebuild an agent from a checkpoint file, or from a run directory's latest one."""
        path = Path(path)
        if path.is_dir():
            path = latest_checkpoint(path)
        tensors, meta = load_checkpoint(path)
        # A file's own idea of where its run lives is never trusted with writes: a loaded
        # agent writes nowhere unless given a run_dir (resume passes the directory it read).
        stored = {k: v for k, v in meta["config"].items() if k != "run_dir"}
        config = from_dict({**stored, **overrides})
        agent = cls(config, env=env, verbose=verbose)
        agent.load_state(tensors, meta, path)
        return agent

    @classmethod
    def resume(cls, run_dir: str | Path, verbose: bool = True, **overrides: Any) -> PPO:
        """Continue a run from its last complete checkpoint, with its own config."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.toml").exists():
            raise CheckpointError(f"{run_dir} is not a run directory (no config.toml)")
        return cls.load(latest_checkpoint(run_dir), verbose=verbose,
                        run_dir=str(run_dir), **overrides)

    def close(self) -> None:
        self.envs.close()
        if self.replicas is not None:
            self.replicas.close()


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str, source: Path) -> dict[str, Any]:
    state = {k[len(prefix):]: v.numpy() for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{source} lacks the {prefix.rstrip('.')} statistics its config uses")
    return state


def _describe_spaces(obs_space: spaces.Space, action_space: spaces.Space) -> dict[str, str]:
    return {"observation": json.dumps(_space_summary(obs_space)),
            "action": json.dumps(_space_summary(action_space))}


def _space_summary(space: spaces.Space) -> list[Any]:
    if isinstance(space, spaces.Discrete):
        return ["Discrete", int(space.n)]
    return [type(space).__name__, list(space.shape)]


def _explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """1 - Var(R - V) / Var(R): 1 is a perfect critic, 0 no better than a constant."""
    var = returns.var()
    return float("nan") if var == 0 else float(1.0 - (returns - values).var() / var)
