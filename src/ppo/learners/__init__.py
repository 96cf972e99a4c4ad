"""Learners: each takes a prepared batch and improves the policy, `update(batch, rng)`.

PPO's clipped-surrogate epochs run on PyTorch (any device, any network) or on the NumPy
fast path (CPU, MLP networks: same math, tested equal); TRPO takes one natural-gradient step.
`make_learner` picks the one the config asks for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ppo.config import Config
from ppo.learners.base import Learner, NonFiniteError, UpdateStats
from ppo.learners.flat_adam import FlatAdam
from ppo.networks import ActorCritic
from ppo.numpy_network import supports

if TYPE_CHECKING:
    from ppo.distributed import Replicas

__all__ = ["Learner", "NonFiniteError", "UpdateStats", "make_learner", "uses_numpy"]


def uses_numpy(cfg: Config, model: ActorCritic) -> bool:
    """The NumPy fast path applies on the CPU to the networks it supports (learner auto), or
    when asked for (learner numpy)."""
    if cfg.learner == "torch" or next(model.parameters()).device.type != "cpu":
        return False
    return supports(model)


def make_learner(cfg: Config, model: ActorCritic, replicas: Replicas | None) -> Learner:
    from ppo.learners.ppo_numpy import NumpyPPO
    from ppo.learners.ppo_torch import RecurrentPPO, TorchPPO
    from ppo.learners.trpo import TRPO

    if cfg.learner == "numpy" and not uses_numpy(cfg, model):
        from ppo.config import ConfigError

        raise ConfigError("learner numpy takes MLP networks on the CPU; use learner torch")
    if cfg.algo == "trpo":
        return TRPO(model, cfg, numpy_critic=uses_numpy(cfg, model))
    if uses_numpy(cfg, model):
        return NumpyPPO(model, FlatAdam(model.parameters(), cfg.lr, cfg.adam_eps), cfg, replicas)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    backend = RecurrentPPO if hasattr(model, "initial_state") else TorchPPO
    return backend(model, optimizer, cfg, replicas)
