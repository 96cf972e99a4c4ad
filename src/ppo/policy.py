"""pi_old as the collector and `predict` use it: distribution parameters for a batch of
observations, and actions sampled from them (or their mode) in NumPy.

`NumpyPolicy` is a NumPy snapshot of an MLP actor (one observation costs ~10 us against
~80 us in torch), taken again after every update: that is the promotion of pi_old.
`TorchPolicy` runs any network on its own device. Both sample with NumPy noise from the
agent's action stream, so a checkpoint's stream state resumes either exactly. With gSDE
(sde.py) the Gaussian heads' noise is each env's exploration matrix times the actor's latent
features; the collector says when the matrices are drawn anew (at the start of every rollout,
then every sde_sample_freq steps), and `act` draws fresh ones on every call.
"""

from __future__ import annotations

import numpy as np
import torch

from ppo import distributions, sde
from ppo.networks import ActorCritic
from ppo.numpy_network import NumpyMLP, supports
from ppo.spaces import ActionSpec


class Policy:
    """Actions from distribution parameters; subclasses say how the parameters are computed."""

    def __init__(self, model: ActorCritic, spec: ActionSpec) -> None:
        self.spec = spec
        self.use_sde = model.use_sde
        self.exploration: np.ndarray | None = None  # gSDE: (envs, latent, log std entries)
        self.promote(model)

    def promote(self, model: ActorCritic) -> None:
        """Take the current weights as pi_old."""
        self.std = None if model.log_std is None else np.exp(
            model.log_std.detach().cpu().numpy())

    def params(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def policy_latent(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The actor's latent features and the distribution parameters."""
        raise NotImplementedError

    def noise(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return distributions.draw_noise(self.spec, rng, shape, gaussian=not self.use_sde)

    def resample_exploration(self, rng: np.random.Generator, n: int) -> None:
        """gSDE: draw the exploration matrices of n envs anew."""
        self.exploration = sde.draw_exploration(rng, self.std, n)

    def sample(self, obs: np.ndarray, noise: np.ndarray,
               mask: np.ndarray | None = None) -> np.ndarray:
        """Actions (N, columns) for an (N, width) batch, given its (N, params) slice of noise
        and, for masked categorical heads, the (N, mask width) valid actions."""
        if not self.use_sde:
            return distributions.sample(self.spec, self.params(obs), self.std, noise, mask)
        latent, params = self.policy_latent(obs)
        return distributions.sample(self.spec, params, None, noise, mask,
                                    sde.noise(latent, self.exploration))

    def act(self, obs: np.ndarray, rng: np.random.Generator, deterministic: bool = False,
            mask: np.ndarray | None = None) -> np.ndarray:
        if deterministic:
            return distributions.mode(self.spec, self.params(obs), mask)
        if self.use_sde:  # fresh matrices: each call is a draw from pi(.|s)
            self.resample_exploration(rng, len(obs))
        return self.sample(obs, self.noise(rng, (len(obs),)), mask)


class NumpyPolicy(Policy):
    def promote(self, model: ActorCritic) -> None:
        super().promote(model)
        self.net = NumpyMLP.snapshot(model)

    def params(self, obs: np.ndarray) -> np.ndarray:
        return self.net.policy(obs)

    def policy_latent(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.net.policy_latent(obs)


class TorchPolicy(Policy):
    def promote(self, model: ActorCritic) -> None:
        super().promote(model)
        self.model = model
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def params(self, obs: np.ndarray) -> np.ndarray:
        return self.model.policy(torch.as_tensor(obs, device=self.device)).cpu().numpy()

    @torch.no_grad()
    def policy_latent(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        latent, params = self.model.policy_latent(torch.as_tensor(obs, device=self.device))
        return latent.cpu().numpy(), params.cpu().numpy()


def make_policy(model: ActorCritic, spec: ActionSpec) -> Policy:
    """The NumPy snapshot where it supports the network and the model is on the CPU."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return (NumpyPolicy if on_cpu and supports(model) else TorchPolicy)(model, spec)
