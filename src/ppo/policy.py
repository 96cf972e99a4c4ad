"""pi_old as the collector and `predict` use it: distribution parameters for a batch of
observations, and actions sampled from them (or their mode) in NumPy.

`NumpyPolicy` is a NumPy snapshot of an MLP actor (one observation costs ~10 us against
~80 us in torch), taken again after every update: that is the promotion of pi_old.
`TorchPolicy` runs any network on its own device; it computes V(s) and the distribution
anyway, so it also returns pi_old's log-probs and values of the steps it takes, which saves
the learner a pass over the rollout. `RecurrentPolicy` carries an LSTM's state. All sample
with NumPy noise from the agent's action stream, so a checkpoint's stream state resumes
any of them exactly. With gSDE (sde.py) the Gaussian heads' noise is each env's exploration
matrix times the actor's latent features; the collector says when the matrices are drawn
anew (at the start of every rollout, then every sde_sample_freq steps), and `act` draws
fresh ones on every call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from ppo import distributions, sde
from ppo.networks import ActorCritic
from ppo.numpy_network import NumpyMLP, supports
from ppo.recurrent import recurrent_state, state_arrays
from ppo.spaces import ActionSpec, Obs, ObsEncoder, obs_finite, obs_len, obs_tensor

if TYPE_CHECKING:
    from ppo.normalization import ObsNormalizer


class PolicyStep(NamedTuple):
    """The actions taken for a batch, with pi_old's log-probs and values where the policy
    computed them (torch policies), and the recurrent state after the step."""

    actions: np.ndarray
    logp: np.ndarray | None = None
    values: np.ndarray | None = None
    state: Any = None


class Policy:
    """Actions from distribution parameters; subclasses say how the parameters are computed."""

    recurrent = False
    records = False  # `step` returns pi_old's log-probs and values

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

    def step(self, obs: Obs, noise: np.ndarray, mask: np.ndarray | None = None,
             state: Any = None, starts: np.ndarray | None = None) -> PolicyStep:
        """One step of the collector: `sample`, plus what the policy records."""
        return PolicyStep(self.sample(obs, noise, mask))

    def act(self, obs: Obs, rng: np.random.Generator, deterministic: bool = False,
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
        # gSDE's log-probs need the exploration matrices: they are evaluated afterwards.
        self.records = not self.use_sde

    @torch.no_grad()
    def params(self, obs: Obs) -> np.ndarray:
        return self.model.policy(obs_tensor(obs, self.device)).cpu().numpy()

    def _tensor(self, array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.as_tensor(array, device=self.device)

    def _taken(self, params: torch.Tensor, values: torch.Tensor, noise: np.ndarray,
               mask: np.ndarray | None, state: Any = None) -> PolicyStep:
        """Sampled actions and their log-probs under the distribution `params`."""
        actions = distributions.sample(self.spec, params.cpu().numpy(), self.std, noise, mask)
        logp, _ = distributions.log_prob_entropy(self.spec, params, self.model.log_std,
                                                 self._tensor(actions), self._tensor(mask))
        return PolicyStep(actions, logp.cpu().numpy(), values.cpu().numpy(), state)

    @torch.no_grad()
    def step(self, obs: Obs, noise: np.ndarray, mask: np.ndarray | None = None,
             state: Any = None, starts: np.ndarray | None = None) -> PolicyStep:
        params, values = self.model(obs_tensor(obs, self.device))
        return self._taken(params, values, noise, mask)


class RecurrentPolicy(TorchPolicy):
    """An LSTM policy, one step at a time: `state` is its LSTMState for the batch's envs and
    `starts` (N,) marks the envs whose observation begins an episode (state reset first)."""

    recurrent = True

    def initial_state(self, n: int) -> Any:
        return self.model.initial_state(n)

    @torch.no_grad()
    def step(self, obs: Obs, noise: np.ndarray, mask: np.ndarray | None = None,
             state: Any = None, starts: np.ndarray | None = None) -> PolicyStep:
        out = self.model.steps(obs_tensor(obs, self.device), state, starts[None])
        return self._taken(out.params, out.values, noise, mask, out.state)

    @torch.no_grad()
    def values(self, obs: Obs, state: Any, starts: np.ndarray) -> np.ndarray:
        """V(s) of one step from `state` (bootstraps: the state is left as it was)."""
        return self.model.steps(obs_tensor(obs, self.device), state, starts[None]
                                ).values.cpu().numpy()

    @torch.no_grad()
    def act_recurrent(self, obs: Obs, rng: np.random.Generator, deterministic: bool,
                      mask: np.ndarray | None, state: Any, starts: np.ndarray
                      ) -> tuple[np.ndarray, Any]:
        """Actions for `predict`, and the state after them."""
        out = self.model.steps(obs_tensor(obs, self.device), state, starts[None])
        params = out.params.cpu().numpy()
        if deterministic:
            return distributions.mode(self.spec, params, mask), out.state
        noise = self.noise(rng, (len(params),))
        return distributions.sample(self.spec, params, self.std, noise, mask), out.state

    @torch.no_grad()
    def policy_latent(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        latent, params = self.model.policy_latent(obs_tensor(obs, self.device))
        return latent.cpu().numpy(), params.cpu().numpy()


def make_policy(model: ActorCritic, spec: ActionSpec) -> Policy:
    """The NumPy snapshot where it supports the network and the model is on the CPU."""
    if hasattr(model, "initial_state"):
        return RecurrentPolicy(model, spec)
    on_cpu = next(model.parameters()).device.type == "cpu"
    return (NumpyPolicy if on_cpu and supports(model) else TorchPolicy)(model, spec)


def predict(policy: Policy, encoder: ObsEncoder, obs_normalizer: ObsNormalizer | None,
            spec: ActionSpec, obs: Any, state: Any, episode_start: Any, deterministic: bool,
            action_masks: Any, rng: np.random.Generator) -> tuple[Any, Any]:
    """Env actions for one raw observation or a batch (PPO.predict): encoded, checked,
    normalized with frozen statistics, acted on; a recurrent policy's state in and out."""
    one = encoder.batch_of_one(obs)
    x = encoder(obs if one is None else one)
    if not obs_len(x):
        raise ValueError("predict: obs is an empty batch")
    if not obs_finite(x).all():
        raise ValueError("predict: obs is not finite (it holds NaN or Inf)")
    if obs_normalizer is not None:
        x = obs_normalizer(x)
    n = obs_len(x)
    mask = None if action_masks is None else np.asarray(action_masks, bool).reshape(n, -1)
    if policy.recurrent:
        flat, state = policy.act_recurrent(
            x, rng, deterministic, mask, recurrent_state(policy, state, n),
            np.zeros(n, bool) if episode_start is None else
            np.asarray(episode_start, bool).reshape(n))
        state = state_arrays(state)
    else:
        flat, state = policy.act(x, rng, deterministic, mask), None
    actions = spec.to_env(flat)
    return (actions if one is None else spec.one_env(actions, 0)), state
