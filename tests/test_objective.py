"""The loss, part by part, against numbers worked out by hand."""

import copy

import numpy as np
import pytest
import torch

from ppo import objective
from ppo.config import Config
from ppo.learner import TorchLearner
from ppo.numpy_learner import NumpyLearner
from ppo.policy import ActorCritic

EPS = 0.2
RATIOS = [0.5, 0.9, 1.0, 1.1, 1.5]


# ---------------------------------------------------------------- clipped surrogate
@pytest.mark.parametrize(
    ("advantage", "per_sample", "active"),
    [
        # A > 0: min(r, clip(r)) = r below 1+eps (even below 1-eps, the pessimistic side),
        # flat at 1.2 above 1+eps; gradient flows only where the unclipped term is chosen.
        (1.0, [0.5, 0.9, 1.0, 1.1, 1.2], [1, 1, 1, 1, 0]),
        # A < 0: min(-r, -clip(r)) = -0.8 below 1-eps (flat), -r above (no clip above 1+eps).
        (-1.0, [-0.8, -0.9, -1.0, -1.1, -1.5], [0, 1, 1, 1, 1]),
    ],
    ids=["A>0", "A<0"],
)
def test_clipped_surrogate_both_hinges(advantage, per_sample, active):
    ratio = torch.tensor(RATIOS, dtype=torch.float64, requires_grad=True)
    adv = torch.full((5,), advantage, dtype=torch.float64)
    loss = objective.clipped_surrogate_loss(ratio, adv, EPS)
    assert loss.item() == pytest.approx(-np.mean(per_sample), abs=1e-12)
    loss.backward()
    expected_grad = -advantage * np.array(active) / 5
    np.testing.assert_allclose(ratio.grad.numpy(), expected_grad, atol=1e-12)


def test_clipped_surrogate_scales_with_advantage():
    ratio = torch.tensor([1.3, 0.7])
    adv = torch.tensor([2.0, -3.0])
    # sample 0: min(2.6, 1.2*2=2.4) = 2.4; sample 1: min(-2.1, 0.8*-3=-2.4) = -2.4
    assert objective.clipped_surrogate_loss(ratio, adv, 0.2).item() == pytest.approx(
        -(2.4 - 2.4) / 2, abs=1e-6)
    assert objective.clipped_surrogate_loss(ratio, adv, 0.5).item() == pytest.approx(
        -(2.6 - 2.1) / 2, abs=1e-6)


def test_ratio_one_gives_minus_mean_advantage():
    adv = torch.tensor([0.3, -1.2, 2.0])
    loss = objective.clipped_surrogate_loss(torch.ones(3), adv, EPS)
    assert loss.item() == pytest.approx(-adv.mean().item())


# ---------------------------------------------------------------- value loss
def test_value_loss_unclipped_is_mse():
    values = torch.tensor([1.0, 0.0, -2.0])
    returns = torch.tensor([2.0, 0.5, -1.0])
    expected = (1.0 + 0.25 + 1.0) / 3
    assert objective.value_loss(values, torch.zeros(3), returns, None).item() == pytest.approx(
        expected)


def test_value_loss_clipped_takes_per_sample_max():
    old = torch.tensor([0.0, 0.0, 0.0])
    values = torch.tensor([1.0, 1.0, 0.1])
    returns = torch.tensor([2.0, 0.5, 0.0])
    # sample 0: unclipped (1-2)^2 = 1, clipped v=0.2: (0.2-2)^2 = 3.24 -> 3.24
    # sample 1: unclipped 0.25, clipped (0.2-0.5)^2 = 0.09 -> 0.25
    # sample 2: inside the range, both 0.01
    expected = (3.24 + 0.25 + 0.01) / 3
    got = objective.value_loss(values, old, returns, 0.2).item()
    assert got == pytest.approx(expected, abs=1e-6)
    # ... not the seed's max of the two means (max(0.42, 1.11)):
    assert got != pytest.approx(max((1 + 0.25 + 0.01) / 3, (3.24 + 0.09 + 0.01) / 3), abs=1e-3)


def test_value_loss_clipped_gradient_vanishes_outside_the_range():
    old = torch.tensor([0.0])
    returns = torch.tensor([2.0])
    # v moved past old + eps towards a target that is further still: clipped error is larger,
    # and the clipped value does not depend on v, so no gradient.
    values = torch.tensor([1.0], requires_grad=True)
    objective.value_loss(values, old, returns, 0.2).backward()
    assert values.grad.item() == 0.0
    # v moved past the target: unclipped error is larger, gradient 2 (v - R).
    values = torch.tensor([3.0], requires_grad=True)
    objective.value_loss(values, torch.tensor([2.9]), returns, 0.2).backward()
    assert values.grad.item() == pytest.approx(2.0 * (3.0 - 2.0))


def test_value_loss_clip_range_is_its_own():
    old, values, returns = torch.zeros(1), torch.tensor([1.0]), torch.tensor([2.0])
    assert objective.value_loss(values, old, returns, 0.5).item() == pytest.approx(1.5**2)
    assert objective.value_loss(values, old, returns, 10.0).item() == pytest.approx(1.0)


# ---------------------------------------------------------------- total, KL, clip fraction
def test_entropy_enters_as_a_bonus():
    loss = objective.ppo_loss(torch.tensor(0.1), torch.tensor(2.0), torch.tensor(1.5),
                              vf_coef=0.5, ent_coef=0.01)
    assert loss.item() == pytest.approx(0.1 + 0.5 * 2.0 - 0.01 * 1.5)
    higher_entropy = objective.ppo_loss(torch.tensor(0.1), torch.tensor(2.0), torch.tensor(3.0),
                                        vf_coef=0.5, ent_coef=0.01)
    assert higher_entropy < loss


def test_approx_kl_values():
    assert objective.approx_kl(torch.zeros(4)).item() == 0.0
    log_ratio = torch.tensor([np.log(2.0), np.log(0.5)], dtype=torch.float64)
    # (2 - 1 - ln 2 + 0.5 - 1 + ln 2) / 2 = 0.25
    assert objective.approx_kl(log_ratio).item() == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    assert objective.approx_kl(torch.tensor(rng.normal(size=1000))).item() > 0


def test_clip_fraction_values():
    ratio = torch.tensor(RATIOS)
    assert objective.clip_fraction(ratio, EPS).item() == pytest.approx(2 / 5)
    assert objective.clip_fraction(ratio, 0.05).item() == pytest.approx(4 / 5)
    assert objective.clip_fraction(torch.ones(7), EPS).item() == 0.0


def test_normalize():
    adv = torch.tensor([1.0, 2.0, 3.0, 10.0])
    out = objective.normalize(adv)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out.std().item() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(out.numpy(), ((adv - 4.0) / adv.std()).numpy(), rtol=1e-6)


# ---------------------------------------------------------------- through the learners
def _learner(kind, cfg, seed=0):
    torch.manual_seed(seed)
    model = ActorCritic(4, _discrete2(), [16, 16], shared_trunk=False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    return (TorchLearner if kind == "torch" else NumpyLearner)(model, opt, cfg)


def _discrete2():
    from gymnasium import spaces

    return spaces.Discrete(2)


def _load_fresh(learner, n=64, seed=0, adv_offset=3.0):
    """A batch whose frozen log-probs are the current ones (ratio 1 everywhere)."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 4)).astype(np.float32)
    actions = rng.integers(0, 2, n)
    logp, values = learner.evaluate(obs, actions)
    learner.load_batch(obs, actions, logp, values)
    advantages = (adv_offset + 2.0 * rng.normal(size=n)).astype(np.float32)
    learner.set_advantages(advantages, (advantages + values).astype(np.float32))
    return advantages


@pytest.mark.parametrize("kind", ["torch", "numpy"])
@pytest.mark.parametrize("norm_adv", ["batch", "minibatch", "off"])
def test_minibatch_normalization_mode(kind, norm_adv):
    """At ratio 1 the policy loss is -mean(A_mb): 0 when normalized per minibatch, the raw
    mean otherwise (batch normalization happens in the trainer, before the learner)."""
    learner = _learner(kind, Config(norm_adv=norm_adv, ent_coef=0.0))
    advantages = _load_fresh(learner)
    index = np.arange(16)
    stats = learner.step(index)
    expected = 0.0 if norm_adv == "minibatch" else -advantages[index].mean()
    assert stats[2] == pytest.approx(expected, abs=1e-5)
    assert stats[0] == pytest.approx(0.0, abs=1e-7)  # approx KL
    assert stats[1] == 0.0  # clip fraction


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_grad_norm_clipping_bounds_the_global_norm(kind):
    def grads(max_grad_norm):
        learner = _learner(kind, Config(max_grad_norm=max_grad_norm))
        _load_fresh(learner, adv_offset=50.0)  # a large gradient
        learner.step(np.arange(64))
        if kind == "torch":
            return np.concatenate([p.grad.reshape(-1).numpy() for p in learner.model.parameters()])
        return learner.grad.copy()

    raw = grads(0.0)  # 0 turns clipping off
    raw_norm = np.linalg.norm(raw)
    assert raw_norm > 1.0
    clipped = grads(0.5)
    assert np.linalg.norm(clipped) == pytest.approx(0.5, rel=1e-4)
    np.testing.assert_allclose(clipped, raw * 0.5 / raw_norm, rtol=1e-3, atol=1e-7)
    # Under the limit nothing changes.
    np.testing.assert_allclose(grads(10 * raw_norm), raw, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_entropy_bonus_raises_entropy(kind):
    """With zero advantages and value loss off, the only push is the entropy bonus: entropy
    must go up."""
    learner = _learner(kind, Config(vf_coef=0.0, ent_coef=0.5, lr=1e-2, max_grad_norm=0.0))
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(64, 4)).astype(np.float32)
    actions = rng.integers(0, 2, 64)
    # Start from a peaked policy so there is entropy to gain.
    with torch.no_grad():
        learner.model.policy_head.bias.copy_(torch.tensor([3.0, -3.0]))
    logp, values = learner.evaluate(obs, actions)
    learner.load_batch(obs, actions, logp, values)
    learner.set_advantages(np.zeros(64, np.float32), values)
    before = learner.step(np.arange(64))[4]
    for _ in range(20):
        after = learner.step(np.arange(64))[4]
    assert after > before + 0.05


def test_learners_agree_on_a_step():
    cfg = Config(norm_adv="minibatch")
    a, b = _learner("torch", cfg), _learner("numpy", cfg)
    b.model.load_state_dict(copy.deepcopy(a.model.state_dict()))
    _load_fresh(a)
    _load_fresh(b)
    np.testing.assert_allclose(a.step(np.arange(32)), b.step(np.arange(32)), atol=1e-5)


@pytest.mark.parametrize("kind", ["torch", "numpy"])
@pytest.mark.parametrize("clip_value", [True, False])
def test_value_clipping_switch_and_range(kind, clip_value):
    cfg = Config(clip_value=clip_value, value_clip_eps=0.1)
    learner = _learner(kind, cfg)
    rng = np.random.default_rng(3)
    obs = rng.normal(size=(64, 4)).astype(np.float32)
    actions = rng.integers(0, 2, 64)
    logp, values = learner.evaluate(obs, actions)
    old_values = (values + rng.normal(scale=0.5, size=64)).astype(np.float32)
    returns = (values + rng.normal(scale=2.0, size=64)).astype(np.float32)
    learner.load_batch(obs, actions, logp, old_values)
    learner.set_advantages(np.zeros(64, np.float32), returns)
    stats = learner.step(np.arange(64))
    unclipped = (values - returns) ** 2
    clipped = (old_values + np.clip(values - old_values, -0.1, 0.1) - returns) ** 2
    expected = np.maximum(unclipped, clipped).mean() if clip_value else unclipped.mean()
    assert stats[3] == pytest.approx(expected, rel=1e-5)
    assert np.maximum(unclipped, clipped).mean() > unclipped.mean() * 1.01  # switch matters
