"""The in-process vector env behaves exactly like Gymnasium's SyncVectorEnv (same-step reset)."""

from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from ppo.config import Config, ConfigError
from ppo.envs import InProcessVectorEnv, make_vector_env


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "LunarLander-v3"])
def test_in_process_matches_sync_vector_env(env_id):
    fns = [partial(gym.make, env_id)] * 3
    ours = InProcessVectorEnv(fns)
    theirs = gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    obs_a, _ = ours.reset(seed=5)
    obs_b, _ = theirs.reset(seed=5)
    np.testing.assert_array_equal(obs_a, obs_b)
    theirs.action_space.seed(0)
    ended = 0
    for _ in range(600):
        actions = theirs.action_space.sample()
        a = ours.step(actions)
        b = theirs.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)
        if b[4].get("_final_obs") is not None and b[4]["_final_obs"].any():
            mask = b[4]["_final_obs"]
            np.testing.assert_array_equal(a[4]["_final_obs"], mask)
            np.testing.assert_array_equal(np.stack(a[4]["final_obs"][mask]),
                                          np.stack(b[4]["final_obs"][mask]))
            ended += int(mask.sum())
        else:
            assert not a[4]
    assert ended > 0
    ours.close()
    theirs.close()


def test_auto_picks_native_only_for_many_envs():
    few = make_vector_env(Config(env_id="CartPole-v1", num_envs=2))
    many = make_vector_env(Config(env_id="CartPole-v1", num_envs=8))
    assert isinstance(few, InProcessVectorEnv)
    assert many.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    with pytest.raises(ConfigError, match="no native"):
        make_vector_env(Config(env_id="LunarLander-v3", vector="native"))


def test_async_vector_env_uses_same_step_reset():
    envs = make_vector_env(Config(env_id="CartPole-v1", num_envs=2, vector="async"))
    try:
        assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (2, 4)
    finally:
        envs.close()


@pytest.mark.parametrize("env_id, message", [
    ("NoSuchEnv-v0", "unknown env id"),
    ("no_such_module:Foo-v0", "cannot import"),
])
def test_bad_env_ids_are_config_errors(env_id, message):
    with pytest.raises(ConfigError, match=message):
        make_vector_env(Config(env_id=env_id))


def test_dead_async_worker_is_named():
    import os
    import signal
    import time

    from ppo.agent import PPO
    from ppo.rollout import EnvWorkerError

    agent = PPO(Config(env_id="CartPole-v1", num_envs=2, vector="async", rollout_steps=16,
                       minibatch_size=8, tensorboard=False), verbose=False)
    try:
        agent.collector.start(0)
        os.kill(agent.envs.processes[1].pid, signal.SIGKILL)
        time.sleep(0.3)
        with pytest.raises(EnvWorkerError, match="env 1's worker process died"):
            agent.collector.collect(16, 0)
    finally:
        agent.envs.close(terminate=True)
