"""The compiled kernels are the plain formula: the torch model's outputs, autograd's gradients
of the loss in objective.py, torch.optim.Adam's step; and the same bits on every run."""

import numba_kernels as kernels
import numpy as np
import pytest
import torch
from gymnasium import spaces

from ppo import objective
from ppo.config import Config
from ppo.networks import ActorCritic
from ppo.spaces import ActionSpec

OBS_DIM, HIDDEN = 8, [64, 64]
SPACES = {"discrete": spaces.Discrete(4), "box": spaces.Box(-1.0, 1.0, (3,), np.float32)}


def _model(space, shared: bool, activation: str, seed: int = 0) -> ActorCritic:
    """The torch network in float64: the reference."""
    torch.manual_seed(seed)
    cfg = Config(hidden_sizes=HIDDEN, shared_trunk=shared, activation=activation,
                 init_log_std=-0.3)
    model = ActorCritic(OBS_DIM, ActionSpec(space), cfg)
    with torch.no_grad():  # non-zero biases, so that a bias in the wrong place shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.double()


def _layout(model: ActorCritic) -> kernels.MLPLayout:
    return kernels.mlp_layout(OBS_DIM, HIDDEN, model.action_spec.num_params,
                              model.critic is None, not model.action_spec.discrete)


def _torch_actions(actions: np.ndarray) -> torch.Tensor:
    """The kernels take Categorical actions as (N,), the torch network as (N, 1) columns."""
    return torch.as_tensor(actions if actions.ndim == 2 else actions[:, None])


def _flat(model: ActorCritic) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).float().numpy()


def _batch(space, n: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    if isinstance(space, spaces.Discrete):
        actions = rng.integers(0, space.n, n)
    else:
        actions = rng.normal(size=(n, *space.shape)).astype(np.float32)
    return obs, actions, rng


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "separate"])
def test_layout_follows_the_model_parameters(space, shared):
    model = _model(space, shared, "tanh")
    layout = _layout(model)
    assert layout.size == sum(p.numel() for p in model.parameters())
    rows = [*layout.actor, *layout.critic, layout.policy_head, layout.value_head]
    offsets = ([(layout.log_std, (model.action_spec.num_params,))] if layout.log_std >= 0
               else [])
    for w_off, b_off, n_in, n_out in rows:
        offsets += [(w_off, (n_out, n_in)), (b_off, (n_out,))]
    start = 0
    for (offset, shape), p in zip(offsets, model.parameters(), strict=True):
        assert (offset, shape) == (start, tuple(p.shape))
        start += p.numel()


def test_tanh_within_one_ulp():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-12, 12, 200_000), rng.uniform(-1, 1, 200_000),
                        rng.uniform(-1e-3, 1e-3, 50_000), np.linspace(-10, 10, 100_001),
                        [0.0, -0.0, 9.0, -9.0, 1e30, -1e30]]).astype(np.float32)
    ours = kernels.tanh_array(x)
    exact = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(ours - exact) / ulp) <= 1.0
    assert np.array_equal(kernels.tanh_array(-x), -ours)  # odd, exactly
    assert np.isnan(kernels.tanh_array(np.array([np.nan], np.float32)))[0]


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_act_is_the_model_policy_plus_noise(space, activation):
    model = _model(space, True, activation)
    layout = _layout(model)
    snapshot = kernels.policy_snapshot(_flat(model), layout, kernels.ACTIVATIONS[activation])
    obs, _, rng = _batch(space, n=32)
    with torch.no_grad():
        out, _ = model(torch.as_tensor(obs, dtype=torch.float64))
    out = out.numpy()
    zero = np.zeros((len(obs), model.action_spec.num_params))
    if model.action_spec.discrete:
        np.testing.assert_array_equal(kernels.act(snapshot, obs, zero), out.argmax(1))
        gumbel = rng.gumbel(size=zero.shape)
        np.testing.assert_array_equal(kernels.act(snapshot, obs, gumbel),
                                      (out + gumbel).argmax(1))
    else:
        np.testing.assert_allclose(kernels.act(snapshot, obs, zero), out, atol=1e-5)
        normal = rng.standard_normal(zero.shape)
        std = np.exp(model.log_std.detach().numpy())
        np.testing.assert_allclose(kernels.act(snapshot, obs, normal), out + std * normal,
                                   atol=1e-5)
    # One observation as the collector passes it: a (1, obs_dim) row.
    assert kernels.act(snapshot, obs[:1], zero[:1]).shape[0] == 1


def _reference(model, obs, actions, logp_old, old_values, advantages, returns, index, coefs):
    """PPO's loss on a minibatch with torch autograd (objective.py), and its gradient."""
    model.zero_grad()
    t = lambda a: torch.as_tensor(a[index]).double()  # noqa: E731
    logp, entropy, values = model.evaluate(t(obs), _torch_actions(actions[index]))
    log_ratio = logp - (logp.detach() if coefs.old_from_current else t(logp_old))
    ratio = torch.exp(log_ratio)
    adv = t(advantages)
    if coefs.normalize_advantages:
        adv = objective.normalize(adv)
    loss_pi = objective.clipped_surrogate_loss(ratio, adv, coefs.clip_eps)
    loss_v = objective.value_loss(values, t(old_values), t(returns),
                                  coefs.value_clip_eps if coefs.clip_value else None)
    loss = objective.ppo_loss(loss_pi, loss_v, entropy.mean(), coefs.vf_coef, coefs.ent_coef)
    loss.backward()
    stats = [objective.approx_kl(log_ratio), objective.clip_fraction(ratio, coefs.clip_eps),
             loss_pi, loss_v, entropy.mean()]
    stats = [float(s.detach()) for s in stats]
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy()
    return np.array(stats), grad


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("clip_value", [True, False], ids=["clip-value", "plain-value"])
@pytest.mark.parametrize("normalize", [False, True], ids=["batch-adv", "minibatch-adv"])
def test_loss_and_gradient_are_autograds(space, shared, activation, clip_value, normalize):
    model = _model(space, shared, activation)
    layout = _layout(model)
    theta = _flat(model)
    with torch.no_grad():  # the reference takes the float32 weights, exactly
        start = 0
        for p in model.parameters():
            p.copy_(torch.as_tensor(theta[start:start + p.numel()]).view(p.shape))
            start += p.numel()
    obs, actions, rng = _batch(space)
    with torch.no_grad():
        logp, _, values = model.evaluate(torch.as_tensor(obs).double(), _torch_actions(actions))
    n = len(obs)
    # Old log-probs and values away from the current ones, so that ratios fall on both
    # sides of both clip bounds and the value clip is active for some samples.
    logp_old = (logp.numpy() + rng.normal(scale=0.3, size=n)).astype(np.float32)
    old_values = (values.numpy() + rng.normal(scale=0.3, size=n)).astype(np.float32)
    advantages = rng.normal(size=n).astype(np.float32)
    returns = (values.numpy() + rng.normal(size=n)).astype(np.float32)
    coefs = kernels.PPOCoefs(clip_eps=0.2, clip_value=clip_value, value_clip_eps=0.2,
                             vf_coef=0.5, ent_coef=0.05, normalize_advantages=normalize,
                             old_from_current=False)
    for seed in range(3):
        index = np.random.default_rng(seed).permutation(n)[:64]
        grad = np.full_like(theta, np.nan)  # every entry must be written
        stats = kernels.ppo_grad(theta, grad, layout, kernels.ACTIVATIONS[activation], obs,
                                 actions, logp_old, old_values, advantages, returns, index,
                                 coefs)
        want_stats, want_grad = _reference(model, obs, actions, logp_old, old_values,
                                           advantages, returns, index, coefs)
        np.testing.assert_allclose(np.array(stats), want_stats, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)
        assert 0.0 < stats.clipfrac < 1.0


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
def test_old_log_probs_from_the_current_weights_make_every_ratio_one(space):
    model = _model(space, True, "tanh")
    obs, actions, rng = _batch(space)
    n = len(obs)
    coefs = kernels.PPOCoefs(0.2, True, 0.2, 0.5, 0.01, False, old_from_current=True)
    theta = _flat(model)
    grad = np.empty_like(theta)
    noise = lambda: rng.normal(size=n).astype(np.float32)  # noqa: E731
    stats = kernels.ppo_grad(theta, grad, _layout(model), kernels.TANH, obs, actions, noise(),
                             noise(), noise(), noise(), np.arange(64), coefs)
    assert stats.approx_kl == 0.0 and stats.clipfrac == 0.0


def _adam_coefs(max_grad_norm: float) -> kernels.AdamCoefs:
    return kernels.AdamCoefs(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-5,
                             max_grad_norm=max_grad_norm)


def test_adam_is_torchs():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=1000).astype(np.float32)
    param = torch.nn.Parameter(torch.tensor(theta))
    optimizer = torch.optim.Adam([param], lr=1e-3, eps=1e-5)
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    for step in range(1, 21):
        grad = (rng.normal(size=theta.size) * 10.0 ** rng.integers(-4, 2)).astype(np.float32)
        param.grad = torch.tensor(grad)
        optimizer.step()
        kernels.clip_and_adam(theta, grad, m, v, step, _adam_coefs(0.0))
        # Within float32 roundings (torch fuses some multiply-adds, the kernel does not):
        # steps of ~1e-3 agree to 1e-6, where a wrong bias correction is off by ~1e-3.
        np.testing.assert_allclose(theta, param.detach().numpy(), rtol=0, atol=1e-6,
                                   err_msg=f"step {step}")
    for ours, theirs in ((m, optimizer.state[param]["exp_avg"].numpy()),
                         (v, optimizer.state[param]["exp_avg_sq"].numpy())):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * np.abs(theirs).max())


def test_gradient_clipping_is_torchs():
    rng = np.random.default_rng(1)
    theta = rng.normal(size=1000).astype(np.float32)
    param = torch.nn.Parameter(torch.tensor(theta))
    optimizer = torch.optim.Adam([param], lr=1e-3, eps=1e-5)
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    for step in range(1, 11):
        grad = rng.normal(size=theta.size).astype(np.float32)
        param.grad = torch.tensor(grad)
        norm = torch.nn.utils.clip_grad_norm_([param], 0.5)
        optimizer.step()
        ours = kernels.clip_and_adam(theta, grad, m, v, step, _adam_coefs(0.5))
        assert ours == pytest.approx(float(norm), rel=1e-6)
        np.testing.assert_allclose(theta, param.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_a_non_finite_gradient_changes_nothing():
    theta = np.ones(10, np.float32)
    grad = np.ones(10, np.float32)
    grad[3] = np.nan
    m, v = np.zeros(10, np.float32), np.zeros(10, np.float32)
    norm = kernels.clip_and_adam(theta, grad, m, v, 1, _adam_coefs(0.5))
    assert not np.isfinite(norm)
    assert (theta == 1).all() and (m == 0).all() and (v == 0).all()


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
def test_same_bits_on_every_run(space):
    """Ten minibatch steps twice from the same start: identical parameters."""
    model = _model(space, False, "tanh")
    layout = _layout(model)
    obs, actions, rng = _batch(space)
    n = len(obs)
    arrays = [rng.normal(size=n).astype(np.float32) for _ in range(4)]
    coefs = kernels.PPOCoefs(0.2, True, 0.2, 0.5, 0.01, True, False)
    results = []
    for _ in range(2):
        theta = _flat(model)
        grad, m, v = (np.zeros_like(theta) for _ in range(3))
        order = np.random.default_rng(0).permutation(n)
        for step in range(1, 11):
            index = order[(step - 1) * 16 % n:][:64]
            kernels.ppo_grad(theta, grad, layout, kernels.TANH, obs, actions, *arrays, index,
                             coefs)
            kernels.clip_and_adam(theta, grad, m, v, step, _adam_coefs(0.5))
        results.append(theta)
    np.testing.assert_array_equal(results[0], results[1])
