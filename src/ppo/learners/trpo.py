"""TRPO (Schulman et al. 2015) beside PPO: the same networks, rollout, GAE and critic; only
the policy step differs. It maximizes the surrogate mean(r * A) subject to
mean KL(pi_old || pi) <= max_kl: a natural-gradient direction from conjugate gradient on
Fisher-vector products, scaled to the edge of the trust region's quadratic model, then a
backtracking line search that checks the surrogate and the exact KL. The critic is fitted
with Adam, as PPO's is, by PPO's value step (NumPy fast path on the CPU). The math is pure
functions; `TRPO` applies it to a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector

from ppo import distributions, objective
from ppo.advantages import Batch
from ppo.config import Config
from ppo.learners import ppo_torch
from ppo.learners.base import Learner, StepStats, UpdateStats
from ppo.learners.ppo_numpy import NumpyPPO
from ppo.learners.ppo_torch import TorchPPO
from ppo.networks import ActorCritic

Distribution = tuple[Tensor, Tensor | None]  # distribution parameters, and the log std



@torch.no_grad()
def assign(params: list[Tensor], x: Tensor) -> None:
    """Write the flat vector x into the parameters in place, keeping any memory they share
    (the NumPy critic fit's flat buffers)."""
    offset = 0
    for p in params:
        p.copy_(x[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def policy_distribution(model: ActorCritic, obs: Tensor) -> Distribution:
    """pi(.|s) as its parameters (with gSDE, a log std per state)."""
    return model.distribution(obs)


def frozen(dist: Distribution) -> Distribution:
    """A detached copy: pi_old must stay put while the parameters are stepped (the log std
    is otherwise the parameter itself)."""
    out, log_std = dist
    return out.detach().clone(), None if log_std is None else log_std.detach().clone()


def mean_kl(model: ActorCritic, old: Distribution, new: Distribution,
            masks: Tensor | None = None) -> Tensor:
    """Mean over states of the exact KL(old || new)."""
    return distributions.kl_divergence(model.action_spec, old, new, masks).mean()


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


class TRPO(Learner):
    """The policy step on the whole batch in PyTorch, then `epochs` passes of shuffled
    minibatches of the value loss with Adam (which holds the critic's parameters only)."""

    def __init__(self, model: ActorCritic, cfg: Config, numpy_critic: bool) -> None:
        optimizer = torch.optim.Adam(model.critic_parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        super().__init__(model, optimizer, cfg)
        self.actor_params = model.actor_parameters()
        # On the CPU the critic's many small Adam steps take PPO's NumPy fast path, so that
        # wall-clock compares the algorithms rather than torch's per-call overhead.
        self.critic_fit = (NumpyPPO if numpy_critic else TorchPPO)(model, optimizer, cfg)
        self.device = next(model.parameters()).device

    def load_state(self, tensors, meta) -> None:
        super().load_state(tensors, meta)
        if isinstance(self.critic_fit, NumpyPPO):
            self.critic_fit.bind()

    def evaluate(self, obs: np.ndarray, actions: np.ndarray, masks: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        return ppo_torch.evaluate(self.model, obs, actions, masks)

    def values(self, obs: np.ndarray) -> np.ndarray:
        return ppo_torch.values(self.model, obs)

    def update(self, batch: Batch, rng: np.random.Generator) -> UpdateStats:
        """The policy step, then the critic's fit. approx_kl is the exact mean KL of the
        accepted step, clipfrac the share of ratios outside 1 +- clip_eps (for comparison
        only), policy_loss -mean(r * A) after the step."""
        def tensor(array: np.ndarray) -> Tensor:
            return torch.as_tensor(array, device=self.device)

        obs, actions = tensor(batch.obs), tensor(batch.actions)
        masks = None if batch.masks is None else tensor(batch.masks)
        advantages, logp_old = tensor(batch.advantages), tensor(batch.logp_old)
        if self.cfg.norm_adv == "minibatch":  # the whole batch is TRPO's one minibatch
            advantages = objective.normalize(advantages)
        kl, clipfrac, loss_pi, entropy, skipped_pi = self.policy_step(obs, actions, masks,
                                                                      logp_old, advantages)
        self.critic_fit.load(batch)
        loss_v, skipped_v = self.fit_value(rng)
        self.count_nonfinite(skipped_pi + skipped_v, "updates")
        step = StepStats(kl, clipfrac, loss_pi, loss_v, entropy, skipped_pi + skipped_v)
        return UpdateStats.of([step], self.cfg.epochs)

    def policy_step(self, obs: Tensor, actions: Tensor, masks: Tensor | None, logp_old: Tensor,
                    advantages: Tensor) -> tuple[float, float, float, float, int]:
        cfg, params, model = self.cfg, self.actor_params, self.model

        def surrogate() -> tuple[Tensor, Tensor, Tensor]:
            """mean(r * A) plus the entropy bonus, the ratio, the entropy."""
            logp, entropy, _ = model.evaluate(obs, actions, masks)
            ratio = torch.exp(logp - logp_old)
            return (ratio * advantages).mean() + cfg.ent_coef * entropy.mean(), ratio, entropy

        old = frozen(policy_distribution(model, obs))
        g = flat_grad(surrogate()[0], params)
        kl = mean_kl(model, old, policy_distribution(model, obs), masks)
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
                value = surrogate()[0].item()
                return value, mean_kl(model, old, policy_distribution(model, obs), masks).item()

            x, _ = line_search(evaluate, parameters_to_vector(params).detach(), fullstep,
                               cfg.max_kl, cfg.line_search_steps)
            assign(params, x)
        else:
            skipped = 1

        with torch.no_grad():
            _, ratio, entropy = surrogate()
            return (mean_kl(model, old, policy_distribution(model, obs), masks).item(),
                    objective.clip_fraction(ratio, cfg.clip_eps).item(),
                    -(ratio * advantages).mean().item(), entropy.mean().item(), skipped)

    def fit_value(self, rng: np.random.Generator) -> tuple[float, int]:
        """`epochs` passes of freshly shuffled minibatches of the value loss, with Adam;
        returns the mean loss and the number of steps skipped as non-finite."""
        cfg, n = self.cfg, len(self.critic_fit.returns)
        losses, skipped = [], 0
        for _ in range(cfg.epochs):
            order = rng.permutation(n)
            for first in range(0, n, cfg.minibatch_size):
                index = order[first : first + cfg.minibatch_size]
                loss, applied = self.critic_fit.value_step(index)
                if applied:
                    losses.append(loss)
                else:
                    skipped += 1
        return (float(np.mean(losses)) if losses else math.nan), skipped
