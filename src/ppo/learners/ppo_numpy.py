"""PPO's minibatch step on the CPU fast path: the formulas of objective.py and
distributions.py in NumPy with their gradients, backpropagated through the MLP by
numpy_network.py, and torch's Adam update on flat vectors.

Parameters and Adam moments live in flat float32 vectors that the torch model and optimizer
share (their tensors are views of them), so checkpoints, evaluation and the torch path all see
the same numbers with no copying. tests/test_learners.py pins the step to TorchPPO's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ppo import distributions, objective, sde
from ppo.advantages import Batch
from ppo.learners.base import StepStats
from ppo.learners.ppo import PPOLearner
from ppo.numpy_network import Forward, NumpyMLP


class NumpyPPO(PPOLearner):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spec = self.model.action_spec
        self.bind()

    def bind(self) -> None:
        """Move parameters and Adam moments into flat vectors that torch shares.

        Called at construction and after anything (a checkpoint load) replaces torch's tensors.
        """
        params = list(self.model.parameters())
        offsets = np.cumsum([0, *(p.numel() for p in params)])
        self.theta = np.empty(offsets[-1], np.float32)
        self.grad = np.zeros_like(self.theta)
        self.m, self.v = np.zeros_like(self.theta), np.zeros_like(self.theta)
        step = 0
        views: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        for p, lo, hi in zip(params, offsets[:-1], offsets[1:], strict=True):
            self.theta[lo:hi] = p.detach().reshape(-1).numpy()
            state = self.optimizer.state.get(p, {})
            if "exp_avg" in state:
                self.m[lo:hi] = state["exp_avg"].reshape(-1).numpy()
                self.v[lo:hi] = state["exp_avg_sq"].reshape(-1).numpy()
                step = int(state["step"])
            p.data = torch.from_numpy(self.theta[lo:hi]).view(p.shape)
            views[id(p)] = (self.theta[lo:hi].reshape(p.shape), self.grad[lo:hi].reshape(p.shape))
        self.step_count = torch.tensor(float(step))
        # Adam's moments of parameters it doesn't hold (TRPO's actor) stay zero: no step.
        for p, lo, hi in zip(params, offsets[:-1], offsets[1:], strict=True):
            if id(p) in held:
                self.optimizer.state[p] = {
                    "step": self.step_count,
                    "exp_avg": torch.from_numpy(self.m[lo:hi]).view(p.shape),
                    "exp_avg_sq": torch.from_numpy(self.v[lo:hi]).view(p.shape),
                }
        self.net = NumpyMLP(self.model, lambda p: views[id(p)][0])
        self.grads = NumpyMLP(self.model, lambda p: views[id(p)][1])

    def load_state(self, tensors, meta) -> None:
        super().load_state(tensors, meta)
        self.bind()

    def evaluate(self, obs: np.ndarray, actions: np.ndarray, masks: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        fwd = self.net.forward(obs)
        rows = self._row_log_std(fwd)
        logp = distributions.log_prob_entropy_np(
            self.spec, fwd.params, self.net.log_std if rows is None else rows.log_std,
            actions, masks).logp
        return logp, fwd.values

    def _row_log_std(self, fwd: Forward) -> sde.RowLogStd | None:
        """With gSDE, each row's log std, from the actor's latent features."""
        return sde.log_std_np(fwd.actor[-1], self.net.log_std) if self.model.use_sde else None

    def values(self, obs: np.ndarray) -> np.ndarray:
        return self.net.values(obs)

    def load(self, batch: Batch) -> None:
        self.obs, self.actions, self.masks = batch.obs, batch.actions, batch.masks
        self.logp_old, self.old_values = batch.logp_old, batch.values
        self.set_targets(batch.advantages, batch.returns)

    def set_targets(self, advantages: np.ndarray, returns: np.ndarray) -> None:
        self.advantages, self.returns = advantages, returns

    def step(self, index: np.ndarray) -> StepStats:
        cfg = self.cfg
        fwd = self.net.forward(self.obs[index])
        rows = self._row_log_std(fwd)
        dist = distributions.log_prob_entropy_np(
            self.spec, fwd.params, self.net.log_std if rows is None else rows.log_std,
            self.actions[index], None if self.masks is None else self.masks[index])
        # The ablation: pi_old taken from the current weights makes every ratio exactly 1.
        logp_old = dist.logp if cfg.old_logprobs_from_current else self.logp_old[index]
        log_ratio = dist.logp - logp_old
        ratio = np.exp(log_ratio)
        advantages = self.advantages[index]
        if cfg.norm_adv == "minibatch" and len(index) > 1:
            advantages = objective.normalize_np(advantages)
        policy = objective.clipped_surrogate_loss_np(ratio, advantages, self.clip_eps)
        value = objective.value_loss_np(fwd.values, self.old_values[index], self.returns[index],
                                        cfg.value_clip_eps if cfg.clip_value else None,
                                        weight=cfg.vf_coef)
        bonus = objective.entropy_bonus_np(dist.entropy, cfg.ent_coef)
        kl, stop = self.kl_over_limit(objective.approx_kl_np(log_ratio, ratio))
        stats = (kl, objective.clip_fraction_np(ratio, self.clip_eps), policy.loss, value.loss,
                 float(dist.entropy.mean()))
        if stop:
            return StepStats(*stats, 0.0)
        d_log_std = self.grads.log_std if rows is None else np.empty_like(rows.log_std)
        d_params = distributions.log_prob_entropy_backward_np(
            self.spec, dist.cache, policy.grad, bonus.grad, d_log_std)
        if rows is not None:
            self.grads.log_std[:] = sde.log_std_backward_np(rows, d_log_std)
        self.net.backward(fwd, d_params, value.grad, self.grads)
        return StepStats(*stats, 0.0 if self._clip_and_adam() else 1.0)

    def value_step(self, index: np.ndarray) -> tuple[float, bool]:
        cfg, obs = self.cfg, self.obs[index]
        critic = [obs]
        values = self.net.values(obs, critic)
        value = objective.value_loss_np(values, self.old_values[index], self.returns[index],
                                        cfg.value_clip_eps if cfg.clip_value else None)
        self.net.backward(Forward([], critic, None, values), None, value.grad, self.grads)
        return value.loss, self._clip_and_adam()

    def _clip_and_adam(self) -> bool:
        """Global grad-norm clip, then torch's Adam update, on the flat vectors; nothing is
        applied (False) when the gradient is not finite."""
        cfg, g = self.cfg, self.grad
        if self.replicas is not None:  # before the clip, which must see the global gradient
            self.replicas.average_(g)
        norm = math.sqrt(float(np.dot(g, g)))
        if not math.isfinite(norm):
            return False
        if cfg.max_grad_norm > 0:
            coef = cfg.max_grad_norm / (norm + 1e-6)
            if coef < 1.0:
                g *= coef
        group = self.optimizer.param_groups[0]
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        self.step_count += 1
        t = int(self.step_count)
        self.m *= beta1
        self.m += (1.0 - beta1) * g
        self.v *= beta2
        self.v += (1.0 - beta2) * g * g
        step_size = lr / (1.0 - beta1**t)
        denom = np.sqrt(self.v)
        denom /= math.sqrt(1.0 - beta2**t)
        denom += eps
        self.theta -= step_size * self.m / denom
        return True
