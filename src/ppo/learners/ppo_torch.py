"""PPO's minibatch step as the formula reads: PyTorch autograd, any device, any network."""

from __future__ import annotations

import numpy as np
import torch

from ppo import objective
from ppo.advantages import Batch
from ppo.learners.base import StepStats
from ppo.learners.ppo import PPOLearner
from ppo.networks import ActorCritic
from ppo.spaces import Obs, obs_take, obs_tensor


@torch.no_grad()
def evaluate(model: ActorCritic, obs: Obs, actions: np.ndarray,
             masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """log pi(a|s) and V(s) of a whole rollout, in torch on the model's device."""
    device = next(model.parameters()).device
    logp, _, values = model.evaluate(
        obs_tensor(obs, device), torch.as_tensor(actions, device=device),
        None if masks is None else torch.as_tensor(masks, device=device))
    return logp.cpu().numpy(), values.cpu().numpy()


@torch.no_grad()
def values(model: ActorCritic, obs: Obs) -> np.ndarray:
    device = next(model.parameters()).device
    return model.value(obs_tensor(obs, device)).cpu().numpy()


class TorchPPO(PPOLearner):
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=self.device)

    def evaluate(self, obs: np.ndarray, actions: np.ndarray, masks: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        return evaluate(self.model, obs, actions, masks)

    def values(self, obs: np.ndarray) -> np.ndarray:
        return values(self.model, obs)

    def load(self, batch: Batch) -> None:
        self.obs, self.actions = obs_tensor(batch.obs, self.device), self._tensor(batch.actions)
        self.masks = None if batch.masks is None else self._tensor(batch.masks)
        self.logp_old, self.old_values = self._tensor(batch.logp_old), self._tensor(batch.values)
        self.set_targets(batch.advantages, batch.returns)

    def set_targets(self, advantages: np.ndarray, returns: np.ndarray) -> None:
        self.advantages, self.returns = self._tensor(advantages), self._tensor(returns)

    def minibatch(self, index: np.ndarray) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The minibatch's sample indices, and log pi(a|s), entropy and V(s) on it."""
        mb = self._tensor(index)
        return mb, self.model.evaluate(obs_take(self.obs, mb), self.actions[mb],
                                       None if self.masks is None else self.masks[mb])

    def step(self, index: np.ndarray) -> StepStats:
        cfg = self.cfg
        mb, (logp, entropy, values) = self.minibatch(index)
        # The ablation: pi_old taken from the current weights makes every ratio exactly 1.
        logp_old = logp.detach() if cfg.old_logprobs_from_current else self.logp_old[mb]
        log_ratio = logp - logp_old
        ratio = torch.exp(log_ratio)
        advantages = self.advantages[mb]
        if cfg.norm_adv == "minibatch" and len(index) > 1:
            advantages = objective.normalize(advantages)
        loss_pi = objective.clipped_surrogate_loss(ratio, advantages, self.clip_eps)
        loss_v = objective.value_loss(values, self.old_values[mb], self.returns[mb],
                                      cfg.value_clip_eps if cfg.clip_value else None)
        loss = objective.ppo_loss(loss_pi, loss_v, entropy.mean(), cfg.vf_coef, cfg.ent_coef)
        with torch.no_grad():
            kl, clipfrac, *rest = torch.stack([
                objective.approx_kl(log_ratio), objective.clip_fraction(ratio, self.clip_eps),
                loss_pi, loss_v, entropy.mean()]).tolist()
        kl, stop = self.kl_over_limit(kl)
        if stop:
            return StepStats(kl, clipfrac, *rest, 0.0)
        applied = self._apply(loss, list(self.model.parameters()))
        return StepStats(kl, clipfrac, *rest, 0.0 if applied else 1.0)

    def value_step(self, index: np.ndarray) -> tuple[float, bool]:
        cfg, mb = self.cfg, self._tensor(index)
        loss = objective.value_loss(self.model.value(obs_take(self.obs, mb)), self.old_values[mb],
                                    self.returns[mb],
                                    cfg.value_clip_eps if cfg.clip_value else None)
        return loss.item(), self._apply(loss, self.model.critic_parameters())

    def _apply(self, loss: torch.Tensor, params: list[torch.nn.Parameter]) -> bool:
        """Backward, gradient averaging over ranks, global grad-norm clip and Adam; nothing is
        applied (False) when the gradient is not finite."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.replicas is not None:  # before the clip, which must see the global gradient
            self.replicas.average_gradients_([p.grad for p in params])
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not torch.isfinite(norm):
            return False
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.max_grad_norm, norm)
        self.optimizer.step()
        return True


class RecurrentPPO(TorchPPO):
    """Minibatches of whole env sequences (CleanRL's ppo_atari_lstm): the envs are shuffled
    and split, and each minibatch runs the LSTM over its envs' T steps from the state they
    had at the rollout's start, reset where episodes start."""

    def minibatch_units(self, batch: Batch) -> tuple[int, int]:
        return batch.sequences.starts.shape[1], self.cfg.minibatch_size // self.cfg.rollout_steps

    def load(self, batch: Batch) -> None:
        super().load(batch)
        self.sequences = batch.sequences

    def minibatch(self, envs: np.ndarray) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        steps, n = self.sequences.starts.shape
        # Time-major, as the rollout is: step t of env e is sample t * n + e.
        mb = self._tensor((np.arange(steps)[:, None] * n + envs).reshape(-1))
        return mb, self.model.evaluate_steps(
            obs_take(self.obs, mb), self.actions[mb],
            None if self.masks is None else self.masks[mb],
            self.sequences.initial_state.take(self._tensor(envs)),
            self.sequences.starts[:, envs])
