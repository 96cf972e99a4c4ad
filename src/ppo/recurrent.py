"""The recurrent actor-critic (policy lstm): observation features (the CNN's for images, the
observation itself for vectors) -> an LSTM -> the MLP trunk(s) -> the heads, as CleanRL's
ppo_atari_lstm. The LSTM's state is carried from step to step and reset to zero where an
episode starts.

A sequence of T steps of B envs is laid out (T * B, ...) time-major; `starts` (T, B) marks the
steps whose observation begins an episode. Between starts the LSTM runs over whole segments
in one call; at a start the state of the envs starting is zeroed first.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ppo import distributions
from ppo.config import Config
from ppo.networks import ActorCritic, _width
from ppo.spaces import ActionSpec


class LSTMState(NamedTuple):
    """The LSTM's hidden and cell state, each (1, B, hidden)."""

    h: Tensor
    c: Tensor

    def take(self, envs: Tensor | np.ndarray | slice) -> LSTMState:
        return LSTMState(self.h[:, envs], self.c[:, envs])


class Steps(NamedTuple):
    """What the network computes over a sequence: distribution parameters and values per
    step, and the state after the last step."""

    params: Tensor
    values: Tensor
    state: LSTMState


class RecurrentActorCritic(ActorCritic):
    def __init__(self, obs_width: int, action_spec: ActionSpec, cfg: Config,
                 encoder: nn.Module | None = None) -> None:
        super().__init__(cfg.lstm_hidden_size, action_spec, cfg)
        self.encoder = encoder
        self.hidden_size = cfg.lstm_hidden_size
        in_width = obs_width if encoder is None else _width(encoder, obs_width)
        self.lstm = nn.LSTM(in_width, cfg.lstm_hidden_size)
        if cfg.ortho_init:  # as CleanRL's ppo_atari_lstm
            for name, param in self.lstm.named_parameters():
                if "bias" in name:
                    nn.init.zeros_(param)
                else:
                    nn.init.orthogonal_(param, 1.0)

    def initial_state(self, n: int) -> LSTMState:
        device = self.policy_head.weight.device
        zeros = torch.zeros(1, n, self.hidden_size, device=device)
        return LSTMState(zeros, zeros.clone())

    def core(self, obs, state: LSTMState, starts: np.ndarray) -> tuple[Tensor, LSTMState]:
        """The LSTM's outputs (T * B, hidden) over T steps of B envs, and its final state."""
        x = self._features(obs)
        steps, n = starts.shape
        x = x.reshape(steps, n, -1)
        # Segments between the time steps where some env starts an episode.
        cuts = [0, *np.flatnonzero(starts[1:].any(1)) + 1, steps]
        h, c = state
        outputs = []
        for first, end in zip(cuts[:-1], cuts[1:], strict=True):
            if starts[first].any():
                keep = torch.as_tensor(~starts[first], device=x.device).to(x.dtype)
                keep = keep.view(1, n, 1)
                h, c = h * keep, c * keep
            out, (h, c) = self.lstm(x[first:end], (h, c))
            outputs.append(out)
        return torch.cat(outputs).reshape(steps * n, -1), LSTMState(h, c)

    def steps(self, obs, state: LSTMState, starts: np.ndarray) -> Steps:
        hidden, state = self.core(obs, state, starts)
        actor = self.actor(hidden)
        value_hidden = actor if self.critic is None else self.critic(hidden)
        return Steps(self.policy_head(actor), self.value_head(value_hidden).squeeze(-1), state)

    def evaluate_steps(self, obs, actions: Tensor, masks: Tensor | None, state: LSTMState,
                       starts: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """log pi(a|s), entropy and V(s) over a sequence from the state at its start."""
        out = self.steps(obs, state, starts)
        logp, entropy = distributions.log_prob_entropy(self.action_spec, out.params,
                                                       self.log_std, actions, masks)
        return logp, entropy, out.values

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        raise TypeError("a recurrent network needs its state: use steps(obs, state, starts)")

    policy = value = forward


def recurrent_state(policy, state: tuple[np.ndarray, np.ndarray] | None, n: int) -> LSTMState:
    """The LSTMState of `predict`'s (h, c) arrays, each (1, n, hidden); None: a fresh one."""
    fresh = policy.initial_state(n)
    if state is None:
        return fresh
    h, c = (torch.as_tensor(np.asarray(x, np.float32), device=fresh.h.device) for x in state)
    if h.shape != fresh.h.shape or c.shape != fresh.c.shape:
        raise ValueError(f"state must be (h, c) arrays of shape {tuple(fresh.h.shape)}, as "
                         "predict returned it")
    return LSTMState(h, c)


def state_arrays(state: LSTMState) -> tuple[np.ndarray, np.ndarray]:
    """The state as `predict` returns it: (h, c) NumPy arrays of shape (1, n, hidden), as
    Stable-Baselines3's RecurrentPPO."""
    return state.h.cpu().numpy(), state.c.cpu().numpy()
