"""The PPO agent: the public API (learn, predict, save, load, resume) and the training loop.

`PPO.iteration` is PPO (Schulman et al. 2017, Algorithm 1): collect a rollout under pi_old,
compute GAE advantages once, optimize the clipped surrogate for K epochs of minibatches,
promote the new policy to pi_old. With algo trpo the optimization is TRPO's step instead.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv
from threadpoolctl import threadpool_limits

from ppo import checkpoint
from ppo.advantages import prepare_batch
from ppo.config import Config, ConfigError
from ppo.console import rounding_note
from ppo.distributed import join_from_env
from ppo.envs import EnvSource, close_quietly, open_envs
from ppo.evaluation import Evaluator
from ppo.learners import make_learner
from ppo.metrics import MetricsLogger, tracking_sinks
from ppo.networks import FeaturesExtractor, Network, build, check_trainable
from ppo.normalization import ObsNormalizer, RewardScaler
from ppo.policy import make_policy, predict
from ppo.rollout import Collector
from ppo.signals import Interrupted, StopSignals

# learn(callback=...): called with each update's metrics row and the agent; False stops.
Callback = Callable[[dict[str, Any], "PPO"], bool | None]


class PPO:
    """PPO-Clip agent: `PPO(Config(env_id=...)).learn()`, then `predict`, `save`, `PPO.load`."""

    def __init__(self, config: Config, env: EnvSource | None = None, verbose: bool = True,
                 features_extractor: FeaturesExtractor | None = None,
                 network: Network | None = None) -> None:
        """`env`: an env id through config.env_id, or a gymnasium.Env, a factory of them, or
        a VectorEnv. `features_extractor(obs_width)` returns a torch module whose output feeds
        the MLPs; `network(obs_width, action_spec)` returns a whole actor-critic module whose
        forward gives (distribution parameters, value). Either trains on the torch learner;
        `PPO.load` needs the same one again."""
        if not isinstance(config, Config):
            raise ConfigError(f"config must be a ppo.Config, got {type(config).__name__}")
        if env is not None and not (isinstance(env, str | gym.Env | VectorEnv) or callable(env)):
            raise ConfigError("env must be an env id, a gymnasium.Env, a factory of them or a "
                              f"VectorEnv, got {type(env).__name__}")
        self.config = cfg = config.validate()
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device cuda requested but torch sees no CUDA device")
        # Under torchrun this process is one rank of several that train one model together.
        self.replicas = join_from_env(cfg.device, cfg.dist_timeout)
        if cfg.algo == "trpo" and self.replicas is not None:
            raise ConfigError("algo trpo runs in one process; distributed training is PPO's")
        self.rank = 0 if self.replicas is None else self.replicas.rank
        self.world_size = 1 if self.replicas is None else self.replicas.world_size
        self.device = torch.device(cfg.device) if self.replicas is None else self.replicas.device
        self.verbose = verbose and self.rank == 0
        torch.set_num_threads(cfg.threads)
        # NumPy's BLAS too: the fast path's small matmuls only lose to thread hand-offs, and
        # on a busy machine they lose ten-fold.
        threadpool_limits(cfg.threads)
        torch.manual_seed(cfg.seed)
        opened = open_envs(cfg, env, self.verbose,
                           builtin_network=features_extractor is None and network is None)
        self.envs, self._make_env, self.env_name = opened.envs, opened.make_one, opened.name
        self.encoder, self.action_spec = opened.encoder, opened.action_spec
        self.model = build(self.encoder, self.action_spec, cfg, features_extractor,
                           network).to(self.device)
        check_trainable(self.model, cfg, self.envs.metadata.get("autoreset_mode"),
                        distributed=self.replicas is not None)
        self.custom_network = features_extractor is not None or network is not None
        self.learner = make_learner(cfg, self.model, self.replicas)
        # Images are never normalized: without vector parts there is nothing to normalize.
        self.obs_normalizer = (ObsNormalizer(self.encoder.normalized_columns, cfg.obs_clip)
                               if cfg.normalize_obs and self.encoder.width else None)
        reward_scaler = (RewardScaler(cfg.num_envs, cfg.gamma, cfg.reward_clip)
                         if cfg.normalize_reward else None)
        # Separate streams, so that changing one use of randomness leaves the others alone.
        # Each rank samples its own actions; rank 0 as a single process would.
        self.action_rng = np.random.default_rng([cfg.seed, 1, self.rank] if self.rank else
                                                [cfg.seed, 1])
        self.shuffle_rng = np.random.default_rng([cfg.seed, 2])
        self.policy = make_policy(self.model, self.action_spec)
        self.collector = Collector(self.envs, self.policy, self.encoder, self.action_spec,
                                   self.action_rng, self.obs_normalizer, reward_scaler,
                                   cfg.sde_sample_freq if cfg.use_sde else None, self.env_name)
        self.global_step = 0
        self.update = 0
        self.best_eval_return = -math.inf
        # Rank 0 alone writes the run directory: metrics, TensorBoard, config, checkpoints.
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir and self.rank == 0 else None
        self._envs_ready = False

    # ------------------------------------------------------------------ the PPO loop
    def iteration(self) -> dict[str, Any]:
        """One PPO iteration; returns its metrics row."""
        cfg, start = self.config, time.perf_counter()
        self._start_envs()
        self.learner.anneal(1.0 - self.global_step / cfg.total_timesteps)

        # 1. collect a batch with the current policy, pi_old
        with self._pooled():
            rollout = self.collector.collect(cfg.rollout_steps, self.global_step)
        self.global_step += cfg.batch_size * self.world_size
        time_env, time_act = self.collector.take_timings()

        # 2. compute advantages once, from the values alive at collection
        tick = time.perf_counter()
        batch = prepare_batch(rollout, self.learner.evaluate, self.learner.values, cfg,
                              self.replicas)
        tock = time.perf_counter()

        # 3. K epochs of optimization on the same batch, freshly shuffled each time
        stats = self.learner.update(batch, self.shuffle_rng)

        # 4. promote the current policy to pi_old
        self.policy.promote(self.model)
        self.update += 1

        end = time.perf_counter()
        row = {"update": self.update, "global_step": self.global_step,
               "episodic_return": self.collector.episodes.mean_return(),
               "episodic_length": self.collector.episodes.mean_length(),
               "episodes": self.collector.episodes.episodes,
               **self.collector.episodes.info_means(),
               **dataclasses.asdict(stats), "explained_variance": batch.explained_variance,
               "learning_rate": self.learner.lr, "sps": cfg.batch_size * self.world_size /
               (end - start), "time_env": time_env, "time_act": time_act,
               "time_advantages": tock - tick, "time_optimize": end - tock,
               "time_total": end - start}
        return row if self.replicas is None else self.replicas.average_metrics(row)

    def _start_envs(self) -> None:
        """Reset the envs once. A resumed run replays the episodes it was in the middle of
        and so continues exactly; where it can't, it starts fresh episodes seeded by the
        update count. A checkpoint holds rank 0's episodes: other ranks start fresh ones."""
        if self._envs_ready:
            return
        with self._pooled():
            seed = self.config.seed + self.update + self.rank * self.config.num_envs
            if not self.collector.start(seed, replay=self.rank == 0) and self.verbose:
                print("note: the envs could not be restored mid-episode (not replayable or "
                      "not deterministic); resuming with fresh episodes", file=sys.stderr)
        self._envs_ready = True

    def _pooled(self) -> AbstractContextManager:
        """Statistics the collector gathers inside this block end up on every rank alike."""
        return nullcontext() if self.replicas is None else self.replicas.pooling(self.collector)

    # ------------------------------------------------------------------ running
    def learn(self, total_timesteps: int | None = None, callback: Callback | None = None) -> PPO:
        """Train until `total_timesteps` more steps (default: until config.total_timesteps).

        With a run directory, writes metrics.csv, TensorBoard events and checkpoints there.
        `callback(row, agent)` runs after every update; returning False stops the run cleanly
        (with a final checkpoint).
        """
        if total_timesteps is not None and (
                not isinstance(total_timesteps, int) or isinstance(total_timesteps, bool)):
            raise ConfigError(f"total_timesteps must be an integer, got {total_timesteps!r}")
        # One writer per run directory, from the first write to the last (see checkpoint.py).
        with (nullcontext() if self.run_dir is None
              else checkpoint.run_dir_lock(self.run_dir, create=True)):
            return self._learn(total_timesteps, callback)

    def _learn(self, total_timesteps: int | None, callback: Callback | None) -> PPO:
        cfg = self.config
        end_step = cfg.total_timesteps if total_timesteps is None else (
            self.global_step + total_timesteps)
        if total_timesteps is not None:
            self.config = cfg = cfg.replace(total_timesteps=end_step)
        self._start_envs()
        if self.run_dir is not None:
            self.config = cfg = checkpoint.claim_run_dir(self.run_dir, cfg, self.update == 0)
        steps_per_update = cfg.batch_size * self.world_size
        if self.verbose and (note := rounding_note(self.global_step, end_step, steps_per_update)):
            print(f"note: {note}", file=sys.stderr)
        total_updates = self.update + max(0, -(-(end_step - self.global_step) // steps_per_update))
        logger = MetricsLogger(self.run_dir, self.verbose, cfg.tensorboard,
                               total_updates, self.update + 1,
                               tracking_sinks(cfg) if self.rank == 0 else [])
        evaluator = None if cfg.eval_every is None else Evaluator(
            self._make_env, cfg.eval_every, cfg.eval_episodes, cfg.eval_deterministic, cfg.seed)
        try:
            with StopSignals() as signals:
                while self.global_step < end_step and not self._stopping(signals):
                    row = self.iteration()
                    last = self.global_step >= end_step
                    if evaluator is not None and (evaluator.due(self.update) or last):
                        row.update(self._evaluate(evaluator))
                    logger.log(row)
                    if self.run_dir is not None and self.update % cfg.checkpoint_every == 0:
                        checkpoint.write(self)
                    if callback is not None and callback(row, self) is False:
                        break
                    if self._target_reached(row, evaluator):
                        break
                # Inside StopSignals: a second Ctrl-C can't cut the final checkpoint short.
                if self.run_dir is not None:
                    checkpoint.write(self)
            if self.verbose:
                for line in logger.summary():
                    print(line)
        finally:
            logger.close()
            if evaluator is not None:
                evaluator.close()
        if signals.received is not None:
            raise Interrupted(signals.received, self.update)
        return self

    def _evaluate(self, evaluator: Evaluator) -> dict[str, float]:
        """An evaluation's columns; the best one so far is kept as checkpoints/best."""
        if self._make_env is None:
            raise ConfigError("evaluation during training needs an env id or an env factory, "
                              "not an Env or VectorEnv instance")
        result = evaluator.run(self)
        if result["eval_return"] > self.best_eval_return:
            self.best_eval_return = result["eval_return"]
            if self.run_dir is not None:
                checkpoint.save(self, checkpoint.best_path(self.run_dir))
        return result

    def _target_reached(self, row: dict[str, Any], evaluator: Evaluator | None) -> bool:
        """stop_at_return, against the evaluation when there is one, else the training mean."""
        target = self.config.stop_at_return
        score = row.get("eval_return", math.nan) if evaluator else row["episodic_return"]
        return target is not None and score >= target

    def _stopping(self, signals: StopSignals) -> bool:
        """True once a stop signal arrived, on any rank: all stop after the same update."""
        if self.replicas is not None:
            signals.received = self.replicas.max(signals.received or 0) or None
        return signals.received is not None

    def predict(self, obs: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = False, action_masks: Any = None,
                rng: np.random.Generator | None = None) -> tuple[Any, Any]:
        """Action(s) for one raw observation or a batch, with observation normalization
        applied (frozen), and the recurrent state (None: this policy has none).
        `action_masks`: the valid actions, as the env gives them (masked policies); `rng`:
        the stream sampled actions draw from (default: the agent's own).

        A recurrent policy (policy lstm) takes `state` as it returned it last time (None: a
        fresh one) and `episode_start`, a bool per observation, True where it begins an
        episode (its state is reset first); it returns the state after the step, as
        Stable-Baselines3's RecurrentPPO does."""
        return predict(self.policy, self.encoder, self.obs_normalizer, self.action_spec, obs,
                       state, episode_start, deterministic, action_masks,
                       rng or self.action_rng)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        return checkpoint.save(self, Path(path))

    @classmethod
    def load(cls, path: str | Path, env: EnvSource | None = None, verbose: bool = False,
             features_extractor: FeaturesExtractor | None = None, network: Network | None = None,
             **overrides: Any) -> PPO:
        """Rebuild an agent from a checkpoint file, or from a run directory's latest one (with
        the same feature extractor or network, if it was trained with one)."""
        config, tensors, meta, path = checkpoint.read_for_load(path, overrides, verbose)
        agent = cls(config, env=env, verbose=verbose, features_extractor=features_extractor,
                    network=network)
        checkpoint.restore(agent, tensors, meta, path)
        return agent

    @classmethod
    def resume(cls, run_dir: str | Path, verbose: bool = True, **overrides: Any) -> PPO:
        """Continue a run from its last complete checkpoint, with its own config."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.toml").exists():
            raise checkpoint.CheckpointError(f"{run_dir} is not a run directory (no config.toml)")
        return cls.load(run_dir, verbose=verbose, run_dir=str(run_dir), **overrides)

    def close(self) -> None:
        close_quietly(self.envs)
        if self.replicas is not None:
            self.replicas.close()
