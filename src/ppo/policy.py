"""Actor-critic networks: Categorical for Discrete actions, diagonal Gaussian for Box actions.

`ActorCritic` is the canonical model (PyTorch, any device). `InferencePolicy` is a NumPy
snapshot of its actor used to pick actions during rollouts: one observation through a
64-64 MLP costs ~10 us in NumPy against ~80 us in torch. Every number that enters the
loss (frozen log-probs, values) is still computed by `ActorCritic`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

LOG_2PI = math.log(2.0 * math.pi)


def _layer(n_in: int, n_out: int, gain: float) -> nn.Linear:
    """Orthogonal weights, zero bias (Huang et al. 2022, detail 2)."""
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _trunk(obs_dim: int, hidden_sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip([obs_dim, *hidden_sizes[:-1]], hidden_sizes, strict=True):
        layers += [_layer(n_in, n_out, math.sqrt(2.0)), nn.Tanh()]
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Policy and value function, with a shared trunk or two separate MLPs."""

    def __init__(
        self,
        obs_dim: int,
        action_space: spaces.Space,
        hidden_sizes: list[int],
        shared_trunk: bool,
        init_log_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.discrete = isinstance(action_space, spaces.Discrete)
        self.action_dim = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.actor = _trunk(obs_dim, hidden_sizes)
        self.critic = None if shared_trunk else _trunk(obs_dim, hidden_sizes)
        # Small policy-head gain starts near-uniform; value head gain 1 (Huang et al. detail 2).
        self.policy_head = _layer(hidden_sizes[-1], self.action_dim, 0.01)
        self.value_head = _layer(hidden_sizes[-1], 1, 1.0)
        self.log_std = (
            None if self.discrete else nn.Parameter(torch.full((self.action_dim,), init_log_std))
        )

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Policy output (logits, or Gaussian mean) and value, for a batch of observations."""
        hidden = self.actor(obs)
        value_hidden = hidden if self.critic is None else self.critic(obs)
        return self.policy_head(hidden), self.value_head(value_hidden).squeeze(-1)

    def value(self, obs: Tensor) -> Tensor:
        hidden = self.actor(obs) if self.critic is None else self.critic(obs)
        return self.value_head(hidden).squeeze(-1)

    def evaluate(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log pi(a|s), entropy H(pi(.|s)) and V(s), written out rather than through
        torch.distributions, whose argument checks cost more than the math at batch 64."""
        out, value = self(obs)
        if self.discrete:
            log_probs = torch.log_softmax(out, dim=-1)
            logp = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            return logp, entropy, value
        log_std = self.log_std.expand_as(out)
        z = (actions - out) * torch.exp(-log_std)
        logp = (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)
        entropy = (0.5 + 0.5 * LOG_2PI + log_std).sum(-1)
        return logp, entropy, value

    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Sample (or take the mode of) pi(.|s) with torch; used on devices other than the CPU."""
        out, _ = self(obs)
        if self.discrete:
            if deterministic:
                return out.argmax(-1)
            return torch.distributions.Categorical(logits=out, validate_args=False).sample()
        if deterministic:
            return out
        return out + torch.exp(self.log_std) * torch.randn_like(out)


class InferencePolicy:
    """A NumPy copy of the actor, refreshed after every update (the promotion of pi_old)."""

    def __init__(self, model: ActorCritic) -> None:
        self.discrete = model.discrete
        self.load(model)

    def load(self, model: ActorCritic) -> None:
        linears = [m for m in model.actor if isinstance(m, nn.Linear)] + [model.policy_head]
        self.layers = [
            (m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy())
            for m in linears
        ]
        self.std = None if model.discrete else np.exp(model.log_std.detach().cpu().numpy())

    def policy_output(self, obs: np.ndarray) -> np.ndarray:
        """Logits or Gaussian means for a (N, obs_dim) float32 batch."""
        hidden = obs
        for weight, bias in self.layers[:-1]:
            hidden = hidden @ weight
            hidden += bias  # in place: at batch 1 allocations cost as much as the arithmetic
            np.tanh(hidden, out=hidden)
        weight, bias = self.layers[-1]
        out = hidden @ weight
        out += bias
        return out

    def noise(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """The randomness of `sample` for a batch of `shape`, drawn in one call: a rollout
        draws all of its noise up front (one Generator call per step costs ~1.5 us)."""
        width = self.layers[-1][0].shape[1]
        if self.discrete:
            return rng.gumbel(size=(*shape, width))
        return rng.standard_normal((*shape, width))

    def sample(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Actions for a (N, obs_dim) batch, given its (N, width) slice of `noise`."""
        out = self.policy_output(obs)
        if self.discrete:
            # Gumbel-max: argmax(logits + Gumbel noise) is an exact sample of softmax(logits).
            return (out + noise).argmax(-1)
        return (out + self.std * noise).astype(np.float32)

    def act(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False):
        if deterministic:
            out = self.policy_output(obs)
            return out.argmax(-1) if self.discrete else out
        return self.sample(obs, self.noise(rng, (len(obs),)))
