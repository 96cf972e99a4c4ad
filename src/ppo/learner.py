"""One PPO minibatch step, written as the seed writes it: PyTorch autograd, any device.

This is the plain formula. `NumpyLearner` (numpy_learner.py) is the CPU fast path, tested
to give the same losses and gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ppo import objective
from ppo.config import Config
from ppo.policy import ActorCritic

if TYPE_CHECKING:
    from ppo.distributed import Replicas


class TorchLearner:
    """Holds the batch on the model's device and applies clipped-surrogate minibatch steps."""

    def __init__(self, model: ActorCritic, optimizer: torch.optim.Optimizer, cfg: Config,
                 replicas: Replicas | None = None) -> None:
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.replicas = replicas
        self.device = next(model.parameters()).device

    def bind(self) -> None:
        """Nothing to redo after a checkpoint load: torch holds the parameters itself."""

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=self.device)

    @torch.no_grad()
    def evaluate(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log pi(a|s) and V(s) under the current weights, for a whole rollout."""
        logp, _, values = self.model.evaluate(self._tensor(obs), self._tensor(actions))
        return logp.cpu().numpy(), values.cpu().numpy()

    @torch.no_grad()
    def values(self, obs: np.ndarray) -> np.ndarray:
        return self.model.value(self._tensor(obs)).cpu().numpy()

    def load_batch(self, obs, actions, logp_old, values) -> None:
        """The rollout's transitions with what was frozen at collection."""
        self.obs, self.actions = self._tensor(obs), self._tensor(actions)
        self.logp_old, self.old_values = self._tensor(logp_old), self._tensor(values)

    def set_advantages(self, advantages: np.ndarray, returns: np.ndarray) -> None:
        """Targets from GAE: computed once per rollout (or per epoch, under the pitfall)."""
        self.advantages, self.returns = self._tensor(advantages), self._tensor(returns)

    def step(self, index: np.ndarray, kl_limit: float | None = None) -> np.ndarray:
        """Loss, backward, clip, Adam on one minibatch. Returns (approx_kl, clipfrac,
        policy_loss, value_loss, entropy, nonfinite); skips the step when approx KL exceeds
        kl_limit, or when the loss or gradient is not finite (then nonfinite is 1)."""
        cfg, mb = self.cfg, self._tensor(index)
        logp, entropy, values = self.model.evaluate(self.obs[mb], self.actions[mb])
        # The pitfall: pi_old taken from the current weights makes every ratio exactly 1.
        logp_old = logp.detach() if cfg.pitfall_fresh_old_logprobs else self.logp_old[mb]
        log_ratio = logp - logp_old
        ratio = torch.exp(log_ratio)
        advantages = self.advantages[mb]
        if cfg.norm_adv == "minibatch" and len(index) > 1:
            advantages = objective.normalize(advantages)
        loss_pi = objective.clipped_surrogate_loss(ratio, advantages, cfg.clip_eps)
        loss_v = objective.value_loss(values, self.old_values[mb], self.returns[mb],
                                      cfg.value_clip_eps if cfg.clip_value else None)
        loss = objective.ppo_loss(loss_pi, loss_v, entropy.mean(), cfg.vf_coef, cfg.ent_coef)
        with torch.no_grad():
            stats = torch.stack([objective.approx_kl(log_ratio),
                                 objective.clip_fraction(ratio, cfg.clip_eps),
                                 loss_pi, loss_v, entropy.mean(), torch.zeros(())]).cpu().numpy()
        if kl_limit is not None and self.replicas is not None:
            stats[0] = self.replicas.mean(stats[0])  # every rank must stop or step alike
        if kl_limit is not None and stats[0] > kl_limit:
            return stats
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.model.parameters())
        if self.replicas is not None:  # before the clip, which must see the global gradient
            self.replicas.average_gradients_([p.grad for p in params])
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not torch.isfinite(norm):
            stats[5] = 1.0
            return stats
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, cfg.max_grad_norm, norm)
        self.optimizer.step()
        return stats
