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
    """With a shared trunk one LSTM feeds both heads (CleanRL's ppo_atari_lstm); without,
    the critic has an LSTM of its own (Stable-Baselines3's RecurrentPPO default), so that
    large value gradients do not swamp the policy's memory. The state holds both LSTMs'
    states side by side."""

    def __init__(self, obs_width: int, action_spec: ActionSpec, cfg: Config,
                 encoder: nn.Module | None = None) -> None:
        super().__init__(cfg.lstm_hidden_size, action_spec, cfg)
        self.encoder = encoder
        self.hidden_size = cfg.lstm_hidden_size
        in_width = obs_width if encoder is None else _width(encoder, obs_width)
        self.lstm = nn.LSTM(in_width, cfg.lstm_hidden_size)
        self.critic_lstm = None if cfg.shared_trunk else nn.LSTM(in_width, cfg.lstm_hidden_size)
        if cfg.ortho_init:  # as CleanRL's ppo_atari_lstm
            for lstm in (self.lstm, self.critic_lstm):
                for name, param in [] if lstm is None else lstm.named_parameters():
                    if "bias" in name:
                        nn.init.zeros_(param)
                    else:
                        nn.init.orthogonal_(param, 1.0)

    def initial_state(self, n: int) -> LSTMState:
        device = self.policy_head.weight.device
        width = self.hidden_size * (1 if self.critic_lstm is None else 2)
        zeros = torch.zeros(1, n, width, device=device)
        return LSTMState(zeros, zeros.clone())

    def core(self, obs, state: LSTMState, starts: np.ndarray
             ) -> tuple[Tensor, Tensor, LSTMState]:
        """The actor's and the critic's LSTM outputs (T * B, hidden) over T steps of B envs,
        and the final state."""
        x = self._features(obs)
        steps, n = starts.shape
        x = x.reshape(steps, n, -1)
        # Segments between the time steps where some env starts an episode.
        cuts = [0, *np.flatnonzero(starts[1:].any(1)) + 1, steps]
        if self.critic_lstm is None:
            out, final = _run(self.lstm, x, state, starts, cuts)
            return out, out, final
        size = self.hidden_size
        actor, (h_a, c_a) = _run(self.lstm, x, LSTMState(state.h[..., :size],
                                                           state.c[..., :size]), starts, cuts)
        critic, (h_c, c_c) = _run(self.critic_lstm, x, LSTMState(state.h[..., size:],
                                                                   state.c[..., size:]),
                                  starts, cuts)
        return actor, critic, LSTMState(torch.cat([h_a, h_c], -1), torch.cat([c_a, c_c], -1))

    def steps(self, obs, state: LSTMState, starts: np.ndarray) -> Steps:
        actor_in, critic_in, state = self.core(obs, state, starts)
        actor = self.actor(actor_in)
        value_hidden = actor if self.critic is None else self.critic(critic_in)
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


def _run(lstm: nn.LSTM, x: Tensor, state: LSTMState, starts: np.ndarray, cuts: list[int]
         ) -> tuple[Tensor, LSTMState]:
    """`lstm` over the (T, B, F) inputs segment by segment, zeroing the state of the envs
    whose episode starts at a segment's first step; outputs (T * B, hidden)."""
    steps, n = starts.shape
    h, c = state
    outputs = []
    for first, end in zip(cuts[:-1], cuts[1:], strict=True):
        if starts[first].any():
            keep = torch.as_tensor(~starts[first], device=x.device).to(x.dtype).view(1, n, 1)
            h, c = h * keep, c * keep
        out, (h, c) = lstm(x[first:end], (h, c))
        outputs.append(out)
    return torch.cat(outputs).reshape(steps * n, -1), LSTMState(h, c)


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
