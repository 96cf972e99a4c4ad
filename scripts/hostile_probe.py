#!/usr/bin/env python3
"""Hostile probe of the `ppo` command and Python API: untrusted files and bad input.

Runs 263 attempts a hostile or careless user could make, in nine categories, each in a
throwaway directory and in its own process (forked from this one, so that torch is imported
once; the cases about pipes, process groups and torchrun start real `python -m ppo`
processes). Each attempt is classified automatically:

- good:   a clean refusal (exit status 2, exactly one stderr line `error: ...`, nothing
          written or lost) or the correct behaviour;
- weak:   works, but the message is unclear or junk is left behind;
- failed: a traceback, a wrong exit status, data lost or rewritten, code run that a file
          named, a death by signal, or a hang (every attempt has a timeout).

Usage:
    python scripts/hostile_probe.py [--only 1,3] [--match TEXT] [--report probe.md]
To probe another checkout, put its `src` first: PYTHONPATH=/path/to/ppo/src python ...
Linux only (process groups, /proc, FIFOs).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

torch.set_num_threads(1)  # before any fork: no OpenMP pool to inherit

import gymnasium  # noqa: E402

import ppo  # noqa: E402  (after the thread setting)
import ppo.cli  # noqa: E402
import ppo.evaluation  # noqa: E402

# Imported lazily by the library (seconds each); once here, not in every forked attempt.
torch.optim.Adam([torch.zeros(1, requires_grad=True)])
gymnasium.make("CartPole-v1").close()

CATEGORIES = {
    1: "Loading a file can run code",
    2: "Two processes, one run directory",
    3: "Numbers that pass validation but cannot work",
    4: "Special files as input",
    5: "Stops and deaths around worker processes",
    6: "Damaged run files on resume",
    7: "Envs that misbehave",
    8: "Raw errors from the Python API",
    9: "Smaller ones",
}
MEMORY_LIMIT = 8 << 30
SMALL = ["--env", "CartPole-v1", "--defaults", "plain", "--rollout-steps", "64",
         "--minibatch-size", "32", "--no-tensorboard", "--quiet"]
# Words of library internals that make an error message useless to a user.
RAW_WORDS = ("mat1", "matmul", "size mismatch", "not supported between", "Traceback",
             "out of bounds", "object has no attribute", "unsupported operand", "ufunc",
             "could not broadcast", "cannot reshape", "invalid literal", "KeyError")

# ------------------------------------------------------------------ helper modules
# Written into every attempt's directory, which is on the import path of the attempt.
EVILMOD = '''
import os, pathlib
pathlib.Path(os.path.dirname(os.path.abspath(__file__)), "PWNED").write_text("imported")
import gymnasium as gym
class Env(gym.Env):
    def __init__(self, **kw):
        pathlib.Path(os.path.dirname(os.path.abspath(__file__)), "PWNED").write_text("called")
        raise SystemExit(0)
'''
GOODMOD = '''
import os, pathlib
pathlib.Path(os.path.dirname(os.path.abspath(__file__)), "IMPORTED-goodmod").write_text("x")
import gymnasium as gym
from gymnasium.envs.classic_control import CartPoleEnv
gym.register("GoodCartPole-v0", entry_point=CartPoleEnv, max_episode_steps=500)
class Env(CartPoleEnv):
    pass
class Wrap(gym.Wrapper):
    pass
'''
BADENVS = '''
import os, time
import numpy as np
import gymnasium as gym
from gymnasium import spaces
from gymnasium.envs.classic_control import CartPoleEnv

class _Base(CartPoleEnv):
    """CartPole that misbehaves at its `at`-th step of the process (counted across resets)."""
    at = 150
    def __init__(self, **kw):
        super().__init__(**kw)
        self.count = 0
    def step(self, action):
        self.count += 1
        out = super().step(action)
        return self.bad(out) if self.count >= self.at else out
    def bad(self, out):
        return out

class WrongShape(_Base):
    def bad(self, out):
        return (np.zeros(7, np.float32),) + tuple(out[1:])
class Raises(_Base):
    def bad(self, out):
        raise RuntimeError("the simulator lost its license server")
class NanReward(_Base):
    def bad(self, out):
        return (out[0], float("nan")) + tuple(out[2:])
class StrReward(_Base):
    def bad(self, out):
        return (out[0], "1.0") + tuple(out[2:])
class FourTuple(_Base):
    at = 1
    def bad(self, out):
        return out[0], out[1], out[2] or out[3], out[4]
class ObjectObs(_Base):
    def bad(self, out):
        return (np.array(["a", "b", "c", "d"], object),) + tuple(out[1:])
class InfObs(_Base):
    def bad(self, out):
        return (np.full(4, np.inf, np.float32),) + tuple(out[1:])
class ResetRaises(CartPoleEnv):
    resets = 0
    def reset(self, **kw):
        ResetRaises.resets += 1
        if ResetRaises.resets > 3:
            raise ValueError("reset failed: no more levels")
        return super().reset(**kw)
class ResetObsOnly(CartPoleEnv):
    def reset(self, **kw):
        return super().reset(**kw)[0]
class ExitInStep(_Base):
    def bad(self, out):
        raise SystemExit(3)
class KillsWorker(_Base):
    def bad(self, out):
        os._exit(9)
class WrongDtypeAction(CartPoleEnv):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.action_space = spaces.Box(-1, 1, (1,), np.int32)
class BadTerminated(_Base):
    def bad(self, out):
        return out[0], out[1], "no", out[3], out[4]
class HugeObsSpace(CartPoleEnv):
    """A one-hot observation of 10^12 values: the networks' first layer cannot exist."""
    def __init__(self, **kw):
        super().__init__(**kw)
        self.observation_space = spaces.Discrete(10**12)
'''


# ------------------------------------------------------------------ running attempts
@dataclass
class Result:
    code: int | None  # exit status; negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool = False
    strays: int = 0  # processes of its group still alive after it exited
    extra: dict = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


class Proc:
    """A forked child running `fn` in `cwd`, in its own process group."""

    def __init__(self, fn: Callable[[], Any], cwd: Path, stdin: str | None = None,
                 limits: dict | None = None, tag: str = "") -> None:
        self.cwd = cwd
        self.out = cwd.parent / f"{cwd.name}.{tag}{os.getpid()}.{id(self)}.out"
        self.err = cwd.parent / f"{cwd.name}.{tag}{os.getpid()}.{id(self)}.err"
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(fn, cwd, self.out, self.err, stdin, limits or {})
        self.pid = pid
        self.status: int | None = None
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def wait(self, timeout: float) -> Result:
        deadline = time.monotonic() + timeout
        timed_out = False
        while self.poll() is None:
            if time.monotonic() > deadline:
                timed_out = True
                self.signal_group(signal.SIGKILL)
                os.waitpid(self.pid, 0)
                self.status = -9
                break
            time.sleep(0.02)
        strays = len(_group_members(self.pid))
        self.signal_group(signal.SIGKILL)
        out = self.out.read_text(errors="replace") if self.out.exists() else ""
        err = self.err.read_text(errors="replace") if self.err.exists() else ""
        for p in (self.out, self.err):
            p.unlink(missing_ok=True)
        return Result(self.status, out, err, timed_out, strays)


def _child(fn, cwd, out, err, stdin, limits) -> None:
    code = 1
    try:
        os.setpgid(0, 0)
        fd = os.open(stdin or os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        # The machine may be shared: no attempt gets more than MEMORY_LIMIT of address space.
        for name, value in {"RLIMIT_AS": MEMORY_LIMIT, **limits}.items():
            resource.setrlimit(getattr(resource, name), (value, value))
        os.chdir(cwd)
        sys.path.insert(0, str(cwd))
        sys.argv = ["ppo"]
        # As a process started from a terminal has them, even if this probe runs under nohup.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        result = fn()
        code = result if isinstance(result, int) else 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.append(int(entry.name))
    return members


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and fields[0] != "Z":
                    kids.append(int(entry.name))
    return kids


def cli(*args: Any) -> Callable[[], Any]:
    """The `ppo` command with these arguments, as the installed entry point runs it."""
    return lambda: ppo.cli.main([str(a) for a in args], prog_name="ppo")


def api(fn: Callable[[], Any]) -> Callable[[], Any]:
    """A Python API call: a ValueError (ConfigError, CheckpointError...) is the clean refusal
    and becomes `error: ...` with status 2; anything else is a traceback."""

    def run() -> int:
        try:
            fn()
        except ValueError as e:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        return 0

    return run


def wait_for(cond: Callable[[], bool], timeout: float = 60, proc: Proc | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if cond():
                return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def metric_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="", errors="replace") as f:
        return list(csv.DictReader(f))


def rows_at_least(run: Path, n: int) -> Callable[[], bool]:
    return lambda: (run / "metrics.csv").is_file() and len(metric_rows(run)) >= n


def real_ppo(work: Path, *args: Any, timeout: float = 120, shell_suffix: str = "",
             env: dict | None = None) -> Result:
    """A real `python -m ppo ARGS` process (its own session), optionally piped on."""
    pythonpath = os.pathsep.join([str(work), *sys.path[1:]])
    command = " ".join([sys.executable, "-m", "ppo", *(_q(a) for a in args)]) + shell_suffix
    # A tag in the environment finds every process it started, in whatever session (torchrun
    # starts its workers in sessions of their own).
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.Popen(["bash", "-c", command], cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": pythonpath, "PPO_PROBE_TAG": tag,
                                 **(env or {})},
                            preexec_fn=_real_process_setup)
    try:
        out, err = proc.communicate(timeout=timeout)
        return Result(proc.returncode, out, err, strays=len(_tagged(tag)))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return Result(-9, "", "", timed_out=True)
    finally:
        for pid in _tagged(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def _tagged(tag: str) -> list[int]:
    """The live processes whose environment carries PPO_PROBE_TAG=tag."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if f"PPO_PROBE_TAG={tag}".encode() in (entry / "environ").read_bytes().split(
                        b"\0"):
                    found.append(int(entry.name))
    return found


def _real_process_setup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _q(arg: Any) -> str:
    return "'" + str(arg).replace("'", "'\\''") + "'"


# ------------------------------------------------------------------ file states
def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root: kind and, for regular files, a digest. FIFOs are not read."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            try:
                st = p.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                state[rel] = "link:" + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                if st.st_size > 64 << 20:
                    state[rel] = f"big:{st.st_size}:{st.st_mtime_ns}"
                else:
                    state[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = "dir"
            else:
                state[rel] = f"special:{stat.S_IFMT(st.st_mode)}"
    return state


def diff(before: dict[str, str], after: dict[str, str]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = []
    for label, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            parts.append(f"{label} {', '.join(names[:4])}" + (" ..." if len(names) > 4 else ""))
    return "; ".join(parts)


# ------------------------------------------------------------------ checkpoint forging
def digest(tensors: dict[str, torch.Tensor]) -> str:
    """The tensor checksum of the checkpoint format, recomputed as a forger would."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_ckpt(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])["__metadata__"]
    return st_load(data), json.loads(header["meta"])


def forge(path: Path, tensors: dict[str, torch.Tensor], meta: Any, *, meta_sha: bool = True,
          header: dict | None = None, meta_json: str | None = None) -> None:
    """A checkpoint with valid checksums over whatever it holds."""
    meta_json = json.dumps(meta) if meta_json is None else meta_json
    head = {"format": "ppo-checkpoint/1", "sha256": digest(tensors), "meta": meta_json}
    if meta_sha:
        head["meta_sha256"] = hashlib.sha256(meta_json.encode()).hexdigest()
    head.update(header or {})
    path.write_bytes(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=head))


def latest(run: Path) -> Path:
    """The newest checkpoint that reads and holds the update its name says."""
    for path in sorted((run / "checkpoints").glob("update_*.safetensors"), reverse=True):
        with contextlib.suppress(Exception):
            if read_ckpt(path)[1]["update"] == int(path.name[7:13]):
                return path
    raise FileNotFoundError(f"no valid checkpoint in {run}")


def edit_latest(run: Path, edit: Callable[[dict, dict], Any], **kw: Any) -> None:
    """Apply edit(tensors, meta) to every checkpoint of the run and re-forge them."""
    for path in sorted((run / "checkpoints").glob("update_*.safetensors")):
        tensors, meta = read_ckpt(path)
        edit(tensors, meta)
        forge(path, tensors, meta, **kw)


# ------------------------------------------------------------------ judging
GOOD, WEAK, FAILED = "good", "weak", "failed"


def _basic_failure(r: Result, work: Path) -> str | None:
    if r.timed_out:
        return "hang: killed at the timeout"
    if (work / "PWNED").exists():
        return "code ran: a module or callable named by a file was " + (
            (work / "PWNED").read_text())
    if r.code is not None and r.code < 0:
        return f"died by {signal.Signals(-r.code).name}"
    if "Traceback" in r.stderr + r.stdout:
        last = [ln for ln in r.stderr.splitlines() if ln.strip()][-1:] or [""]
        return f"traceback: {last[0][:150]}"
    return None


def refused(*needles: str, unchanged: bool = True, no_import: str | None = "goodmod"):
    """Exit 2, one `error:` line naming the needles, nothing written or lost."""

    def judge(r: Result, work: Path, before: dict, after: dict) -> tuple[str, str]:
        if (bad := _basic_failure(r, work)) is not None:
            return FAILED, bad
        if no_import and (work / f"IMPORTED-{no_import}").exists():
            return FAILED, f"code ran: imported {no_import}, named only by a file"
        if r.code != 2:
            return FAILED, f"exit status {r.code}, expected a refusal (2); stderr: " + (
                " | ".join(r.lines[-2:])[:200])
        changes = diff(before, after) if unchanged else ""
        if changes:
            return FAILED, f"refused, but files changed: {changes}"
        if len(r.lines) != 1 or not r.lines[0].startswith("error: "):
            return WEAK, f"{len(r.lines)} stderr lines: " + " | ".join(r.lines[:3])[:200]
        line = r.lines[0]
        missing = [n for n in needles if n.lower() not in line.lower()]
        if missing:
            return WEAK, f"message lacks {missing}: {line[:200]}"
        if any(w in line for w in RAW_WORDS):
            return WEAK, f"raw internals in message: {line[:200]}"
        return GOOD, line[:200]

    return judge


def works(check: Callable[[Result, Path], str | None] | None = None, code: int = 0,
          notes_ok: bool = True):
    """Exit `code`, no traceback; check(r, work) returns a problem or None ('weak: ...' for
    a weak one)."""

    def judge(r: Result, work: Path, before: dict, after: dict) -> tuple[str, str]:
        if (bad := _basic_failure(r, work)) is not None:
            return FAILED, bad
        if r.code != code:
            return FAILED, f"exit status {r.code}, expected {code}; stderr: " + (
                " | ".join(r.lines[-2:])[:200])
        problem = check(r, work) if check else None
        if problem:
            if problem.startswith("weak: "):
                return WEAK, problem[6:]
            return FAILED, problem
        junk = [p for p in after if p not in before and re.search(r"(\.tmp$|^\.|/\.)", p)]
        if junk:
            return WEAK, f"left junk: {', '.join(junk[:3])}"
        shown = r.lines or r.stdout.strip().splitlines() or ["ok"]
        return GOOD, shown[-1][:200]

    return judge


def either(*judges):
    """Good if any judge says good; else the best verdict."""

    def judge(r, work, before, after):
        verdicts = [j(r, work, before, after) for j in judges]
        for rank in (GOOD, WEAK, FAILED):
            for v in verdicts:
                if v[0] == rank:
                    return v
        return verdicts[0]

    return judge


def rows_are(expected: list[int]) -> Callable[[Path], str | None]:
    def check(run: Path) -> str | None:
        got = [int(r["update"]) for r in metric_rows(run)]
        return None if got == expected else f"metrics.csv updates {got[:12]}, expected {expected}"

    return check


def consistent_run(run: Path, must_have_update: int | None = None) -> str | None:
    """metrics.csv rows 1..N with no gap or duplicate; the latest checkpoint at update N."""
    try:
        rows = metric_rows(run)
        updates = [int(r["update"]) for r in rows]
    except Exception as e:  # noqa: BLE001 (the probe reports anything)
        return f"metrics.csv unreadable: {e}"
    if updates != list(range(1, len(updates) + 1)):
        return f"metrics.csv updates not 1..N: {updates[:15]}"
    head = (run / "metrics.csv").read_text(errors="replace").splitlines()[0]
    if not head.startswith("update,global_step"):
        return "metrics.csv lost its header"
    ckpt = int(latest(run).name[7:13])
    if ckpt != len(updates):
        return f"latest checkpoint is update {ckpt}, metrics.csv has {len(updates)} rows"
    if must_have_update is not None and ckpt < must_have_update:
        return f"latest checkpoint update {ckpt} < {must_have_update}"
    return None


# ------------------------------------------------------------------ the attempt table
@dataclass
class Attempt:
    category: int
    name: str
    run: Callable[[Path], Result]
    judge: Callable[[Result, Path, dict, dict], tuple[str, str]]
    setup: Callable[[Path], Any] | None = None
    timeout: float = 60


ATTEMPTS: list[Attempt] = []


def attempt(category: int, name: str, action: Callable[[], Any] | Callable[[Path], Result],
            judge, setup: Callable[[Path], Any] | None = None, timeout: float = 60,
            stdin: str | None = None, limits: dict | None = None, raw: bool = False) -> None:
    """Register an attempt. `action` is a child function (run in a fork) unless raw, in which
    case it is action(work) -> Result and runs in this process."""
    if raw:
        run = action
    else:
        def run(work: Path, action=action, timeout=timeout) -> Result:
            return Proc(action, work, stdin=stdin, limits=limits).wait(timeout)
    ATTEMPTS.append(Attempt(category, name, run, judge, setup, timeout))


BASE: Path  # the trained run every attempt gets a copy of, as work/run


def train_base(root: Path) -> Path:
    base = root / "base"
    base.mkdir()
    r = Proc(cli("train", *SMALL, "--total-timesteps", 128, "--checkpoint-every", 1,
                 "--run-dir", base / "run"), base).wait(300)
    if r.code != 0:
        sys.exit(f"cannot train the base run: {r.stderr[-2000:]}")
    return base / "run"


def prepare(work: Path) -> None:
    work.mkdir(parents=True)
    (work / "evilmod.py").write_text(EVILMOD)
    (work / "goodmod.py").write_text(GOODMOD)
    (work / "badenvs.py").write_text(BADENVS)
    shutil.copytree(BASE, work / "run")


def W(work: Path, name: str = "run") -> Path:  # noqa: N802 (short for the tables)
    return work / name


# ================================================================== 1. loading runs code
def _set_env(env_id: str):
    def edit(tensors, meta):
        meta["config"]["env_id"] = env_id
        meta["config"].pop("run_dir", None)
    return edit


def _config_toml_env(env_id: str):
    def setup(work: Path) -> None:
        edit_latest(work / "run", _set_env(env_id))
        text = (work / "run" / "config.toml").read_text()
        (work / "run" / "config.toml").write_text(
            re.sub(r'env_id = ".*"', f'env_id = "{env_id}"', text))
    return setup


def cat1() -> None:
    for env_id in ("evilmod:Env", "evilmod:CartPole-v1", "os:abort", "builtins:exit",
                   "goodmod:GoodCartPole-v0"):
        attempt(1, f"eval a checkpoint whose config names env {env_id}",
                cli("eval", "run", "--episodes", 1), refused("--env"),
                setup=_config_toml_env(env_id))
    for env_id in ("evilmod:Env", "sys:exit", "goodmod:Env"):
        attempt(1, f"resume a run whose files name env {env_id}",
                cli("train", "--resume", "run", "--total-timesteps", 256),
                refused("--env"), setup=_config_toml_env(env_id))
    for env_id in ("evilmod:Env", "os:abort", "goodmod:GoodCartPole-v0"):
        attempt(1, f"--config file naming env {env_id}",
                cli("train", "--config", "evil.toml", "--rollout-steps", 64, "--minibatch-size",
                    32, "--total-timesteps", 64, "--run-dir", "fresh"),
                refused("evil.toml", "--env"),
                setup=lambda w, e=env_id: (w / "evil.toml").write_text(f'env_id = "{e}"\n'))
    def _set_wrapper(path: str):
        def edit(tensors, meta):
            meta["config"]["wrappers"] = [{"path": path, "kwargs": {}}]
            meta["config"].pop("run_dir", None)
        return edit

    for path in ("evilmod:Env", "os:system"):
        attempt(1, f"eval a checkpoint whose config names wrapper {path}",
                cli("eval", "run", "--episodes", 1), refused("--wrapper"),
                setup=lambda w, path=path: edit_latest(w / "run", _set_wrapper(path)))
        attempt(1, f"--config file naming wrapper {path}",
                cli("train", "--config", "evil.toml", *SMALL, "--total-timesteps", 64,
                    "--run-dir", "fresh"),
                refused("evil.toml", "--wrapper"),
                setup=lambda w, path=path: (w / "evil.toml").write_text(
                    f'[[wrappers]]\npath = "{path}"\n'))
    attempt(1, "resume a run whose checkpoint names wrapper evilmod:Env",
            cli("train", "--resume", "run", "--total-timesteps", 256), refused("--wrapper"),
            setup=lambda w: edit_latest(w / "run", _set_wrapper("evilmod:Env")))
    attempt(1, "PPO.load of a checkpoint naming wrapper evilmod:Env",
            api(lambda: ppo.PPO.load("run")), refused("wrapper"),
            setup=lambda w: edit_latest(w / "run", _set_wrapper("evilmod:Env")))

    def trained_with_wrapper(work: Path) -> None:
        shutil.rmtree(work / "run")
        r = Proc(cli("train", *SMALL, "--wrapper", "goodmod:Wrap", "--total-timesteps", 128,
                     "--run-dir", "run"), work).wait(120)
        assert r.code == 0, r.stderr
        (work / "IMPORTED-goodmod").unlink()

    attempt(1, "eval of a run with a module wrapper, not named", cli("eval", "run", "--episodes",
                                                                     1),
            refused("--wrapper goodmod:Wrap"), setup=trained_with_wrapper)
    attempt(1, "eval of a run with a module wrapper, named with --wrapper",
            cli("eval", "run", "--episodes", 1, "--wrapper", "goodmod:Wrap"),
            works(lambda r, w: None if "return" in r.stdout else "no result printed"),
            setup=trained_with_wrapper)
    attempt(1, "resume of a run with a module wrapper, named with --wrapper",
            cli("train", "--resume", "run", "--total-timesteps", 256, "--wrapper",
                "goodmod:Wrap"),
            works(lambda r, w: consistent_run(w / "run")), setup=trained_with_wrapper)
    attempt(1, "PPO.load of a checkpoint naming env evilmod:Env",
            api(lambda: ppo.PPO.load("run")), refused("run"),
            setup=_config_toml_env("evilmod:Env"))
    attempt(1, "PPO.resume of a run naming env os:abort",
            api(lambda: ppo.PPO.resume("run")), refused("run"),
            setup=_config_toml_env("os:abort"))
    attempt(1, "PPO.load with env= given, checkpoint naming evilmod:Env, then evaluate",
            api(lambda: __import__("ppo.evaluation").evaluation.evaluate(
                ppo.PPO.load("run", env=__import__("gymnasium").make("CartPole-v1")),
                1, True, 0)),
            either(refused(), works()), setup=_config_toml_env("evilmod:Env"))

    # The user names the module env: it must work.
    def trained_with_goodmod(work: Path) -> None:
        shutil.rmtree(work / "run")
        r = Proc(cli("train", *SMALL[2:], "--env", "goodmod:GoodCartPole-v0",
                     "--total-timesteps", 128, "--run-dir", "run"), work).wait(120)
        assert r.code == 0, r.stderr
        (work / "IMPORTED-goodmod").unlink()

    attempt(1, "eval with --env naming the run's module env",
            cli("eval", "run", "--episodes", 1, "--env", "goodmod:GoodCartPole-v0"),
            works(lambda r, w: None if "return" in r.stdout else "no result printed"),
            setup=trained_with_goodmod)
    attempt(1, "resume with --env naming the run's module env",
            cli("train", "--resume", "run", "--total-timesteps", 256,
                "--env", "goodmod:GoodCartPole-v0"),
            works(lambda r, w: consistent_run(w / "run")), setup=trained_with_goodmod)
    attempt(1, "PPO.load with env_id naming the module env",
            api(lambda: ppo.PPO.load("run", env_id="goodmod:GoodCartPole-v0")), works(),
            setup=trained_with_goodmod)
    attempt(1, "resume with --env naming another env than the run's",
            cli("train", "--resume", "run", "--total-timesteps", 256, "--env", "Acrobot-v1"),
            refused(), setup=trained_with_goodmod)

    # Authentication and structure of checkpoint files.
    def no_meta_sha(work: Path) -> None:
        for path in (work / "run" / "checkpoints").glob("*.safetensors"):
            tensors, meta = read_ckpt(path)
            meta["update"] = 7
            forge(path, tensors, meta, meta_sha=False)

    attempt(1, "header without meta_sha256, metadata edited",
            cli("eval", "run", "--episodes", 1), refused("run"), setup=no_meta_sha)
    attempt(1, "header without meta_sha256, resume",
            cli("train", "--resume", "run"), refused("run"), setup=no_meta_sha)

    def structural(label: str, edit: Callable[[dict, dict], Any], **kw: Any) -> None:
        attempt(1, f"checksum-valid checkpoint: {label} (eval)",
                cli("eval", "run", "--episodes", 1), refused("update_00000"),
                setup=lambda w: edit_latest(w / "run", edit, **kw))
        attempt(1, f"checksum-valid checkpoint: {label} (PPO.load)",
                api(lambda: ppo.PPO.load("run/checkpoints/update_000002.safetensors")),
                refused("update_00000"),
                setup=lambda w: edit_latest(w / "run", edit, **kw))

    structural("meta lacks 'spaces'", lambda t, m: m.pop("spaces"))
    structural("meta lacks 'rng'", lambda t, m: m.pop("rng"))
    structural("'update' is a string", lambda t, m: m.update(update="2"))
    structural("'rng' state is garbage", lambda t, m: m["rng"].update(action={"x": 1}))
    structural("config has an unknown key", lambda t, m: m["config"].update(evil=1))
    structural("config lr is a string", lambda t, m: m["config"].update(lr="0.1"))
    structural("an extra tensor", lambda t, m: t.update({"model.extra": torch.zeros(3)}))
    structural("a missing tensor (rng.torch)", lambda t, m: t.pop("rng.torch"))
    structural("float64 weights", lambda t, m: t.update(
        {k: v.double() for k, v in t.items() if k.startswith("model.")}))
    structural("a weight of the wrong shape", lambda t, m: t.update(
        {"model.value_head.bias": torch.zeros(3)}))
    structural("NaN weights", lambda t, m: t["model.actor.0.weight"].fill_(float("nan")))
    structural("Inf in Adam state", lambda t, m: t["optim.0.exp_avg_sq"].fill_(float("inf")))
    structural("meta is a JSON list", lambda t, m: None, meta_json="[1, 2, 3]")
    structural("meta is not JSON", lambda t, m: None, meta_json="{not json")
    structural("rng.torch of the wrong size", lambda t, m: t.update(
        {"rng.torch": torch.zeros(10, dtype=torch.uint8)}))
    structural("optimizer step is a vector", lambda t, m: t.update(
        {"optim.0.step": torch.zeros(5)}))
    structural("episode counters negative", lambda t, m: m.update(episodes=-5))
    structural("recent_episodes garbage", lambda t, m: m.update(recent_episodes=[["a"]]))


# ================================================================== 2. one run directory
def _long(run: str, total: int = 64 * 400) -> list[Any]:
    return ["train", *SMALL, "--total-timesteps", total, "--checkpoint-every", 5,
            "--run-dir", run]


def two_writers(first: list[Any], second: list[Any], first_rows: int = 3):
    """Start `first`, wait until it logged rows, run `second` to the end, then wait first."""

    def run(work: Path) -> Result:
        a = Proc(cli(*first), work, tag="a")
        started = wait_for(rows_at_least(work / "run", first_rows), 90, a)
        b = Proc(cli(*second), work, tag="b").wait(90)
        ra = a.wait(180)
        b.extra = {"first": ra, "started": started}
        return b

    return run


def second_refused(r: Result, work: Path, before: dict, after: dict) -> tuple[str, str]:
    first: Result = r.extra["first"]
    if not r.extra["started"]:
        return FAILED, f"the first writer never logged rows: {first.stderr[-200:]}"
    if first.code != 0 or first.timed_out:
        return FAILED, f"the first writer ended with status {first.code}: {first.lines[-1:]}"
    if (problem := consistent_run(work / "run")) is not None:
        return FAILED, problem
    if r.code == 0:
        return FAILED, "both wrote to the directory"
    verdict = refused("another")(r, work, before, before)
    return verdict


def cat2() -> None:
    attempt(2, "two --resume of one directory at once",
            two_writers(["train", "--resume", "run", "--total-timesteps", 64 * 200],
                        ["train", "--resume", "run", "--total-timesteps", 64 * 50]),
            second_refused, raw=True, timeout=240)
    attempt(2, "a fresh run into a directory a fresh run is writing",
            two_writers(_long("run"), _long("run", 64 * 20)), second_refused,
            setup=lambda w: shutil.rmtree(w / "run"), raw=True, timeout=240)
    attempt(2, "--resume of a directory a fresh run is writing",
            two_writers(_long("run"), ["train", "--resume", "run", "--total-timesteps", 64 * 50]),
            second_refused, setup=lambda w: shutil.rmtree(w / "run"), raw=True, timeout=240)

    def api_second(work: Path) -> Result:
        a = Proc(cli(*_long("run")), work, tag="a")
        started = wait_for(lambda: any((work / "run" / "checkpoints").glob("update_*")), 90, a)
        b = Proc(api(lambda: ppo.PPO.resume("run", verbose=False,
                                            total_timesteps=64 * 60).learn()),
                 work, tag="b").wait(90)
        b.extra = {"first": a.wait(180), "started": started}
        return b

    attempt(2, "PPO.resume(...).learn() on a directory another process writes", api_second,
            second_refused, setup=lambda w: shutil.rmtree(w / "run"), raw=True, timeout=240)

    for label, keep in (("checkpoints and metrics, no config.toml", ("checkpoints", "metrics.csv")),
                        ("only metrics.csv", ("metrics.csv",)),
                        ("only an empty checkpoints/", ()),
                        ("only tensorboard/", ())):
        def setup(work: Path, keep=keep, label=label) -> None:
            run = work / "run"
            for entry in run.iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            if "checkpoints/" in label:
                (run / "checkpoints").mkdir()
            if "tensorboard" in label:
                (run / "tensorboard").mkdir()
                (run / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"x" * 40)
        attempt(2, f"fresh run into a directory holding {label}",
                cli("train", *SMALL, "--total-timesteps", 64, "--run-dir", "run"),
                refused("run", "already"), setup=setup)
        attempt(2, f"API: fresh agent into a directory holding {label}",
                api(lambda: ppo.PPO(ppo.Config(env_id="CartPole-v1", rollout_steps=64,
                                               minibatch_size=32, total_timesteps=64,
                                               tensorboard=False, run_dir="run"),
                                    verbose=False).learn()),
                refused("run"), setup=setup)

    def killed_then_resume(work: Path) -> Result:
        a = Proc(cli(*_long("run2")), work, tag="a")
        wait_for(lambda: len(list((work / "run2" / "checkpoints").glob("*"))) >= 1, 90, a)
        a.signal_group(signal.SIGKILL)
        a.wait(10)
        return Proc(cli("train", "--resume", "run2", "--total-timesteps", 64 * 12), work).wait(90)

    attempt(2, "resume after the writer was SIGKILLed (lock released by the OS)",
            killed_then_resume, works(lambda r, w: consistent_run(w / "run2")), raw=True,
            timeout=200)

    def eval_during_training(work: Path) -> Result:
        a = Proc(cli(*_long("run2", 64 * 100)), work, tag="a")
        wait_for(lambda: len(list((work / "run2" / "checkpoints").glob("*"))) >= 1, 90, a)
        b = Proc(cli("eval", "run2", "--episodes", 2), work, tag="b").wait(60)
        b.extra["first"] = a.wait(120)
        return b

    attempt(2, "eval (read-only) while the run trains", eval_during_training,
            works(lambda r, w: None if r.extra["first"].code == 0 else "training failed"),
            raw=True, timeout=200)
    attempt(2, "lock path planted as a directory",
            cli("train", "--resume", "run", "--total-timesteps", 256),
            either(works(lambda r, w: consistent_run(w / "run")), refused("run")),
            setup=lambda w: [(w / "run" / n).mkdir() for n in (".lock", "lock", ".ppo.lock")])
    attempt(2, "run dir is a regular file",
            cli("train", *SMALL, "--total-timesteps", 64, "--run-dir", "afile"),
            refused("afile"), setup=lambda w: (w / "afile").write_text("x"))
    attempt(2, "run dir below a regular file",
            cli("train", *SMALL, "--total-timesteps", 64, "--run-dir", "afile/run"),
            refused("afile"), setup=lambda w: (w / "afile").write_text("x"))


# ================================================================== 3. numbers
def cat3() -> None:
    bad_flags = [
        (["--lr", "inf"], "lr"), (["--lr", "nan"], "lr"), (["--lr", "1e308"], "lr"),
        (["--ent-coef", "nan"], "ent_coef"), (["--ent-coef", "inf"], "ent_coef"),
        (["--vf-coef", "inf"], "vf_coef"), (["--vf-coef", "nan"], "vf_coef"),
        (["--max-grad-norm", "nan"], "max_grad_norm"),
        (["--max-grad-norm", "inf"], "max_grad_norm"),
        (["--target-kl", "nan"], "target_kl"), (["--clip-eps", "inf"], "clip_eps"),
        (["--clip-eps", "nan"], "clip_eps"), (["--gamma", "nan"], "gamma"),
        (["--adam-eps", "nan"], "adam_eps"), (["--obs-clip", "nan"], "obs_clip"),
        (["--init-log-std", "1e6"], "init_log_std"), (["--init-log-std", "nan"], "init_log_std"),
        (["--seed", "-1"], "seed"), (["--seed", str(2**64)], "seed"),
        (["--seed", str(2**63)], "seed"),
        (["--hidden-sizes", "100000000"], "hidden_sizes"),
        (["--hidden-sizes", "100000,100000"], "memory"),
        (["--hidden-sizes", ",".join(["64"] * 5000)], "hidden_sizes"),
        (["--threads", "100000"], "threads"),
        (["--num-envs", "100000", "--vector", "async"], "num_envs"),
        (["--num-envs", "1000000000"], "num_envs"),
        (["--rollout-steps", "1000000000"], "rollout"),
        (["--total-timesteps", str(10**30)], "total_timesteps"),
        (["--dist-timeout", "1e300"], "dist_timeout"), (["--dist-timeout", "nan"], "dist_timeout"),
        (["--checkpoint-every", str(10**30)], "checkpoint_every"),
        (["--epochs", str(10**12)], "epochs"),
        (["--reward-clip", "inf"], "reward_clip"),
        (["--algo", "trpo", "--no-shared-trunk", "--max-kl", "inf"], "max_kl"),
        (["--algo", "trpo", "--no-shared-trunk", "--cg-damping", "nan"], "cg_damping"),
        (["--algo", "trpo", "--no-shared-trunk", "--line-search-steps", "100000"],
         "line_search_steps"),
    ]
    for flags, needle in bad_flags:
        attempt(3, "train " + " ".join(f[:40] for f in flags),
                cli("train", *SMALL, "--total-timesteps", 64, *flags, "--run-dir", "fresh"),
                refused(needle))
    attempt(3, "--seed 2**63-1 (the largest) trains",
            cli("train", *SMALL, "--total-timesteps", 64, "--seed", 2**63 - 1, "--run-dir",
                "fresh"), works())
    bad_api = [
        ("Config(lr='0.1')", dict(lr="0.1"), "lr"),
        ("Config(seed=-1)", dict(seed=-1), "seed"),
        ("Config(epochs=4.0)", dict(epochs=4.0), "epochs"),
        ("Config(hidden_sizes=[1e8])", dict(hidden_sizes=[1e8]), "hidden_sizes"),
        ("Config(gamma='0.99')", dict(gamma="0.99"), "gamma"),
        ("Config(num_envs=True)", dict(num_envs=True), "num_envs"),
        ("Config(lr=float('nan'))", dict(lr=float("nan")), "lr"),
        ("Config(threads=10**6)", dict(threads=10**6), "threads"),
        ("Config(hidden_sizes='64,64')", dict(hidden_sizes="64,64"), "hidden_sizes"),
        ("Config(target_kl=float('inf'))", dict(target_kl=float("inf")), "target_kl"),
    ]
    for label, kw, needle in bad_api:
        attempt(3, f"API PPO({label})",
                api(lambda kw=kw: ppo.PPO(ppo.Config(env_id="CartPole-v1", rollout_steps=64,
                                                     minibatch_size=32, **kw), verbose=False)),
                refused(needle))
    attempt(3, "API Config(hidden_sizes=[100000, 100000]) (memory)",
            api(lambda: ppo.PPO(ppo.Config(env_id="CartPole-v1", hidden_sizes=[100000, 100000]),
                                verbose=False)),
            refused("memory"))


# ================================================================== 4. special files
def _fifo(name: str):
    def setup(work: Path) -> None:
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        os.mkfifo(target)
    return setup


def _link(name: str, to: str):
    def setup(work: Path) -> None:
        target = work / name
        if target.exists():
            target.unlink()
        target.symlink_to(to)
    return setup


def _sparse(name: str, size: int):
    def setup(work: Path) -> None:
        with open(work / name, "wb") as f:
            f.truncate(size)
    return setup


def cat4() -> None:
    fresh = ["--defaults", "plain", "--rollout-steps", 64, "--minibatch-size", 32,
             "--total-timesteps", 64, "--no-tensorboard", "--run-dir", "fresh"]
    for label, setup, arg in (
        ("/dev/zero", None, "/dev/zero"), ("/dev/urandom", None, "/dev/urandom"),
        ("a FIFO", _fifo("cfg.toml"), "cfg.toml"), ("a directory", None, "run"),
        ("a symlink to /dev/zero", _link("cfg.toml", "/dev/zero"), "cfg.toml"),
        ("a 3 GB sparse file", _sparse("cfg.toml", 3 << 30), "cfg.toml"),
        ("/dev/null", None, "/dev/null"), ("/proc/self/mem", None, "/proc/self/mem"),
    ):
        attempt(4, f"--config {label}", cli("train", "--config", arg, *fresh), refused(),
                setup=setup, timeout=30)
    attempt(4, "--config not UTF-8", cli("train", "--config", "cfg.toml", *fresh),
            refused("cfg.toml"),
            setup=lambda w: (w / "cfg.toml").write_bytes(b'env_id = "\xff\xfe"\n'), timeout=30)
    for label, setup, arg in (
        ("/dev/zero", None, "/dev/zero"), ("a FIFO", _fifo("c.safetensors"), "c.safetensors"),
        ("a directory with no checkpoints", lambda w: (w / "empty").mkdir(), "empty"),
        ("a 3 GB sparse file", _sparse("c.safetensors", 3 << 30), "c.safetensors"),
        ("a symlink to /dev/urandom", _link("c.safetensors", "/dev/urandom"), "c.safetensors"),
    ):
        attempt(4, f"eval --checkpoint {label}",
                cli("eval", "run", "--episodes", 1, "--checkpoint", arg), refused(),
                setup=setup, timeout=30)
    ck = "run/checkpoints/update_000002.safetensors"
    attempt(4, "resume: latest checkpoint is a FIFO",
            cli("train", "--resume", "run", "--total-timesteps", 256),
            either(refused(), works(lambda r, w: None if "update_000002" in r.stderr else
                                    "weak: no note naming the skipped file")),
            setup=_fifo(ck), timeout=30)
    attempt(4, "eval: latest checkpoint is a symlink to /dev/zero",
            cli("eval", "run", "--episodes", 1),
            either(refused(), works()), setup=_link(ck, "/dev/zero"), timeout=30)
    attempt(4, "resume: metrics.csv is a FIFO", cli("train", "--resume", "run"),
            refused("metrics.csv"), setup=_fifo("run/metrics.csv"), timeout=30)
    attempt(4, "resume: metrics.csv links to /dev/zero", cli("train", "--resume", "run"),
            refused("metrics.csv"), setup=_link("run/metrics.csv", "/dev/zero"), timeout=30)
    attempt(4, "resume: metrics.csv is a 3 GB sparse file", cli("train", "--resume", "run"),
            refused("metrics.csv"), setup=_sparse("run/metrics.csv", 3 << 30), timeout=30)
    attempt(4, "plot a run whose metrics.csv is a FIFO", cli("plot", "run", "--out", "x.png"),
            refused("metrics.csv"), setup=_fifo("run/metrics.csv"), timeout=30)
    attempt(4, "plot a run whose config.toml is a FIFO", cli("plot", "run", "--out", "x.png"),
            either(refused("config.toml"), works()), setup=_fifo("run/config.toml"), timeout=30)
    attempt(4, "resume: config.toml is a FIFO",
            cli("train", "--resume", "run", "--total-timesteps", 256),
            either(refused("config.toml"), works(lambda r, w: consistent_run(w / "run"))),
            setup=_fifo("run/config.toml"), timeout=30)
    def fed_fifo(work: Path) -> Result:
        proc = subprocess.Popen(["bash", "-c", "echo 'env_id = \"CartPole-v1\"' > fed.toml"],
                                cwd=work)
        r = Proc(cli("train", "--config", "fed.toml", *SMALL, "--total-timesteps", 64,
                     "--run-dir", "fresh"), work).wait(30)
        proc.kill()
        proc.wait()
        return r

    attempt(4, "--config from a FIFO a writer feeds (<(...))", fed_fifo,
            either(refused("fed.toml"), works()), raw=True, timeout=40,
            setup=lambda w: os.mkfifo(w / "fed.toml"))


# ================================================================== 5. stops and deaths
def stopped_cleanly(signame: str, code: int):
    def check(r: Result, work: Path) -> str | None:
        run = work / "run2"
        if (problem := consistent_run(run, must_have_update=2)) is not None:
            return problem
        if f"stopped by {signame}" not in r.stderr and "stopped" not in r.stderr:
            return f"weak: no stop message: {r.lines[-1:]}"
        if r.strays:
            return f"weak: {r.strays} processes left running"
        return None
    return works(check, code=code)


def signal_run(flags: list[Any], signum: int, group: bool = True, twice: bool = False):
    def run(work: Path) -> Result:
        p = Proc(cli("train", *SMALL[:-1], "--total-timesteps", 64 * 2000, "--checkpoint-every",
                     1000, *flags, "--run-dir", "run2"), work)
        started = wait_for(rows_at_least(work / "run2", 2), 90, p)
        if group:
            p.signal_group(signum)
            if twice:
                time.sleep(0.05)
                p.signal_group(signum)
        else:
            os.kill(p.pid, signum)
        r = p.wait(60)
        r.extra["started"] = started
        return r
    return run


def kill_worker(work: Path) -> Result:
    p = Proc(cli("train", *SMALL, "--total-timesteps", 64 * 2000, "--checkpoint-every", 2,
                 "--num-envs", 2, "--vector", "async", "--run-dir", "run2"), work)
    wait_for(rows_at_least(work / "run2", 3), 90, p)
    kids = _children(p.pid)
    if kids:
        os.kill(kids[0], signal.SIGKILL)
    r = p.wait(60)
    r.extra["kids"] = kids
    return r


def worker_died(r: Result, work: Path, before: dict, after: dict) -> tuple[str, str]:
    if not r.extra.get("kids"):
        return FAILED, "no worker process found to kill"
    verdict = refused("env")(r, work, before, before)
    if verdict[0] != GOOD:
        return verdict
    for path in (work / "run2" / "checkpoints").glob("*.safetensors"):
        try:
            read_ckpt(path)
        except Exception as e:  # noqa: BLE001
            return FAILED, f"checkpoint {path.name} damaged: {e}"
    return verdict


def piped_into_head(work: Path) -> Result:
    return real_ppo(work, "train", *SMALL[:-1], "--total-timesteps", 64 * 3000,
                    "--checkpoint-every", 1000, "--run-dir", "run2", timeout=150,
                    shell_suffix=" 2>err.txt | head -n 2 >/dev/null; "
                                 "echo ${PIPESTATUS[0]} > rc.txt")


def head_judge(r: Result, work: Path, before: dict, after: dict) -> tuple[str, str]:
    if r.timed_out:
        return FAILED, "hang: the run neither stopped nor finished"
    err = (work / "err.txt").read_text() if (work / "err.txt").exists() else ""
    code = int((work / "rc.txt").read_text().strip() or -1)
    if "Traceback" in err:
        return FAILED, "traceback: " + err.strip().splitlines()[-1][:150]
    if not (work / "run2" / "checkpoints").is_dir() or not list(
            (work / "run2" / "checkpoints").glob("*.safetensors")):
        return FAILED, f"no checkpoint written (status {code}); stderr: {err[-150:]}"
    if (problem := consistent_run(work / "run2")) is not None:
        return FAILED, problem
    return GOOD, f"status {code}: {err.strip().splitlines()[-1:]}"


def nproc_refused(*flags: Any, needle: str = "", setup_run: bool = False):
    def run(work: Path) -> Result:
        return real_ppo(work, "train", "--nproc", 2, *SMALL, "--total-timesteps", 128, *flags,
                        "--run-dir", "run" if setup_run else "fresh", timeout=150)
    return run


def cat5() -> None:
    async_flags = ["--num-envs", 2, "--vector", "async"]
    attempt(5, "Ctrl-C to the process group under --vector async",
            signal_run(async_flags, signal.SIGINT), stopped_cleanly("SIGINT", 130), raw=True,
            timeout=160)
    attempt(5, "SIGTERM to the process group under --vector async",
            signal_run(async_flags, signal.SIGTERM), stopped_cleanly("SIGTERM", 143), raw=True,
            timeout=160)
    attempt(5, "SIGTERM to the main process only under --vector async",
            signal_run(async_flags, signal.SIGTERM, group=False),
            stopped_cleanly("SIGTERM", 143), raw=True, timeout=160)
    attempt(5, "Ctrl-C twice quickly under --vector async",
            signal_run(async_flags, signal.SIGINT, twice=True), stopped_cleanly("SIGINT", 130),
            raw=True, timeout=160)
    attempt(5, "Ctrl-C to the process group, in-process envs",
            signal_run([], signal.SIGINT), stopped_cleanly("SIGINT", 130), raw=True,
            timeout=160)
    attempt(5, "SIGHUP (terminal closed) in-process envs",
            signal_run([], signal.SIGHUP), stopped_cleanly("SIGHUP", 129), raw=True,
            timeout=160)
    attempt(5, "SIGHUP under --vector async",
            signal_run(async_flags, signal.SIGHUP), stopped_cleanly("SIGHUP", 129), raw=True,
            timeout=160)
    attempt(5, "a subprocess env worker SIGKILLed", kill_worker, worker_died, raw=True,
            timeout=160)

    def ctrl_c_early(work: Path) -> Result:
        p = Proc(cli("train", *SMALL, "--total-timesteps", 64 * 10_000, "--num-envs", 4, "--vector",
                     "async", "--run-dir", "run2"), work)
        time.sleep(0.3)
        p.signal_group(signal.SIGINT)
        return p.wait(60)

    def early_judge(r: Result, work: Path, before: dict, after: dict) -> tuple[str, str]:
        if (bad := _basic_failure(r, work)) is not None:
            return FAILED, bad
        if r.code != 130:
            return FAILED, f"exit status {r.code}, expected 130: {r.lines[-1:]}"
        if (work / "run2" / "metrics.csv").exists() and consistent_run(work / "run2"):
            return FAILED, consistent_run(work / "run2")
        if len(r.lines) != 1 or r.strays:
            return WEAK, f"{len(r.lines)} stderr lines, {r.strays} strays: {r.lines[:2]}"
        return GOOD, r.lines[0]

    attempt(5, "Ctrl-C while the envs start (before training)", ctrl_c_early, early_judge,
            raw=True, timeout=90)
    attempt(5, "stdout piped into `head -n 2`", piped_into_head, head_judge, raw=True,
            timeout=200)

    def stdout_closed(work: Path) -> Result:
        return real_ppo(work, "train", *SMALL[:-1], "--total-timesteps", 64 * 4, "--run-dir",
                        "run2", shell_suffix=" >&-", timeout=120)

    attempt(5, "stdout closed (>&-)", stdout_closed,
            either(works(lambda r, w: consistent_run(w / "run2")),
                   works(lambda r, w: consistent_run(w / "run2"), code=141)),
            raw=True, timeout=150)
    attempt(5, "--nproc 2 --env Nope-v0", nproc_refused("--env", "Nope-v0", needle="Nope-v0"),
            refused("Nope-v0"), raw=True, timeout=180)
    attempt(5, "--nproc 2 --clip-eps 0", nproc_refused("--clip-eps", 0), refused("clip_eps"),
            raw=True, timeout=180)
    attempt(5, "--nproc 2 into a directory that holds a run",
            nproc_refused(setup_run=True), refused("already"), raw=True, timeout=180)
    attempt(5, "--nproc 100000", cli("train", "--nproc", 100000, *SMALL, "--run-dir", "fresh"),
            refused("nproc"), timeout=60)
    attempt(5, "--nproc 2 --config FIFO", nproc_refused("--config", "c.toml"), refused(),
            setup=_fifo("c.toml"), raw=True, timeout=60)


# ================================================================== 6. damaged run files
def resumed_and_repaired(expected_rows: list[int], note: str | None = None,
                         aside: bool = True, resumed_at: int = 2):
    """Resumed at `resumed_at`: metrics.csv holds `expected_rows` (rows that could not be kept
    are named in a note), then one row per new update up to the latest checkpoint."""
    def check(r: Result, work: Path) -> str | None:
        run = work / "run"
        try:
            rows = [int(x["update"]) for x in metric_rows(run)]
        except Exception as e:  # noqa: BLE001
            return f"metrics.csv unreadable: {e}"
        ckpt = int(latest(run).name[7:13])
        if rows != expected_rows + list(range(resumed_at + 1, ckpt + 1)):
            return (f"metrics.csv updates {rows[:10]}, expected {expected_rows} then "
                    f"{resumed_at + 1}..{ckpt}")
        lost = [u for u in range(1, resumed_at + 1) if u not in expected_rows]
        if lost and "no row for update" not in r.stderr:
            return f"weak: rows {lost} were lost without a note"
        kept = list(run.glob("metrics.csv.*"))
        if aside and not kept:
            return "weak: the damaged metrics.csv was not kept aside"
        if note and note not in r.stderr:
            return f"weak: no note mentioning {note!r}: {r.lines[:2]}"
        return None
    return works(check)


def _metrics_edit(fn: Callable[[str], str | bytes]):
    def setup(work: Path) -> None:
        path = work / "run" / "metrics.csv"
        text = fn(path.read_text())
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _corrupt(path: Path, how: str = "flip") -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "zeros":
        path.write_bytes(bytes(len(data)))


def cat6() -> None:
    resume = cli("train", "--resume", "run", "--total-timesteps", 64 * 4)
    cases = [
        ("a garbage line in metrics.csv",
         lambda t: "".join(_lines(t)[:2] + ["garbage,line,\x01\x02\n"] + _lines(t)[2:]), [1, 2]),
        ("NUL padding at the end of metrics.csv", lambda t: t.encode() + b"\0" * 4096, [1, 2]),
        ("NUL bytes replacing the last row", lambda t: "".join(_lines(t)[:2]).encode()
         + b"\0" * len(_lines(t)[2]), [1]),
        ("an empty metrics.csv", lambda t: "", []),
        ("metrics.csv without its header", lambda t: "".join(_lines(t)[1:]), [1, 2]),
        ("a duplicated row", lambda t: "".join(_lines(t) + _lines(t)[1:2]), [1, 2]),
        ("rows out of order", lambda t: "".join(_lines(t)[:1] + _lines(t)[2:] + _lines(t)[1:2]),
         [1, 2]),
        ("a header of another version", lambda t: "".join(
            ["update,global_step,return\n"] + _lines(t)[1:]), [1, 2]),
        ("a row with a missing column", lambda t: "".join(
            _lines(t)[:2] + [_lines(t)[2].rsplit(",", 3)[0] + "\n"]), [1]),
        ("a row with a non-numeric update", lambda t: "".join(
            _lines(t)[:2] + ["x" + _lines(t)[2]]), [1]),
        ("invalid UTF-8 in metrics.csv", lambda t: t.encode() + b"\xff\xfe\xfd\n", [1, 2]),
    ]
    for label, edit, rows in cases:
        attempt(6, f"resume with {label}", resume,
                resumed_and_repaired(rows, "metrics.csv", aside="empty" not in label),
                setup=_metrics_edit(edit))
    attempt(6, "resume with CRLF line endings in metrics.csv", resume,
            either(resumed_and_repaired([1, 2], aside=False), resumed_and_repaired([1, 2])),
            setup=_metrics_edit(lambda t: t.replace("\n", "\r\n")))
    attempt(6, "resume with metrics.csv missing", resume,
            resumed_and_repaired([], "metrics.csv", aside=False),
            setup=lambda w: (w / "run" / "metrics.csv").unlink())
    attempt(6, "resume with rows past the checkpoint (a crash)", resume,
            resumed_and_repaired([1], aside=False, resumed_at=1),
            setup=lambda w: (w / "run" / "checkpoints" / "update_000002.safetensors").unlink())
    attempt(6, "resume with a half-written last row", resume,
            resumed_and_repaired([1, 2], aside=False),
            setup=_metrics_edit(lambda t: t + "3,192,1.5,"))
    for how in ("flip", "empty", "truncate", "zeros"):
        attempt(6, f"resume when the latest checkpoint is corrupt ({how})", resume,
                resumed_and_repaired([1], "update_000002", aside=False, resumed_at=1),
                setup=lambda w, how=how: _corrupt(w / "run" / "checkpoints" /
                                                  "update_000002.safetensors", how))
    attempt(6, "resume when the latest checkpoint has NaN weights", resume,
            resumed_and_repaired([1], "update_000002", aside=False, resumed_at=1),
            setup=lambda w: edit_latest(w / "run", lambda t, m: t[
                "model.actor.0.weight"].fill_(float("nan")) if m["update"] == 2 else None))
    attempt(6, "resume when every checkpoint is corrupt", resume, refused("update_00000"),
            setup=lambda w: [_corrupt(p) for p in (w / "run" / "checkpoints").glob("*")])
    attempt(6, "eval when the latest checkpoint is corrupt", cli("eval", "run", "--episodes", 1),
            either(refused("update_000002"),
                   works(lambda r, w: None if "update_000002" in r.stderr else
                         "weak: evaluated an older checkpoint without saying so")),
            setup=lambda w: _corrupt(w / "run" / "checkpoints" / "update_000002.safetensors"))
    attempt(6, "resume with a checkpoint renamed to a later update", resume,
            either(refused("update_000009"),
                   works(lambda r, w: consistent_run(w / "run")
                         if "update_000009" in r.stderr else "weak: no note")),
            setup=lambda w: shutil.copy(w / "run" / "checkpoints" / "update_000001.safetensors",
                                        w / "run" / "checkpoints" / "update_000009.safetensors"))
    attempt(6, "resume with a garbage config.toml", resume,
            either(refused("config.toml"), works(lambda r, w: consistent_run(w / "run"))),
            setup=lambda w: (w / "run" / "config.toml").write_text("{{{ not toml"))
    attempt(6, "resume when metrics.csv is a directory", resume, refused("metrics.csv"),
            setup=lambda w: ((w / "run" / "metrics.csv").unlink(),
                             (w / "run" / "metrics.csv").mkdir()))
    attempt(6, "garbage metrics.csv: nothing rewritten before the error (all ckpts corrupt)",
            resume, refused(),
            setup=lambda w: (_metrics_edit(lambda t: t + "garbage\n")(w),
                             [_corrupt(p) for p in (w / "run" / "checkpoints").glob("*")]))


# ================================================================== 7. envs that misbehave
def env_failure(*needles: str):
    """One line naming the env and what went wrong; the checkpoints that exist still load."""

    def judge(r: Result, work: Path, before: dict, after: dict) -> tuple[str, str]:
        verdict = refused(*needles, unchanged=False)(r, work, before, after)
        if verdict[0] == FAILED:
            return verdict
        for path in (work / "fresh" / "checkpoints").glob("*.safetensors"):
            try:
                read_ckpt(path)
            except Exception as e:  # noqa: BLE001
                return FAILED, f"checkpoint {path.name} damaged: {e}"
        return verdict

    return judge


def cat7() -> None:
    cases = [("WrongShape", "shape"), ("Raises", "license server"), ("NanReward", "reward"),
             ("StrReward", "reward"), ("FourTuple", "step"), ("ObjectObs", "observation"),
             ("InfObs", "observation"), ("ResetRaises", "reset"), ("ResetObsOnly", "reset"),
             ("BadTerminated", "terminated"), ("WrongDtypeAction", "action space"),
             ("HugeObsSpace", "memory")]
    for name, needle in cases:
        attempt(7, f"env {name} (in-process)",
                cli("train", *SMALL[2:], "--env", f"badenvs:{name}", "--total-timesteps", 64 * 6,
                    "--checkpoint-every", 1, "--run-dir", "fresh"),
                env_failure(f"badenvs:{name}", needle))
    for name, needle in (("WrongShape", "shape"), ("Raises", "license server"),
                         ("KillsWorker", "worker"), ("ExitInStep", "worker")):
        attempt(7, f"env {name} (--vector async)",
                cli("train", *SMALL[2:], "--env", f"badenvs:{name}", "--total-timesteps", 64 * 6,
                    "--checkpoint-every", 1, "--num-envs", 2, "--vector", "async",
                    "--run-dir", "fresh"),
                env_failure(f"badenvs:{name}", needle), timeout=90)


# ================================================================== 8. raw API errors
def _agent():
    return ppo.PPO(ppo.Config(env_id="CartPole-v1", rollout_steps=64, minibatch_size=32,
                              total_timesteps=64, tensorboard=False), verbose=False)


def _predict(obs_fn: Callable[[], Any]):
    def call() -> None:
        agent = _agent()
        agent.predict(obs_fn())
    return call


def cat8() -> None:
    obs_cases = [
        ("a wrong shape (3,)", lambda: np.zeros(3, np.float32), "shape"),
        ("a wrong batch shape (5, 3)", lambda: np.zeros((5, 3), np.float32), "shape"),
        ("a NaN observation", lambda: np.full(4, np.nan, np.float32), "finite"),
        ("an Inf in a batch", lambda: np.array([[0, 0, 0, np.inf]] * 2, np.float32), "finite"),
        ("strings", lambda: np.array(["a", "b", "c", "d"]), "obs"),
        ("None", lambda: None, "obs"),
        ("a 3-d batch", lambda: np.zeros((2, 2, 4), np.float32), "shape"),
        ("an empty batch", lambda: np.zeros((0, 4), np.float32), "obs"),
        ("a dict", lambda: {"obs": np.zeros(4)}, "obs"),
    ]
    for label, fn, needle in obs_cases:
        attempt(8, f"predict with {label}", api(_predict(fn)), refused(needle))

    def discrete_out_of_range() -> None:
        agent = ppo.PPO(ppo.Config(env_id="FrozenLake-v1", rollout_steps=64, minibatch_size=32,
                                   tensorboard=False), verbose=False)
        agent.predict(np.array(99))

    attempt(8, "predict with a Discrete observation out of range", api(discrete_out_of_range),
            refused("obs"))
    cfg_cases = [
        ("Config(lr='0.1')", lambda: ppo.Config(lr="0.1").validate(), "lr"),
        ("Config(epochs=4.5)", lambda: ppo.Config(epochs=4.5).validate(), "epochs"),
        ("Config(env_id=None)", lambda: ppo.Config(env_id=None).validate(), "env_id"),
        ("Config(run_dir=3)", lambda: ppo.Config(run_dir=3).validate(), "run_dir"),
        ("Config(device='cuda:x')", lambda: ppo.Config(device="cuda:x").validate(), "device"),
        ("Config(hidden_sizes=(64, 'a'))",
         lambda: ppo.Config(hidden_sizes=(64, "a")).validate(), "hidden_sizes"),
        ("Config(run_dir='a\\0b')", lambda: ppo.Config(run_dir="a\0b").validate(), "run_dir"),
        ("Config(env_id='')", lambda: ppo.Config(env_id="").validate(), "env_id"),
    ]
    for label, fn, needle in cfg_cases:
        attempt(8, label, api(fn), refused(needle))
    attempt(8, "PPO(config='CartPole-v1')", api(lambda: ppo.PPO("CartPole-v1")),
            refused("config"))
    attempt(8, "PPO(cfg, env=42)", api(lambda: ppo.PPO(ppo.Config(env_id="CartPole-v1"),
                                                       env=42)), refused("env"))
    attempt(8, "learn(total_timesteps=-5)", api(lambda: _agent().learn(total_timesteps=-5)),
            refused("total_timesteps"))
    attempt(8, "learn(total_timesteps='100')", api(lambda: _agent().learn(total_timesteps="100")),
            refused("total_timesteps"))
    attempt(8, "PPO.load(path, bogus=1)", api(lambda: ppo.PPO.load("run", bogus=1)),
            refused("bogus"))
    attempt(8, "PPO.load(path, lr='x')", api(lambda: ppo.PPO.load("run", lr="x")), refused("lr"))
    attempt(8, "PPO.load(42)", api(lambda: ppo.PPO.load(42)), refused())
    attempt(8, "PPO.resume of a directory that is no run",
            api(lambda: ppo.PPO.resume("nowhere")), refused("nowhere"))


# ================================================================== 9. smaller ones
def full_disk(work: Path) -> Result:
    # A file size limit: writes past 1000 bytes fail with EFBIG, as on a full disk ENOSPC:
    # config.toml fits, metrics.csv fails at its third row.
    return Proc(cli("train", *SMALL, "--total-timesteps", 64 * 3, "--run-dir", "fresh"), work,
                limits={"RLIMIT_FSIZE": 1000}).wait(60)


def cat9() -> None:
    for label, video, setup in (
            ("no extension", "episode", None), (".txt", "episode.txt", None),
            ("a directory", "run", None), ("/dev/full", "/dev/full", None),
            ("an .mp4 link to /dev/full", "x.mp4", _link("x.mp4", "/dev/full")),
            ("an .mp4 below a regular file", "afile/x.mp4",
             lambda w: (w / "afile").write_text("x"))):
        attempt(9, f"eval --video to {label}",
                cli("eval", "run", "--episodes", 1, "--video", video),
                refused("video"), setup=setup)
    attempt(9, "eval --video to a fresh .mp4 works",
            cli("eval", "run", "--episodes", 1, "--video", "out/ep.mp4"),
            works(lambda r, w: None if (w / "out" / "ep.mp4").stat().st_size > 1000 else
                  "no video written"))
    for env_id, needle in (("Nope-v0", "Nope-v0"), ("Pendulum-v1", "Pendulum-v1"),
                           ("Blackjack-v1", "Blackjack-v1"), ("ALE/Pong-v5", "ALE"),
                           ("badenvs:HugeObsSpace", "HugeObsSpace")):
        attempt(9, f"reference numpy --env {env_id}",
                cli("reference", "numpy", "--env", env_id, "--iterations", 1), refused(needle))
    attempt(9, "reference numpy --seed -1",
            cli("reference", "numpy", "--seed", -1, "--iterations", 1),
            refused("seed"))
    attempt(9, "full disk before the first metrics row", full_disk,
            refused("fresh/", unchanged=False), raw=True, timeout=70)
    attempt(9, "an error after the run directory exists is one line",
            cli("train", *SMALL[2:], "--env", "badenvs:NanReward", "--total-timesteps", 64 * 6,
                "--run-dir", "fresh"),
            refused("fresh", unchanged=False))
    attempt(9, "eval --seed -1", cli("eval", "run", "--episodes", 1, "--seed", -1),
            refused("seed"))
    attempt(9, "eval a file as the run directory", cli("eval", "run/metrics.csv"),
            refused("metrics.csv"))
    attempt(9, "`ppo` with no command",
            lambda: ppo.cli.main([], prog_name="ppo"),
            either(works(lambda r, w: None if "Commands" in r.stdout else "no help"),
                   refused()))
    attempt(9, "unknown command", cli("trian"), refused("trian"))
    attempt(9, "plot a directory that does not exist", cli("plot", "nowhere"),
            refused("nowhere"))
    attempt(9, "plot --out with an unknown extension",
            cli("plot", "run", "--out", "curves.xyz"), refused("xyz"))
    attempt(9, "plot objective --eps nan", cli("plot", "objective", "--eps", "nan", "--out",
                                               "o.png"), refused("eps"))
    attempt(9, "experiment --out is a regular file",
            cli("experiment", "lunarlander", "--out", "afile", "--seeds", 1, "--steps", 64),
            refused("afile"), setup=lambda w: (w / "afile").write_text("x"))
    attempt(9, "train --device cuda:x", cli("train", *SMALL, "--device", "cuda:x",
                                            "--run-dir", "fresh"), refused("device"))
    attempt(9, "train --run-dir ''", cli("train", *SMALL, "--total-timesteps", 64, "--run-dir",
                                         ""), refused("run"))
    attempt(9, "train --env with a path in it",
            cli("train", *SMALL[2:], "--env", "../../etc/passwd", "--run-dir", "fresh"),
            refused("passwd"))


# ------------------------------------------------------------------ main
def run_all(selected: list[Attempt], root: Path) -> list[tuple[Attempt, str, str, float]]:
    results = []
    for index, a in enumerate(selected, 1):
        work = root / f"{index:03d}"
        prepare(work)
        start = time.monotonic()
        r = None
        try:
            if a.setup is not None:
                a.setup(work)
            before = snapshot(work)
            r = a.run(work)
            after = snapshot(work)
            verdict, reason = a.judge(r, work, before, after)
        except Exception as e:  # noqa: BLE001 (a probe bug is reported, not fatal)
            verdict, reason = FAILED, f"probe error: {type(e).__name__}: {e}"
            traceback.print_exc()
        wall = time.monotonic() - start
        results.append((a, verdict, reason, wall))
        if os.environ.get("PROBE_VERBOSE") and verdict != GOOD and r is not None:
            print(textwrap.indent(r.stderr[:1500] + "\n...\n" + r.stderr[-1500:], "    | "))
        mark = {GOOD: ".", WEAK: "w", FAILED: "F"}[verdict]
        print(f"{mark} [{a.category}] {a.name}: {reason[:110]} ({wall:.1f}s)", flush=True)
        with contextlib.suppress(OSError):
            _make_writable(work)
            shutil.rmtree(work)
    return results


def _make_writable(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(Path(dirpath) / d, 0o755)


def report(results, path: Path, wall: float) -> str:
    lines = ["# Hostile probe of `ppo`", "",
             f"{len(results)} attempts in {wall:.0f} s; package at `{Path(ppo.__file__).parent}`.",
             "", "| category | good | weak | failed |", "|---|---:|---:|---:|"]
    totals = {GOOD: 0, WEAK: 0, FAILED: 0}
    for cat, title in CATEGORIES.items():
        counts = {v: sum(1 for a, vv, _, _ in results if a.category == cat and vv == v)
                  for v in totals}
        if sum(counts.values()):
            lines.append(f"| {cat}. {title} | {counts[GOOD]} | {counts[WEAK]} | "
                         f"{counts[FAILED]} |")
            for v in totals:
                totals[v] += counts[v]
    lines.append(f"| **all** | **{totals[GOOD]}** | **{totals[WEAK]}** | **{totals[FAILED]}** |")
    table = "\n".join(lines)
    for cat, title in CATEGORIES.items():
        rows = [(a, v, reason) for a, v, reason, _ in results if a.category == cat]
        if not rows:
            continue
        lines += ["", f"## {cat}. {title}", "", "| attempt | verdict | what happened |",
                  "|---|---|---|"]
        for a, v, reason in rows:
            cell = reason.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {a.name.replace('|', '/')} | {v} | {cell} |")
    path.write_text("\n".join(lines) + "\n")
    return table


def main() -> None:
    global BASE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated categories, e.g. 1,4")
    parser.add_argument("--match", help="only attempts whose name contains this text")
    parser.add_argument("--report", type=Path, default=Path("hostile_probe_report.md"))
    parser.add_argument("--list", action="store_true", help="list the attempts and exit")
    args = parser.parse_args()
    for register in (cat1, cat2, cat3, cat4, cat5, cat6, cat7, cat8, cat9):
        register()
    selected = ATTEMPTS
    if args.only:
        wanted = {int(c) for c in args.only.split(",")}
        selected = [a for a in selected if a.category in wanted]
    if args.match:
        selected = [a for a in selected if args.match.lower() in a.name.lower()]
    if args.list:
        for a in selected:
            print(f"[{a.category}] {a.name}")
        print(f"{len(selected)} attempts")
        return
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ppo-probe-") as tmp:
        root = Path(tmp)
        BASE = train_base(root)
        results = run_all(selected, root / "attempts")
    table = report(results, args.report, time.monotonic() - start)
    print()
    print(table)
    print(f"\nreport: {args.report}")


if __name__ == "__main__":
    main()
