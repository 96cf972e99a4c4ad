"""The action distribution: log-probabilities, entropies and KL against torch.distributions,
the NumPy versions against the torch ones, every NumPy gradient against autograd, masks, and
NumPy sampling by its frequencies and moments."""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch.distributions import Bernoulli, Categorical, Independent, Normal, kl_divergence

from helpers_spaces import ACTION_SPACES, stored_actions
from ppo import distributions
from ppo.spaces import ActionSpec

SPACES = {
    **ACTION_SPACES,
    # Two Gaussian heads, a categorical and a Bernoulli one between them.
    "mixed": spaces.Tuple((spaces.Box(-1.0, 1.0, (1,), np.float32), spaces.Discrete(2),
                           spaces.MultiBinary(2), spaces.Box(-1.0, 1.0, (2,), np.float32))),
}
ALL = pytest.mark.parametrize("name", SPACES)

# chi-square critical values at p = 0.001, by degrees of freedom
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27}


def _inputs(spec, n=64, seed=0):
    """Distribution parameters well away from uniform, a log std per Gaussian dimension, and
    actions, in float64."""
    rng = np.random.default_rng(seed)
    params = 2.0 * rng.normal(size=(n, spec.num_params))
    log_std = 0.5 * rng.normal(size=spec.log_std_size) if spec.log_std_size else None
    return params, log_std, stored_actions(spec, n, rng).astype(np.float64)


def _t(x):
    return None if x is None else torch.as_tensor(x)


def _torch_heads(spec, params, log_std, mask=None):
    """Each head as a torch.distributions distribution (masked logits as -inf)."""
    dists = []
    for head in spec.heads:
        out = params[:, head.params]
        if head.kind == "categorical":
            if mask is not None:
                out = out.masked_fill(~mask[:, head.mask], -torch.inf)
            dists.append(Categorical(logits=out))
        elif head.kind == "gaussian":
            std = log_std[head.log_std].exp().expand_as(out)
            dists.append(Independent(Normal(out, std), 1))
        else:
            dists.append(Independent(Bernoulli(logits=out), 1))
    return dists


def _reference(spec, params, log_std, actions, mask=None):
    logp = entropy = 0
    for head, dist in zip(spec.heads, _torch_heads(spec, params, log_std, mask), strict=True):
        a = actions[:, head.columns]
        a = a[:, 0].long() if head.kind == "categorical" else a
        logp = logp + dist.log_prob(a)
        entropy = entropy + dist.entropy()
    return logp, entropy


# ---------------------------------------------------------------- torch
@ALL
def test_log_prob_and_entropy_match_torch_distributions(name):
    spec = ActionSpec(SPACES[name])
    params, log_std, actions = map(_t, _inputs(spec))
    logp, entropy = distributions.log_prob_entropy(spec, params, log_std, actions)
    want_logp, want_entropy = _reference(spec, params, log_std, actions)
    torch.testing.assert_close(logp, want_logp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-12, atol=1e-12)
    assert logp.std() > 0.1 and logp.shape == (64,)  # not a uniform policy


@ALL
def test_kl_is_exact(name):
    spec = ActionSpec(SPACES[name])
    params, log_std, _ = map(_t, _inputs(spec, seed=0))
    params_new, log_std_new, _ = map(_t, _inputs(spec, seed=1))
    kl = distributions.kl_divergence(spec, (params, log_std), (params_new, log_std_new))
    want = sum(kl_divergence(p, q) for p, q in zip(_torch_heads(spec, params, log_std),
                                                   _torch_heads(spec, params_new, log_std_new),
                                                   strict=True))
    torch.testing.assert_close(kl, want, rtol=1e-10, atol=1e-12)
    assert (kl > 0).all()
    same = distributions.kl_divergence(spec, (params, log_std), (params, log_std))
    torch.testing.assert_close(same, torch.zeros_like(same), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- NumPy
@ALL
def test_numpy_log_prob_and_entropy_equal_torch(name):
    spec = ActionSpec(SPACES[name])
    params, log_std, actions = (None if x is None else x.astype(np.float32)
                                for x in _inputs(spec))
    ours = distributions.log_prob_entropy_np(spec, params, log_std, actions)
    logp, entropy = distributions.log_prob_entropy(spec, *map(_t, (params, log_std, actions)))
    np.testing.assert_allclose(ours.logp, logp.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.entropy, entropy.numpy(), rtol=1e-5, atol=1e-5)


def _autograd(spec, params, log_std, actions, d_logp, d_mean_entropy, mask=None):
    """Gradients in the parameters and the log std of sum(d_logp * logp) + d_H * mean(H)."""
    params = torch.tensor(params, requires_grad=True)
    log_std = None if log_std is None else torch.tensor(log_std, requires_grad=True)
    logp, entropy = distributions.log_prob_entropy(spec, params, log_std, _t(actions), _t(mask))
    ((logp * _t(d_logp)).sum() + d_mean_entropy * entropy.mean()).backward()
    return params.grad.numpy(), None if log_std is None else log_std.grad.numpy()


def _numpy_backward(spec, params, log_std, actions, d_logp, d_mean_entropy, mask=None):
    dist = distributions.log_prob_entropy_np(spec, params, log_std, actions, mask)
    d_log_std = None if log_std is None else np.full_like(log_std, np.nan)
    d_params = distributions.log_prob_entropy_backward_np(spec, dist.cache, d_logp,
                                                          d_mean_entropy, d_log_std)
    return d_params, d_log_std


@ALL
@pytest.mark.parametrize("through", ["logp", "entropy", "both"])
def test_numpy_gradients_are_autograd(name, through):
    spec = ActionSpec(SPACES[name])
    params, log_std, actions = _inputs(spec)
    rng = np.random.default_rng(2)
    d_logp = rng.normal(size=len(params)) if through != "entropy" else np.zeros(len(params))
    d_mean_entropy = -0.7 if through != "logp" else 0.0
    want_params, want_log_std = _autograd(spec, params, log_std, actions, d_logp,
                                          d_mean_entropy)
    got_params, got_log_std = _numpy_backward(spec, params, log_std, actions, d_logp,
                                              d_mean_entropy)
    assert got_params.shape == want_params.shape
    np.testing.assert_allclose(got_params, want_params, rtol=1e-5, atol=1e-7)
    if log_std is not None:
        np.testing.assert_allclose(got_log_std, want_log_std, rtol=1e-6, atol=1e-7)
    # A real gradient, not a vacuous zero (a Gaussian's entropy depends on its log std only).
    assert max(np.abs(g).max() for g in (want_params, want_log_std) if g is not None) > 1e-3


# ---------------------------------------------------------------- masks
MASKED = spaces.MultiDiscrete([4, 3])


def _masked_inputs(n=64, seed=0):
    """A mask that leaves every head at least one valid action, actions among the valid ones,
    and logits largest where masked (so a mask that were ignored would show)."""
    spec = ActionSpec(MASKED)
    rng = np.random.default_rng(seed)
    mask = rng.random((n, spec.mask_size)) < 0.6
    actions = np.empty((n, 2), np.int64)
    for head, column in zip(spec.heads, range(2), strict=True):
        head_mask = mask[:, head.mask]
        head_mask[np.arange(n), rng.integers(0, head.size, n)] = True
        mask[:, head.mask] = head_mask
        actions[:, column] = [rng.choice(np.flatnonzero(row)) for row in head_mask]
    params = rng.normal(size=(n, spec.num_params)) + 5.0 * ~mask
    return spec, params, mask, actions


def test_masked_actions_have_probability_zero():
    spec, params, mask, actions = _masked_inputs()
    logp, entropy = distributions.log_prob_entropy(spec, _t(params), None, _t(actions),
                                                   _t(mask))
    want_logp, want_entropy = _reference(spec, _t(params), None, _t(actions), _t(mask))
    torch.testing.assert_close(logp, want_logp, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-10, atol=1e-10)
    # A masked action's log-probability is effectively -inf.
    head = spec.heads[0]
    masked_row, masked_action = np.argwhere(~mask[:, head.mask])[0]
    forced = actions.copy()
    forced[masked_row, 0] = masked_action
    logp_forced, _ = distributions.log_prob_entropy(spec, _t(params), None, _t(forced),
                                                    _t(mask))
    assert torch.exp(logp_forced[masked_row]).item() == 0.0
    np_dist = distributions.log_prob_entropy_np(spec, params, None, actions, mask)
    np.testing.assert_allclose(np_dist.logp, want_logp.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np_dist.entropy, want_entropy.numpy(), rtol=1e-10, atol=1e-10)


def test_masked_logits_get_no_gradient():
    spec, params, mask, actions = _masked_inputs()
    d_logp = np.random.default_rng(1).normal(size=len(params))
    want, _ = _autograd(spec, params, None, actions, d_logp, -0.5, mask)
    got, _ = _numpy_backward(spec, params, None, actions, d_logp, -0.5, mask)
    assert (want[~mask] == 0).all() and (got[~mask] == 0).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert (~mask).sum() > 20 and np.abs(want[mask]).max() > 0.1


def test_masked_kl_sampling_and_mode():
    spec, params, mask, _ = _masked_inputs(n=2000)
    other = params + np.random.default_rng(3).normal(size=params.shape)
    kl = distributions.kl_divergence(spec, (_t(params), None), (_t(other), None), _t(mask))
    want = sum(kl_divergence(p, q) for p, q in zip(_torch_heads(spec, _t(params), None, _t(mask)),
                                                   _torch_heads(spec, _t(other), None, _t(mask)),
                                                   strict=True))
    torch.testing.assert_close(kl, want, rtol=1e-8, atol=1e-10)
    noise = distributions.draw_noise(spec, np.random.default_rng(0), (len(params),))
    for actions in (distributions.sample(spec, params, None, noise, mask),
                    distributions.mode(spec, params, mask)):
        for head, column in zip(spec.heads, range(2), strict=True):
            chosen = mask[:, head.mask][np.arange(len(params)), actions[:, column]]
            assert chosen.all(), f"head {column} chose a masked action"
    unmasked = distributions.mode(spec, params)  # the largest logits are the masked ones
    assert (unmasked != distributions.mode(spec, params, mask)).any()


# ---------------------------------------------------------------- sampling and mode
def _sample_one_state(spec, params_row, log_std, n=40_000, seed=0):
    params = np.repeat(params_row[None].astype(np.float32), n, axis=0)
    std = None if log_std is None else np.exp(log_std)
    noise = distributions.draw_noise(spec, np.random.default_rng(seed), (n,))
    assert noise.shape == (n, spec.num_params)
    return distributions.sample(spec, params, std, noise)


def _check_head(head, column, params_row, log_std):
    """Frequencies (categorical, Bernoulli) or moments (Gaussian) of one head's samples."""
    n = len(column)
    out = params_row[head.params]
    if head.kind == "categorical":
        probs = np.exp(out - out.max())
        probs /= probs.sum()
        counts = np.bincount(column[:, 0].astype(np.int64), minlength=head.size)
        chi2 = (((counts - n * probs) ** 2) / (n * probs)).sum()
        assert chi2 < CHI2_999[head.size - 1], (counts / n, probs)
    elif head.kind == "gaussian":
        std = np.exp(log_std[head.log_std])
        assert np.all(np.abs(column.mean(0) - out) < 4 * std / n**0.5)
        np.testing.assert_allclose(column.std(0), std, rtol=0.02)
    else:
        p = 1.0 / (1.0 + np.exp(-out))
        assert set(np.unique(column)) <= {0, 1}
        assert np.all(np.abs(column.mean(0) - p) < 4 * np.sqrt(p * (1 - p) / n))


@ALL
def test_numpy_sampling_frequencies_and_moments(name):
    spec = ActionSpec(SPACES[name])
    rng = np.random.default_rng(5)
    params_row = rng.normal(size=spec.num_params)
    # Means outside a Box's bounds too: samples are stored unclipped.
    params_row[[s for h in spec.heads if h.kind == "gaussian"
                for s in range(h.params.start, h.params.stop)]] *= 3.0
    log_std = rng.normal(scale=0.5, size=spec.log_std_size) if spec.log_std_size else None
    actions = _sample_one_state(spec, params_row, log_std)
    assert actions.shape == (40_000, spec.columns) and actions.dtype == spec.dtype
    for head in spec.heads:
        _check_head(head, actions[:, head.columns], params_row, log_std)


def test_heads_draw_independent_noise():
    spec = ActionSpec(spaces.MultiDiscrete([3, 3]))
    actions = _sample_one_state(spec, np.zeros(6), None, n=9000)
    # Two uniform heads agree 1/3 of the time when independent, always when they share noise.
    assert abs((actions[:, 0] == actions[:, 1]).mean() - 1 / 3) < 0.03


def test_rollout_noise_has_a_row_per_step_and_env():
    spec = ActionSpec(SPACES["tuple"])
    noise = distributions.draw_noise(spec, np.random.default_rng(0), (7, 3))
    assert noise.shape == (7, 3, spec.num_params)


def test_mode():
    spec = ActionSpec(SPACES["mixed"])  # Box(1), Discrete(2), MultiBinary(2), Box(2)
    params = np.array([[0.3, 1.0, 2.0, -0.5, 0.5, -1.5, 2.5],
                       [-0.7, 3.0, -1.0, 0.1, -0.1, 0.0, 9.0]], np.float32)
    np.testing.assert_array_equal(distributions.mode(spec, params),
                                  np.array([[0.3, 1, 0, 1, -1.5, 2.5],
                                            [-0.7, 0, 1, 0, 0.0, 9.0]], np.float32))
    discrete = ActionSpec(spaces.Discrete(3))
    np.testing.assert_array_equal(distributions.mode(discrete, np.array([[0.0, 2.0, 1.0]])),
                                  [[1]])
