"""The loss, part by part, against numbers worked out by hand; each NumPy loss and its
gradient against the torch formula and autograd."""

import numpy as np
import pytest
import torch

from ppo import objective

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


# ---------------------------------------------------------------- NumPy, against autograd
# Ratios on both sides of both hinges and exactly on them (1 - eps and 1 + eps).
HINGE_RATIOS = [0.5, 1.0 - EPS, 0.9, 1.0, 1.1, 1.0 + EPS, 1.5]


@pytest.mark.parametrize("advantage", [1.5, -1.5], ids=["A>0", "A<0"])
def test_numpy_clipped_surrogate_and_its_gradient(advantage):
    """The NumPy gradient is in each sample's new log-probability: dL/dlogp = dL/dr * r."""
    ratio = torch.tensor(HINGE_RATIOS, dtype=torch.float64, requires_grad=True)
    adv = torch.full((len(HINGE_RATIOS),), advantage, dtype=torch.float64)
    loss = objective.clipped_surrogate_loss(ratio, adv, EPS)
    loss.backward()
    ours = objective.clipped_surrogate_loss_np(ratio.detach().numpy(), adv.numpy(), EPS)
    assert ours.loss == pytest.approx(loss.item(), abs=1e-15)
    np.testing.assert_allclose(ours.grad, (ratio.grad * ratio).detach().numpy(), atol=1e-15)
    # The clip binds beyond 1 + eps for A > 0 and below 1 - eps for A < 0, not on the hinge.
    flat = [6] if advantage > 0 else [0]
    assert (ours.grad[flat] == 0).all() and (np.delete(ours.grad, flat) != 0).all()


def test_numpy_clipped_surrogate_through_log_probs():
    rng = np.random.default_rng(0)
    logp_old = rng.normal(size=200)
    logp = torch.tensor(logp_old + rng.normal(scale=0.3, size=200), requires_grad=True)
    adv = torch.as_tensor(rng.normal(size=200))
    ratio = torch.exp(logp - torch.as_tensor(logp_old))
    objective.clipped_surrogate_loss(ratio, adv, EPS).backward()
    ours = objective.clipped_surrogate_loss_np(ratio.detach().numpy(), adv.numpy(), EPS)
    np.testing.assert_allclose(ours.grad, logp.grad.numpy(), rtol=1e-12, atol=1e-15)
    assert 0.2 < (ours.grad == 0).mean() < 0.8  # both clipped and unclipped samples


# Values moved by less than, exactly, and more than the clip range from the old value, both
# ways, with returns on either side (dyadic numbers: the hinges are exact in floating point).
OLD = [0.0] * 8 + [1.0] * 4
VALUES = [0.125, 0.25, 0.5, -0.5, 0.5, -0.25, -0.5, 0.5, 1.25, 0.75, 1.5, 0.5]
RETURNS = [1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 0.25, 2.0, 2.0, 0.0, 0.0]


@pytest.mark.parametrize("clip_eps", [None, 0.25], ids=["plain", "clipped"])
@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_numpy_value_loss_and_its_gradient(clip_eps, weight):
    values = torch.tensor(VALUES, dtype=torch.float64, requires_grad=True)
    old, returns = torch.tensor(OLD, dtype=torch.float64), torch.tensor(RETURNS,
                                                                        dtype=torch.float64)
    loss = objective.value_loss(values, old, returns, clip_eps)
    (weight * loss).backward()
    ours = objective.value_loss_np(values.detach().numpy(), old.numpy(), returns.numpy(),
                                   clip_eps, weight)
    assert ours.loss == pytest.approx(loss.item(), abs=1e-15)
    np.testing.assert_allclose(ours.grad, values.grad.numpy(), atol=1e-15)
    if clip_eps is not None:  # outside the range, moving away from the return: no gradient
        assert (ours.grad == 0).sum() >= 2


def test_numpy_value_loss_clip_matters():
    args = (np.array(VALUES), np.array(OLD), np.array(RETURNS))
    assert objective.value_loss_np(*args, 0.25).loss > objective.value_loss_np(*args, None).loss


def test_numpy_entropy_bonus():
    entropy = np.array([0.5, 1.0, 1.5], np.float32)
    bonus = objective.entropy_bonus_np(entropy, 0.01)
    assert bonus.loss == pytest.approx(-0.01)
    assert bonus.grad == -0.01  # in the mean entropy


def test_numpy_diagnostics_equal_torch():
    rng = np.random.default_rng(1)
    log_ratio = rng.normal(scale=0.3, size=500)
    ratio = np.exp(log_ratio)
    assert objective.approx_kl_np(log_ratio, ratio) == pytest.approx(
        objective.approx_kl(torch.as_tensor(log_ratio)).item(), rel=1e-12)
    assert objective.clip_fraction_np(ratio, EPS) == pytest.approx(
        objective.clip_fraction(torch.as_tensor(ratio), EPS).item(), rel=1e-6)
    assert objective.approx_kl_np(np.zeros(3), np.ones(3)) == 0.0
    advantages = rng.normal(3.0, 2.0, size=64)
    np.testing.assert_allclose(objective.normalize_np(advantages),
                               objective.normalize(torch.as_tensor(advantages)).numpy(),
                               rtol=1e-12)
