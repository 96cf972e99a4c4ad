"""Envs stepped in worker processes, several per worker, results through shared memory.

Gymnasium's AsyncVectorEnv runs one env per process and pickles every step's results
through a pipe; on LunarLander its overhead eats most of what the second core brings. Here
each worker steps a contiguous block of envs and writes observations, rewards and episode
ends straight into arrays shared with the caller; a step costs one byte each way per worker,
plus a pickle of what `info` needs on the steps where it has anything.

Semantics are exactly those of `InProcessVectorEnv` (envs.py): same-step autoreset; info in
Gymnasium's batched layout with only "final_obs" and "final_info" where episodes ended and
"action_mask" where envs give one; `reset(seed=s)` seeds env i with s + i;
`call(name, ...)` returns one result per env (through wrappers). Observation and action
spaces must be arrays (Box, Discrete, MultiDiscrete, MultiBinary), not Dict or Tuple.

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

# Messages are one kind byte, then for some kinds a 4-byte length and a pickle. They go over
# plain pipes with os.read/os.write: a step costs one byte each way, ~3 us of CPU on either
# side, a third of what multiprocessing.Connection's framing costs.
_STEP, _RESET, _CALL, _CLOSE = b"s", b"r", b"c", b"x"  # to a worker
_OK, _RESULT, _ERROR = b"\x00", b"\x02", b"\x01"  # from a worker: bare, with a pickle, error
_WITH_PAYLOAD = {_RESET, _CALL, _RESULT, _ERROR}
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _write(fd: int, kind: bytes, payload: Any = None) -> None:
    data = kind
    if kind in _WITH_PAYLOAD:
        body = pickle.dumps(payload)
        data += len(body).to_bytes(4, "little") + body
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read(fd: int) -> tuple[bytes, Any]:
    """(kind, payload or None); EOFError when the other side has gone."""
    kind = _read_exact(fd, 1)
    if kind not in _WITH_PAYLOAD:
        return kind, None
    size = int.from_bytes(_read_exact(fd, 4), "little")
    return kind, pickle.loads(_read_exact(fd, size))


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

        for space in (obs_space, action_space):
            if isinstance(space, spaces.Dict | spaces.Tuple) or space.shape is None:
                raise ValueError(f"SubprocessVectorEnv takes array spaces, not "
                                 f"{type(space).__name__}; use the in-process vector env")
        self.specs = {
            "obs": raw((num_envs, *obs_space.shape), obs_space.dtype),
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


def _worker(commands: Connection, replies: Connection, callers_ends: list[Connection],
            env_fns: CloudpickleWrapper, first: int, specs: dict) -> None:
    """Build the envs numbered from `first`, then serve commands until told to close or the
    caller goes away. The first reply says whether building them worked."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    for conn in callers_ends:  # copies made by fork; the caller's death must read as EOF
        conn.close()
    inbox, outbox = commands.fileno(), replies.fileno()
    envs: list[gym.Env] = []
    try:
        envs = [fn() for fn in env_fns.fn]
        _write(outbox, _OK)
        arrays = _views(specs)
        obs, rewards, actions = arrays["obs"], arrays["rewards"], arrays["actions"]
        terminated, truncated = arrays["terminated"], arrays["truncated"]
        while True:
            command, payload = _read(inbox)
            if command == _CLOSE:
                break
            try:
                # What goes into info, as (env index, entry): rare, so pickled when present.
                extras: list[tuple[int, dict[str, Any]]] = []
                if command == _STEP:
                    for i, env in enumerate(envs):
                        n = first + i
                        o, reward, term, trunc, env_info = env.step(actions[n])
                        if term or trunc:
                            extras.append((n, {"final_obs": o, "final_info": env_info}))
                            o, env_info = env.reset()
                        if env_info and "action_mask" in env_info:
                            extras.append((n, {"action_mask": env_info["action_mask"]}))
                        obs[n] = o
                        rewards[n], terminated[n], truncated[n] = reward, term, trunc
                elif command == _RESET:
                    seed, options = payload
                    for i, env in enumerate(envs):
                        n = first + i
                        obs[n], env_info = env.reset(
                            seed=None if seed is None else seed + n, options=options)
                        if "action_mask" in env_info:
                            extras.append((n, {"action_mask": env_info["action_mask"]}))
                elif command == _CALL:
                    name, args, kwargs = payload
                    extras = [(first + i, env.get_wrapper_attr(name)(*args, **kwargs))
                              for i, env in enumerate(envs)]
                if extras:
                    _write(outbox, _RESULT, extras)
                else:
                    _write(outbox, _OK)
            except Exception as e:  # an env's error goes to the caller, who raises it
                _write(outbox, _ERROR, _picklable_error(e))
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the caller is gone
    except Exception as e:  # building the envs failed
        with contextlib.suppress(OSError):
            _write(outbox, _ERROR, _picklable_error(e))
    finally:
        for env in envs:
            with contextlib.suppress(Exception):  # must not hide why the worker stopped
                env.close()


def _picklable_error(e: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")
    return e


class _InfoBatch:
    """Gymnasium's batching of info dicts (`VectorEnv._add_info`) for any number of envs."""

    _add_info = VectorEnv._add_info

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs


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
        self.commands: list[Connection] = []  # the caller's ends; used as raw fds
        self.replies: list[Connection] = []
        self._closed = False
        self._pending: set[int] = set()
        # Ctrl-C between a worker's start and its SIG_IGN would give it a traceback: the
        # workers are born with the stop signals blocked, and unblock them once ignored.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            for first, last in self.blocks:
                commands_in, commands_out = ctx.Pipe(duplex=False)
                replies_in, replies_out = ctx.Pipe(duplex=False)
                self.commands.append(commands_out)
                self.replies.append(replies_in)
                fns = CloudpickleWrapper(list(env_fns[first:last + 1]))
                process = ctx.Process(
                    target=_worker, name=f"env worker {first}-{last}", daemon=True,
                    args=(commands_in, replies_out, self.commands + self.replies, fns, first,
                          self.shared.specs))
                process.start()
                commands_in.close()
                replies_out.close()
                self.processes.append(process)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        try:
            for w in range(workers):  # each worker's first reply: its envs are built
                try:
                    kind, error = _read(self.replies[w].fileno())
                except (EOFError, OSError):
                    raise self._dead(w) from None
                if kind == _ERROR:
                    first, last = self.blocks[w]
                    raise RuntimeError(f"making envs {first}-{last} failed: "
                                       f"{type(error).__name__}: {error}") from error
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
        rows = self.arrays["actions"][envs]
        rows[...] = actions[envs] if len(actions) == self.num_envs else actions
        for w in self._workers(group):
            self._send(w, _STEP)

    def step_wait(self, group: int | None = None):
        """Results of the envs of `group` (all when None): observations, rewards,
        terminated, truncated (fresh arrays) and info."""
        envs = slice(0, self.num_envs) if group is None else self.group_envs[group]
        info = self._info(self._receive_all(self._workers(group)), envs)
        a = self.arrays
        return (a["obs"][envs].copy(), a["rewards"][envs].copy(), a["terminated"][envs].copy(),
                a["truncated"][envs].copy(), info)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._receive_all(sorted(self._pending))  # steps started and not waited for
        for w in self._workers(None):
            self._send(w, _RESET, (seed, options))
        info = self._info(self._receive_all(self._workers(None)), slice(0, self.num_envs))
        return self.arrays["obs"].copy(), info

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """`env.get_wrapper_attr(name)(*args, **kwargs)` in every env; one result per env."""
        self._receive_all(sorted(self._pending))
        for w in self._workers(None):
            self._send(w, _CALL, (name, args, kwargs))
        return tuple(result for extras in self._receive_all(self._workers(None))
                     for _, result in extras)

    @staticmethod
    def _info(replies: list[Any], envs: slice) -> dict[str, Any]:
        """The workers' info entries for `envs`, batched as Gymnasium does (`_add_info`)."""
        batch = _InfoBatch(envs.stop - envs.start)
        info: dict[str, Any] = {}
        for extras in replies:
            for n, entry in extras or ():
                info = batch._add_info(info, entry, n - envs.start)
        return info

    # ------------------------------------------------------------------ plumbing
    def _workers(self, group: int | None) -> Sequence[int]:
        return range(len(self.processes)) if group is None else self.group_workers[group]

    def _send(self, worker: int, kind: bytes, payload: Any = None) -> None:
        try:
            _write(self.commands[worker].fileno(), kind, payload)
        except OSError:  # BrokenPipeError: the worker is gone
            raise self._dead(worker) from None
        self._pending.add(worker)

    def _receive_all(self, workers: Sequence[int]) -> list[Any]:
        """The replies of `workers` to their pending command (payloads, None for bare
        acknowledgements). Every reply is read before an env's error is raised, so that
        none is left over for the next command."""
        replies = []
        for w in workers:
            try:
                replies.append(_read(self.replies[w].fileno()))
            except (EOFError, OSError):
                raise self._dead(w) from None
            self._pending.discard(w)
        for kind, payload in replies:
            if kind == _ERROR:
                raise payload
        return [payload for _, payload in replies]

    def _dead(self, worker: int) -> Exception:
        process = self.processes[worker]
        process.join(timeout=1.0)
        return _dead_worker_error(*self.blocks[worker], process.exitcode)

    def close_extras(self, terminate: bool = False, **kwargs: Any) -> None:
        """Stop the workers: asked to close (or, with terminate, by closing their pipes), then
        killed if they have not left within a few seconds. They ignore SIGTERM."""
        if self._closed:
            return
        self._closed = True
        if not terminate:
            for w in range(len(self.processes)):
                with contextlib.suppress(OSError, EOFError):
                    if w in self._pending:
                        _read(self.replies[w].fileno())
                    _write(self.commands[w].fileno(), _CLOSE)
        for conn in self.commands + self.replies:
            conn.close()
        for process in self.processes:
            process.join(timeout=5.0)
            if process.is_alive():
                process.kill()
                process.join()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close_extras(terminate=True)
