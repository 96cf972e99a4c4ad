"""The ratchet: PPO-Clip's losses and its trust-region diagnostics, as pure tensor functions."""

from __future__ import annotations

import torch
from torch import Tensor


def clipped_surrogate_loss(ratio: Tensor, advantages: Tensor, clip_eps: float) -> Tensor:
    """-mean(min(r*A, clip(r, 1-eps, 1+eps)*A)): the pessimistic bound, negated for descent."""
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    return -torch.min(unclipped, clipped).mean()


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, clip_eps: float | None
) -> Tensor:
    """Mean squared error to the returns; with clip_eps, the max of clipped and unclipped errors.

    The max is taken per sample, then averaged, as in the reference implementation
    (OpenAI baselines ppo2); the seed writes max(MSE, MSE), a max of two means.
    """
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        return unclipped.mean()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return torch.max(unclipped, (clipped_values - returns) ** 2).mean()


def ppo_loss(
    policy_loss: Tensor, v_loss: Tensor, entropy: Tensor, vf_coef: float, ent_coef: float
) -> Tensor:
    """L_policy + c_v * L_value - c_e * H: the entropy enters as a bonus."""
    return policy_loss + vf_coef * v_loss - ent_coef * entropy


def approx_kl(log_ratio: Tensor) -> Tensor:
    """KL(pi_old || pi) estimated as mean((r - 1) - log r): unbiased and never negative."""
    return ((torch.exp(log_ratio) - 1.0) - log_ratio).mean()


def clip_fraction(ratio: Tensor, clip_eps: float) -> Tensor:
    """Share of samples whose ratio lies outside [1-eps, 1+eps]: where the fence bites."""
    return ((ratio - 1.0).abs() > clip_eps).float().mean()


def normalize(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit variance, so the step size does not scale with the reward."""
    return (advantages - advantages.mean()) / (advantages.std() + eps)
