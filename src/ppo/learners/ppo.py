"""PPO's optimization phase: K epochs over the batch, each a fresh shuffle cut into
minibatches, one clipped-surrogate gradient step per minibatch, with an optional early stop
once approx KL passes target_kl. The step itself is the back end's (ppo_torch, ppo_numpy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ppo.advantages import Batch, targets
from ppo.config import Config
from ppo.learners.base import Learner, StepStats, UpdateStats

if TYPE_CHECKING:
    from ppo.distributed import Replicas


class PPOLearner(Learner):
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Config,
                 replicas: Replicas | None = None) -> None:
        super().__init__(model, optimizer, cfg)
        self.replicas = replicas

    def update(self, batch: Batch, rng: np.random.Generator) -> UpdateStats:
        cfg = self.cfg
        self.load(batch)
        n, size = self.minibatch_units(batch)
        steps: list[StepStats] = []
        for epoch in range(cfg.epochs):
            if cfg.advantages_per_epoch and epoch > 0:  # the ablation: GAE from the new critic
                inputs = batch.gae_inputs
                advantages, returns, _ = targets(inputs, self.values(inputs.obs),
                                                 self.values(inputs.successors), cfg,
                                                 self.replicas)
                self.set_targets(advantages, returns)
            order = rng.permutation(n)
            for first in range(0, n, size):
                steps.append(self.step(order[first : first + size]))
                self.count_nonfinite(steps[-1].nonfinite)
                if cfg.target_kl is not None and steps[-1].approx_kl > cfg.target_kl:
                    return UpdateStats.of(steps, epoch + 1)
        return UpdateStats.of(steps, cfg.epochs)

    def minibatch_units(self, batch: Batch) -> tuple[int, int]:
        """What a minibatch is made of: how many units are shuffled (samples), and how many
        make a minibatch."""
        return len(batch.advantages), self.cfg.minibatch_size

    def load(self, batch: Batch) -> None:
        """Hold the batch for the minibatch steps (on the learner's device)."""
        raise NotImplementedError

    def set_targets(self, advantages: np.ndarray, returns: np.ndarray) -> None:
        raise NotImplementedError

    def step(self, index: np.ndarray) -> StepStats:
        """Loss, gradient, grad-norm clip and Adam on the minibatch `index`; skips the step
        when approx KL exceeds target_kl, or when the loss or gradient is not finite."""
        raise NotImplementedError

    def value_step(self, index: np.ndarray) -> tuple[float, bool]:
        """One Adam step on the value loss alone (TRPO's critic fit; separate networks):
        the loss, and whether the step was applied (False: non-finite gradient)."""
        raise NotImplementedError

    def kl_over_limit(self, approx_kl: float) -> tuple[float, bool]:
        """approx KL as every rank sees it, and whether it stops the epochs."""
        if self.cfg.target_kl is None:
            return approx_kl, False
        if self.replicas is not None:
            approx_kl = self.replicas.mean(approx_kl)  # every rank must stop or step alike
        return approx_kl, approx_kl > self.cfg.target_kl
