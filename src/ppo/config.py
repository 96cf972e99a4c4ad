"""Every hyperparameter of a run: its default, its meaning and its validation.

Defaults are the seed's standard setup (Schulman 2017 for Atari/MuJoCo, the seed's
LunarLander exercise). Field help strings feed `ppo train --help` directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import re
import resource
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple


class ConfigError(ValueError):
    """Bad user input: reported as one line, never as a traceback."""


# Inclusive ranges of the integer settings. Past them no run can work: more steps than a
# float counts exactly, a seed NumPy and torch refuse, thread counts that crash OpenMP.
MAX_COUNT = 10**15
INT_RANGES = {
    "seed": (0, 2**63 - 1),
    "total_timesteps": (1, MAX_COUNT),
    "num_envs": (1, 4096),
    "threads": (1, 512),
    "rollout_steps": (1, 10**8),
    "minibatch_size": (1, 10**9),
    "epochs": (1, 10_000),
    "cg_iters": (1, 10_000),
    "line_search_steps": (1, 100),
    "max_nonfinite_steps": (1, 10**6),
    "checkpoint_every": (1, MAX_COUNT),
}
# (low, high, low excluded) of the float settings; every one must also be finite.
FLOAT_RANGES = {
    "lr": (0.0, 1.0, True),
    "adam_eps": (0.0, 1.0, True),
    "gamma": (0.0, 1.0, False),
    "gae_lambda": (0.0, 1.0, False),
    "clip_eps": (0.0, 1e9, True),  # 1000 is the ablation without clipping
    "value_clip_eps": (0.0, 1e9, True),
    "vf_coef": (0.0, 1e9, False),
    "ent_coef": (0.0, 1e9, False),
    "max_grad_norm": (0.0, 1e9, False),  # 0 turns the clip off
    "target_kl": (0.0, 1e9, True),
    "max_kl": (0.0, 1e9, True),
    "cg_damping": (0.0, 1e9, False),
    "init_log_std": (-20.0, 20.0, False),
    "obs_clip": (0.0, 1e9, True),
    "reward_clip": (0.0, 1e9, True),
    "dist_timeout": (0.0, 7 * 86400.0, True),
}
MAX_LAYERS, MAX_WIDTH = 64, 2**20
MAX_ASYNC_ENVS = 256  # one process each
MAX_TEXT = 4096  # env ids and paths


def _f(default: Any, help: str, **extra: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class Config:
    env_id: str = _f("LunarLander-v3", "Gymnasium env id, or 'module:Class' entry point.")
    seed: int = _f(0, "Seed for torch, NumPy, the envs and the action sampler.")
    total_timesteps: int = _f(1_500_000, "Env steps to train for, summed over envs.")
    num_envs: int = _f(1, "Parallel envs; each fills rollout_steps per update.")
    vector: str = _f(
        "auto",
        "Vectorization: sync (in-process), async (subprocesses), native (the env's own "
        "vectorized class) or auto (native when the env has one and num_envs >= 8, else sync).",
        choices=("auto", "sync", "async", "native"),
    )
    device: str = _f("cpu", "Torch device for the learner: cpu or cuda.")
    learner: str = _f(
        "auto",
        "Minibatch step: torch (plain autograd, any device), numpy (CPU fast path, same math) "
        "or auto (numpy on CPU).",
        choices=("auto", "torch", "numpy"),
    )
    threads: int = _f(1, "Torch CPU threads; 1 is fastest for small MLPs and deterministic.")

    rollout_steps: int = _f(2048, "Steps collected per env per update (the rollout length T).")
    minibatch_size: int = _f(64, "Samples per gradient step.")
    epochs: int = _f(4, "K: passes over each rollout, freshly shuffled each time.")
    lr: float = _f(3e-4, "Adam learning rate.")
    anneal_lr: bool = _f(False, "Decay the learning rate linearly to 0 over the run.")
    adam_eps: float = _f(1e-5, "Adam epsilon (1e-5 as in the reference implementations).")
    gamma: float = _f(0.99, "Discount factor.")
    gae_lambda: float = _f(0.95, "GAE bias-variance knob.")
    clip_eps: float = _f(0.2, "Clip range of the importance ratio: [1-eps, 1+eps].")
    clip_value: bool = _f(
        True,
        "Clip the value update around the rollout-time value. With a shared trunk it keeps "
        "large value gradients off the policy's features; with separate networks and "
        "unscaled returns it slows the critic (measured on LunarLander, README).",
    )
    value_clip_eps: float = _f(0.2, "Clip range of the value update.")
    vf_coef: float = _f(0.5, "Weight of the value loss.")
    ent_coef: float = _f(0.01, "Weight of the entropy bonus.")
    max_grad_norm: float = _f(0.5, "Global gradient-norm clip; 0 turns it off.")
    target_kl: float | None = _f(
        None, "Stop the epoch loop early once approx KL exceeds this; unset turns it off."
    )
    norm_adv: str = _f(
        "batch",
        "Advantage normalization: batch (the seed), minibatch (CleanRL, SB3) or off.",
        choices=("batch", "minibatch", "off"),
    )
    algo: str = _f(
        "ppo",
        "Policy update: ppo (clipped surrogate, K epochs of minibatches) or trpo (one "
        "natural-gradient step within a KL trust region; the critic is fitted with Adam over "
        "the same epochs and minibatches). trpo needs --no-shared-trunk.",
        choices=("ppo", "trpo"),
    )
    max_kl: float = _f(0.01, "TRPO: trust-region radius delta, the bound on mean KL(pi_old||pi).")
    cg_iters: int = _f(10, "TRPO: conjugate-gradient iterations for the step direction.")
    cg_damping: float = _f(0.1, "TRPO: damping added to the Fisher matrix (F + damping * I).")
    line_search_steps: int = _f(
        10, "TRPO: backtracking tries (step fractions 1, 1/2, 1/4, ...) before skipping the step."
    )

    max_nonfinite_steps: int = _f(
        10, "Stop after this many minibatch steps (TRPO: updates) in a row with a NaN/Inf "
        "loss or gradient (each one is skipped, not applied)."
    )

    hidden_sizes: list[int] = _f([64, 64], "Hidden layer widths of each MLP.")
    shared_trunk: bool = _f(
        True, "One trunk for policy and value (the seed's layer 3); learns LunarLander faster "
        "than two networks (measured, README). --no-shared-trunk for two networks."
    )
    init_log_std: float = _f(0.0, "Initial log standard deviation of a Gaussian policy.")
    normalize_obs: bool = _f(False, "Normalize observations by running mean and variance.")
    normalize_reward: bool = _f(
        False, "Scale rewards by the running std of the discounted return."
    )
    obs_clip: float = _f(10.0, "Clip normalized observations to +-obs_clip.")
    reward_clip: float = _f(10.0, "Clip scaled rewards to +-reward_clip.")

    # The seed's pitfalls, as switches for the experiments that show what each one costs.
    pitfall_recompute_advantages: bool = _f(
        False, "Pitfall: recompute GAE inside the epoch loop with the current value function."
    )
    pitfall_fresh_old_logprobs: bool = _f(
        False, "Pitfall: take pi_old from the current weights at every step, so ratio == 1."
    )

    run_dir: str | None = _f(None, "Run directory (default runs/<env>__<seed>__<time>).")
    checkpoint_every: int = _f(50, "Write a checkpoint every N updates (and always at the end).")
    tensorboard: bool = _f(True, "Write TensorBoard event files into the run directory.")
    dist_timeout: float = _f(
        300.0, "Under torchrun: seconds a rank waits for the others in a collective before it "
        "stops with an error (another rank died or hangs)."
    )

    @property
    def batch_size(self) -> int:
        return self.rollout_steps * self.num_envs

    @property
    def num_updates(self) -> int:
        return max(1, self.total_timesteps // self.batch_size)

    def validate(self) -> Config:
        """Raise ConfigError naming the first bad value; return self for chaining.

        Checks every field's type (an int is taken where a float fits, NumPy scalars as
        Python numbers), that every number is finite and in a range where a run can work,
        and the choices. Past the upper bounds a run fails on any machine, or crashes the
        process (threads); memory is checked separately, by `check_memory`.
        """
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), f.type))
        for name, (low, high) in INT_RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{name} must be in [{low}, {_big(high)}], got {value}")
        for name, (low, high, low_open) in FLOAT_RANGES.items():
            value = getattr(self, name)
            if value is None and name == "target_kl":
                continue
            if not math.isfinite(value) or value > high or value < low or (
                    low_open and value == low):
                interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
                raise ConfigError(f"{name} must be a finite number in {interval}, got {value}")
        if self.minibatch_size > self.batch_size:
            raise ConfigError(
                f"minibatch_size {self.minibatch_size} is larger than the rollout "
                f"({self.rollout_steps} steps x {self.num_envs} envs = {self.batch_size})"
            )
        if not 1 <= len(self.hidden_sizes) <= MAX_LAYERS or any(
                not 1 <= h <= MAX_WIDTH for h in self.hidden_sizes):
            raise ConfigError(f"hidden_sizes must be 1 to {MAX_LAYERS} widths in "
                              f"[1, {MAX_WIDTH}], got {_short(self.hidden_sizes)}")
        if self.vector == "async" and self.num_envs > MAX_ASYNC_ENVS:
            raise ConfigError(f"num_envs must be <= {MAX_ASYNC_ENVS} with vector async (one "
                              f"process per env), got {self.num_envs}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(
                    f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}"
                )
        for name in ("env_id", "run_dir"):
            value = getattr(self, name)
            if value is not None and (not value or len(value) > MAX_TEXT or any(
                    not ch.isprintable() for ch in value)):
                raise ConfigError(f"{name} must be 1 to {MAX_TEXT} printable characters, "
                                  f"got {value[:MAX_TEXT]!r}")
        if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", self.device):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.learner == "numpy" and self.device != "cpu":
            raise ConfigError("learner numpy runs on the CPU only; use learner torch with cuda")
        if self.algo == "trpo":
            self._validate_trpo()
        return self

    def _validate_trpo(self) -> None:
        # The natural-gradient step moves the actor alone: a shared trunk would move the
        # critic's features outside Adam and the critic's moves outside the trust region.
        if self.shared_trunk:
            raise ConfigError("algo trpo needs separate actor and critic networks: "
                              "set shared_trunk false (--no-shared-trunk)")
        if self.target_kl is not None:
            raise ConfigError("target_kl is PPO's early stop; algo trpo bounds the KL by max_kl")
        if self.pitfall_recompute_advantages or self.pitfall_fresh_old_logprobs:
            raise ConfigError("the pitfall switches apply to algo ppo only")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def replace(self, **changes: Any) -> Config:
        return from_dict({**self.to_dict(), **changes})

def _coerce(name: str, value: Any, annotation: str) -> Any:
    """`value` as the field's declared type, or ConfigError: an int is taken where a float
    fits, and NumPy scalars as Python numbers; a bool is never a number."""
    optional = annotation.endswith(" | None")
    if value is None and optional:
        return None
    kind = annotation.removesuffix(" | None")
    if kind == "list[int]":
        if not isinstance(value, list | tuple) or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{name} must be a list of integers, got {_short(value)}")
        return [int(v) for v in value]
    expected = {"str": str, "bool": bool, "int": numbers.Integral, "float": numbers.Real}[kind]
    if not isinstance(value, expected) or (isinstance(value, bool) and kind != "bool"):
        article = {"str": "a string", "bool": "true or false", "int": "an integer",
                   "float": "a number"}[kind]
        raise ConfigError(f"{name} must be {article}{' or unset' if optional else ''}, "
                          f"got {_short(value)} ({type(value).__name__})")
    return {"int": int, "float": float}.get(kind, lambda v: v)(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _big(n: int) -> str:
    return "2^63-1" if n == 2**63 - 1 else f"{n:,}"


def from_dict(values: dict[str, Any]) -> Config:
    """Build a validated Config; unknown keys and wrong types are errors that name them."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config is a table of settings, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    typed = {k: _coerce(k, v, fields[k].type) for k, v in values.items() if v is not None}
    return Config(**typed).validate()


# Bytes per network parameter: the weights, their gradient, Adam's two moments, the rollout
# policy's copy and the learner's working copies, with room to spare.
BYTES_PER_PARAMETER = 32
ASYNC_WORKER_BYTES = 64 << 20  # a subprocess env: a Python interpreter and the env


class MemoryEstimate(NamedTuple):
    """Bytes a run allocates, by what they hold."""

    network: int  # parameters, gradients, optimizer state and copies
    rollout: int  # the rollout buffers, the learner's batch and a forward pass over it
    workers: int  # subprocess envs

    @property
    def total(self) -> int:
        return self.network + self.rollout + self.workers


def estimate_memory(cfg: Config, obs_width: int, action_width: int) -> MemoryEstimate:
    """What `cfg` allocates for envs whose flat observations are `obs_width` floats and whose
    actions are `action_width` wide (Discrete: the number of actions); a generous estimate."""
    widths = cfg.hidden_sizes
    trunks = 1 if cfg.shared_trunk else 2
    trunk = sum((n_in + 1) * n_out
                for n_in, n_out in zip([obs_width, *widths[:-1]], widths, strict=True))
    heads = (widths[-1] + 1) * (action_width + 1) + action_width  # policy, value, log std
    network = (trunks * trunk + heads) * BYTES_PER_PARAMETER
    # Observations are held three times (rollout, learner batch, minibatch gathers); the
    # whole batch passes through the networks at once to freeze log-probs and values.
    per_sample = 12 * obs_width + 8 * action_width + 128 + 8 * trunks * sum(widths)
    workers = cfg.num_envs * ASYNC_WORKER_BYTES if cfg.vector == "async" else 0
    return MemoryEstimate(network, cfg.batch_size * per_sample, workers)


def available_memory() -> int | None:
    """Bytes this process can still allocate, or None where unknown: the least of the
    system's available memory, its cgroup's limit (a container's) and its address-space
    limit (ulimit -v). Read from /proc and /sys on Linux; psutil knows no cgroups."""
    candidates = []
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    with contextlib.suppress(OSError, ValueError):
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            candidates.append(int(limit) - int((cgroup / "memory.current").read_text()))
    with contextlib.suppress(OSError, ValueError, AttributeError):
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf(
                "SC_PAGE_SIZE")
            candidates.append(soft - used)
    if not candidates:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return max(0, min(candidates)) if candidates else None


def check_memory(cfg: Config, obs_width: int, action_width: int,
                 available: int | None = None) -> MemoryEstimate:
    """Refuse, with one line, a run whose estimate exceeds the memory available (default:
    `available_memory()`), before anything is allocated. With obs_width = action_width = 1
    it checks what the config alone implies, before the envs exist."""
    need = estimate_memory(cfg, obs_width, action_width)
    available = available_memory() if available is None else available
    if available is not None and need.total > available:
        parts = ", ".join(f"{label} {_gb(n)}" for label, n in (
            ("networks and optimizer", need.network), ("rollout", need.rollout),
            ("env processes", need.workers)) if n)
        raise ConfigError(
            f"this run needs about {_gb(need.total)} of memory ({parts}), more than the "
            f"{_gb(available)} available: lower hidden_sizes, num_envs or rollout_steps")
    return need


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


TOML_MAX_BYTES = 1 << 20


def read_regular_file(path: str | Path, what: str, limit: int,
                      error: type[Exception] = ConfigError,
                      inspect: Callable[[int, int], None] | None = None) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes, else `error`
    with one line naming it. Devices, FIFOs, sockets and directories are refused before any
    read: /dev/zero never ends, and opening a FIFO waits for a writer (hence O_NONBLOCK,
    which does nothing to a regular file). `inspect(fd, size)` may refuse the file from its
    first bytes (os.pread) before the whole of it is read."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is {_file_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise error(f"{what} {path} is {st.st_size:,} bytes, more than the {limit:,} "
                        f"a {what} may have")
        if inspect is not None:
            inspect(fd, st.st_size)
        chunks, size = [], 0
        while size <= limit:  # to limit + 1: a file that grew past the limit since fstat
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise error(f"{what} {path} is more than the {limit:,} bytes a {what} may have")
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def load_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """Read a TOML config file into a plain dict (validated later, with flags merged in)."""
    data = read_regular_file(path, what, TOML_MAX_BYTES)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid TOML: {e}") from None
