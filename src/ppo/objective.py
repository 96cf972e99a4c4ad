"""PPO-Clip's losses and its trust-region diagnostics, once per back end: PyTorch functions
for autograd, and NumPy functions that return each loss with its gradient for the CPU fast
path. tests/test_objective.py pins every NumPy gradient to autograd.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


# ---------------------------------------------------------------------- PyTorch
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
    (OpenAI baselines ppo2), not as a max of the two means.
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
    """Share of samples whose ratio lies outside [1-eps, 1+eps]: where the clip acts."""
    return ((ratio - 1.0).abs() > clip_eps).float().mean()


def normalize(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit variance, so the step size does not scale with the reward."""
    return (advantages - advantages.mean()) / (advantages.std() + eps)


# ---------------------------------------------------------------------- NumPy, with gradients
class LossGrad(NamedTuple):
    """A mean loss over the batch and its gradient in each sample's input."""

    loss: float
    grad: np.ndarray | float


def clipped_surrogate_loss_np(ratio: np.ndarray, advantages: np.ndarray,
                              clip_eps: float) -> LossGrad:
    """The clipped surrogate loss and its gradient in each sample's new log-probability.

    d r / d log pi = r, and min() passes gradient only where the unclipped term is the
    smaller (or equal) one: zero where the clip binds.
    """
    surrogate = ratio * advantages
    clipped = np.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    unclipped_active = surrogate <= clipped
    loss = -float(np.mean(np.minimum(surrogate, clipped)))
    return LossGrad(loss, (-1.0 / len(ratio)) * advantages * ratio * unclipped_active)


def value_loss_np(values: np.ndarray, old_values: np.ndarray, returns: np.ndarray,
                  clip_eps: float | None, weight: float = 1.0) -> LossGrad:
    """`value_loss`, and the gradient of weight * loss in each sample's value."""
    error = values - returns
    scale = 2.0 * weight / len(values)
    if clip_eps is None:
        return LossGrad(float(np.mean(error * error)), scale * error)
    delta = values - old_values
    inside = np.abs(delta) <= clip_eps
    clipped_error = old_values + np.clip(delta, -clip_eps, clip_eps) - returns
    sq, clipped_sq = error * error, clipped_error * clipped_error
    # d max(a, b): through the larger; the clipped branch passes gradient only inside.
    return LossGrad(float(np.mean(np.maximum(sq, clipped_sq))),
                    scale * np.where(sq >= clipped_sq, error, clipped_error * inside))


def entropy_bonus_np(entropy: np.ndarray, ent_coef: float) -> LossGrad:
    """-c_e * mean(H), and its gradient in the mean entropy (a Python float, which NumPy
    keeps in the arrays' float32)."""
    return LossGrad(-ent_coef * float(entropy.mean()), -ent_coef)


def approx_kl_np(log_ratio: np.ndarray, ratio: np.ndarray) -> float:
    return float(np.mean(ratio - 1.0 - log_ratio))


def clip_fraction_np(ratio: np.ndarray, clip_eps: float) -> float:
    return float(np.mean(np.abs(ratio - 1.0) > clip_eps))


def normalize_np(advantages: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    return (advantages - advantages.mean()) / (advantages.std(ddof=1) + eps)
