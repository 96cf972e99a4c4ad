"""The NumPy back end of an MLP actor-critic (networks.ActorCritic with tanh or ReLU): its
forward pass, and the backward pass of the CPU fast path.

At batch 1 to 64 a 64-64 MLP is a few microseconds of arithmetic, and eager PyTorch spends
~80 us (acting) to ~1.3 ms (a minibatch step) on dispatch and autograd bookkeeping. The same
`forward` serves acting (on a snapshot of the weights: pi_old) and learning (on views of the
torch parameters' memory); tests pin both to the torch module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from torch import nn

from ppo.networks import ActorCritic

Layer = tuple[np.ndarray, np.ndarray]  # weight as (inputs, outputs), bias


def supports(model: nn.Module) -> bool:
    """True for the networks this back end computes: our MLP actor-critic, no extractor."""
    return (type(model) is ActorCritic and model.encoder is None
            and model.activation in ("tanh", "relu"))


def _activate(name: str, x: np.ndarray) -> None:
    if name == "tanh":
        np.tanh(x, out=x)
    else:
        np.maximum(x, 0.0, out=x)


def dense(layers: list[Layer], x: np.ndarray, activation: str | None,
          keep: list[np.ndarray] | None = None) -> np.ndarray:
    """x through each layer (activation after each, unless None); with `keep`, every layer's
    output is appended to it for the backward pass. In place: at batch 1 allocations cost as
    much as the arithmetic."""
    for weight, bias in layers:
        x = x @ weight
        x += bias
        if activation is not None:
            _activate(activation, x)
        if keep is not None:
            keep.append(x)
    return x


class Forward(NamedTuple):
    """A forward pass with what the backward pass needs: each trunk's activations, input first."""

    actor: list[np.ndarray]
    critic: list[np.ndarray]
    params: np.ndarray
    values: np.ndarray


class NumpyMLP:
    """The network's weights as NumPy arrays: copies (a snapshot) or views of torch's memory."""

    def __init__(self, model: ActorCritic, array: Callable[[nn.Parameter], np.ndarray]) -> None:
        """array(p): the NumPy array standing for parameter p (a view or a copy); weights are
        used transposed, as (inputs, outputs)."""
        def layers(seq: nn.Sequential | None) -> list[Layer]:
            linears = [] if seq is None else [m for m in seq if isinstance(m, nn.Linear)]
            return [(array(m.weight).T, array(m.bias)) for m in linears]

        self.activation = model.activation
        self.actor, self.critic = layers(model.actor), layers(model.critic)
        self.policy_head = layers(nn.Sequential(model.policy_head))
        self.value_head = layers(nn.Sequential(model.value_head))
        self.log_std = None if model.log_std is None else array(model.log_std)

    @classmethod
    def snapshot(cls, model: ActorCritic) -> NumpyMLP:
        """A copy of the weights, laid out for the fastest product at batch 1."""
        copy = cls(model, lambda p: p.detach().cpu().numpy())
        for layers in (copy.actor, copy.critic, copy.policy_head, copy.value_head):
            layers[:] = [(w.copy(), b.copy()) for w, b in layers]
        if copy.log_std is not None:
            copy.log_std = copy.log_std.copy()
        return copy

    def policy(self, obs: np.ndarray) -> np.ndarray:
        """Distribution parameters for a batch of observations."""
        return dense(self.policy_head, dense(self.actor, obs, self.activation), None)

    def policy_latent(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The actor's latent features (the policy head's input) and the distribution
        parameters."""
        latent = dense(self.actor, obs, self.activation)
        return latent, dense(self.policy_head, latent, None)

    def forward(self, obs: np.ndarray) -> Forward:
        actor = [obs]
        dense(self.actor, obs, self.activation, actor)
        critic = actor
        if self.critic:
            critic = [obs]
            dense(self.critic, obs, self.activation, critic)
        params = dense(self.policy_head, actor[-1], None)
        values = dense(self.value_head, critic[-1], None)[:, 0]
        return Forward(actor, critic, params, values)

    def values(self, obs: np.ndarray, keep: list[np.ndarray] | None = None) -> np.ndarray:
        trunk = self.critic or self.actor
        return dense(self.value_head, dense(trunk, obs, self.activation, keep), None)[:, 0]

    def backward(self, fwd: Forward, d_params: np.ndarray | None, d_values: np.ndarray,
                 grads: NumpyMLP) -> None:
        """Fill `grads` (same structure, torch's weight layout) with the gradient of a loss
        whose gradients in the outputs are d_params and d_values (d_params None: value only)."""
        d_critic = self._backward_layer(self.value_head[0], grads.value_head[0], fwd.critic[-1],
                                        d_values[:, None])
        if d_params is None:
            self._backward_trunk(self.critic or self.actor, grads.critic or grads.actor,
                                 fwd.critic, d_critic)
            return
        d_actor = self._backward_layer(self.policy_head[0], grads.policy_head[0], fwd.actor[-1],
                                       d_params)
        if self.critic:
            self._backward_trunk(self.critic, grads.critic, fwd.critic, d_critic)
            self._backward_trunk(self.actor, grads.actor, fwd.actor, d_actor)
        else:
            self._backward_trunk(self.actor, grads.actor, fwd.actor, d_actor + d_critic)

    @staticmethod
    def _backward_layer(layer: Layer, grad: Layer, inputs: np.ndarray,
                        d_out: np.ndarray) -> np.ndarray:
        """Fill one layer's gradient; return the gradient reaching its input."""
        (weight, _), (d_weight, d_bias) = layer, grad
        np.matmul(d_out.T, inputs, out=d_weight.T)
        d_bias[:] = d_out.sum(0)
        return d_out @ weight.T

    def _backward_trunk(self, layers: list[Layer], grads: list[Layer],
                        acts: list[np.ndarray], d_top: np.ndarray) -> None:
        d = d_top
        for i in range(len(layers) - 1, -1, -1):
            out = acts[i + 1]
            d = d * (1.0 - out * out) if self.activation == "tanh" else d * (out > 0)
            (weight, _), (d_weight, d_bias) = layers[i], grads[i]
            np.matmul(d.T, acts[i], out=d_weight.T)
            d_bias[:] = d.sum(0)
            if i:
                d = d @ weight.T
