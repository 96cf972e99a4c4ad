"""The actor-critic network (structure, initialization, shared or separate trunks) and its NumPy
back end, pinned to the torch module: forward pass, values and backward pass."""

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from helpers_spaces import ACTION_SPACES, stored_actions
from ppo import distributions
from ppo.config import Config
from ppo.networks import ActorCritic
from ppo.numpy_network import Forward, NumpyMLP, supports
from ppo.spaces import ActionSpec

DISCRETE = spaces.Discrete(4)
BOX = spaces.Box(-2.0, 2.0, (3,), np.float32)
OBS_WIDTH = 6


def _model(space=DISCRETE, seed=0, **cfg):
    torch.manual_seed(seed)
    return ActorCritic(OBS_WIDTH, ActionSpec(space), Config(**cfg))


def _obs(n=32, seed=0):
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(n, OBS_WIDTH)),
                           dtype=torch.float32)


def _linears(seq):
    return [m for m in seq if isinstance(m, torch.nn.Linear)]


# ---------------------------------------------------------------- structure
def test_default_is_64_64_tanh():
    model = _model()
    assert [type(m).__name__ for m in model.actor] == ["Linear", "Tanh", "Linear", "Tanh"]
    assert [m.out_features for m in _linears(model.actor)] == [64, 64]
    assert model.critic is None  # shared trunk by default


def test_relu():
    model = _model(activation="relu", shared_trunk=False)
    for trunk in (model.actor, model.critic):
        assert [type(m).__name__ for m in trunk] == ["Linear", "ReLU", "Linear", "ReLU"]


def test_no_hidden_layers_put_the_heads_on_the_observation():
    for shared in (True, False):
        model = _model(shared_trunk=shared, hidden_sizes=[])
        assert not _linears(model.actor)
        assert model.policy_head.in_features == model.value_head.in_features == OBS_WIDTH


def test_actor_and_critic_widths():
    separate = _model(shared_trunk=False, actor_hidden_sizes=[32],
                      critic_hidden_sizes=[16, 8])
    assert [m.out_features for m in _linears(separate.actor)] == [32]
    assert [m.out_features for m in _linears(separate.critic)] == [16, 8]
    assert separate.policy_head.in_features == 32 and separate.value_head.in_features == 8
    # A shared trunk is hidden_sizes for both heads.
    shared = _model(hidden_sizes=[20, 10], actor_hidden_sizes=[32], critic_hidden_sizes=[16])
    assert [m.out_features for m in _linears(shared.actor)] == [20, 10]
    assert shared.policy_head.in_features == shared.value_head.in_features == 10


@pytest.mark.parametrize("name", ACTION_SPACES)
def test_policy_head_outputs_the_distribution_parameters(name):
    spec = ActionSpec(ACTION_SPACES[name])
    model = _model(ACTION_SPACES[name], init_log_std=-0.3)
    assert model.policy_head.out_features == spec.num_params
    if spec.log_std_size:
        # A state-independent log std, one per Gaussian dimension, trained with the rest.
        assert isinstance(model.log_std, torch.nn.Parameter)
        torch.testing.assert_close(model.log_std.detach(),
                                   torch.full((spec.log_std_size,), -0.3))
        assert any(p is model.log_std for p in model.parameters())
    else:
        assert model.log_std is None


def _check_orthogonal(layer, gain):
    w = layer.weight.detach().double()
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0], dtype=torch.float64),
                               atol=1e-5, rtol=1e-4)
    assert torch.all(layer.bias == 0)


@pytest.mark.parametrize("shared", [False, True])
def test_orthogonal_init_gains(shared):
    model = _model(shared_trunk=shared, hidden_sizes=[64, 32])
    for trunk in [model.actor] + ([] if shared else [model.critic]):
        for layer in _linears(trunk):
            _check_orthogonal(layer, math.sqrt(2.0))
    _check_orthogonal(model.policy_head, 0.01)
    _check_orthogonal(model.value_head, 1.0)


def test_ortho_init_off_is_pytorch_default():
    model = _model(ortho_init=False, shared_trunk=False, hidden_sizes=[16])
    torch.manual_seed(0)  # the same layers, built in the same order by PyTorch alone
    plain = [torch.nn.Linear(OBS_WIDTH, 16), torch.nn.Linear(OBS_WIDTH, 16),
             torch.nn.Linear(16, 4), torch.nn.Linear(16, 1)]
    ours = [*_linears(model.actor), *_linears(model.critic), model.policy_head,
            model.value_head]
    for a, b in zip(ours, plain, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_shared_vs_separate_trunk():
    shared, separate = _model(shared_trunk=True), _model(shared_trunk=False)
    n_shared = sum(p.numel() for p in shared.parameters())
    n_separate = sum(p.numel() for p in separate.parameters())
    assert n_separate - n_shared == sum(p.numel() for p in separate.critic.parameters())
    obs = _obs()
    for model, coupled in ((shared, True), (separate, False)):
        before = model.value(obs).detach().clone()
        with torch.no_grad():
            model.actor[0].weight.add_(0.1)
        assert (not torch.allclose(model.value(obs), before)) == coupled


@pytest.mark.parametrize("shared", [False, True])
def test_actor_and_critic_parameters(shared):
    model = _model(BOX, shared_trunk=shared)
    actor = {id(p) for p in model.actor_parameters()}
    expected = {id(p) for p in (*model.actor.parameters(), *model.policy_head.parameters(),
                                model.log_std)}
    assert actor == expected
    if not shared:
        critic = {id(p) for p in model.critic_parameters()}
        assert critic.isdisjoint(actor)
        assert critic | actor == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("name", ["discrete", "box", "tuple"])
@pytest.mark.parametrize("shared", [False, True])
def test_forward_policy_value_and_evaluate_agree(name, shared):
    spec = ActionSpec(ACTION_SPACES[name])
    model = _model(ACTION_SPACES[name], shared_trunk=shared, init_log_std=-0.5)
    obs = _obs()
    actions = torch.as_tensor(stored_actions(spec, 32, np.random.default_rng(1)))
    params, value = model(obs)
    assert params.shape == (32, spec.num_params) and value.shape == (32,)
    torch.testing.assert_close(model.policy(obs), params)
    torch.testing.assert_close(model.value(obs), value)
    logp, entropy, value_eval = model.evaluate(obs, actions)
    want_logp, want_entropy = distributions.log_prob_entropy(spec, params, model.log_std,
                                                             actions)
    torch.testing.assert_close(logp, want_logp)
    torch.testing.assert_close(entropy, want_entropy)
    torch.testing.assert_close(value_eval, value)


# ---------------------------------------------------------------- the NumPy back end
NETWORKS = {
    "shared-tanh": dict(shared_trunk=True),
    "separate-tanh": dict(shared_trunk=False, actor_hidden_sizes=[32, 16],
                          critic_hidden_sizes=[24]),
    "shared-relu": dict(shared_trunk=True, activation="relu"),
    "separate-relu": dict(shared_trunk=False, activation="relu"),
    # No hidden layers: the heads act on the observation.
    "heads-only": dict(shared_trunk=False, hidden_sizes=[]),
}


def _moved(space, network):
    """A model with its heads moved away from their near-zero init, so outputs differ."""
    model = _model(space, **NETWORKS[network])
    with torch.no_grad():
        model.policy_head.weight.mul_(100.0)
        model.value_head.bias.fill_(0.5)
    return model


def test_supports_our_mlps_only():
    assert supports(_model()) and supports(_model(activation="relu"))

    class Other(ActorCritic):
        pass

    torch.manual_seed(0)
    assert not supports(Other(OBS_WIDTH, ActionSpec(DISCRETE), Config()))


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("name", ["discrete", "tuple"])
def test_numpy_forward_equals_torch(network, name):
    model = _moved(ACTION_SPACES[name], network)
    net = NumpyMLP(model, lambda p: p.detach().numpy())
    obs = _obs(64)
    params, values = model(obs)
    fwd = net.forward(obs.numpy())
    np.testing.assert_allclose(fwd.params, params.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fwd.values, values.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.policy(obs.numpy()), fwd.params, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(net.values(obs.numpy()), fwd.values, rtol=1e-6, atol=1e-6)
    if net.log_std is not None:
        np.testing.assert_array_equal(net.log_std, model.log_std.detach().numpy())


def _zero_grads(model):
    """A NumpyMLP of zeros shaped like the model, and its arrays by parameter."""
    arrays = {}

    def array(p):
        arrays[id(p)] = np.zeros(tuple(p.shape), np.float32)
        return arrays[id(p)]

    return NumpyMLP(model, array), arrays


@pytest.mark.parametrize("network", NETWORKS)
def test_numpy_backward_equals_autograd(network):
    model = _moved(ACTION_SPACES["tuple"], network)
    net = NumpyMLP(model, lambda p: p.detach().numpy())
    grads, arrays = _zero_grads(model)
    obs = _obs(64)
    rng = np.random.default_rng(1)
    d_params = rng.normal(size=(64, model.action_spec.num_params)).astype(np.float32)
    d_values = rng.normal(size=64).astype(np.float32)
    params, values = model(obs)
    ((params * torch.as_tensor(d_params)).sum() + (values * torch.as_tensor(d_values)).sum()
     ).backward()
    net.backward(net.forward(obs.numpy()), d_params, d_values, grads)
    for name, p in model.named_parameters():
        if p is not model.log_std:  # the distribution's gradient, not the network's
            np.testing.assert_allclose(arrays[id(p)], p.grad.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=name)


@pytest.mark.parametrize("network", NETWORKS)
def test_numpy_value_backward_equals_autograd(network):
    """The critic-only backward pass (TRPO's critic fit) fills the value function's weights."""
    model = _moved(DISCRETE, network)
    net = NumpyMLP(model, lambda p: p.detach().numpy())
    grads, arrays = _zero_grads(model)
    obs = _obs(64)
    d_values = np.random.default_rng(2).normal(size=64).astype(np.float32)
    (model.value(obs) * torch.as_tensor(d_values)).sum().backward()
    critic = [obs.numpy()]
    values = net.values(obs.numpy(), critic)
    np.testing.assert_allclose(values, model.value(obs).detach().numpy(), rtol=1e-5, atol=1e-6)
    net.backward(Forward([], critic, None, values), None, d_values, grads)
    for name, p in model.named_parameters():
        if p.grad is None:  # not on the value's path: left alone
            assert not arrays[id(p)].any(), name
        else:
            np.testing.assert_allclose(arrays[id(p)], p.grad.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=name)


def test_views_follow_the_model_and_a_snapshot_does_not():
    model = _model(BOX)
    view = NumpyMLP(model, lambda p: p.detach().numpy())
    snapshot = NumpyMLP.snapshot(model)
    obs = _obs().numpy()
    before = snapshot.policy(obs).copy()
    with torch.no_grad():
        model.policy_head.bias.add_(1.0)
        model.log_std.add_(0.5)
    np.testing.assert_array_equal(snapshot.policy(obs), before)
    np.testing.assert_allclose(view.policy(obs), before + 1.0, atol=1e-6)
    np.testing.assert_array_equal(view.log_std, model.log_std.detach().numpy())
    assert not np.array_equal(snapshot.log_std, view.log_std)
