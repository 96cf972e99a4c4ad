"""Actor-critic networks and the NumPy inference copy of the actor."""

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch.distributions import Categorical, Normal

from ppo.policy import ActorCritic, InferencePolicy

DISCRETE = spaces.Discrete(4)
BOX = spaces.Box(-2.0, 2.0, (3,), np.float32)


def _model(space, shared=False, hidden=(64, 64), log_std=0.0, seed=0):
    torch.manual_seed(seed)
    return ActorCritic(6, space, list(hidden), shared, init_log_std=log_std)


def _obs(n=32, seed=0):
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n, 6)).astype(np.float32))


@pytest.mark.parametrize("shared", [False, True])
def test_categorical_head_matches_torch_distributions(shared):
    model = _model(DISCRETE, shared)
    with torch.no_grad():  # move away from the near-uniform init
        model.policy_head.weight.mul_(300.0)
    obs = _obs()
    actions = torch.as_tensor(np.random.default_rng(1).integers(0, 4, 32))
    logp, entropy, value = model.evaluate(obs, actions)
    logits, value_fwd = model(obs)
    dist = Categorical(logits=logits)
    torch.testing.assert_close(logp, dist.log_prob(actions))
    torch.testing.assert_close(entropy, dist.entropy())
    torch.testing.assert_close(value, value_fwd)
    torch.testing.assert_close(value, model.value(obs))
    assert entropy.std() > 1e-3  # the check above is not trivially on a uniform policy


@pytest.mark.parametrize("shared", [False, True])
def test_gaussian_head_matches_torch_distributions(shared):
    model = _model(BOX, shared, log_std=-0.5)
    with torch.no_grad():
        model.log_std.copy_(torch.tensor([-1.0, 0.0, 0.7]))
    obs = _obs()
    actions = torch.as_tensor(np.random.default_rng(2).normal(size=(32, 3)).astype(np.float32))
    logp, entropy, _ = model.evaluate(obs, actions)
    mean, _ = model(obs)
    dist = Normal(mean, model.log_std.exp().expand_as(mean))
    torch.testing.assert_close(logp, dist.log_prob(actions).sum(-1))
    torch.testing.assert_close(entropy, dist.entropy().sum(-1))


def test_gaussian_log_std_is_state_independent_parameter():
    model = _model(BOX, log_std=-0.3)
    assert isinstance(model.log_std, torch.nn.Parameter)
    assert model.log_std.shape == (3,)
    torch.testing.assert_close(model.log_std.detach(), torch.full((3,), -0.3))
    assert any(p is model.log_std for p in model.parameters())
    assert _model(DISCRETE).log_std is None


def test_default_is_64_64_tanh():
    model = _model(DISCRETE)
    layers = list(model.actor)
    assert [type(m).__name__ for m in layers] == ["Linear", "Tanh", "Linear", "Tanh"]
    assert [m.out_features for m in layers if isinstance(m, torch.nn.Linear)] == [64, 64]


def _check_orthogonal(layer, gain):
    w = layer.weight.detach().double()
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0], dtype=torch.float64),
                               atol=1e-5, rtol=1e-4)
    assert torch.all(layer.bias == 0)


@pytest.mark.parametrize("shared", [False, True])
def test_orthogonal_init_gains(shared):
    model = _model(DISCRETE, shared, hidden=(64, 32))
    trunks = [model.actor] + ([] if shared else [model.critic])
    for trunk in trunks:
        for layer in (m for m in trunk if isinstance(m, torch.nn.Linear)):
            _check_orthogonal(layer, math.sqrt(2.0))
    _check_orthogonal(model.policy_head, 0.01)
    _check_orthogonal(model.value_head, 1.0)


def test_shared_vs_separate_trunk():
    shared, separate = _model(DISCRETE, True), _model(DISCRETE, False)
    assert shared.critic is None and separate.critic is not None
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    assert n_separate - n_shared == sum(p.numel() for p in separate.critic.parameters())
    obs = _obs()
    for model, coupled in ((shared, True), (separate, False)):
        before = model.value(obs).detach().clone()
        with torch.no_grad():
            model.actor[0].weight.add_(0.1)
        changed = not torch.allclose(model.value(obs), before)
        assert changed == coupled


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])
@pytest.mark.parametrize("shared", [False, True])
def test_inference_policy_matches_torch(space, shared):
    model = _model(space, shared, log_std=0.3)
    with torch.no_grad():
        model.policy_head.weight.mul_(100.0)
    policy = InferencePolicy(model)
    obs = _obs(64)
    out, _ = model(obs)
    np.testing.assert_allclose(policy.policy_output(obs.numpy()), out.detach().numpy(),
                               atol=1e-5, rtol=1e-5)
    greedy = policy.act(obs.numpy(), np.random.default_rng(0), deterministic=True)
    torch_greedy = model.act(obs, deterministic=True).detach().numpy()
    np.testing.assert_allclose(greedy, torch_greedy, atol=1e-5)
    if space is DISCRETE:
        assert len(set(greedy.tolist())) > 1  # not trivially one action


def test_inference_policy_is_a_snapshot_until_reloaded():
    model = _model(DISCRETE)
    policy = InferencePolicy(model)
    obs = _obs().numpy()
    before = policy.policy_output(obs).copy()
    with torch.no_grad():
        model.policy_head.bias.add_(1.0)
    np.testing.assert_array_equal(policy.policy_output(obs), before)
    policy.load(model)
    np.testing.assert_allclose(policy.policy_output(obs), before + 1.0, atol=1e-6)


def _fixed_categorical(probs):
    model = _model(spaces.Discrete(len(probs)))
    with torch.no_grad():
        model.policy_head.weight.zero_()
        model.policy_head.bias.copy_(torch.log(torch.tensor(probs)))
    return model


def test_categorical_sampling_frequencies():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    policy = InferencePolicy(_fixed_categorical(probs.tolist()))
    n = 40_000
    actions = policy.act(np.zeros((n, 6), np.float32), np.random.default_rng(0))
    counts = np.bincount(actions, minlength=4)
    chi2 = (((counts - n * probs) ** 2) / (n * probs)).sum()
    assert chi2 < 16.27  # 3 degrees of freedom, p = 0.001


def test_torch_sampling_frequencies():
    probs = np.array([0.5, 0.25, 0.25])
    model = _fixed_categorical(probs.tolist())
    torch.manual_seed(0)
    n = 30_000
    counts = np.bincount(model.act(torch.zeros(n, 6)).numpy(), minlength=3)
    chi2 = (((counts - n * probs) ** 2) / (n * probs)).sum()
    assert chi2 < 13.82  # 2 degrees of freedom, p = 0.001


def test_gaussian_sampling_moments():
    model = _model(BOX)
    means = torch.tensor([0.5, -1.0, 3.0])  # outside the action bounds too: never clipped here
    stds = torch.tensor([0.2, 1.0, 2.5])
    with torch.no_grad():
        model.policy_head.weight.zero_()
        model.policy_head.bias.copy_(means)
        model.log_std.copy_(stds.log())
    policy = InferencePolicy(model)
    n = 40_000
    actions = policy.act(np.zeros((n, 6), np.float32), np.random.default_rng(0))
    assert actions.dtype == np.float32 and actions.shape == (n, 3)
    assert np.all(np.abs(actions.mean(0) - means.numpy()) < 4 * stds.numpy() / n**0.5)
    np.testing.assert_allclose(actions.std(0), stds.numpy(), rtol=0.02)
    np.testing.assert_allclose(
        policy.act(np.zeros((2, 6), np.float32), None, deterministic=True), [means.numpy()] * 2,
        atol=1e-6)
