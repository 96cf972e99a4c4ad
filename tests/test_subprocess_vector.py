"""Envs in worker processes behave exactly like the in-process vector env, and the workers
live and die as the caller decides."""

import multiprocessing as mp
import os
import signal
import time
from functools import partial

import gymnasium as gym
import numpy as np
import pytest

from helpers_envs import DictObsEnv, InfoMaskedChoiceEnv, MaskedChoiceEnv, terminating
from ppo.envs import InProcessVectorEnv
from ppo.episode_replay import ReplayableEpisodes
from ppo.rollout import EnvWorkerError
from ppo.subprocess_vector import SubprocessVectorEnv


def _assert_same_info(a, b):
    """Equal batched infos: same keys, masks and values, object arrays element by element."""
    assert sorted(a) == sorted(b)
    for key in b:
        if isinstance(b[key], dict):
            _assert_same_info(a[key], b[key])
        elif b[key].dtype == object:
            assert len(a[key]) == len(b[key])
            for x, y in zip(a[key], b[key], strict=True):
                if isinstance(y, dict):
                    _assert_same_info(x, y)
                else:
                    np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_array_equal(a[key], b[key])
            assert a[key].dtype == b[key].dtype


def _assert_same_step(a, b):
    for x, y in zip(a[:4], b[:4], strict=True):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype
    _assert_same_info(a[4], b[4])


def _rows(info, rows: slice):
    """A batched info restricted to some envs: entries none of them has are left out."""
    out = {}
    for key, value in info.items():
        mask = info[f"_{key}"][rows] if not key.startswith("_") else None
        if mask is not None and mask.any():
            out[key] = _rows(value, rows) if isinstance(value, dict) else value[rows]
            out[f"_{key}"] = mask
    return out


@pytest.mark.parametrize("env_id, steps", [("LunarLander-v3", 300), ("Pendulum-v1", 450),
                                           ("CartPole-v1", 300)])
def test_same_results_as_in_process(env_id, steps):
    fns = [partial(gym.make, env_id)] * 5
    ours = SubprocessVectorEnv(fns, num_workers=2)  # blocks of 3 and 2 envs
    theirs = InProcessVectorEnv(fns)
    try:
        obs_a, _ = ours.reset(seed=7)
        obs_b, _ = theirs.reset(seed=7)
        np.testing.assert_array_equal(obs_a, obs_b)
        theirs.action_space.seed(0)
        ended = 0
        for _ in range(steps):
            actions = theirs.action_space.sample()
            expected = theirs.step(actions)
            _assert_same_step(ours.step(actions), expected)
            ended += int(expected[4].get("_final_obs", np.zeros(1)).sum())
        assert ended > 0
    finally:
        ours.close()
        theirs.close()


def test_final_observation_and_reset_on_episode_end():
    envs = SubprocessVectorEnv([partial(terminating, 2), partial(terminating, 3)], num_workers=2)
    try:
        envs.reset(seed=0)
        envs.step(np.zeros(2, np.int64))
        obs, rewards, terminated, truncated, info = envs.step(np.zeros(2, np.int64))
        np.testing.assert_array_equal(terminated, [True, False])
        np.testing.assert_array_equal(obs, [[0.0], [2.0]])  # env 0 was reset
        np.testing.assert_array_equal(info["_final_obs"], [True, False])
        np.testing.assert_array_equal(info["final_obs"][0], [2.0])
        assert info["final_obs"][1] is None
        np.testing.assert_array_equal(info["_final_info"], [True, False])
        _, _, _, _, info = envs.step(np.zeros(2, np.int64))
        np.testing.assert_array_equal(info["_final_obs"], [False, True])
        _, _, _, _, info = envs.step(np.zeros(2, np.int64))
        np.testing.assert_array_equal(info["_final_obs"], [True, False])
        _, _, _, _, info = envs.step(np.zeros(2, np.int64))
        assert info == {}
    finally:
        envs.close()


def test_groups_step_apart_with_the_same_results():
    fns = [partial(gym.make, "CartPole-v1")] * 4
    grouped = SubprocessVectorEnv(fns, num_workers=2, groups=2)
    plain = InProcessVectorEnv(fns)
    try:
        assert grouped.group_envs == [slice(0, 2), slice(2, 4)]
        grouped.reset(seed=1)
        plain.reset(seed=1)
        plain.action_space.seed(1)
        for _ in range(100):
            actions = plain.action_space.sample()
            expected = plain.step(actions)
            grouped.step_async(actions[2:], group=1)  # a group's own rows
            grouped.step_async(actions, group=0)  # or the whole batch
            second = grouped.step_wait(1)
            first = grouped.step_wait(0)
            for part, rows in ((first, slice(0, 2)), (second, slice(2, 4))):
                for x, y in zip(part[:4], expected[:4], strict=True):
                    np.testing.assert_array_equal(x, y[rows])
                if part[4] or expected[4]:
                    _assert_same_info(part[4], _rows(expected[4], rows))
    finally:
        grouped.close()
        plain.close()


def _replayable(index: int) -> gym.Env:
    return ReplayableEpisodes(gym.make("CartPole-v1"), index)


def test_call_reaches_every_env_in_order():
    fns = [partial(_replayable, i) for i in range(3)]
    envs = SubprocessVectorEnv(fns, num_workers=2)
    try:
        envs.reset(seed=4)
        for _ in range(5):
            envs.step(np.ones(3, np.int64))
        snapshots = envs.call("snapshot")
        assert [s["env_seed"] for s in snapshots] == [4, 5, 6]
        assert all(len(s["actions"]) == 5 for s in snapshots)
        before = envs.step(np.zeros(3, np.int64))[0]
        restored = np.stack(envs.call("restore", list(snapshots)))
        after = envs.step(np.zeros(3, np.int64))[0]
        np.testing.assert_array_equal(after, before)
        assert restored.shape == (3, 4)
    finally:
        envs.close()


def test_action_masks_and_wrapper_methods_as_in_process():
    fns = [InfoMaskedChoiceEnv] * 3
    ours = SubprocessVectorEnv(fns, num_workers=2)
    theirs = InProcessVectorEnv(fns)
    try:
        reset_a, reset_b = ours.reset(seed=2), theirs.reset(seed=2)
        np.testing.assert_array_equal(reset_a[0], reset_b[0])
        _assert_same_info(reset_a[1], reset_b[1])
        assert "action_mask" in reset_b[1]
        rng = np.random.default_rng(0)
        for _ in range(50):
            actions = rng.integers(0, theirs.single_action_space.n, 3)
            _assert_same_step(ours.step(actions), theirs.step(actions))
    finally:
        ours.close()
        theirs.close()
    wrapped = SubprocessVectorEnv([MaskedChoiceEnv] * 2, num_workers=2)
    try:
        wrapped.reset(seed=0)
        assert wrapped.call("has_wrapper_attr", "action_masks") == (True, True)
        assert np.stack(wrapped.call("action_masks")).shape[0] == 2
    finally:
        wrapped.close()


def test_only_array_spaces():
    with pytest.raises(ValueError, match="array spaces, not Dict"):
        SubprocessVectorEnv([DictObsEnv] * 2, num_workers=2)


def test_an_env_error_is_raised_in_the_caller():
    envs = SubprocessVectorEnv([partial(gym.make, "CartPole-v1")] * 2, num_workers=2)
    try:
        envs.reset(seed=0)
        with pytest.raises(AttributeError):
            envs.call("no_such_method")
        envs.step(np.zeros(2, np.int64))  # the workers still serve
    finally:
        envs.close()


def _broken_env():
    raise ValueError("no such level")


def test_an_env_that_cannot_be_made_is_reported():
    fns = [partial(gym.make, "CartPole-v1"), _broken_env]
    with pytest.raises(RuntimeError, match="making envs 1-1 failed: ValueError: no such level"):
        SubprocessVectorEnv(fns, num_workers=2)
    assert not [p for p in mp.active_children() if p.name.startswith("env worker")]


def test_a_dead_worker_names_its_envs():
    envs = SubprocessVectorEnv([partial(gym.make, "CartPole-v1")] * 4, num_workers=2)
    try:
        envs.reset(seed=0)
        os.kill(envs.processes[1].pid, signal.SIGKILL)
        envs.processes[1].join(timeout=5)
        with pytest.raises(EnvWorkerError, match=r"envs 2-3's worker process died \(exit code "
                                                 r"-9\).*resume with --resume"):
            envs.step(np.zeros(4, np.int64))
    finally:
        envs.close()
    assert not any(p.is_alive() for p in envs.processes)


def test_workers_ignore_ctrl_c(capfd):
    envs = SubprocessVectorEnv([partial(gym.make, "CartPole-v1")] * 2, num_workers=2)
    try:
        envs.reset(seed=0)
        for p in envs.processes:
            os.kill(p.pid, signal.SIGINT)
            os.kill(p.pid, signal.SIGTERM)
        time.sleep(0.2)
        assert all(p.is_alive() for p in envs.processes)
        obs, *_ = envs.step(np.zeros(2, np.int64))
        assert obs.shape == (2, 4)
    finally:
        envs.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_close_leaves_no_process_behind():
    envs = SubprocessVectorEnv([partial(gym.make, "CartPole-v1")] * 3, num_workers=3)
    envs.reset(seed=0)
    envs.step_async(np.zeros(3, np.int64))  # closing with a step in flight
    envs.close()
    assert all(p.exitcode == 0 for p in envs.processes)
    assert not [p for p in mp.active_children() if p.name.startswith("env worker")]
    envs.close()  # twice is harmless


def test_workers_leave_when_the_caller_dies():
    """A caller killed outright (no close) takes its workers with it: their pipe closes."""
    ctx = mp.get_context("fork")
    ready = ctx.Queue()
    caller = ctx.Process(target=_caller_that_reports_its_workers, args=(ready,))
    caller.start()
    pids = ready.get(timeout=60)
    os.kill(caller.pid, signal.SIGKILL)
    caller.join()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def _caller_that_reports_its_workers(queue) -> None:
    envs = SubprocessVectorEnv([partial(gym.make, "CartPole-v1")] * 2, num_workers=2)
    queue.put([p.pid for p in envs.processes])
    time.sleep(60)


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (it was the killed caller's child)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_spawned_workers_give_the_same_results():
    fns = [partial(gym.make, "CartPole-v1")] * 2
    ours = SubprocessVectorEnv(fns, num_workers=2, context="spawn")
    theirs = InProcessVectorEnv(fns)
    try:
        np.testing.assert_array_equal(ours.reset(seed=3)[0], theirs.reset(seed=3)[0])
        for _ in range(30):
            _assert_same_step(ours.step(np.ones(2, np.int64)), theirs.step(np.ones(2, np.int64)))
    finally:
        ours.close()
        theirs.close()
