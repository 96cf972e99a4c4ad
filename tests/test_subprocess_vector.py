"""Envs in worker processes behave exactly like the in-process vector env, whatever their
spaces; a misbehaving env or a dying worker is one clear error; and the workers live and die
as the caller decides."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import ppo.subprocess_vector
from helpers_envs import (
    BoxActionEnv,
    ContextualMultiBinaryEnv,
    ContextualMultiDiscreteEnv,
    DictActionContextEnv,
    DictObsContextEnv,
    InfoMaskedChoiceEnv,
    MaskedChoiceEnv,
    Misbehaving,
    SequenceObsEnv,
    TupleActionContextEnv,
    TupleObsContextEnv,
    terminating,
)
from ppo.config import Config
from ppo.envs import EnvError, EnvWorkerError, InProcessVectorEnv, close_quietly, make_vector_env
from ppo.episode_replay import ReplayableEpisodes
from ppo.subprocess_vector import SubprocessVectorEnv, _obs_problem


def _assert_same(a, b):
    """Equal batches, infos or observations: same structure, values and dtypes."""
    if isinstance(b, dict):
        assert sorted(a) == sorted(b)
        for key in b:
            _assert_same(a[key], b[key])
    elif isinstance(b, tuple | list):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(b, np.ndarray) and b.dtype == object:
        assert a.dtype == object and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(b, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    else:
        assert a == b


def _rows(info, rows: slice):
    """A batched info restricted to some envs: entries none of them has are left out."""
    out = {}
    for key, value in info.items():
        mask = info[f"_{key}"][rows] if not key.startswith("_") else None
        if mask is not None and mask.any():
            out[key] = _rows(value, rows) if isinstance(value, dict) else value[rows]
            out[f"_{key}"] = mask
    return out


def _worker_processes() -> list:
    return [p for p in mp.active_children() if p.name.startswith("env worker")]


def _run_side_by_side(fns, steps: int, seed: int = 7, workers: int = 2, **kwargs) -> int:
    """Step SubprocessVectorEnv and InProcessVectorEnv with the same seeds and actions;
    every result must be equal. Returns the number of episodes that ended."""
    ours = SubprocessVectorEnv(fns, num_workers=workers, **kwargs)
    theirs = InProcessVectorEnv(fns)
    try:
        _assert_same(ours.reset(seed=seed), theirs.reset(seed=seed))
        theirs.action_space.seed(seed)
        ended = 0
        for _ in range(steps):
            actions = theirs.action_space.sample()
            expected = theirs.step(actions)
            _assert_same(ours.step(actions), expected)
            ended += int(expected[4].get("_final_obs", np.zeros(1)).sum())
        return ended
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("env_id, steps", [("LunarLander-v3", 300), ("Pendulum-v1", 450),
                                           ("CartPole-v1", 300)])
def test_same_results_as_in_process(env_id, steps):
    assert _run_side_by_side([partial(gym.make, env_id)] * 5, steps) > 0  # blocks of 3 and 2


@pytest.mark.parametrize("env", [
    DictObsContextEnv,  # Dict of Discrete, Tuple(Box, MultiBinary) and Text
    TupleObsContextEnv,  # Tuple of Discrete and MultiBinary
    DictActionContextEnv,  # Dict of Discrete, MultiBinary and Box actions
    TupleActionContextEnv,  # Tuple of Discrete and MultiDiscrete actions
    ContextualMultiDiscreteEnv,
    ContextualMultiBinaryEnv,
    BoxActionEnv,
])
def test_every_space_gives_the_same_results_as_in_process(env):
    assert _run_side_by_side([env] * 3, 30) > 0


def test_nested_observations_through_spawned_workers():
    """The shared memory of a nested space reaches workers that don't inherit it by fork."""
    assert _run_side_by_side([DictObsContextEnv] * 2, 10, context="spawn") > 0


def test_spawned_workers_give_the_same_results():
    _run_side_by_side([partial(gym.make, "CartPole-v1")] * 2, 30, context="spawn")


def test_spaces_that_cannot_be_shared_are_refused():
    with pytest.raises(ValueError, match="cannot share a obs space Sequence"):
        SubprocessVectorEnv([SequenceObsEnv] * 2, num_workers=2)


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
                    _assert_same(part[4], _rows(expected[4], rows))
    finally:
        grouped.close()
        plain.close()


def _replayable(make, index: int) -> gym.Env:
    return ReplayableEpisodes(make(), index)


def test_call_reaches_every_env_in_order():
    fns = [partial(_replayable, partial(gym.make, "CartPole-v1"), i) for i in range(3)]
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


@pytest.mark.parametrize("env", [BoxActionEnv, DictActionContextEnv])
def test_envs_keep_the_actions_they_were_given(env):
    """The actions an env records (episode replay does) are its own, not views of memory
    the next step overwrites."""
    fns = [partial(_replayable, env, i) for i in range(2)]
    ours, theirs = SubprocessVectorEnv(fns, num_workers=2), InProcessVectorEnv(fns)
    try:
        ours.reset(seed=0)
        theirs.reset(seed=0)
        theirs.action_space.seed(0)
        for _ in range(3):
            actions = theirs.action_space.sample()
            theirs.step(actions)
            ours.step(actions)
        _assert_same(ours.call("snapshot"), theirs.call("snapshot"))
        assert len(np.unique(ours.call("snapshot")[0]["actions"], axis=0)) == 3
    finally:
        ours.close()
        theirs.close()


def test_action_masks_and_wrapper_methods_as_in_process():
    fns = [InfoMaskedChoiceEnv] * 3
    ours = SubprocessVectorEnv(fns, num_workers=2)
    theirs = InProcessVectorEnv(fns)
    try:
        reset = ours.reset(seed=2)
        _assert_same(reset, theirs.reset(seed=2))
        assert "action_mask" in reset[1]
        rng = np.random.default_rng(0)
        for _ in range(50):
            actions = rng.integers(0, theirs.single_action_space.n, 3)
            _assert_same(ours.step(actions), theirs.step(actions))
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


def test_an_env_error_is_raised_in_the_caller():
    envs = SubprocessVectorEnv([partial(gym.make, "CartPole-v1")] * 2, num_workers=2)
    try:
        envs.reset(seed=0)
        with pytest.raises(AttributeError):
            envs.call("no_such_method")
        envs.step(np.zeros(2, np.int64))  # the workers still serve
    finally:
        envs.close()


# ---------------------------------------------------------------------- misbehaving envs
# Env 2 of 3 (the second worker's) misbehaves at its 3rd step; each is one EnvError naming
# it, with the message InProcessVectorEnv gives where it checks the same thing.
BAD = {
    "raise": r"^\(index 2\) raised RuntimeError in step: the simulator lost its license server$",
    "shape": r"^\(index 2\): step returned an observation of shape \(3,\), the space says "
             r"\(2,\)$",
    "dtype": r"^\(index 2\): step returned an observation of dtype object, not numbers$",
    "reward": r"^\(index 2\): step returned a reward of type str \('1.0'\), not a number$",
    "flag": r"^\(index 2\): step returned terminated = 'no', not a bool$",
    "tuple": r"^\(index 2\): step returned 4 values, not Gymnasium's 5",
    "reset": r"^\(index 2\) raised ValueError in reset: no more levels$",
}
DEAD = {"exit": 9, "systemexit": 3}


def _envs_with_a_bad_one(how: str) -> list:
    good = partial(Misbehaving, "raise", at=10**9)
    return [good, good, partial(Misbehaving, how, at=3)]


def _step_until_it_fails(envs, steps: int = 10) -> None:
    envs.reset(seed=0)
    for _ in range(steps):
        envs.step(np.zeros(envs.num_envs, np.int64))


@pytest.mark.parametrize("how", BAD)
def test_a_misbehaving_env_is_one_error_naming_it(how, capfd):
    envs = SubprocessVectorEnv(_envs_with_a_bad_one(how), num_workers=2)
    with pytest.raises(EnvError, match=BAD[how]) as raised:
        _step_until_it_fails(envs)
    assert type(raised.value) is EnvError
    if how not in ("shape", "dtype"):  # the in-process env leaves these to the encoder
        with pytest.raises(EnvError, match=BAD[how]):
            _step_until_it_fails(InProcessVectorEnv(_envs_with_a_bad_one(how)))
    close_quietly(envs)
    assert capfd.readouterr().err == ""
    assert not _worker_processes()


@pytest.mark.parametrize("how", DEAD)
def test_a_worker_that_exits_is_named(how, capfd):
    envs = SubprocessVectorEnv(_envs_with_a_bad_one(how), num_workers=2)
    with pytest.raises(EnvWorkerError, match=rf"^env 2's worker process died \(exit code "
                                             rf"{DEAD[how]}\); the last checkpoint is intact"):
        _step_until_it_fails(envs)
    close_quietly(envs)
    assert capfd.readouterr().err == ""
    assert not _worker_processes()


@pytest.mark.parametrize("command", ["step", "reset", "call"])
def test_a_killed_worker_names_its_envs(command, capfd):
    fns = [partial(_replayable, partial(gym.make, "CartPole-v1"), i) for i in range(4)]
    envs = SubprocessVectorEnv(fns, num_workers=2)
    envs.reset(seed=0)
    os.kill(envs.processes[1].pid, signal.SIGKILL)
    envs.processes[1].join(timeout=5)
    run = {"step": lambda: envs.step(np.zeros(4, np.int64)), "reset": lambda: envs.reset(seed=1),
           "call": lambda: envs.call("snapshot")}[command]
    for _ in range(2):  # and again: the envs stay broken, with the same error
        with pytest.raises(EnvWorkerError, match=r"^envs 2-3's worker process died \(exit "
                                                 r"code -9\).*resume with --resume$"):
            run()
    envs.close()
    assert not any(p.is_alive() for p in envs.processes)
    assert capfd.readouterr().err == ""


def _broken_env():
    raise ValueError("no such level")


def test_an_env_that_cannot_be_made_is_reported():
    fns = [partial(gym.make, "CartPole-v1"), _broken_env]
    with pytest.raises(EnvError, match=r"^making env 1 failed: ValueError: no such level$"):
        SubprocessVectorEnv(fns, num_workers=2)
    assert not _worker_processes()


@pytest.mark.parametrize(("space", "obs", "problem"), [
    (spaces.Box(0, 1, (2,)), np.zeros(2, np.float64), None),  # converted, as in-process
    (spaces.Box(0, 1, (2,)), [0, 1], None),
    (spaces.Discrete(3), 2.0, None),  # a whole number
    (spaces.Discrete(3), 1.5, "an observation of dtype float64 with values the space's int64 "
                              "can't hold"),
    (spaces.Box(0, 1, (2,)), [[0.0], [1.0, 2.0]], "an observation that is not an array"),
    (spaces.Box(0, 1, (2,)), "ab", "an observation of shape (), the space says (2,)"),
    (spaces.Dict({"a": spaces.Discrete(2)}), {}, "an observation without the key 'a'"),
    (spaces.Dict({"a": spaces.Tuple([spaces.Discrete(2)])}), {"a": (np.zeros(2),)},
     "an observation['a'][0] of shape (2,), the space says ()"),
    (spaces.Tuple([spaces.Discrete(2)]), 1, "an observation that is not a tuple of 1"),
    (spaces.Text(3), "abcd", "an observation 'abcd' that is not text of the space"),
])
def test_observations_are_checked_against_the_space(space, obs, problem):
    assert _obs_problem(space, obs) == problem


# ---------------------------------------------------------------------- living and dying
def test_workers_ignore_stop_signals(capfd):
    envs = SubprocessVectorEnv([partial(gym.make, "CartPole-v1")] * 2, num_workers=2)
    try:
        envs.reset(seed=0)
        for p in envs.processes:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                os.kill(p.pid, signum)
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
    assert not _worker_processes()
    envs.close()  # twice is harmless
    with pytest.raises(EnvError, match="closed"):
        envs.step(np.zeros(3, np.int64))


class _Stuck(gym.Env):
    """Steps forever from its second step."""

    observation_space = spaces.Box(0, 1, (1,))
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        while self.t > 1:
            time.sleep(1)
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_a_worker_that_does_not_answer_is_killed(monkeypatch):
    monkeypatch.setattr(ppo.subprocess_vector, "CLOSE_TIMEOUT", 0.5)
    envs = SubprocessVectorEnv([_Stuck] * 2, num_workers=2)
    envs.reset(seed=0)
    envs.step(np.zeros(2, np.int64))
    envs.step_async(np.zeros(2, np.int64))
    start = time.monotonic()
    envs.close()
    assert time.monotonic() - start < 3
    assert [p.exitcode for p in envs.processes] == [-signal.SIGKILL] * 2


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
    first = SubprocessVectorEnv([partial(gym.make, "CartPole-v1")] * 2, num_workers=2)
    second = SubprocessVectorEnv([partial(gym.make, "CartPole-v1")] * 2, num_workers=2)
    queue.put([p.pid for p in first.processes + second.processes])
    time.sleep(60)


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (it was the killed caller's child)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_program_that_never_closes_its_envs_exits():
    """Workers ignore SIGTERM, which multiprocessing's exit handler relies on; the envs'
    own exit handler closes them first."""
    script = ("import gymnasium as gym\n"
              "from functools import partial\n"
              "from ppo.subprocess_vector import SubprocessVectorEnv\n"
              "envs = SubprocessVectorEnv([partial(gym.make, 'CartPole-v1')] * 2)\n"
              "envs.reset(seed=0)\n"
              "raise SystemExit(5)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr) == (5, "")


def test_make_vector_env_async_runs_workers_with_replayable_envs():
    envs = make_vector_env(Config(env_id="CartPole-v1", num_envs=3, vector="async"))
    try:
        assert isinstance(envs, SubprocessVectorEnv) and envs.replayable_episodes
        assert len(envs.processes) == min(3, len(os.sched_getaffinity(0)))
        envs.reset(seed=0)
        envs.step(np.ones(3, np.int64))
        assert [len(s["actions"]) for s in envs.call("snapshot")] == [1, 1, 1]
    finally:
        envs.close()
