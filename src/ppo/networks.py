"""The actor-critic network, built from the config and the spaces. This PyTorch module is the
source of truth: checkpoints hold its weights, and the NumPy fast path (numpy_network.py)
computes with views of the same memory where it supports the network.

From Python a user can bring a feature extractor (`features_extractor(obs_width) -> Module`,
its output feeding the MLPs) or a whole network (`network(obs_width, action_spec) -> Module`
whose forward returns the distribution parameters and the value); see `build`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ppo import distributions, sde
from ppo.config import Config, ConfigError
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
    widths = [n_in, *sizes]
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [_layer(a, b, math.sqrt(2.0) if ortho_init else None), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


def _width(module: nn.Module, obs_width: int) -> int:
    """The output width of a module taking (N, obs_width) inputs, found by a dry run."""
    with torch.no_grad():
        return int(module(torch.zeros(1, obs_width)).shape[-1])


class ActorCritic(nn.Module):
    """Policy and value function: one shared MLP trunk with two heads, or separate actor and
    critic MLPs, optionally after a feature extractor (`encoder`, shared by both). The policy
    head outputs the parameters of the action distribution (logits, Gaussian means); Gaussian
    heads share a state-independent log std parameter, or with use_sde a (latent x action)
    matrix of log stds of the exploration noise's weights (sde.py)."""

    def __init__(self, obs_width: int, action_spec: ActionSpec, cfg: Config,
                 encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.action_spec = action_spec
        self.activation = cfg.activation
        self.encoder = encoder
        width = obs_width if encoder is None else _width(encoder, obs_width)
        def sizes(own: list[int] | None) -> list[int]:
            return cfg.hidden_sizes if own is None or cfg.shared_trunk else own

        actor_sizes, critic_sizes = sizes(cfg.actor_hidden_sizes), sizes(cfg.critic_hidden_sizes)
        self.actor = mlp(width, actor_sizes, cfg.activation, cfg.ortho_init)
        self.critic = None if cfg.shared_trunk else mlp(width, critic_sizes, cfg.activation,
                                                        cfg.ortho_init)
        actor_width = actor_sizes[-1] if actor_sizes else width
        critic_width = actor_width if cfg.shared_trunk else (
            critic_sizes[-1] if critic_sizes else width)
        # Small policy-head gain starts near-uniform; value head gain 1 (Huang et al. detail 2).
        self.policy_head = _layer(actor_width, action_spec.num_params,
                                  0.01 if cfg.ortho_init else None)
        self.value_head = _layer(critic_width, 1, 1.0 if cfg.ortho_init else None)
        self.use_sde = cfg.use_sde
        log_std_shape = ((actor_width, action_spec.log_std_size) if cfg.use_sde else
                         (action_spec.log_std_size,))
        self.log_std = (nn.Parameter(torch.full(log_std_shape, cfg.init_log_std))
                        if action_spec.log_std_size else None)

    def _features(self, obs: Tensor) -> Tensor:
        return obs if self.encoder is None else self.encoder(obs)

    def _outputs(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The actor's latent features (the policy head's input), the distribution
        parameters and the value."""
        x = self._features(obs)
        hidden = self.actor(x)
        value_hidden = hidden if self.critic is None else self.critic(x)
        return hidden, self.policy_head(hidden), self.value_head(value_hidden).squeeze(-1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Distribution parameters and value, for a batch of observations."""
        _, params, value = self._outputs(obs)
        return params, value

    def policy_latent(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """The actor's latent features and the distribution parameters."""
        hidden = self.actor(self._features(obs))
        return hidden, self.policy_head(hidden)

    def policy(self, obs: Tensor) -> Tensor:
        return self.policy_latent(obs)[1]

    def action_log_std(self, latent: Tensor | None) -> Tensor | None:
        """The Gaussian heads' log std: the parameter, or with gSDE one row per state."""
        return sde.log_std(latent, self.log_std) if self.use_sde else self.log_std

    def distribution(self, obs: Tensor) -> tuple[Tensor, Tensor | None]:
        """pi(.|s) as its parameters and its Gaussian heads' log std."""
        latent, params = self.policy_latent(obs)
        return params, self.action_log_std(latent)

    def value(self, obs: Tensor) -> Tensor:
        x = self._features(obs)
        hidden = self.actor(x) if self.critic is None else self.critic(x)
        return self.value_head(hidden).squeeze(-1)

    def evaluate(self, obs: Tensor, actions: Tensor, masks: Tensor | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """log pi(a|s), entropy H(pi(.|s)) and V(s)."""
        latent, params, value = self._outputs(obs)
        logp, entropy = distributions.log_prob_entropy(
            self.action_spec, params, self.action_log_std(latent), actions, masks)
        return logp, entropy, value

    def actor_parameters(self) -> list[nn.Parameter]:
        """The policy's parameters (with separate networks: those a trust region constrains)."""
        params = [*self.actor.parameters(), *self.policy_head.parameters()]
        return params if self.log_std is None else [*params, self.log_std]

    def critic_parameters(self) -> list[nn.Parameter]:
        """The value function's parameters (separate networks only)."""
        return [*self.critic.parameters(), *self.value_head.parameters()]


class CustomActorCritic(ActorCritic):
    """A user's whole network: `module(obs)` returns (distribution parameters, value). A
    state-independent log std is added for Gaussian heads unless the module has `log_std`."""

    def __init__(self, module: nn.Module, action_spec: ActionSpec, cfg: Config) -> None:
        nn.Module.__init__(self)
        self.action_spec, self.activation, self.module = action_spec, None, module
        self.use_sde = False  # build() refuses gSDE for a user's whole network
        own = getattr(module, "log_std", None)
        self.log_std = own if own is not None or not action_spec.log_std_size else (
            nn.Parameter(torch.full((action_spec.log_std_size,), cfg.init_log_std)))

    def _outputs(self, obs: Tensor) -> tuple[None, Tensor, Tensor]:
        params, value = self.module(obs)
        return None, params, value.reshape(len(params))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self._outputs(obs)[1:]

    def policy(self, obs: Tensor) -> Tensor:
        return self(obs)[0]

    def policy_latent(self, obs: Tensor) -> tuple[None, Tensor]:
        return None, self.policy(obs)

    def value(self, obs: Tensor) -> Tensor:
        return self(obs)[1]


FeaturesExtractor = Callable[[int], nn.Module]
Network = Callable[[int, ActionSpec], nn.Module]


def build(obs_width: int, action_spec: ActionSpec, cfg: Config,
          features_extractor: FeaturesExtractor | None = None,
          network: Network | None = None) -> ActorCritic:
    """The network the config describes, around a user's feature extractor or in place of
    a user's whole network; checks that a user's network's outputs fit the action space."""
    if cfg.use_sde and action_spec.discrete:
        raise ConfigError("use_sde needs continuous actions")
    if network is None:
        encoder = None if features_extractor is None else features_extractor(obs_width)
        return ActorCritic(obs_width, action_spec, cfg, encoder)
    if cfg.use_sde:
        raise ConfigError("use_sde needs the built-in actor network (its noise is a function "
                          "of the actor's last hidden layer)")
    model = CustomActorCritic(network(obs_width, action_spec), action_spec, cfg)
    with torch.no_grad():
        params, value = model(torch.zeros(2, obs_width))
    if params.shape != (2, action_spec.num_params) or value.shape != (2,):
        raise ConfigError(
            f"the network's forward must return (params of shape (N, "
            f"{action_spec.num_params}), value of shape (N,)); got {tuple(params.shape)} and "
            f"{tuple(value.shape)}")
    return model
