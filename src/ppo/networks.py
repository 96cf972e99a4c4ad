"""The actor-critic network, built from the config and the spaces. This PyTorch module is the
source of truth: checkpoints hold its weights, and the NumPy fast path (numpy_network.py)
computes with views of the same memory where it supports the network.

`policy` picks the kind: mlp (vectors into MLPs), cnn (images through the Nature CNN,
encoders.py, other parts alongside, then the MLPs) or lstm (an LSTM over those features,
recurrent.py); auto is cnn where the observation holds an image, else mlp.

From Python a user can bring a feature extractor (`features_extractor(obs_width) -> Module`,
its output feeding the MLPs) or a whole network (`network(obs_width, action_spec) -> Module`
whose forward returns the distribution parameters and the value); see `build`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from ppo import distributions, sde
from ppo.config import Config, ConfigError
from ppo.encoders import MultiInputEncoder, NatureCNN
from ppo.spaces import ActionSpec, ObsEncoder, obs_tensor

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


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
    """The output width of a module: its `features_dim`, or found by a dry run on
    (1, obs_width) inputs."""
    if hasattr(module, "features_dim"):
        return int(module.features_dim)
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
        self.bfloat16 = cfg.precision == "bfloat16"
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
        if self.encoder is None:
            return obs
        if not self.bfloat16:
            return self.encoder(obs)
        device = self.policy_head.weight.device.type
        with torch.autocast(device, dtype=torch.bfloat16):
            return self.encoder(obs).float()

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


def policy_kind(policy: str, obs: ObsEncoder) -> str:
    """mlp, cnn or lstm: `policy` as asked, auto resolved from the observation space;
    ConfigError for a policy that does not fit the observations."""
    if policy == "auto":
        return "cnn" if obs.images else "mlp"
    if policy == "cnn" and not obs.images:
        raise ConfigError("--policy cnn needs image observations (uint8 Box of at least "
                          f"{NatureCNN.min_size()}x{NatureCNN.min_size()} pixels); this "
                          "env's are vectors: use --policy mlp")
    if policy == "mlp" and obs.images:
        raise ConfigError(f"observation {', '.join(obs.images)} is an image: use --policy cnn "
                          "(or auto, or lstm)")
    return policy


def image_encoder(obs: ObsEncoder, cfg: Config) -> nn.Module | None:
    """The Nature CNN for an image batch, one per image beside the vector parts for a dict
    batch; None without images."""
    if not obs.images:
        return None
    shapes = obs.image_shapes()
    if not obs.mixed:
        (key, shape), = shapes.items()
        return NatureCNN(shape, cfg.ortho_init, key)
    return MultiInputEncoder(shapes, obs.width, cfg.ortho_init)


def build(obs: ObsEncoder | int, action_spec: ActionSpec, cfg: Config,
          features_extractor: FeaturesExtractor | None = None,
          network: Network | None = None) -> ActorCritic:
    """The network the config describes (its `policy` kind), around a user's feature
    extractor or in place of a user's whole network; checks that a user's network's
    outputs fit the action space. `obs`: the observations' encoder, or the width of plain
    vector observations."""
    if cfg.use_sde and action_spec.discrete:
        raise ConfigError("use_sde needs continuous actions")
    if isinstance(obs, int):
        obs = ObsEncoder(spaces.Box(-np.inf, np.inf, (obs,), np.float32))
    obs_width = obs.width
    if network is None and features_extractor is None:
        kind = policy_kind(cfg.policy, obs)
        if kind == "lstm":
            from ppo.recurrent import RecurrentActorCritic

            if cfg.use_sde:
                raise ConfigError("use_sde takes feed-forward policies, not policy lstm")
            return RecurrentActorCritic(obs_width, action_spec, cfg, image_encoder(obs, cfg))
        return ActorCritic(obs_width, action_spec, cfg, image_encoder(obs, cfg))
    if cfg.policy == "lstm":
        raise ConfigError("policy lstm builds its own network; a user's feature extractor or "
                          "network is feed-forward")
    if network is None:
        return ActorCritic(obs_width, action_spec, cfg, features_extractor(obs_width))
    if cfg.use_sde:
        raise ConfigError("use_sde needs the built-in actor network (its noise is a function "
                          "of the actor's last hidden layer)")
    model = CustomActorCritic(network(obs_width, action_spec), action_spec, cfg)
    with torch.no_grad():
        params, value = model(obs_tensor(obs.zeros(2), "cpu"))
    if params.shape != (2, action_spec.num_params) or value.shape != (2,):
        raise ConfigError(
            f"the network's forward must return (params of shape (N, "
            f"{action_spec.num_params}), value of shape (N,)); got {tuple(params.shape)} and "
            f"{tuple(value.shape)}")
    return model


def check_trainable(model: ActorCritic, cfg: Config, autoreset_mode: object,
                    distributed: bool) -> None:
    """ConfigError where the rest of the run cannot train this network: TRPO takes the
    built-in MLPs alone; an LSTM takes one process and envs reset on the step their episode
    ends (its state is reset with them)."""
    from gymnasium.vector import AutoresetMode

    if cfg.algo == "trpo" and (type(model) is not ActorCritic or model.encoder is not None):
        raise ConfigError("algo trpo needs the built-in MLP actor and critic networks "
                          "(vector observations, policy mlp)")
    if hasattr(model, "initial_state"):
        if distributed:
            raise ConfigError("policy lstm trains in one process; distributed training takes "
                              "feed-forward policies")
        if autoreset_mode == AutoresetMode.NEXT_STEP:
            raise ConfigError("policy lstm needs envs reset on the step their episode ends "
                              "(Gymnasium's AutoresetMode.SAME_STEP)")
