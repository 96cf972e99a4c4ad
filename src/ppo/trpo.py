"""TRPO (Schulman et al. 2015) beside PPO: the same networks, rollout, GAE and critic; only
the policy step differs. It maximizes the surrogate mean(r * A) subject to
mean KL(pi_old || pi) <= max_kl: a natural-gradient direction from conjugate gradient on
Fisher-vector products, scaled to the edge of the trust region's quadratic model, then a
backtracking line search that checks the surrogate and the exact KL. The critic is fitted
with Adam, as PPO's is. The math is pure functions; `TRPOLearner` applies it to a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from ppo import objective
from ppo.config import Config
from ppo.learner import TorchLearner
from ppo.numpy_learner import NumpyLearner
from ppo.policy import ActorCritic

Distribution = tuple[Tensor, Tensor | None]  # logits, or Gaussian mean and log std


def actor_parameters(model: ActorCritic) -> list[nn.Parameter]:
    """The policy's parameters: the trust region constrains these and only these."""
    params = [*model.actor.parameters(), *model.policy_head.parameters()]
    return params if model.log_std is None else [*params, model.log_std]


def critic_parameters(model: ActorCritic) -> list[nn.Parameter]:
    """The value function's parameters (separate networks only), fitted by Adam."""
    return [*model.critic.parameters(), *model.value_head.parameters()]



@torch.no_grad()
def assign(params: list[Tensor], x: Tensor) -> None:
    """Write the flat vector x into the parameters in place, keeping any memory they share
    (the NumPy critic fit's flat buffers)."""
    offset = 0
    for p in params:
        p.copy_(x[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def policy_distribution(model: ActorCritic, obs: Tensor) -> Distribution:
    """pi(.|s) as its parameters: logits, or the Gaussian mean and log std."""
    out = model.policy_head(model.actor(obs))
    return out, None if model.discrete else model.log_std.expand_as(out)


def frozen(dist: Distribution) -> Distribution:
    """A detached copy: pi_old must stay put while the parameters are stepped (the Gaussian's
    log std is otherwise a view of the parameter itself)."""
    out, log_std = dist
    return out.detach().clone(), None if log_std is None else log_std.detach().clone()


def mean_kl(old: Distribution, new: Distribution) -> Tensor:
    """Mean over states of KL(old || new), exact for a Categorical or a diagonal Gaussian."""
    (out_old, log_std_old), (out, log_std) = old, new
    if log_std is None:
        logp_old, logp = torch.log_softmax(out_old, -1), torch.log_softmax(out, -1)
        return (logp_old.exp() * (logp_old - logp)).sum(-1).mean()
    var_old, var = torch.exp(2.0 * log_std_old), torch.exp(2.0 * log_std)
    kl = log_std - log_std_old + (var_old + (out_old - out) ** 2) / (2.0 * var) - 0.5
    return kl.sum(-1).mean()


def flat_grad(y: Tensor, params: list[Tensor], **kwargs) -> Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(y, params, **kwargs)])


def fisher_vector_product(kl: Tensor, params: list[Tensor], damping: float
                          ) -> Callable[[Tensor], Tensor]:
    """v -> (F + damping * I) v, where F is the Hessian of `kl` in `params`.

    With `kl` the mean KL of the policy against a detached copy of itself, F at that point is
    the Fisher information matrix. Double backprop, never forming F: the first gradient is
    kept with its graph, and F v is the gradient of (grad kl . v). Damping keeps the system
    well conditioned where the batch says little about some directions.
    """
    grad_kl = flat_grad(kl, params, create_graph=True)

    def fvp(v: Tensor) -> Tensor:
        return flat_grad(grad_kl @ v, params, retain_graph=True) + damping * v

    return fvp


def conjugate_gradient(fvp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10,
                       residual_tol: float = 1e-10) -> Tensor:
    """Approximately solve F x = b for symmetric positive-definite F, given only v -> F v."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < residual_tol:
            break
        fp = fvp(p)
        alpha = rr / (p @ fp)
        x += alpha * p
        r -= alpha * fp
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def line_search(evaluate: Callable[[Tensor], tuple[float, float]], x0: Tensor,
                fullstep: Tensor, max_kl: float, steps: int = 10, backtrack: float = 0.5
                ) -> tuple[Tensor, float]:
    """Backtrack from the full step: the first x0 + backtrack^k * fullstep whose surrogate
    beats x0's and whose mean KL is within max_kl, with its step fraction; x0 and 0.0 when
    none is. `evaluate(x)` loads x into the policy and returns (surrogate, mean KL).
    A NaN surrogate or KL fails both comparisons, so it is never accepted."""
    surrogate_old, _ = evaluate(x0)
    for k in range(steps):
        fraction = backtrack**k
        x = x0 + fraction * fullstep
        surrogate, kl = evaluate(x)
        if surrogate > surrogate_old and kl <= max_kl:
            return x, fraction
    return x0, 0.0


class TRPOLearner(TorchLearner):
    """TorchLearner's batch (evaluate, values, load_batch, set_advantages); `update`
    replaces its minibatch step with TRPO's whole-batch policy step and the critic's fit.
    `optimizer` must hold the critic's parameters only."""

    def __init__(self, model: ActorCritic, optimizer: torch.optim.Optimizer, cfg: Config) -> None:
        super().__init__(model, optimizer, cfg)
        self.actor_params = actor_parameters(model)
        self.critic_params = critic_parameters(model)
        # On the CPU the critic's many small Adam steps take PPO's NumPy fast path, so that
        # wall-clock compares the algorithms rather than torch's per-call overhead.
        use_numpy = cfg.learner == "numpy" or (cfg.learner == "auto" and
                                               self.device.type == "cpu")
        self.numpy_critic = NumpyLearner(model, optimizer, cfg) if use_numpy else None

    def bind(self) -> None:
        if self.numpy_critic is not None:
            self.numpy_critic.bind()

    def load_batch(self, obs, actions, logp_old, values) -> None:
        super().load_batch(obs, actions, logp_old, values)
        if self.numpy_critic is not None:
            self.numpy_critic.load_batch(obs, actions, logp_old, values)

    def set_advantages(self, advantages: np.ndarray, returns: np.ndarray) -> None:
        super().set_advantages(advantages, returns)
        if self.numpy_critic is not None:
            self.numpy_critic.set_advantages(advantages, returns)

    def update(self, rng: np.random.Generator) -> np.ndarray:
        """One iteration's learning. Returns the trainer's stats layout: (mean KL of the
        accepted step, clip fraction at clip_eps (for comparison only), policy loss after the
        step, value loss, entropy, steps skipped as non-finite)."""
        kl, clipfrac, loss_pi, entropy, skipped_pi = self.policy_step()
        loss_v, skipped_v = self.fit_value(rng)
        return np.array([kl, clipfrac, loss_pi, loss_v, entropy, skipped_pi + skipped_v])

    def _surrogate(self, advantages: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """mean(r * A) plus the entropy bonus (0 in the MuJoCo preset), the ratio, the entropy."""
        logp, entropy, _ = self.model.evaluate(self.obs, self.actions)
        ratio = torch.exp(logp - self.logp_old)
        return (ratio * advantages).mean() + self.cfg.ent_coef * entropy.mean(), ratio, entropy

    def policy_step(self) -> tuple[float, float, float, float, int]:
        cfg, params = self.cfg, self.actor_params
        advantages = self.advantages
        if cfg.norm_adv == "minibatch":  # the whole batch is TRPO's one minibatch
            advantages = objective.normalize(advantages)
        old = frozen(policy_distribution(self.model, self.obs))

        surrogate, _, _ = self._surrogate(advantages)
        g = flat_grad(surrogate, params)
        kl = mean_kl(old, policy_distribution(self.model, self.obs))
        fvp = fisher_vector_product(kl, params, cfg.cg_damping)
        direction = conjugate_gradient(fvp, g, cfg.cg_iters)
        # Scale so the quadratic model of the KL, s'Fs / 2, sits exactly at max_kl.
        sfs = (direction @ fvp(direction)).clamp_min(1e-12)
        fullstep = direction * torch.sqrt(2.0 * cfg.max_kl / sfs)

        skipped = 0
        if torch.isfinite(fullstep).all():
            @torch.no_grad()
            def evaluate(x: Tensor) -> tuple[float, float]:
                assign(params, x)
                value = self._surrogate(advantages)[0].item()
                return value, mean_kl(old, policy_distribution(self.model, self.obs)).item()

            x, _ = line_search(evaluate, parameters_to_vector(params).detach(), fullstep,
                               cfg.max_kl, cfg.line_search_steps)
            assign(params, x)
        else:
            skipped = 1

        with torch.no_grad():
            _, ratio, entropy = self._surrogate(advantages)
            return (mean_kl(old, policy_distribution(self.model, self.obs)).item(),
                    objective.clip_fraction(ratio, cfg.clip_eps).item(),
                    -(ratio * advantages).mean().item(), entropy.mean().item(), skipped)

    def fit_value(self, rng: np.random.Generator) -> tuple[float, int]:
        """`epochs` passes of freshly shuffled minibatches of the value loss, with Adam;
        returns the mean loss and the number of steps skipped as non-finite."""
        cfg, n = self.cfg, len(self.returns)
        value_step = self._value_step if self.numpy_critic is None else (
            self.numpy_critic.value_step)
        losses, skipped = [], 0
        for _ in range(cfg.epochs):
            order = rng.permutation(n)
            for first in range(0, n, cfg.minibatch_size):
                loss, applied = value_step(order[first : first + cfg.minibatch_size])
                if applied:
                    losses.append(loss)
                else:
                    skipped += 1
        return (float(np.mean(losses)) if losses else math.nan), skipped

    def _value_step(self, index: np.ndarray) -> tuple[float, bool]:
        """One Adam step on the value loss, in torch: (loss, applied)."""
        cfg, mb = self.cfg, self._tensor(index)
        loss = objective.value_loss(self.model.value(self.obs[mb]), self.old_values[mb],
                                    self.returns[mb],
                                    cfg.value_clip_eps if cfg.clip_value else None)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.critic_params])
        if not torch.isfinite(norm):
            return loss.item(), False
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(self.critic_params, cfg.max_grad_norm, norm)
        self.optimizer.step()
        return loss.item(), True
