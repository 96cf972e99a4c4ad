"""The NumPy reference layers: GAE by hand and in closed form, the surrogate's hand-derived
gradient against autograd, and the NumPy PPO actually solving CartPole."""

import numpy as np
import pytest
import torch

from ppo.advantages import gae as engine_gae
from ppo.reference.gae import gae
from ppo.reference.numpy_ppo import clipped_surrogate_and_grad, log_softmax, train

# --- GAE -----------------------------------------------------------------------------------


def _columns(*cols):
    """Build a (T, N) array from N per-env columns."""
    return np.array(cols, dtype=np.float64).T


def test_termination_drops_bootstrap_and_truncation_keeps_it():
    # Env 0 terminates at t=1, env 1 is truncated at t=1; otherwise identical.
    # gamma = lam = 0.5, so gamma * lam = 0.25.
    rewards = _columns([1, 1, 1], [1, 1, 1])
    values = _columns([0.5, 1, 2], [0.5, 1, 2])
    next_values = _columns([1, 4, 3], [1, 4, 3])
    terminated = _columns([0, 1, 0], [0, 0, 0]).astype(bool)
    episode_end = _columns([0, 1, 0], [0, 1, 0]).astype(bool)
    adv, ret = gae(rewards, values, next_values, terminated, episode_end, gamma=0.5, lam=0.5)
    # t=2 (both): delta = 1 + .5*3 - 2 = .5, nothing after it.
    # t=1 terminated: delta = 1 - 1 = 0 (no bootstrap); truncated: 1 + .5*4 - 1 = 2. Cut after.
    # t=0: delta = 1 + .5*1 - .5 = 1, plus .25 * A_1.
    np.testing.assert_allclose(adv[:, 0], [1.0, 0.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(adv[:, 1], [1.5, 2.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(ret, [[1.5, 2.0], [1.0, 3.0], [2.5, 2.5]], atol=1e-12)


@pytest.mark.parametrize(
    ("terminated", "episode_end", "expected"),
    [
        (False, False, 2 + 0.9 * 3 - 1),  # bootstrap from next_values
        (False, True, 2 + 0.9 * 3 - 1),  # truncated: still bootstraps
        (True, True, 2 - 1),  # terminated: no future
    ],
    ids=["running", "truncated", "terminated"],
)
def test_single_step_single_env(terminated, episode_end, expected):
    adv, ret = gae([[2.0]], [[1.0]], [[3.0]], [[terminated]], [[episode_end]], 0.9, 0.95)
    assert adv.shape == (1, 1)
    assert adv[0, 0] == pytest.approx(expected)
    assert ret[0, 0] == pytest.approx(expected + 1.0)


def test_every_step_an_episode_end_gives_one_step_td_errors():
    rng = np.random.default_rng(1)
    rewards, values, next_values = rng.normal(size=(3, 5, 3))
    done = np.ones((5, 3), bool)
    no = np.zeros((5, 3), bool)
    adv, _ = gae(rewards, values, next_values, done, done, 0.99, 0.95)
    np.testing.assert_allclose(adv, rewards - values, atol=1e-12)
    adv, _ = gae(rewards, values, next_values, no, done, 0.99, 0.95)
    np.testing.assert_allclose(adv, rewards + 0.99 * next_values - values, atol=1e-12)


def test_lambda_one_without_ends_is_discounted_return_plus_bootstrap():
    rng = np.random.default_rng(2)
    steps, num_envs, gamma = 7, 3, 0.9
    rewards = rng.normal(size=(steps, num_envs))
    values = rng.normal(size=(steps, num_envs))
    bootstrap = rng.normal(size=num_envs)
    next_values = np.vstack([values[1:], bootstrap])
    no = np.zeros((steps, num_envs), bool)
    _, ret = gae(rewards, values, next_values, no, no, gamma, 1.0)
    for t in range(steps):
        discounted = sum(gamma**k * rewards[t + k] for k in range(steps - t))
        np.testing.assert_allclose(ret[t], discounted + gamma ** (steps - t) * bootstrap)


def test_matches_closed_form_weighted_sum_of_td_errors():
    # A_t = sum_k (gamma*lam)^k delta_{t+k}, summed up to and including the first episode end.
    rng = np.random.default_rng(3)
    steps, num_envs, gamma, lam = 40, 4, 0.97, 0.9
    rewards, values, next_values = rng.normal(size=(3, steps, num_envs))
    episode_end = rng.random((steps, num_envs)) < 0.15
    terminated = episode_end & (rng.random((steps, num_envs)) < 0.5)
    adv, ret = gae(rewards, values, next_values, terminated, episode_end, gamma, lam)
    deltas = rewards + gamma * np.where(terminated, 0.0, next_values) - values
    for n in range(num_envs):
        for t in range(steps):
            ends = np.flatnonzero(episode_end[t:, n])
            last = t + ends[0] if len(ends) else steps - 1
            k = np.arange(last - t + 1)
            assert adv[t, n] == pytest.approx(np.sum((gamma * lam) ** k * deltas[t : last + 1, n]))
    np.testing.assert_allclose(ret, adv + values)


def test_returns_float64_from_float32_inputs_and_agrees_with_engine():
    rng = np.random.default_rng(4)
    rewards, values, next_values = rng.normal(size=(3, 64, 6)).astype(np.float32)
    episode_end = rng.random((64, 6)) < 0.1
    terminated = episode_end & (rng.random((64, 6)) < 0.5)
    adv, ret = gae(rewards, values, next_values, terminated, episode_end, 0.99, 0.95)
    assert adv.dtype == np.float64 and ret.dtype == np.float64
    fast_adv, fast_ret = engine_gae(rewards, values, next_values, terminated, episode_end,
                                    0.99, 0.95)
    np.testing.assert_allclose(fast_adv, adv, atol=1e-4)
    np.testing.assert_allclose(fast_ret, ret, atol=1e-4)


@pytest.mark.parametrize(
    "shapes",
    [
        [(5, 2)] * 4 + [(5, 3)],  # one mismatched
        [(5,)] * 5,  # 1-D
        [(5, 2, 1)] * 5,  # 3-D
    ],
    ids=["mismatch", "1-D", "3-D"],
)
def test_rejects_bad_shapes(shapes):
    arrays = [np.zeros(s) for s in shapes]
    with pytest.raises(ValueError, match="2-D"):
        gae(*arrays)


# --- Clipped surrogate gradient ------------------------------------------------------------

EPS = 0.2
RATIOS = [0.5, 0.9, 1.0, 1.1, 1.5]  # below, inside and above the band [0.8, 1.2]


def _problem(seed, ratios, advantages, obs_dim=4, n_actions=3):
    """Random parameters and observations, with logp_old chosen so the ratios come out exact."""
    rng = np.random.default_rng(seed)
    batch = len(ratios)
    W = rng.normal(size=(obs_dim, n_actions))
    b = rng.normal(size=n_actions)
    obs = rng.normal(size=(batch, obs_dim))
    actions = rng.integers(0, n_actions, batch)
    logp_new = log_softmax(obs @ W + b)[np.arange(batch), actions]
    logp_old = logp_new - np.log(ratios)
    return W, b, obs, actions, logp_old, np.asarray(advantages, dtype=np.float64)


def _autograd(W, b, obs, actions, logp_old, advantages, eps):
    W_t = torch.tensor(W, requires_grad=True)
    b_t = torch.tensor(b, requires_grad=True)
    logp = torch.log_softmax(torch.tensor(obs) @ W_t + b_t, dim=-1)
    logp = logp[torch.arange(len(actions)), torch.tensor(actions)]
    ratio = torch.exp(logp - torch.tensor(logp_old))
    adv = torch.tensor(advantages)
    objective = torch.min(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv).mean()
    objective.backward()
    return objective.item(), W_t.grad.numpy(), b_t.grad.numpy()


@pytest.mark.parametrize("seed", range(5))
def test_gradient_matches_autograd_on_both_hinges_and_both_signs(seed):
    ratios = np.array(RATIOS * 2)
    advantages = np.concatenate([np.full(5, 1.3), np.full(5, -0.7)])
    # Add random samples too, with ratios spread across the whole range.
    rng = np.random.default_rng(100 + seed)
    ratios = np.concatenate([ratios, rng.uniform(0.3, 2.0, 50)])
    advantages = np.concatenate([advantages, rng.normal(size=50)])
    problem = _problem(seed, ratios, advantages)
    objective, dW, db = clipped_surrogate_and_grad(*problem, EPS)
    ref_objective, ref_dW, ref_db = _autograd(*problem, EPS)
    assert abs(objective - ref_objective) <= 1e-12
    assert np.max(np.abs(dW - ref_dW)) <= 1e-8
    assert np.max(np.abs(db - ref_db)) <= 1e-8


@pytest.mark.parametrize("advantage", [1.0, -1.0])
@pytest.mark.parametrize("ratio", RATIOS)
def test_gradient_is_zero_exactly_where_the_clip_binds(ratio, advantage):
    # The clipped term is strictly smaller (so flat) only past 1+eps for A>0, below 1-eps for A<0.
    W, b, obs, actions, logp_old, adv = _problem(0, [ratio], [advantage])
    _, dW, db = clipped_surrogate_and_grad(W, b, obs, actions, logp_old, adv, EPS)
    clipped = (advantage > 0 and ratio > 1 + EPS) or (advantage < 0 and ratio < 1 - EPS)
    if clipped:
        assert not dW.any() and not db.any()
    else:
        # r * A * (onehot - softmax): the factor r is what an ad hoc derivation leaves out.
        probs = np.exp(log_softmax(obs @ W + b))[0]
        expected_db = ratio * advantage * (np.eye(len(b))[actions[0]] - probs)
        np.testing.assert_allclose(db, expected_db, atol=1e-12)
        np.testing.assert_allclose(dW, np.outer(obs[0], expected_db), atol=1e-12)


# --- Learning ------------------------------------------------------------------------------


@pytest.mark.slow
def test_numpy_ppo_solves_cartpole():
    history = train(seed=0, target_return=475.0, log=None)
    last = history[-1]
    assert last["episodic_return"] >= 475.0, last
    assert last["episodes"] >= 100
    assert all(0.0 <= h["clipfrac"] <= 1.0 and h["approx_kl"] >= 0.0 for h in history)
