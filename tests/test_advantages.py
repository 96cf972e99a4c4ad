"""GAE: hand-worked numbers, episode boundaries, and a plain-loop oracle on random data."""

import numpy as np
import pytest

from ppo.advantages import gae


def plain_gae(rewards, values, next_values, terminated, episode_end, gamma, lam):
    """The textbook recursion, one env and one step at a time, in float64."""
    steps, num_envs = rewards.shape
    advantages = np.zeros((steps, num_envs))
    for n in range(num_envs):
        running = 0.0
        for t in reversed(range(steps)):
            bootstrap = 0.0 if terminated[t, n] else gamma * next_values[t, n]
            delta = rewards[t, n] + bootstrap - values[t, n]
            if episode_end[t, n]:
                running = 0.0
            running = delta + gamma * lam * running
            advantages[t, n] = running
    return advantages, advantages + values


def _column(*xs):
    return np.array(xs, dtype=np.float32)[:, None]


REWARDS = _column(1, 1, 1)
VALUES = _column(1, 2, 3)
NEXT_VALUES = _column(2, 3, 5)
NO = np.zeros((3, 1), bool)
AT_1 = np.array([[False], [True], [False]])


@pytest.mark.parametrize(
    ("terminated", "episode_end", "expected"),
    [
        # deltas: 1 + .5*2 - 1 = 1, 1 + .5*3 - 2 = .5, 1 + .5*5 - 3 = .5; gamma*lam = .25
        (NO, NO, [1.15625, 0.625, 0.5]),
        # truncation at t=1: bootstrap kept (delta .5), recursion cut
        (NO, AT_1, [1.125, 0.5, 0.5]),
        # termination at t=1: no bootstrap (delta 1 - 2 = -1), recursion cut
        (AT_1, AT_1, [0.75, -1.0, 0.5]),
    ],
    ids=["no-end", "truncated", "terminated"],
)
def test_hand_worked(terminated, episode_end, expected):
    adv, ret = gae(REWARDS, VALUES, NEXT_VALUES, terminated, episode_end, 0.5, 0.5)
    np.testing.assert_allclose(adv[:, 0], expected, atol=1e-6)
    np.testing.assert_allclose(ret, adv + VALUES, atol=1e-6)
    assert adv.dtype == np.float32 and ret.dtype == np.float32


def test_termination_and_truncation_differ_by_the_bootstrap():
    trunc, _ = gae(REWARDS, VALUES, NEXT_VALUES, NO, AT_1, 0.9, 0.95)
    term, _ = gae(REWARDS, VALUES, NEXT_VALUES, AT_1, AT_1, 0.9, 0.95)
    assert trunc[1, 0] - term[1, 0] == pytest.approx(0.9 * NEXT_VALUES[1, 0])
    assert trunc[2, 0] == term[2, 0]  # after the boundary nothing changes


def test_lambda_one_is_monte_carlo_and_lambda_zero_is_td():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(6, 1)).astype(np.float32)
    values = rng.normal(size=(6, 1)).astype(np.float32)
    next_values = np.vstack([values[1:], [[0.7]]]).astype(np.float32)
    end = np.zeros((6, 1), bool)
    gamma = 0.9
    _, mc = gae(rewards, values, next_values, end, end, gamma, 1.0)
    discounted = [sum(gamma**k * rewards[t + k, 0] for k in range(6 - t)) + gamma ** (6 - t) * 0.7
                  for t in range(6)]
    np.testing.assert_allclose(mc[:, 0], discounted, atol=1e-5)
    td, _ = gae(rewards, values, next_values, end, end, gamma, 0.0)
    np.testing.assert_allclose(td, rewards + gamma * next_values - values, atol=1e-6)


def _random_rollout(seed, steps=64, num_envs=5):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(steps, num_envs)).astype(np.float32)
    values = rng.normal(size=(steps, num_envs)).astype(np.float32)
    next_values = rng.normal(size=(steps, num_envs)).astype(np.float32)
    ended = rng.random((steps, num_envs)) < 0.1
    # Of the ends, about half are terminations and half time-limit truncations.
    terminated = ended & (rng.random((steps, num_envs)) < 0.5)
    assert terminated.any() and (ended & ~terminated).any()
    return rewards, values, next_values, terminated, ended


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("gamma", "lam"), [(0.99, 0.95), (0.9, 0.0), (1.0, 1.0), (0.5, 0.7)])
def test_matches_plain_loop(seed, gamma, lam):
    data = _random_rollout(seed)
    adv, ret = gae(*data, gamma, lam)
    want_adv, want_ret = plain_gae(*data, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ret, want_ret, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_implementation(seed):
    reference = pytest.importorskip("ppo.reference.gae")
    data = [x.astype(np.float64) if x.dtype != bool else x for x in _random_rollout(seed)]
    adv, ret = gae(*data, 0.99, 0.95)
    want_adv, want_ret = reference.gae(*data, 0.99, 0.95)
    np.testing.assert_allclose(adv, want_adv, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(ret, want_ret, atol=1e-6, rtol=1e-6)


def test_envs_are_independent():
    rewards, values, next_values, terminated, ended = _random_rollout(3)
    full, _ = gae(rewards, values, next_values, terminated, ended, 0.99, 0.95)
    for n in range(rewards.shape[1]):
        alone, _ = gae(rewards[:, n:n + 1], values[:, n:n + 1], next_values[:, n:n + 1],
                       terminated[:, n:n + 1], ended[:, n:n + 1], 0.99, 0.95)
        np.testing.assert_allclose(alone[:, 0], full[:, n], atol=1e-6)
