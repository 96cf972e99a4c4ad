"""Optimal values of Gymnasium's toy-text tasks, computed exactly, for tests to measure agents by.

- FrozenLake-v1, Taxi-v4, CliffWalking-v1 expose their transition table as `env.unwrapped.P`;
  `solve_tabular` runs finite-horizon dynamic programming over it with the registered time
  limit (FrozenLake 100 steps, Taxi 200; CliffWalking registers none, so the recursion runs
  until the values stop changing) and averages over the initial-state distribution.
- Blackjack-v1 deals from an infinite deck, so its optimal value follows by recursion over
  (player sum, usable ace, dealer's card) with the dealer's final-hand distribution computed
  exactly (`solve_blackjack`), under the registered rules (`sab=True`) or any other.

An agent's policy (a function obs -> action) is valued exactly by `exact_policy_value` (which
calls `evaluate_tabular_policy` or `evaluate_blackjack_policy`), or for any env by sampled
episodes with `evaluate_by_episodes`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

Policy = Callable[[Any], int]


# ---------------------------------------------------------------------- tabular tasks
class TabularModel(NamedTuple):
    """Dense form of `env.unwrapped.P`: expected reward and the transitions that go on."""

    reward: np.ndarray  # (S, A): expected immediate reward
    next_prob: np.ndarray  # (S, A, S): probability of moving to s' without the episode ending
    initial: np.ndarray  # (S,): initial-state distribution
    horizon: int | None  # the registered time limit, None when there is none


@dataclass(frozen=True)
class TabularSolution:
    env_id: str
    horizon: int  # steps the recursion looked ahead (the time limit, or until convergence)
    value: float  # optimal expected return from the initial-state distribution
    policy: np.ndarray  # (S,) the optimal first action in each state: a stationary policy
    policy_value: float  # that stationary policy's exact value within the same horizon


def tabular_model(env_id: str, **env_kwargs: Any) -> TabularModel:
    env = gym.make(env_id, **env_kwargs)
    base = env.unwrapped
    n_states, n_actions = base.observation_space.n, base.action_space.n
    reward = np.zeros((n_states, n_actions))
    next_prob = np.zeros((n_states, n_actions, n_states))
    for s, by_action in base.P.items():
        for a, outcomes in by_action.items():
            for p, s_next, r, done in outcomes:
                reward[s, a] += p * r
                if not done:
                    next_prob[s, a, int(s_next)] += p
    initial = np.asarray(base.initial_state_distrib, dtype=np.float64)
    horizon = env.spec.max_episode_steps if env.spec is not None else None
    env.close()
    return TabularModel(reward, next_prob, initial, horizon)


def _backward(model: TabularModel, horizon: int | None,
              choose: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Values-to-go with `horizon` steps left (None: until they stop changing), and the
    actions chosen at the first step. `choose` maps Q (S, A) to one action per state."""
    values = np.zeros(len(model.initial))
    steps = 0
    while horizon is None or steps < horizon:
        q = model.reward + model.next_prob @ values
        actions = choose(q)
        new = q[np.arange(len(values)), actions]
        steps += 1
        if horizon is None and np.allclose(new, values, rtol=0.0, atol=1e-12):
            break
        if horizon is None and steps > 10_000:
            raise RuntimeError("values did not converge in 10,000 steps (a policy that never "
                               "ends its episode has no finite value without a time limit): "
                               "give a horizon")
        values = new
    return new, actions, steps


def solve_tabular(env_id: str, horizon: int | None = None, **env_kwargs: Any) -> TabularSolution:
    """Optimal value under the registered time limit (or `horizon`), by backward induction.

    The optimal policy under a time limit may depend on the steps left; `policy` is its first
    step, the best action with the most time left, which is what a policy that does not see
    the time would learn; `policy_value` is that stationary policy's value.
    """
    model = tabular_model(env_id, **env_kwargs)
    horizon = horizon if horizon is not None else model.horizon
    values, first_actions, steps = _backward(model, horizon, lambda q: q.argmax(axis=1))
    policy_value = evaluate_tabular_policy(env_id, lambda s: int(first_actions[s]), steps,
                                           **env_kwargs)
    return TabularSolution(env_id, steps, float(model.initial @ values), first_actions,
                           policy_value)


def evaluate_tabular_policy(env_id: str, policy: Policy, horizon: int | None = None,
                            **env_kwargs: Any) -> float:
    """Exact expected return of a deterministic stationary policy (obs -> action) within the
    registered time limit (or `horizon`), from the initial-state distribution."""
    model = tabular_model(env_id, **env_kwargs)
    horizon = horizon if horizon is not None else model.horizon
    actions = np.array([int(policy(s)) for s in range(len(model.initial))])
    values, _, _ = _backward(model, horizon, lambda q: actions)
    return float(model.initial @ values)


# ---------------------------------------------------------------------- Blackjack
CARDS = tuple(range(1, 11))
CARD_PROB = {c: (4 / 13 if c == 10 else 1 / 13) for c in CARDS}  # infinite deck; 10, J, Q, K
STICK, HIT = 0, 1


def _effective(raw: int, has_ace: bool) -> tuple[int, bool]:
    """Hand total counting one ace as 11 when that does not bust, and whether it does."""
    usable = has_ace and raw + 10 <= 21
    return (raw + 10 if usable else raw), usable


@functools.cache
def dealer_outcomes(showing: int) -> dict[str, float]:
    """Distribution of the dealer's final hand given the card showing: keys '17'..'21',
    'bust', and 'natural' (two-card 21, kept apart from '21')."""
    out: dict[str, float] = {}

    def play(raw: int, has_ace: bool, cards: int, prob: float) -> None:
        total, _ = _effective(raw, has_ace)
        if total > 21:
            out["bust"] = out.get("bust", 0.0) + prob
        elif total >= 17:  # the dealer stands on 17, soft 17 included
            key = "natural" if total == 21 and cards == 2 else str(total)
            out[key] = out.get(key, 0.0) + prob
        else:
            for c in CARDS:
                play(raw + c, has_ace or c == 1, cards + 1, prob * CARD_PROB[c])

    for hidden in CARDS:
        play(showing + hidden, showing == 1 or hidden == 1, 2, CARD_PROB[hidden])
    return out


def stick_value(total: int, natural_hand: bool, showing: int, sab: bool, natural: bool) -> float:
    """Expected reward of sticking on `total`, as BlackjackEnv scores it."""
    value = 0.0
    for outcome, prob in dealer_outcomes(showing).items():
        dealer_natural = outcome == "natural"
        dealer_total = 0 if outcome == "bust" else 21 if dealer_natural else int(outcome)
        reward = float(total > dealer_total) - float(total < dealer_total)
        if sab and natural_hand and not dealer_natural:
            reward = 1.0  # Sutton and Barto's rule: a natural wins unless the dealer has one
        elif not sab and natural and natural_hand and reward == 1.0:
            reward = 1.5
        value += prob * reward
    return value


@dataclass(frozen=True)
class BlackjackSolution:
    sab: bool
    natural: bool
    value: float  # optimal expected return per hand
    policy: np.ndarray  # (32, 11, 2) optimal action, indexed like the observation tuple

    def act(self, obs: tuple[int, int, int]) -> int:
        return int(self.policy[obs])


def _blackjack_value(action_of: Callable[[tuple[int, int, int], float, float], int],
                     sab: bool, natural: bool) -> float:
    """Expected return per hand when `action_of(obs, stick, hit)` picks the action."""

    @functools.cache
    def value(raw: int, has_ace: bool, showing: int, natural_hand: bool) -> float:
        total, usable = _effective(raw, has_ace)
        stick = stick_value(total, natural_hand, showing, sab, natural)
        hit = sum(
            CARD_PROB[c] * (-1.0 if raw + c > 21 else value(raw + c, has_ace or c == 1, showing,
                                                            False))
            for c in CARDS)
        return stick if action_of((total, showing, int(usable)), stick, hit) == STICK else hit

    expected = 0.0
    for showing in CARDS:  # the dealer's first card; the hidden one is in dealer_outcomes
        for c1 in CARDS:
            for c2 in CARDS:
                natural_hand = sorted((c1, c2)) == [1, 10]
                prob = CARD_PROB[showing] * CARD_PROB[c1] * CARD_PROB[c2]
                expected += prob * value(c1 + c2, 1 in (c1, c2), showing, natural_hand)
    return expected


def solve_blackjack(sab: bool = True, natural: bool = False) -> BlackjackSolution:
    """Optimal expected return per hand; defaults are Blackjack-v1's registered rules.

    The optimal action depends on the observation alone, except that a natural and a
    three-card 21 look alike; sticking is optimal on both, so the policy is well defined.
    """
    policy = np.zeros((32, 11, 2), dtype=np.int64)

    def best(obs: tuple[int, int, int], stick: float, hit: float) -> int:
        action = STICK if stick >= hit else HIT
        policy[obs] = action
        return action

    return BlackjackSolution(sab, natural, _blackjack_value(best, sab, natural), policy)


def evaluate_blackjack_policy(policy: Policy, sab: bool = True, natural: bool = False) -> float:
    """Exact expected return per hand of a deterministic policy (obs tuple -> action)."""
    return _blackjack_value(lambda obs, stick, hit: int(policy(obs)), sab, natural)


# ---------------------------------------------------------------------- any env
class EpisodeEstimate(NamedTuple):
    mean: float
    stderr: float  # standard error of the mean
    returns: np.ndarray  # each episode's return, in order


def evaluate_by_episodes(env: str | gym.Env, policy: Policy, episodes: int, seed: int = 0,
                         **env_kwargs: Any) -> EpisodeEstimate:
    """Mean undiscounted return of `policy` over `episodes` episodes (time limits included
    when `env` is an id)."""
    env = gym.make(env, **env_kwargs) if isinstance(env, str) else env
    returns = np.zeros(episodes)
    obs, _ = env.reset(seed=seed)
    for i in range(episodes):
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            returns[i] += float(reward)
            done = terminated or truncated
        obs, _ = env.reset()
    stderr = float(returns.std(ddof=1) / np.sqrt(episodes)) if episodes > 1 else float("nan")
    return EpisodeEstimate(float(returns.mean()), stderr, returns)


def optimal_value(env_id: str) -> float:
    """The optimal expected return of a toy-text task under its registered settings."""
    if env_id == "Blackjack-v1":
        return solve_blackjack().value
    return solve_tabular(env_id).value


def exact_policy_value(env_id: str, policy: Policy) -> float:
    """A deterministic policy's exact expected return on a toy-text task, registered settings:
    compare it with `optimal_value(env_id)` (e.g. `lambda obs: agent.predict(obs, True)[0]`)."""
    if env_id == "Blackjack-v1":
        return evaluate_blackjack_policy(policy)
    return evaluate_tabular_policy(env_id, policy)
