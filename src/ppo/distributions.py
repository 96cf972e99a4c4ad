"""The action distribution of a policy, once per back end: log-probabilities, entropies and
exact KL divergences in PyTorch, and in NumPy with their gradients for the CPU fast path;
sampling and the mode in NumPy (actions are chosen on the CPU whatever the learner's device).

A distribution is a product of independent heads (spaces.Head): Categorical over logits,
diagonal Gaussian over means with a state-independent log std (a vector), or with gSDE a
state-dependent one (one row per state, see sde.py), Bernoulli over logits. Its
log-probability and entropy are the sums over heads. Invalid actions of a categorical head
are masked by setting their logits to MASKED_LOGIT, so they get probability 0 and no gradient.
Written out rather than through torch.distributions, whose argument checks cost more than the
math at batch 64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ppo.spaces import ActionSpec, Head

LOG_2PI = math.log(2.0 * math.pi)
MASKED_LOGIT = -1e8


# ---------------------------------------------------------------------- PyTorch
def _masked_logits(logits: Tensor, mask: Tensor | None, head: Head) -> Tensor:
    if mask is None:
        return logits
    return torch.where(mask[:, head.mask], logits, torch.full_like(logits, MASKED_LOGIT))


def log_prob_entropy(spec: ActionSpec, params: Tensor, log_std: Tensor | None, actions: Tensor,
                     mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """log pi(a|s) and the entropy H(pi(.|s)), one value per row."""
    logp = entropy = None
    for head in spec.heads:
        out, a = params[:, head.params], actions[:, head.columns]
        if head.kind == "categorical":
            log_probs = torch.log_softmax(_masked_logits(out, mask, head), dim=-1)
            head_logp = log_probs.gather(-1, a.long()).squeeze(-1)
            head_entropy = -(log_probs.exp() * log_probs).sum(-1)
        elif head.kind == "gaussian":
            head_log_std = log_std[..., head.log_std].expand_as(out)
            z = (a - out) * torch.exp(-head_log_std)
            head_logp = (-0.5 * z.pow(2) - head_log_std - 0.5 * LOG_2PI).sum(-1)
            head_entropy = (0.5 + 0.5 * LOG_2PI + head_log_std).sum(-1)
        else:
            softplus = F.softplus(out)
            head_logp = (a * out - softplus).sum(-1)
            head_entropy = (softplus - out * torch.sigmoid(out)).sum(-1)
        logp = head_logp if logp is None else logp + head_logp
        entropy = head_entropy if entropy is None else entropy + head_entropy
    return logp, entropy


def kl_divergence(spec: ActionSpec, old: tuple[Tensor, Tensor | None],
                  new: tuple[Tensor, Tensor | None], mask: Tensor | None = None) -> Tensor:
    """KL(old || new) per row, exact; `old` and `new` are (params, log_std) pairs."""
    (params_old, log_std_old), (params, log_std) = old, new
    total = None
    for head in spec.heads:
        out_old, out = params_old[:, head.params], params[:, head.params]
        if head.kind == "categorical":
            logp_old = torch.log_softmax(_masked_logits(out_old, mask, head), -1)
            logp = torch.log_softmax(_masked_logits(out, mask, head), -1)
            kl = (logp_old.exp() * (logp_old - logp)).sum(-1)
        elif head.kind == "gaussian":
            ls_old = log_std_old[..., head.log_std].expand_as(out_old)
            ls = log_std[..., head.log_std].expand_as(out)
            var_old, var = torch.exp(2.0 * ls_old), torch.exp(2.0 * ls)
            kl = (ls - ls_old + (var_old + (out_old - out) ** 2) / (2.0 * var) - 0.5).sum(-1)
        else:
            p_old = torch.sigmoid(out_old)
            kl = (p_old * (F.logsigmoid(out_old) - F.logsigmoid(out))
                  + (1 - p_old) * (F.logsigmoid(-out_old) - F.logsigmoid(-out))).sum(-1)
        total = kl if total is None else total + kl
    return total


# ---------------------------------------------------------------------- NumPy
class LogProbs(NamedTuple):
    """log pi(a|s) and entropy per row, and what their gradients need (one entry per head)."""

    logp: np.ndarray
    entropy: np.ndarray
    cache: list


def log_prob_entropy_np(spec: ActionSpec, params: np.ndarray, log_std: np.ndarray | None,
                        actions: np.ndarray, mask: np.ndarray | None = None) -> LogProbs:
    logp = entropy = None
    cache = []
    for head in spec.heads:
        out, a = params[:, head.params], actions[:, head.columns]
        if head.kind == "categorical":
            if mask is not None:
                out = np.where(mask[:, head.mask], out, np.float32(MASKED_LOGIT))
            shifted = out - out.max(1, keepdims=True)
            exp = np.exp(shifted)
            total = exp.sum(1, keepdims=True)
            log_probs = shifted - np.log(total)
            probs = exp / total
            index = a[:, 0].astype(np.int64, copy=False)
            head_logp = log_probs[np.arange(len(index)), index]
            head_entropy = -(probs * log_probs).sum(1)
            cache.append((probs, log_probs, index, head_entropy))
        elif head.kind == "gaussian":
            head_log_std = log_std[..., head.log_std]
            z = (a - out) * np.exp(-head_log_std)
            head_logp = (-0.5 * z * z - head_log_std - 0.5 * LOG_2PI).sum(1)
            if head_log_std.ndim == 2:  # state-dependent (gSDE)
                head_entropy = (0.5 + 0.5 * LOG_2PI + head_log_std).sum(1)
            else:
                head_entropy = np.full(len(out), (0.5 + 0.5 * LOG_2PI + head_log_std).sum(),
                                       np.float32)
            cache.append((z, head_log_std))
        else:
            a = a.astype(out.dtype)
            softplus = np.logaddexp(0.0, out)
            probs = 1.0 / (1.0 + np.exp(-out))
            head_logp = (a * out - softplus).sum(1)
            head_entropy = (softplus - out * probs).sum(1)
            cache.append((probs, a, out))
        logp = head_logp if logp is None else logp + head_logp
        entropy = head_entropy if entropy is None else entropy + head_entropy
    return LogProbs(logp, entropy, cache)


def log_prob_entropy_backward_np(spec: ActionSpec, cache: list, d_logp: np.ndarray,
                                 d_mean_entropy: float, d_log_std: np.ndarray | None
                                 ) -> np.ndarray:
    """The gradient of a loss in the distribution parameters (rows x params), given its
    gradient d_logp in each row's log-probability and d_mean_entropy in the batch's mean
    entropy; the log std's gradient is written into d_log_std (rows x log std entries where
    the log std is state-dependent)."""
    n = len(d_logp)
    d_params = None if len(spec.heads) == 1 else np.empty((n, spec.num_params), np.float32)
    for head, saved in zip(spec.heads, cache, strict=True):
        if head.kind == "categorical":
            probs, log_probs, index, entropy = saved
            d_out = -probs * d_logp[:, None]
            d_out[np.arange(n), index] += d_logp
            # dH/dlogits = -p * (log p + H)
            d_out += (-d_mean_entropy / n) * probs * (log_probs + entropy[:, None])
        elif head.kind == "gaussian":
            z, head_log_std = saved
            d_out = d_logp[:, None] * z * np.exp(-head_log_std)
            if head_log_std.ndim == 2:
                d_log_std[:, head.log_std] = d_logp[:, None] * (z * z - 1.0) + d_mean_entropy / n
            else:
                d_log_std[head.log_std] = d_logp @ (z * z - 1.0) + d_mean_entropy
        else:
            probs, a, out = saved
            # d logp / d logit = a - p;  dH/dlogit = -logit * p * (1 - p)
            d_out = d_logp[:, None] * (a - probs)
            d_out += (-d_mean_entropy / n) * out * probs * (1.0 - probs)
        if d_params is None:
            return d_out
        d_params[:, head.params] = d_out
    return d_params


def draw_noise(spec: ActionSpec, rng: np.random.Generator, shape: tuple[int, ...],
               gaussian: bool = True) -> np.ndarray:
    """The randomness of `sample` for a batch of `shape`, drawn in one call per head: a
    rollout draws all of its noise up front (one Generator call per step costs ~1.5 us).
    gaussian False: the Gaussian heads' columns are zeros, not drawn (gSDE draws their
    randomness as matrices, sde.py)."""
    draws = []
    for head in spec.heads:
        size = (*shape, head.size)
        if head.kind == "categorical":
            draws.append(rng.gumbel(size=size))
        elif head.kind == "gaussian":
            draws.append(rng.standard_normal(size) if gaussian else np.zeros(size))
        else:
            draws.append(rng.logistic(size=size))
    return draws[0] if len(draws) == 1 else np.concatenate(draws, axis=-1)


def sample(spec: ActionSpec, params: np.ndarray, std: np.ndarray | None, noise: np.ndarray,
           mask: np.ndarray | None = None, deviation: np.ndarray | None = None) -> np.ndarray:
    """Actions (rows x columns) for a batch of distribution parameters, given its noise.
    `deviation` (rows x log std entries): the Gaussian heads' deviations from their means
    where they are state-dependent (gSDE), in place of std * noise."""
    if len(spec.heads) == 1 and mask is None:
        head = spec.heads[0]
        if head.kind == "categorical":
            # Gumbel-max: argmax(logits + Gumbel noise) is an exact sample of softmax(logits).
            return (params + noise).argmax(-1, keepdims=True)
        if head.kind == "gaussian":
            if deviation is not None:
                return (params + deviation).astype(np.float32)
            return (params + std * noise).astype(np.float32)
    actions = np.empty((len(params), spec.columns), spec.dtype)
    for head in spec.heads:
        out, head_noise = params[:, head.params], noise[:, head.params]
        if head.kind == "categorical":
            if mask is not None:
                out = np.where(mask[:, head.mask], out, MASKED_LOGIT)
            actions[:, head.columns] = (out + head_noise).argmax(-1, keepdims=True)
        elif head.kind == "gaussian":
            actions[:, head.columns] = out + (std[head.log_std] * head_noise
                                              if deviation is None else deviation[:, head.log_std])
        else:
            # Logistic noise: logit + L > 0 with probability sigmoid(logit).
            actions[:, head.columns] = out + head_noise > 0
    return actions


def mode(spec: ActionSpec, params: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The most likely action of each row (a Gaussian's mean)."""
    actions = np.empty((len(params), spec.columns), spec.dtype)
    for head in spec.heads:
        out = params[:, head.params]
        if head.kind == "categorical":
            if mask is not None:
                out = np.where(mask[:, head.mask], out, MASKED_LOGIT)
            actions[:, head.columns] = out.argmax(-1, keepdims=True)
        elif head.kind == "gaussian":
            actions[:, head.columns] = out
        else:
            actions[:, head.columns] = out > 0
    return actions
