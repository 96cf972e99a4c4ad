"""ppo.wrappers: the partially observed CartPole and the general observation subset."""

import importlib

import gymnasium as gym
import numpy as np
import pytest

from ppo.wrappers import HideCartPoleVelocities, ObservationSubset


def test_hidden_velocities_leave_position_and_angle():
    env = HideCartPoleVelocities(gym.make("CartPole-v1"))
    assert env.observation_space.shape == (2,)
    full = gym.make("CartPole-v1").observation_space
    np.testing.assert_array_equal(env.observation_space.high, full.high[[0, 2]])
    obs, _ = env.reset(seed=3)
    for _ in range(20):
        state = np.asarray(env.unwrapped.state, dtype=np.float32)
        np.testing.assert_array_equal(obs, state[[0, 2]])
        assert env.observation_space.contains(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()


def test_registered_id_keeps_cartpoles_time_limit_and_dynamics():
    env = gym.make("ppo.wrappers:CartPoleNoVelocity-v1")
    assert env.spec.max_episode_steps == 500 and env.spec.reward_threshold == 475.0
    reference = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=7)
    full, _ = reference.reset(seed=7)
    for t in range(600):  # the same seed and actions give the same trajectory
        action = t % 2
        obs, r, terminated, truncated, _ = env.step(action)
        full, r_full, terminated_full, truncated_full, _ = reference.step(action)
        np.testing.assert_array_equal(obs, full[[0, 2]])
        assert (r, terminated, truncated) == (r_full, terminated_full, truncated_full)
        if terminated or truncated:
            break


def test_wrapper_is_importable_by_module_and_class_name():
    module, _, name = "ppo.wrappers:HideCartPoleVelocities".partition(":")
    wrapper = getattr(importlib.import_module(module), name)
    assert wrapper(gym.make("CartPole-v1")).observation_space.shape == (2,)


def test_observation_subset_keeps_the_order_given():
    env = ObservationSubset(gym.make("CartPole-v1"), [3, 1])
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, np.asarray(env.unwrapped.state, np.float32)[[3, 1]])


@pytest.mark.parametrize("indices", [[], [4], [-1]])
def test_observation_subset_rejects_indices_outside_the_observation(indices):
    with pytest.raises(ValueError, match="indices"):
        ObservationSubset(gym.make("CartPole-v1"), indices)


def test_observation_subset_rejects_non_box_observations():
    with pytest.raises(ValueError, match="flat Box"):
        ObservationSubset(gym.make("FrozenLake-v1"), [0])
