"""Statistics over runs (Agarwal et al. 2021): IQM, stratified-bootstrap intervals and
performance profiles, against values worked out by hand."""

import numpy as np
import pytest

from ppo.stats import Estimate, iqm, iqm_estimate, performance_profile, stratified_bootstrap


def test_iqm_of_known_samples():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5  # mean of 3, 4, 5, 6
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5  # order does not matter
    assert iqm([1, 2, 3, 1000]) == 2.5  # the outlier is dropped
    assert iqm([0, 10, 20, 30, 40]) == 20.0  # n // 4 = 1 dropped at each end
    assert iqm([3, 5]) == 4.0 and iqm([7]) == 7.0  # fewer than 4: the plain mean


def test_iqm_matches_scipys_trimmed_mean():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (4, 5, 7, 10, 33):
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25))


def test_iqm_over_tasks_pools_every_run():
    scores = np.array([[1.0, 100.0], [2.0, 200.0], [3.0, 300.0], [4.0, 400.0]])
    assert iqm(scores) == iqm(scores.ravel()) == np.mean([3, 4, 100, 200])


def test_the_interval_covers_the_iqm_and_narrows_with_more_runs():
    rng = np.random.default_rng(1)
    few, many = rng.normal(size=5), rng.normal(size=200)
    for scores in (few, many):
        estimate = iqm_estimate(scores)
        assert estimate.low <= estimate.value <= estimate.high
    assert (iqm_estimate(many).high - iqm_estimate(many).low
            < iqm_estimate(few).high - iqm_estimate(few).low)
    assert iqm_estimate([5.0, 5.0, 5.0]) == (5.0, 5.0, 5.0)
    assert Estimate(2.5, 1.25, 3.75).format() == "2.5 [1.25, 3.75]"
    assert Estimate(255.63, -0.0442, 12.0).format() == "255.6 [-0.0442, 12.0]"


def test_the_interval_covers_the_true_iqm_about_95_percent_of_the_time():
    """Samples of 20 from a normal distribution, whose IQM is its mean (0) by symmetry."""
    rng = np.random.default_rng(2)
    hits = 0
    for i in range(100):
        estimate = iqm_estimate(rng.normal(size=20), reps=300, seed=i)
        hits += estimate.low <= 0.0 <= estimate.high
    assert 85 <= hits <= 100


def test_the_bootstrap_resamples_each_task_on_its_own():
    """Task A scores 0, task B 100: every stratified resample keeps half of each, so the IQM
    never moves. Pooled resampling would mix them in other proportions."""
    scores = np.column_stack([np.zeros(6), np.full(6, 100.0)])
    low, high = stratified_bootstrap(scores, iqm)
    assert low == high == iqm(scores) == 50.0


def test_a_performance_profile_is_the_fraction_above_each_threshold():
    profile = performance_profile([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.5, 4.0, 5.0])
    np.testing.assert_array_equal(profile, [1.0, 0.75, 0.5, 0.0, 0.0])
    rng = np.random.default_rng(3)
    taus = np.linspace(-6, 6, 101)
    profile = performance_profile(rng.normal(size=(10, 3)), taus)
    assert np.all(np.diff(profile) <= 0) and profile[0] == 1.0 and profile[-1] == 0.0


def test_profile_bands_contain_the_profile():
    rng = np.random.default_rng(4)
    scores, taus = rng.normal(size=8), np.linspace(-2, 2, 41)
    low, high = stratified_bootstrap(scores, lambda s: performance_profile(s, taus))
    profile = performance_profile(scores, taus)
    assert low.shape == high.shape == taus.shape
    assert np.all(low <= profile) and np.all(profile <= high)


@pytest.mark.parametrize("bad", [[], [1.0, np.nan], [[[1.0]]]])
def test_bad_scores_are_refused(bad):
    with pytest.raises(ValueError, match="scores"):
        iqm(bad)
