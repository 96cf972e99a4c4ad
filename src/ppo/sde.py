"""Generalized state-dependent exploration, gSDE (Raffin, Kober and Stulp 2022, "Smooth
exploration for robotic reinforcement learning").

A Gaussian head's action is a = mu(s) + z(s)^T E: z(s) the actor's last hidden activation
(the latent features; their gradient is stopped here, as in Stable-Baselines3's default) and E a
(latent x action) matrix with entries E_ji ~ N(0, sigma_ji^2), sigma = exp(log_std) a parameter
matrix. Holding E for several steps makes the exploration smooth in time. Given s, the action
is Gaussian with mean mu(s) and variance sum_j z_j(s)^2 sigma_ji^2 per dimension: its log std
is what the distributions see, one per row. The math is pure functions, in PyTorch and in NumPy
with its gradient for the CPU fast path.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

# Added to the variance so that the log-probability stays finite where the latent features are
# all near 0 (Stable-Baselines3's epsilon).
VARIANCE_FLOOR = 1e-6


def log_std(latent: Tensor, log_std_matrix: Tensor) -> Tensor:
    """Each row's log std (rows x action), from the latent features (rows x latent) and the
    (latent x action) log std parameter; the features get no gradient from it."""
    variance = latent.detach().pow(2) @ torch.exp(2.0 * log_std_matrix)
    return 0.5 * torch.log(variance + VARIANCE_FLOOR)


class RowLogStd(NamedTuple):
    """Each row's log std, and what its gradient needs."""

    log_std: np.ndarray  # (rows, action)
    latent_sq: np.ndarray  # (rows, latent): z^2
    variance: np.ndarray  # (rows, action): z^2 @ sigma^2 + floor
    sigma_sq: np.ndarray  # (latent, action)


def log_std_np(latent: np.ndarray, log_std_matrix: np.ndarray) -> RowLogStd:
    latent_sq = latent * latent
    sigma_sq = np.exp(2.0 * log_std_matrix)
    variance = latent_sq @ sigma_sq + np.float32(VARIANCE_FLOOR)
    return RowLogStd(0.5 * np.log(variance), latent_sq, variance, sigma_sq)


def log_std_backward_np(rows: RowLogStd, d_log_std: np.ndarray) -> np.ndarray:
    """The gradient in the log std matrix, given the gradient in each row's log std.

    d log_std_ni / d L_ji = z_nj^2 sigma_ji^2 / v_ni, with v the variance and L the matrix.
    """
    return rows.sigma_sq * (rows.latent_sq.T @ (d_log_std / rows.variance))


def draw_exploration(rng: np.random.Generator, std: np.ndarray, n: int) -> np.ndarray:
    """n exploration matrices (n, latent, action), entries ~ N(0, std^2)."""
    return (rng.standard_normal((n, *std.shape)) * std).astype(np.float32)


def noise(latent: np.ndarray, exploration: np.ndarray) -> np.ndarray:
    """Row n's deviation from the mean, z_n^T E_n (rows x action)."""
    return np.matmul(latent[:, None, :], exploration)[:, 0, :]
