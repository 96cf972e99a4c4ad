"""pi_old for acting: the NumPy snapshot and the torch policy give the network's distribution,
stay put until promoted, and sample from it."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from helpers_spaces import ACTION_SPACES
from ppo import distributions
from ppo.config import Config
from ppo.networks import ActorCritic
from ppo.policy import NumpyPolicy, TorchPolicy, make_policy
from ppo.spaces import ActionSpec

POLICIES = pytest.mark.parametrize("kind", [NumpyPolicy, TorchPolicy],
                                   ids=["numpy", "torch"])


def _model(space, seed=0, **cfg):
    torch.manual_seed(seed)
    return ActorCritic(6, ActionSpec(space), Config(**cfg))


def _obs(n=64, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 6)).astype(np.float32)


def test_numpy_policy_on_the_cpu_for_mlps():
    model = _model(ACTION_SPACES["discrete"])
    assert type(make_policy(model, model.action_spec)) is NumpyPolicy

    class Other(ActorCritic):  # a network the NumPy back end does not know
        pass

    torch.manual_seed(0)
    other = Other(6, ActionSpec(ACTION_SPACES["discrete"]), Config())
    assert type(make_policy(other, other.action_spec)) is TorchPolicy


@POLICIES
@pytest.mark.parametrize("name", ACTION_SPACES)
@pytest.mark.parametrize("shared", [False, True])
def test_policy_equals_the_network(kind, name, shared):
    model = _model(ACTION_SPACES[name], shared_trunk=shared, init_log_std=0.3)
    with torch.no_grad():
        model.policy_head.weight.mul_(100.0)
    policy = kind(model, model.action_spec)
    obs = _obs()
    params = model.policy(torch.as_tensor(obs)).detach().numpy()
    np.testing.assert_allclose(policy.params(obs), params, atol=1e-5, rtol=1e-5)
    greedy = policy.act(obs, np.random.default_rng(0), deterministic=True)
    np.testing.assert_allclose(greedy, distributions.mode(model.action_spec, params), atol=1e-5)
    if name == "discrete":
        assert len(set(greedy[:, 0].tolist())) > 1  # not trivially one action


@pytest.mark.parametrize("name", ["discrete", "tuple"])
def test_both_policies_sample_alike_from_the_same_stream(name):
    """Both draw NumPy noise from the agent's action stream: a checkpoint's stream state
    resumes either exactly."""
    model = _model(ACTION_SPACES[name], init_log_std=0.3)
    obs = _obs()
    a = NumpyPolicy(model, model.action_spec).act(obs, np.random.default_rng(7))
    b = TorchPolicy(model, model.action_spec).act(obs, np.random.default_rng(7))
    np.testing.assert_allclose(a, b, atol=1e-5)


@POLICIES
def test_pi_old_stays_put_until_promoted(kind):
    model = _model(ACTION_SPACES["tuple"])
    policy = kind(model, model.action_spec)
    obs = _obs()
    before = policy.params(obs).copy()
    std = policy.std.copy()
    with torch.no_grad():
        model.log_std.add_(0.5)
        if kind is NumpyPolicy:  # the torch policy runs the live network
            model.policy_head.bias.add_(1.0)
    np.testing.assert_array_equal(policy.params(obs), before)
    np.testing.assert_array_equal(policy.std, std)
    policy.promote(model)
    np.testing.assert_allclose(policy.std, std * np.exp(0.5), rtol=1e-6)
    if kind is NumpyPolicy:
        np.testing.assert_allclose(policy.params(obs), before + 1.0, atol=1e-6)


def _fixed(space, bias, log_std=None):
    """A policy whose distribution is the same in every state."""
    model = _model(space)
    with torch.no_grad():
        model.policy_head.weight.zero_()
        model.policy_head.bias.copy_(torch.as_tensor(bias))
        if log_std is not None:
            model.log_std.copy_(torch.as_tensor(log_std))
    return model


@POLICIES
def test_categorical_sampling_frequencies(kind):
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    model = _fixed(spaces.Discrete(4), np.log(probs).astype(np.float32))
    n = 40_000
    actions = kind(model, model.action_spec).act(np.zeros((n, 6), np.float32),
                                                np.random.default_rng(0))
    counts = np.bincount(actions[:, 0], minlength=4)
    chi2 = (((counts - n * probs) ** 2) / (n * probs)).sum()
    assert chi2 < 16.27  # 3 degrees of freedom, p = 0.001


@POLICIES
def test_gaussian_sampling_moments(kind):
    means = np.array([0.5, -1.0, 3.0], np.float32)  # outside the bounds too: never clipped here
    stds = np.array([0.2, 1.0, 2.5], np.float32)
    model = _fixed(spaces.Box(-2.0, 2.0, (3,), np.float32), means, np.log(stds))
    policy = kind(model, model.action_spec)
    n = 40_000
    actions = policy.act(np.zeros((n, 6), np.float32), np.random.default_rng(0))
    assert actions.dtype == np.float32 and actions.shape == (n, 3)
    assert np.all(np.abs(actions.mean(0) - means) < 4 * stds / n**0.5)
    np.testing.assert_allclose(actions.std(0), stds, rtol=0.02)
    np.testing.assert_allclose(
        policy.act(np.zeros((2, 6), np.float32), None, deterministic=True), [means] * 2,
        atol=1e-6)
