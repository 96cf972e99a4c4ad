"""Envs stepped in worker processes, several per worker, results through shared memory.

Gymnasium's AsyncVectorEnv runs one env per process and pickles every step's results
through a pipe; on LunarLander its overhead eats most of what the second core brings. Here
each worker steps a contiguous block of envs and writes observations, rewards and episode
ends straight into arrays shared with the caller; a step costs one byte each way per worker.

Semantics are exactly those of `InProcessVectorEnv` (envs.py): same-step autoreset, with
info holding only "final_obs" (an object array) and its mask "_final_obs", and only on
steps where some episode ended; `reset(seed=s)` seeds env i with s + i; `call(name, ...)`
returns one result per env.

Both cores at work: `step_async(actions, group)` / `step_wait(group)` step one group of
workers while the caller computes the actions of another (`groups` > 1). `step` steps all.

Workers ignore SIGINT and SIGTERM: Ctrl-C reaches the whole process group, and the caller
decides when to stop (it still needs the envs to checkpoint). They exit when the caller
closes them, or when their pipe closes because the caller died. A worker that dies surfaces
as `EnvWorkerError` naming its envs.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import pickle
import signal
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import CloudpickleWrapper, batch_space

_STEP, _RESET, _CALL, _CLOSE = b"s", b"r", b"c", b"x"
_OK, _ERROR = b"\x00", b"\x01"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _dead_worker_error(first: int, last: int, exitcode: int | None) -> Exception:
    from ppo.rollout import EnvWorkerError  # here: ppo.rollout imports torch, workers don't

    which = f"env {first}'s" if first == last else f"envs {first}-{last}'s"
    status = "still running" if exitcode is None else f"exit code {exitcode}"
    return EnvWorkerError(f"{which} worker process died ({status}); the last checkpoint is "
                          "intact, resume with --resume")


class _SharedArrays:
    """The arrays a worker writes and the caller reads, in memory shared with the workers."""

    def __init__(self, ctx: Any, num_envs: int, obs_space: spaces.Space,
                 action_space: spaces.Space) -> None:
        def raw(shape: tuple[int, ...], dtype: np.dtype) -> Any:
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            return ctx.RawArray(ctypes.c_byte, max(size, 1)), shape, np.dtype(dtype).str

        self.specs = {
            "obs": raw((num_envs, *obs_space.shape), obs_space.dtype),
            "final_obs": raw((num_envs, *obs_space.shape), obs_space.dtype),
            "final": raw((num_envs,), np.bool_),
            "rewards": raw((num_envs,), np.float64),
            "terminated": raw((num_envs,), np.bool_),
            "truncated": raw((num_envs,), np.bool_),
            "actions": raw((num_envs, *action_space.shape), action_space.dtype),
        }

    def views(self) -> dict[str, np.ndarray]:
        return _views(self.specs)


def _views(specs: dict[str, tuple[Any, tuple[int, ...], str]]) -> dict[str, np.ndarray]:
    out = {}
    for name, (buffer, shape, dtype) in specs.items():
        n = int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(buffer, dtype=dtype, count=n).reshape(shape)
    return out


def _worker(conn: Connection, parent_conn: Connection, env_fns: CloudpickleWrapper,
            first: int, specs: dict) -> None:
    """Build the envs numbered from `first`, then serve commands until told to close or the
    caller goes away. The first reply says whether building them worked."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    parent_conn.close()  # this process's copy of the caller's end (fork)
    envs: list[gym.Env] = []
    try:
        envs = [fn() for fn in env_fns.fn]
        conn.send(None)
        arrays = _views(specs)
        obs, final_obs, final = arrays["obs"], arrays["final_obs"], arrays["final"]
        rewards, actions = arrays["rewards"], arrays["actions"]
        terminated, truncated = arrays["terminated"], arrays["truncated"]
        while True:
            message = conn.recv_bytes()
            command = message[:1]
            try:
                if command == _STEP:
                    for i, env in enumerate(envs):
                        n = first + i
                        o, reward, term, trunc, _ = env.step(actions[n])
                        ended = term or trunc
                        if ended:
                            final_obs[n] = o
                            o, _ = env.reset()
                        obs[n], final[n] = o, ended
                        rewards[n], terminated[n], truncated[n] = reward, term, trunc
                    conn.send_bytes(_OK)
                elif command == _RESET:
                    seed, options = pickle.loads(message[1:])
                    for i, env in enumerate(envs):
                        obs[first + i] = env.reset(
                            seed=None if seed is None else seed + first + i, options=options)[0]
                    conn.send_bytes(_OK)
                elif command == _CALL:
                    name, args, kwargs = pickle.loads(message[1:])
                    results = [getattr(env, name)(*args, **kwargs) for env in envs]
                    conn.send_bytes(_OK + pickle.dumps(results))
                elif command == _CLOSE:
                    break
            except Exception as e:  # an env's error goes to the caller, who raises it
                conn.send_bytes(_ERROR + _pickled_error(e))
    except (EOFError, ConnectionError, KeyboardInterrupt):
        pass  # the caller is gone
    except Exception as e:  # building the envs failed
        with contextlib.suppress(OSError, EOFError):
            conn.send(e if _picklable(e) else RuntimeError(f"{type(e).__name__}: {e}"))
    finally:
        for env in envs:
            with contextlib.suppress(Exception):  # must not hide why the worker stopped
                env.close()
        conn.close()


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True


def _pickled_error(e: Exception) -> bytes:
    return pickle.dumps(e if _picklable(e) else RuntimeError(f"{type(e).__name__}: {e}"))


class SubprocessVectorEnv(VectorEnv):
    """N envs in `num_workers` processes (contiguous blocks, as even as possible).

    groups: the workers are split into this many groups that `step_async`/`step_wait` can
    step one at a time (envs of group g: `self.group_envs[g]`). context: a multiprocessing
    start method; None for the platform's default.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], num_workers: int | None = None,
                 groups: int = 1, context: str | None = None) -> None:
        self.num_envs = len(env_fns)
        workers = min(num_workers or os.cpu_count() or 1, self.num_envs)
        if not 1 <= groups <= workers:
            raise ValueError(f"groups must be between 1 and the number of workers ({workers}), "
                             f"got {groups}")
        ctx = mp.get_context(context)
        # The spaces size the shared arrays, which must exist before the workers start.
        probe = env_fns[0]()
        obs_space, action_space = probe.observation_space, probe.action_space
        self.metadata = {**probe.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.spec, self.render_mode = probe.spec, probe.render_mode
        probe.close()
        self.shared = _SharedArrays(ctx, self.num_envs, obs_space, action_space)
        blocks = np.array_split(np.arange(self.num_envs), workers)
        self.blocks = [(int(b[0]), int(b[-1])) for b in blocks]
        self.processes: list[mp.process.BaseProcess] = []
        self.conns: list[Connection] = []
        self._closed = False
        self._pending: set[int] = set()
        # Ctrl-C between a worker's start and its SIG_IGN would give it a traceback: the
        # workers are born with the stop signals blocked, and unblock them once ignored.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            for first, last in self.blocks:
                parent, child = ctx.Pipe()
                fns = CloudpickleWrapper(list(env_fns[first:last + 1]))
                process = ctx.Process(target=_worker,
                                      args=(child, parent, fns, first, self.shared.specs),
                                      name=f"env worker {first}-{last}", daemon=True)
                process.start()
                child.close()
                self.processes.append(process)
                self.conns.append(parent)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        try:
            for w in range(workers):
                self._receive_object(w)
        except BaseException:
            self.close(terminate=True)
            raise
        self.arrays = self.shared.views()
        self.single_observation_space = obs_space
        self.single_action_space = action_space
        self.observation_space = batch_space(obs_space, self.num_envs)
        self.action_space = batch_space(action_space, self.num_envs)
        groups_of_workers = np.array_split(np.arange(workers), groups)
        self.group_workers = [list(map(int, g)) for g in groups_of_workers]
        self.group_envs = [slice(self.blocks[g[0]][0], self.blocks[g[-1]][1] + 1)
                           for g in self.group_workers]

    # ------------------------------------------------------------------ stepping
    def step(self, actions: np.ndarray):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: np.ndarray, group: int | None = None) -> None:
        """Start stepping the envs of `group` (all when None) with their rows of `actions`
        (a full (num_envs, ...) batch, or just the group's rows)."""
        envs = slice(0, self.num_envs) if group is None else self.group_envs[group]
        workers = range(len(self.conns)) if group is None else self.group_workers[group]
        rows = self.arrays["actions"][envs]
        rows[...] = actions[envs] if len(actions) == self.num_envs else actions
        for w in workers:
            self._send(w, _STEP)

    def step_wait(self, group: int | None = None):
        """Results of the envs of `group` (all when None): observations, rewards,
        terminated, truncated (fresh arrays) and info."""
        envs = slice(0, self.num_envs) if group is None else self.group_envs[group]
        workers = range(len(self.conns)) if group is None else self.group_workers[group]
        self._receive_all(workers)
        a = self.arrays
        info: dict = {}
        final = a["final"][envs]
        if final.any():
            final_obs = np.full(len(final), None, object)
            for i in np.flatnonzero(final):
                final_obs[i] = a["final_obs"][envs][i].copy()
            info = {"final_obs": final_obs, "_final_obs": final.copy()}
        return (a["obs"][envs].copy(), a["rewards"][envs].copy(), a["terminated"][envs].copy(),
                a["truncated"][envs].copy(), info)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._drain()
        message = _RESET + pickle.dumps((seed, options))
        for w in range(len(self.conns)):
            self._send(w, message)
        self._receive_all(range(len(self.conns)))
        return self.arrays["obs"].copy(), {}

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """`getattr(env, name)(*args, **kwargs)` in every env; one result per env."""
        self._drain()
        message = _CALL + pickle.dumps((name, args, kwargs))
        for w in range(len(self.conns)):
            self._send(w, message)
        replies = self._receive_all(range(len(self.conns)))
        return tuple(result for reply in replies for result in pickle.loads(reply))

    # ------------------------------------------------------------------ plumbing
    def _send(self, worker: int, message: bytes) -> None:
        try:
            self.conns[worker].send_bytes(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            raise self._dead(worker) from None
        self._pending.add(worker)

    def _receive_all(self, workers: Sequence[int]) -> list[bytes]:
        """The replies of `workers` to their pending command, without the status byte. Every
        reply is read before an env's error is raised, so none is left for the next command."""
        replies = []
        for w in workers:
            try:
                replies.append(self.conns[w].recv_bytes())
            except (EOFError, ConnectionResetError, OSError):
                raise self._dead(w) from None
            self._pending.discard(w)
        for reply in replies:
            if reply[:1] == _ERROR:
                raise pickle.loads(reply[1:])
        return [reply[1:] for reply in replies]

    def _receive_object(self, worker: int) -> Any:
        try:
            answer = self.conns[worker].recv()
        except (EOFError, ConnectionResetError, OSError):
            raise self._dead(worker) from None
        if isinstance(answer, Exception):
            first, last = self.blocks[worker]
            raise RuntimeError(f"making envs {first}-{last} failed: "
                               f"{type(answer).__name__}: {answer}") from answer
        return answer

    def _dead(self, worker: int) -> Exception:
        process = self.processes[worker]
        process.join(timeout=1.0)
        return _dead_worker_error(*self.blocks[worker], process.exitcode)

    def _drain(self) -> None:
        """Collect the replies of steps started and not waited for."""
        self._receive_all(sorted(self._pending))

    def close_extras(self, terminate: bool = False, **kwargs: Any) -> None:
        """Stop the workers: asked to close (or, with terminate, by closing their pipes), then
        killed if they have not left within a few seconds. They ignore SIGTERM."""
        if self._closed:
            return
        self._closed = True
        if not terminate:
            for w, conn in enumerate(self.conns):
                with contextlib.suppress(OSError, EOFError):
                    if w in self._pending:
                        conn.recv_bytes()
                    conn.send_bytes(_CLOSE)
        for conn in self.conns:
            conn.close()
        for process in self.processes:
            process.join(timeout=5.0)
            if process.is_alive():
                process.kill()
                process.join()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close_extras(terminate=True)
