"""The actor-critic network, built from the config and the spaces. This PyTorch module is the
source of truth: checkpoints hold its weights, and the NumPy fast path (numpy_network.py)
computes with views of the same memory where it supports the network.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ppo import distributions
from ppo.config import Config
from ppo.spaces import ActionSpec

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _layer(n_in: int, n_out: int, gain: float | None) -> nn.Linear:
    """Orthogonal weights and zero bias (Huang et al. 2022, detail 2); PyTorch's default
    initialization when gain is None."""
    layer = nn.Linear(n_in, n_out)
    if gain is not None:
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return layer


def mlp(n_in: int, sizes: list[int], activation: str, ortho_init: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip([n_in, *sizes[:-1]], sizes, strict=True):
        layers += [_layer(a, b, math.sqrt(2.0) if ortho_init else None), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Policy and value function: one shared MLP trunk with two heads, or separate actor and
    critic MLPs. The policy head outputs the parameters of the action distribution (logits,
    Gaussian means); Gaussian heads share a state-independent log std parameter."""

    def __init__(self, obs_width: int, action_spec: ActionSpec, cfg: Config) -> None:
        super().__init__()
        self.action_spec = action_spec
        self.activation = cfg.activation
        actor_sizes = cfg.hidden_sizes if cfg.shared_trunk else (
            cfg.actor_hidden_sizes or cfg.hidden_sizes)
        critic_sizes = cfg.critic_hidden_sizes or cfg.hidden_sizes
        self.actor = mlp(obs_width, actor_sizes, cfg.activation, cfg.ortho_init)
        self.critic = None if cfg.shared_trunk else mlp(obs_width, critic_sizes, cfg.activation,
                                                        cfg.ortho_init)
        critic_width = actor_sizes[-1] if cfg.shared_trunk else critic_sizes[-1]
        # Small policy-head gain starts near-uniform; value head gain 1 (Huang et al. detail 2).
        self.policy_head = _layer(actor_sizes[-1], action_spec.num_params,
                                  0.01 if cfg.ortho_init else None)
        self.value_head = _layer(critic_width, 1, 1.0 if cfg.ortho_init else None)
        self.log_std = (nn.Parameter(torch.full((action_spec.log_std_size,), cfg.init_log_std))
                        if action_spec.log_std_size else None)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Distribution parameters and value, for a batch of observations."""
        hidden = self.actor(obs)
        value_hidden = hidden if self.critic is None else self.critic(obs)
        return self.policy_head(hidden), self.value_head(value_hidden).squeeze(-1)

    def policy(self, obs: Tensor) -> Tensor:
        return self.policy_head(self.actor(obs))

    def value(self, obs: Tensor) -> Tensor:
        hidden = self.actor(obs) if self.critic is None else self.critic(obs)
        return self.value_head(hidden).squeeze(-1)

    def evaluate(self, obs: Tensor, actions: Tensor, masks: Tensor | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """log pi(a|s), entropy H(pi(.|s)) and V(s)."""
        params, value = self(obs)
        logp, entropy = distributions.log_prob_entropy(self.action_spec, params, self.log_std,
                                                       actions, masks)
        return logp, entropy, value

    def actor_parameters(self) -> list[nn.Parameter]:
        """The policy's parameters (with separate networks: those a trust region constrains)."""
        params = [*self.actor.parameters(), *self.policy_head.parameters()]
        return params if self.log_std is None else [*params, self.log_std]

    def critic_parameters(self) -> list[nn.Parameter]:
        """The value function's parameters (separate networks only)."""
        return [*self.critic.parameters(), *self.value_head.parameters()]
