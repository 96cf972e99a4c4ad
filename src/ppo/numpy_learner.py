"""The CPU fast path of the minibatch step: the same loss as learner.py, with its gradient
derived by hand and applied by the same Adam, in NumPy.

At batch 64 a 64-64 MLP is a few microseconds of arithmetic; eager PyTorch spends ~1.3 ms per
step on dispatch and autograd bookkeeping. Here one step is ~30 NumPy calls. Parameters and
Adam moments live in flat float32 vectors that the torch model and optimizer *share* (their
tensors are views of them), so checkpoints, evaluation and the torch path all see the same
numbers with no copying. tests/test_numpy_learner.py pins losses and gradients to autograd.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ppo.config import Config
from ppo.policy import LOG_2PI, ActorCritic

if TYPE_CHECKING:
    from ppo.distributed import Replicas


def _linears(seq: nn.Sequential | None) -> list[nn.Linear]:
    return [] if seq is None else [m for m in seq if isinstance(m, nn.Linear)]


class NumpyLearner:
    """Same interface as TorchLearner; CPU only."""

    def __init__(self, model: ActorCritic, optimizer: torch.optim.Adam, cfg: Config,
                 replicas: Replicas | None = None) -> None:
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self.replicas = replicas
        self.discrete = model.discrete
        self.bind()

    def bind(self) -> None:
        """Move parameters, gradients and Adam moments into flat vectors that torch shares.

        Called at construction and after anything (a checkpoint load) replaces torch's tensors.
        """
        params = list(self.model.parameters())
        sizes = [p.numel() for p in params]
        offsets = np.cumsum([0, *sizes])
        self.theta = np.empty(offsets[-1], np.float32)
        self.grad = np.zeros_like(self.theta)
        self.m = np.zeros_like(self.theta)
        self.v = np.zeros_like(self.theta)
        step = 0
        views: dict[int, tuple[np.ndarray, np.ndarray]] = {}
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
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        for p, lo, hi in zip(params, offsets[:-1], offsets[1:], strict=True):
            if id(p) not in held:
                continue
            self.optimizer.state[p] = {
                "step": self.step_count,
                "exp_avg": torch.from_numpy(self.m[lo:hi]).view(p.shape),
                "exp_avg_sq": torch.from_numpy(self.v[lo:hi]).view(p.shape),
            }

        def pairs(linears: list[nn.Linear]) -> list[tuple[tuple, tuple]]:
            return [((views[id(m.weight)]), (views[id(m.bias)])) for m in linears]

        self.actor = pairs(_linears(self.model.actor))
        self.critic = pairs(_linears(self.model.critic))
        self.policy_head = pairs([self.model.policy_head])[0]
        self.value_head = pairs([self.model.value_head])[0]
        self.log_std = None if self.discrete else views[id(self.model.log_std)]

    # ------------------------------------------------------------------ forward
    @staticmethod
    def _trunk(layers, x: np.ndarray) -> list[np.ndarray]:
        """Activations of each tanh layer, input first (kept for the backward pass)."""
        acts = [x]
        for (w, _), (b, _) in layers:
            acts.append(np.tanh(acts[-1] @ w.T + b))
        return acts

    def _forward(self, obs: np.ndarray):
        actor = self._trunk(self.actor, obs)
        critic = actor if not self.critic else self._trunk(self.critic, obs)
        (wp, _), (bp, _) = self.policy_head
        (wv, _), (bv, _) = self.value_head
        out = actor[-1] @ wp.T + bp
        values = (critic[-1] @ wv.T + bv)[:, 0]
        return actor, critic, out, values

    def _log_prob(self, out: np.ndarray, actions: np.ndarray):
        """log pi(a|s), entropy, and what their gradients need."""
        if self.discrete:
            shifted = out - out.max(1, keepdims=True)
            exp = np.exp(shifted)
            total = exp.sum(1, keepdims=True)
            log_probs = shifted - np.log(total)
            probs = exp / total
            logp = log_probs[np.arange(len(actions)), actions]
            entropy = -(probs * log_probs).sum(1)
            return logp, entropy, (probs, log_probs)
        log_std = self.log_std[0]
        z = (actions - out) * np.exp(-log_std)
        logp = (-0.5 * z * z - log_std - 0.5 * LOG_2PI).sum(1)
        entropy = np.full(len(out), (0.5 + 0.5 * LOG_2PI + log_std).sum(), np.float32)
        return logp, entropy, z

    def evaluate(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, _, out, values = self._forward(obs)
        return self._log_prob(out, actions)[0], values

    def values(self, obs: np.ndarray) -> np.ndarray:
        critic = self._trunk(self.critic or self.actor, obs)
        (wv, _), (bv, _) = self.value_head
        return (critic[-1] @ wv.T + bv)[:, 0]

    def load_batch(self, obs, actions, logp_old, values) -> None:
        """The rollout's transitions with what was frozen at collection."""
        self.obs, self.actions, self.logp_old, self.old_values = obs, actions, logp_old, values

    def set_advantages(self, advantages: np.ndarray, returns: np.ndarray) -> None:
        """Targets from GAE: computed once per rollout (or per epoch, under the pitfall)."""
        self.advantages, self.returns = advantages, returns

    # ------------------------------------------------------------------ step
    def step(self, index: np.ndarray, kl_limit: float | None = None) -> np.ndarray:
        cfg, n = self.cfg, len(index)
        obs, actions = self.obs[index], self.actions[index]
        actor, critic, out, values = self._forward(obs)
        logp, entropy, cache = self._log_prob(out, actions)
        # The pitfall: pi_old taken from the current weights makes every ratio exactly 1.
        log_ratio = logp - (logp if cfg.pitfall_fresh_old_logprobs else self.logp_old[index])
        ratio = np.exp(log_ratio)
        adv = self.advantages[index]
        if cfg.norm_adv == "minibatch" and n > 1:
            adv = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
        low, high = 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps
        surrogate = ratio * adv
        clipped = np.clip(ratio, low, high) * adv
        unclipped_active = surrogate <= clipped
        approx_kl = float(np.mean(ratio - 1.0 - log_ratio))
        clipfrac = float(np.mean(np.abs(ratio - 1.0) > cfg.clip_eps))
        loss_pi = -float(np.mean(np.minimum(surrogate, clipped)))

        loss_v, d_values = self._value_loss(values, index)
        mean_entropy = float(entropy.mean())
        if kl_limit is not None and self.replicas is not None:
            approx_kl = self.replicas.mean(approx_kl)  # every rank must stop or step alike
        stats = np.array([approx_kl, clipfrac, loss_pi, loss_v, mean_entropy, 0.0])
        if kl_limit is not None and approx_kl > kl_limit:
            return stats

        # dLoss/dlogp: the min() passes gradient only where the unclipped term is active.
        d_logp = (-1.0 / n) * adv * ratio * unclipped_active
        d_values = (2.0 * cfg.vf_coef / n) * d_values
        self.grad.fill(0.0)
        if self.discrete:
            probs, log_probs = cache
            d_out = -probs * d_logp[:, None]
            d_out[np.arange(n), actions] += d_logp
            # -c_e * mean(H): dH/dlogits = -p * (log p + H)
            d_out += (cfg.ent_coef / n) * probs * (log_probs + entropy[:, None])
        else:
            z = cache
            inv_std = np.exp(-self.log_std[0])
            d_out = d_logp[:, None] * z * inv_std
            self.log_std[1][:] = d_logp @ (z * z - 1.0) - cfg.ent_coef
        d_actor_top = self._backward_head(self.policy_head, actor[-1], d_out)
        d_critic_top = self._backward_head(self.value_head, critic[-1], d_values[:, None])
        if self.critic:
            self._backward_trunk(self.critic, critic, d_critic_top)
            self._backward_trunk(self.actor, actor, d_actor_top)
        else:
            self._backward_trunk(self.actor, actor, d_actor_top + d_critic_top)
        if not self._clip_and_adam():
            stats[5] = 1.0
        return stats

    def _value_loss(self, values: np.ndarray, index: np.ndarray) -> tuple[float, np.ndarray]:
        """The (clipped) value loss, and its gradient in the values up to a factor 2/n."""
        cfg = self.cfg
        returns = self.returns[index]
        error = values - returns
        if not cfg.clip_value:
            return float(np.mean(error * error)), error
        old = self.old_values[index]
        delta = values - old
        inside = np.abs(delta) <= cfg.value_clip_eps
        clipped_error = old + np.clip(delta, -cfg.value_clip_eps, cfg.value_clip_eps) - returns
        sq, clipped_sq = error * error, clipped_error * clipped_error
        # d max(a, b): through the larger; the clipped branch passes gradient only inside.
        return (float(np.mean(np.maximum(sq, clipped_sq))),
                np.where(sq >= clipped_sq, error, clipped_error * inside))

    def value_step(self, index: np.ndarray) -> tuple[float, bool]:
        """One Adam step on the value loss alone (TRPO's critic fit; separate networks).
        Returns the loss and whether the step was applied (False: non-finite gradient)."""
        critic = self._trunk(self.critic, self.obs[index])
        (wv, _), (bv, _) = self.value_head
        loss_v, d_values = self._value_loss((critic[-1] @ wv.T + bv)[:, 0], index)
        self.grad.fill(0.0)
        d_top = self._backward_head(self.value_head, critic[-1],
                                    (2.0 / len(index)) * d_values[:, None])
        self._backward_trunk(self.critic, critic, d_top)
        return loss_v, self._clip_and_adam()

    @staticmethod
    def _backward_head(head, hidden: np.ndarray, d_out: np.ndarray) -> np.ndarray:
        """Fill the head's gradients; return the gradient reaching its input."""
        (w, dw), (_, db) = head
        np.matmul(d_out.T, hidden, out=dw)
        db[:] = d_out.sum(0)
        return d_out @ w

    @staticmethod
    def _backward_trunk(layers, acts: list[np.ndarray], d_top: np.ndarray) -> None:
        """Backprop through the tanh layers, filling each layer's gradient views."""
        d = d_top
        for i in range(len(layers) - 1, -1, -1):
            (w, dw), (_, db) = layers[i]
            d = d * (1.0 - acts[i + 1] * acts[i + 1])
            np.matmul(d.T, acts[i], out=dw)
            db[:] = d.sum(0)
            if i:
                d = d @ w

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
        beta1, beta2 = self.optimizer.param_groups[0]["betas"]
        lr = self.optimizer.param_groups[0]["lr"]
        eps = self.optimizer.param_groups[0]["eps"]
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
