"""The test envs with known optima (tests/helpers_envs.py) are what they say they are."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import helpers_envs as h

KNOWN_OPTIMUM = [h.ContextualMultiDiscreteEnv, h.ContextualMultiBinaryEnv, h.DictObsContextEnv,
                 h.TupleObsContextEnv, h.DictActionContextEnv, h.TupleActionContextEnv,
                 h.MaskedChoiceEnv, h.InfoMaskedChoiceEnv, h.MaskedMultiChoiceEnv]


def _mean_return(env, act, episodes=300, seed=0):
    total = 0.0
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs, info))
            total += reward
            done = terminated or truncated
    return total / episodes


@pytest.mark.parametrize("cls", KNOWN_OPTIMUM)
def test_env_follows_the_gymnasium_api(cls):
    check_env(cls(), skip_render_check=True)


@pytest.mark.parametrize("cls", KNOWN_OPTIMUM)
def test_optimal_action_earns_the_optimal_return(cls):
    env = cls()
    assert _mean_return(env, lambda obs, info: env.optimal_action(obs)) == env.optimal_return


@pytest.mark.parametrize("cls", [c for c in KNOWN_OPTIMUM if hasattr(c(), "random_return")])
def test_random_policy_earns_the_stated_random_return(cls):
    env = cls()
    env.action_space.seed(1)
    mean = _mean_return(env, lambda obs, info: env.action_space.sample(), episodes=3000)
    assert mean == pytest.approx(env.random_return, abs=0.15)
    assert env.random_return < env.optimal_return - 1


def test_dict_observation_has_a_text_part_only_when_asked():
    assert "mission" in h.DictObsContextEnv().observation_space.spaces
    assert "mission" not in h.DictObsContextEnv(with_text=False).observation_space.spaces


def test_mask_marks_exactly_the_actions_that_do_not_fail():
    env = h.MaskedChoiceEnv()
    obs, _ = env.reset(seed=0)
    mask = env.action_masks()
    assert mask.dtype == bool and mask.sum() == env.n_valid
    assert obs.shape == (1,)  # the mask is not observed
    for action in range(env.n_actions):
        env.reset(seed=0)
        _, reward, terminated, _, _ = env.step(action)
        assert (reward >= 0) == mask[action]
        assert terminated == (not mask[action])  # invalid="end"


def test_wasted_step_goes_on_with_a_penalty():
    env = h.MaskedChoiceEnv(invalid="waste")
    env.reset(seed=0)
    invalid = int(np.flatnonzero(~env.action_masks())[0])
    _, reward, terminated, _, _ = env.step(invalid)
    assert (reward, terminated) == (-1.0, False)
    with pytest.raises(ValueError, match="invalid"):
        h.MaskedChoiceEnv(invalid="ignore")


def test_mask_can_be_observed_instead():
    env = h.MaskedChoiceEnv(show_mask=True)
    obs, _ = env.reset(seed=5)
    np.testing.assert_array_equal(obs > 0.5, env.action_masks())


def test_masked_random_policy_earns_half_the_optimum():
    env = h.MaskedChoiceEnv()
    rng = np.random.default_rng(0)
    mean = _mean_return(env, lambda obs, info: rng.choice(np.flatnonzero(env.action_masks())),
                        episodes=2000)
    assert mean == pytest.approx(env.valid_random_return, abs=0.15)


def test_info_mask_is_in_reset_and_step_infos_and_there_is_no_method():
    env = h.InfoMaskedChoiceEnv()
    assert not hasattr(env, "action_masks")
    obs, info = env.reset(seed=1)
    for _ in range(env.length):
        mask = info["action_mask"]
        assert mask.dtype == np.int8 and mask.sum() == env.n_valid
        obs, _, terminated, _, info = env.step(int(np.flatnonzero(mask)[0]))
        if terminated:
            break


def test_multidiscrete_mask_concatenates_the_components():
    env = h.MaskedMultiChoiceEnv()
    obs, _ = env.reset(seed=2)
    mask = env.action_masks()
    assert mask.shape == (2 * env.n_actions,) and mask.sum() == 2 * env.n_valid
    for part, row in zip(np.split(mask, 2), env.valid, strict=True):
        np.testing.assert_array_equal(part, row)


def test_masks_follow_sb3_contrib_convention():
    utils = pytest.importorskip("sb3_contrib.common.maskable.utils")
    assert utils.is_masking_supported(h.MaskedChoiceEnv())
    assert utils.is_masking_supported(h.MaskedMultiChoiceEnv())
    assert not utils.is_masking_supported(h.InfoMaskedChoiceEnv())
    env = h.MaskedMultiChoiceEnv()
    env.reset(seed=0)
    np.testing.assert_array_equal(utils.get_action_masks(env), env.action_masks())
