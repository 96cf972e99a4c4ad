"""Envs stepped in worker processes, several per worker, results through shared memory.

Gymnasium's AsyncVectorEnv runs one env per process and pickles every step's results
through a pipe; on LunarLander its overhead eats most of what the second core brings. Here
each worker steps a contiguous block of envs and writes observations, rewards and episode
ends straight into arrays shared with the caller; a step costs one byte each way per worker,
plus a pickle of what `info` needs on the steps where it has anything.

Semantics are exactly those of `InProcessVectorEnv` (envs.py): same-step autoreset; info in
Gymnasium's batched layout with only "final_obs" and "final_info" where episodes ended and
"action_mask" where envs give one; `reset(seed=s)` seeds env i with s + i;
`call(name, ...)` returns one result per env (through wrappers). Every space Gymnasium can
put in shared memory works: Box, Discrete, MultiDiscrete, MultiBinary, Text, and Dict or
Tuple of these, nested (gymnasium.vector.utils' shared-memory helpers); plain arrays take a
faster path. The workers check what their envs return as InProcessVectorEnv does, and
observations against the space, so a misbehaving env surfaces in the caller as `EnvError`
"(index i) ..." rather than as a worker's traceback.

Both cores at work: `step_async(actions, group)` / `step_wait(group)` step one group of
workers while the caller computes the actions of another (`groups` > 1). `step` steps all.

Workers ignore SIGINT, SIGTERM and SIGHUP: a terminal sends them to the whole process
group, and the caller decides when to stop (it still needs the envs to checkpoint). They
exit when the caller closes them, or when their pipe closes because the caller died. A
worker that dies surfaces as `EnvWorkerError` naming its envs. Closing never raises: a
worker that does not answer within CLOSE_TIMEOUT seconds is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing as mp
import os
import pickle
import signal
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import (
    CloudpickleWrapper,
    batch_space,
    create_shared_memory,
    iterate,
    read_from_shared_memory,
    write_to_shared_memory,
)

from ppo.envs import STOP_SIGNALS, EnvError, EnvWorkerError, _call, _check_reset, _check_step

# Messages are one kind byte, then for some kinds a 4-byte length and a pickle. They go over
# plain pipes with os.read/os.write: a step costs one byte each way, ~3 us of CPU on either
# side, a third of what multiprocessing.Connection's framing costs.
_STEP, _RESET, _CALL, _CLOSE = b"s", b"r", b"c", b"x"  # to a worker
_OK, _RESULT, _ERROR = b"\x00", b"\x02", b"\x01"  # from a worker: bare, with a pickle, error
_WITH_PAYLOAD = {_RESET, _CALL, _RESULT, _ERROR}
CLOSE_TIMEOUT = 5.0  # seconds a closing worker has to finish its command and leave
_COMPOSITE = spaces.Dict | spaces.Tuple


def _message(kind: bytes, payload: Any = None) -> bytes:
    if kind not in _WITH_PAYLOAD:
        return kind
    body = pickle.dumps(payload)
    return kind + len(body).to_bytes(4, "little") + body


def _write(fd: int, data: bytes) -> None:
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


def _envs_name(first: int, last: int) -> str:
    return f"env {first}" if first == last else f"envs {first}-{last}"


def _dead_worker_error(first: int, last: int, exitcode: int | None) -> EnvWorkerError:
    status = "still running" if exitcode is None else f"exit code {exitcode}"
    return EnvWorkerError(f"{_envs_name(first, last)}'s worker process died ({status}); the "
                          "last checkpoint is intact, resume with --resume")


# ---------------------------------------------------------------------- observations
def _obs_problem(space: spaces.Space, obs: Any, name: str = "an observation") -> str | None:
    """What makes `obs` unfit for `space`'s shared memory (None: nothing). Any numeric
    dtype is taken that converts to the space's without changing values: as in-process,
    a float64 observation of a float32 space is fine; text in a number's place is not."""
    if isinstance(space, spaces.Dict):
        if not isinstance(obs, Mapping):
            return f"{name} of type {type(obs).__name__}, the space says a dict"
        missing = [key for key in space.spaces if key not in obs]
        if missing:
            return f"{name} without the key {missing[0]!r}"
        return next((problem for key, part in space.spaces.items()
                     if (problem := _obs_problem(part, obs[key], f"{name}[{key!r}]"))), None)
    if isinstance(space, spaces.Tuple):
        if not isinstance(obs, tuple | list) or len(obs) != len(space.spaces):
            return f"{name} that is not a tuple of {len(space.spaces)}"
        return next((problem for i, (part, o) in enumerate(zip(space.spaces, obs, strict=True))
                     if (problem := _obs_problem(part, o, f"{name}[{i}]"))), None)
    if isinstance(space, spaces.Text):
        return None if isinstance(obs, str) and space.contains(obs) else (
            f"{name} {obs!r:.40} that is not text of the space")
    try:
        array = np.asarray(obs)
    except Exception:  # e.g. ragged nested lists
        return f"{name} that is not an array"
    if array.shape != space.shape:
        return f"{name} of shape {array.shape}, the space says {space.shape}"
    if array.dtype.kind not in "biuf":
        return f"{name} of dtype {array.dtype}, not numbers"
    if not np.can_cast(array.dtype, space.dtype, "same_kind") and not np.array_equal(
            array.astype(space.dtype), array):
        return f"{name} of dtype {array.dtype} with values the space's {space.dtype} can't hold"
    return None


def _rows(space: spaces.Space, batch: Any, rows: slice, copy: bool) -> Any:
    """The rows `rows` of a batch laid out as `space` says (copies with `copy`)."""
    if isinstance(space, spaces.Dict):
        return {key: _rows(part, batch[key], rows, copy) for key, part in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_rows(part, b, rows, copy) for part, b in zip(space.spaces, batch,
                                                                   strict=True))
    if isinstance(space, spaces.Text):
        return batch[rows]  # a tuple of strings, read afresh
    return batch[rows].copy() if copy else batch[rows]


def _assign(space: spaces.Space, target: Any, values: Any) -> None:
    """Write a batch laid out as `space` says into the arrays `target`, in place."""
    if isinstance(space, spaces.Dict):
        for key, part in space.spaces.items():
            _assign(part, target[key], values[key])
    elif isinstance(space, spaces.Tuple):
        for part, t, v in zip(space.spaces, target, values, strict=True):
            _assign(part, t, v)
    else:
        target[...] = values


def _first_part(space: spaces.Space, batch: Any) -> Any:
    """The array of a batch's first leaf (Dict and Tuple batches hold several)."""
    if isinstance(space, spaces.Dict):
        key = next(iter(space.spaces))
        return _first_part(space.spaces[key], batch[key])
    if isinstance(space, spaces.Tuple):
        return _first_part(space.spaces[0], batch[0])
    return batch


class _Shared:
    """The memory a worker writes and the caller reads: observations, rewards, episode ends;
    and the actions the caller writes for the workers. Arrays (Box, Discrete, MultiDiscrete,
    MultiBinary) are numpy views read and written directly; Dict and Tuple spaces go through
    Gymnasium's shared-memory helpers."""

    def __init__(self, ctx: Any, num_envs: int, obs_space: spaces.Space,
                 action_space: spaces.Space) -> None:
        self.num_envs, self.obs_space, self.action_space = num_envs, obs_space, action_space
        memory = {}
        for name, space in (("obs", obs_space), ("actions", action_space)):
            try:
                memory[name] = create_shared_memory(space, num_envs, ctx)
            except Exception as e:  # Sequence, Graph and custom spaces
                raise ValueError(f"SubprocessVectorEnv cannot share a {name} space {space} "
                                 f"between processes ({e}); use the in-process vector env"
                                 ) from None
        self.memory = memory
        self.raw = {"rewards": ctx.RawArray(ctypes.c_double, num_envs),
                    "terminated": ctx.RawArray(ctypes.c_bool, num_envs),
                    "truncated": ctx.RawArray(ctypes.c_bool, num_envs)}
        self.attach()

    def attach(self) -> None:
        """Numpy views of the memory, made in whichever process this object lives in."""
        n = self.num_envs
        self.rewards = np.frombuffer(self.raw["rewards"], np.float64)
        self.terminated = np.frombuffer(self.raw["terminated"], np.bool_)
        self.truncated = np.frombuffer(self.raw["truncated"], np.bool_)
        self.plain_obs = not isinstance(self.obs_space, _COMPOSITE | spaces.Text)
        self.plain_actions = not isinstance(self.action_space, _COMPOSITE | spaces.Text)
        self.obs = read_from_shared_memory(self.obs_space, self.memory["obs"], n)
        self.actions = read_from_shared_memory(self.action_space, self.memory["actions"], n)

    def __getstate__(self) -> dict[str, Any]:  # for spawned workers: the memory, not views
        return {key: getattr(self, key) for key in
                ("num_envs", "obs_space", "action_space", "memory", "raw")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.attach()

    def read_obs(self, rows: slice) -> Any:
        """Copies of the observations of envs `rows`."""
        if self.plain_obs:
            return self.obs[rows].copy()
        batch = read_from_shared_memory(self.obs_space, self.memory["obs"], self.num_envs)
        return _rows(self.obs_space, batch, rows, copy=True)

    def check_obs(self, index: int, obs: Any, where: str) -> None:
        """EnvError naming env `index` if `obs` does not fit the observation space."""
        space = self.obs_space
        if self.plain_obs and type(obs) is np.ndarray and obs.dtype == space.dtype and \
                obs.shape == space.shape:
            return
        problem = _obs_problem(space, obs)
        if problem is not None:
            raise EnvError(f"(index {index}): {where} returned {problem}")

    def write_obs(self, index: int, obs: Any, where: str) -> None:
        """Check env `index`'s observation against the space, then store it."""
        self.check_obs(index, obs, where)
        if self.plain_obs:
            self.obs[index] = obs
        else:
            write_to_shared_memory(self.obs_space, index, obs, self.memory["obs"])

    def write_actions(self, rows: slice, actions: Any) -> None:
        if self.plain_actions:
            self.actions[rows] = actions
        else:
            _assign(self.action_space, _rows(self.action_space, self.actions, rows, False),
                    actions)

    def read_actions(self, rows: slice) -> Iterable[Any]:
        """Copies of the actions of envs `rows`, one per env (an env may keep its action)."""
        block = _rows(self.action_space, self.actions, rows, copy=True)
        if self.plain_actions:
            return block  # its rows
        return iterate(batch_space(self.action_space, rows.stop - rows.start), block)


# ---------------------------------------------------------------------- the worker
class _EnvBlock:
    """The envs of one worker, numbered from `first`, checked as InProcessVectorEnv checks
    them (envs.py). Each method returns what goes into info, as (env index, entry)."""

    def __init__(self, envs: list[gym.Env], first: int, shared: _Shared) -> None:
        self.envs, self.first, self.shared = envs, first, shared
        self.rows = slice(first, first + len(envs))

    def step(self) -> list[tuple[int, dict[str, Any]]]:
        extras = []
        shared = self.shared
        for i, (env, action) in enumerate(zip(self.envs, shared.read_actions(self.rows),
                                              strict=True)):
            n = self.first + i
            try:
                result = env.step(action)
            except Exception as e:  # an env can raise anything: name it, in one line
                raise EnvError(f"(index {n}) raised {type(e).__name__} in step: {e}") from None
            _check_step(result, n)
            o, reward, term, trunc, env_info = result
            if term or trunc:
                shared.check_obs(n, o, "step")
                extras.append((n, {"final_obs": o, "final_info": env_info}))
                o, env_info = _check_reset(_call(env.reset, n, "reset"), n)
                shared.write_obs(n, o, "reset")
            else:
                shared.write_obs(n, o, "step")
            if env_info and "action_mask" in env_info:
                extras.append((n, {"action_mask": env_info["action_mask"]}))
            shared.rewards[n], shared.terminated[n], shared.truncated[n] = reward, term, trunc
        return extras

    def reset(self, seed: int | None, options: dict | None) -> list[tuple[int, Any]]:
        extras = []
        for i, env in enumerate(self.envs):
            n = self.first + i
            o, env_info = _check_reset(_call(env.reset, n, "reset", seed=None if seed is None
                                             else seed + n, options=options), n)
            self.shared.write_obs(n, o, "reset")
            if "action_mask" in env_info:
                extras.append((n, {"action_mask": env_info["action_mask"]}))
        return extras

    def call(self, name: str, args: tuple, kwargs: dict) -> list[tuple[int, Any]]:
        return [(self.first + i, _call(env.get_wrapper_attr(name), self.first + i, name, *args,
                                       **kwargs)) for i, env in enumerate(self.envs)]


def _result(extras: list[tuple[int, Any]]) -> bytes:
    """The reply carrying `extras`; an entry that can't be pickled is the env's error."""
    try:
        return _message(_RESULT, extras)
    except Exception:
        for n, entry in extras:
            try:
                pickle.dumps(entry)
            except Exception as e:
                raise EnvError(f"(index {n}) returned an info or result that can't be sent "
                               f"between processes: {type(e).__name__}: {e}") from None
        raise


def _worker(commands: Connection, replies: Connection, env_fns: CloudpickleWrapper,
            first: int, shared: _Shared) -> None:
    """Build the envs numbered from `first`, then serve commands until told to close or the
    caller goes away. The first reply says whether building them worked. Nothing here
    prints: an env's error goes to the caller, who raises it."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    # Born with the stop signals blocked (see SubprocessVectorEnv.__init__); ignored now,
    # any that arrived in between are dropped.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    for envs in list(_live):  # the callers' ends, copied by fork: its death must read as EOF
        for conn in envs.commands + envs.replies:
            conn.close()
    inbox, outbox = commands.fileno(), replies.fileno()
    envs: list[gym.Env] = []
    try:
        try:
            envs = [fn() for fn in env_fns.fn]
        except Exception as e:
            _write(outbox, _message(_ERROR, _picklable_error(e)))
            return
        block = _EnvBlock(envs, first, shared)
        _write(outbox, _OK)
        while True:
            command, payload = _read(inbox)
            if command == _CLOSE:
                break
            try:
                if command == _STEP:
                    extras = block.step()
                elif command == _RESET:
                    extras = block.reset(*payload)
                else:
                    extras = block.call(*payload)
                reply = _result(extras) if extras else _OK
            except Exception as e:
                reply = _message(_ERROR, _picklable_error(e))
            _write(outbox, reply)
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the caller is gone
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


def default_workers(num_envs: int) -> int:
    """One worker per core this process may run on, at most one per env."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, num_envs)


# ---------------------------------------------------------------------- the caller
class SubprocessVectorEnv(VectorEnv):
    """N envs in `num_workers` processes (contiguous blocks, as even as possible; default:
    one per core this process may use, at most N).

    groups: the workers are split into this many groups that `step_async`/`step_wait` can
    step one at a time (envs of group g: `self.group_envs[g]`). context: a multiprocessing
    start method; None for the platform's default.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], num_workers: int | None = None,
                 groups: int = 1, context: str | None = None) -> None:
        self.num_envs = len(env_fns)
        self.processes: list[mp.process.BaseProcess] = []
        self.commands: list[Connection] = []  # the caller's ends; used as raw fds
        self.replies: list[Connection] = []
        self._pending: set[int] = set()
        self._closed = False
        workers = min(num_workers or default_workers(self.num_envs), self.num_envs)
        if not 1 <= groups <= workers:
            raise ValueError(f"groups must be between 1 and the number of workers ({workers}), "
                             f"got {groups}")
        ctx = mp.get_context(context)
        # The spaces size the shared memory, which must exist before the workers start; this
        # env is also the check that the envs can be made at all, with errors raised here.
        probe = env_fns[0]()
        try:
            obs_space, action_space = probe.observation_space, probe.action_space
            self.metadata = {**probe.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
            self.spec, self.render_mode = probe.spec, probe.render_mode
        finally:
            probe.close()
        self.shared = _Shared(ctx, self.num_envs, obs_space, action_space)
        blocks = np.array_split(np.arange(self.num_envs), workers)
        self.blocks = [(int(b[0]), int(b[-1])) for b in blocks]
        _live.add(self)
        # A stop signal between a worker's start and its SIG_IGN would give it a traceback:
        # the workers are born with the stop signals blocked, and unblock them once ignored.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for first, last in self.blocks:
                commands_in, commands_out = ctx.Pipe(duplex=False)
                replies_in, replies_out = ctx.Pipe(duplex=False)
                self.commands.append(commands_out)
                self.replies.append(replies_in)
                fns = CloudpickleWrapper(list(env_fns[first:last + 1]))
                process = ctx.Process(
                    target=_worker, name=f"env worker {first}-{last}", daemon=True,
                    args=(commands_in, replies_out, fns, first, self.shared))
                process.start()
                commands_in.close()
                replies_out.close()
                self.processes.append(process)
        except BaseException:
            self.close(terminate=True)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        _close_at_exit()
        try:
            self._pending = set(range(workers))  # each worker's first reply: envs built
            self._receive_all(range(workers), building=True)
        except BaseException:
            self.close(terminate=True)
            raise
        self.single_observation_space = obs_space
        self.single_action_space = action_space
        self.observation_space = batch_space(obs_space, self.num_envs)
        self.action_space = batch_space(action_space, self.num_envs)
        groups_of_workers = np.array_split(np.arange(workers), groups)
        self.group_workers = [list(map(int, g)) for g in groups_of_workers]
        self.group_envs = [slice(self.blocks[g[0]][0], self.blocks[g[-1]][1] + 1)
                           for g in self.group_workers]

    # ------------------------------------------------------------------ stepping
    def step(self, actions: Any):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: Any, group: int | None = None) -> None:
        """Start stepping the envs of `group` (all when None) with their rows of `actions`
        (a full (num_envs, ...) batch, or just the group's rows)."""
        envs = slice(0, self.num_envs) if group is None else self.group_envs[group]
        space = self.single_action_space
        if len(_first_part(space, actions)) == self.num_envs:
            actions = _rows(space, actions, envs, copy=False)
        self.shared.write_actions(envs, actions)
        for w in self._workers(group):
            self._send(w, _STEP)

    def step_wait(self, group: int | None = None):
        """Results of the envs of `group` (all when None): observations, rewards,
        terminated, truncated (fresh arrays) and info."""
        envs = slice(0, self.num_envs) if group is None else self.group_envs[group]
        info = self._info(self._receive_all(self._workers(group)), envs)
        shared = self.shared
        return (shared.read_obs(envs), shared.rewards[envs].copy(),
                shared.terminated[envs].copy(), shared.truncated[envs].copy(), info)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._receive_all(sorted(self._pending))  # steps started and not waited for
        for w in self._workers(None):
            self._send(w, _RESET, (seed, options))
        info = self._info(self._receive_all(self._workers(None)), slice(0, self.num_envs))
        return self.shared.read_obs(slice(0, self.num_envs)), info

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
        if self._closed:
            raise EnvError("the envs are closed")
        try:
            _write(self.commands[worker].fileno(), _message(kind, payload))
        except OSError:  # BrokenPipeError: the worker is gone
            raise self._dead(worker) from None
        self._pending.add(worker)

    def _receive_all(self, workers: Sequence[int], building: bool = False) -> list[Any]:
        """The replies of `workers` to their pending command (payloads, None for bare
        acknowledgements). Every reply is read before an env's error is raised, so that
        none is left over for the next command."""
        replies = []
        for w in workers:
            try:
                replies.append((w, *_read(self.replies[w].fileno())))
            except (EOFError, OSError):
                raise self._dead(w) from None
            self._pending.discard(w)
        for w, kind, payload in replies:
            if kind == _ERROR:
                if building and not isinstance(payload, EnvError):
                    first, last = self.blocks[w]
                    raise EnvError(f"making {_envs_name(first, last)} failed: "
                                   f"{type(payload).__name__}: {payload}") from None
                raise payload
        return [payload for _, _, payload in replies]

    def _dead(self, worker: int) -> EnvWorkerError:
        process = self.processes[worker]
        process.join(timeout=1.0)
        return _dead_worker_error(*self.blocks[worker], process.exitcode)

    def close_extras(self, terminate: bool = False, **kwargs: Any) -> None:
        """Stop the workers, whatever state they are in, and never raise: each is asked to
        close once it has answered its last command (with terminate, or past CLOSE_TIMEOUT,
        its pipes are just closed), then killed if it has not left by the deadline."""
        if self._closed:
            return
        self._closed = True
        _live.discard(self)
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for w in range(len(self.commands)):
            with contextlib.suppress(Exception):
                if terminate or (w in self._pending and not self.replies[w].poll(
                        max(deadline - time.monotonic(), 0))):
                    continue
                if w in self._pending:
                    _read(self.replies[w].fileno())
                _write(self.commands[w].fileno(), _CLOSE)
        for conn in self.commands + self.replies:
            conn.close()  # a worker still reading sees EOF and leaves
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.join(timeout=max(deadline - time.monotonic(), 0.1))
                if process.is_alive():
                    process.kill()
                    process.join()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self.close_extras(terminate=True)


# Workers ignore SIGTERM, so multiprocessing's own exit handler, which terminates daemon
# processes and then joins them, would wait forever on the workers of envs never closed;
# this handler, registered after it, runs first and closes them.
_live: weakref.WeakSet[SubprocessVectorEnv] = weakref.WeakSet()
_registered = False


def _close_at_exit() -> None:
    global _registered
    if not _registered:
        atexit.register(_close_live)
        _registered = True


def _close_live() -> None:
    for envs in list(_live):
        envs.close_extras(terminate=True)
