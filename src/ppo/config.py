"""Every hyperparameter of a run: its default, its meaning and its validation.

Defaults are the standard PPO settings (Schulman et al. 2017) with the details of the
reference implementations, as measured on LunarLander-v3 (README). Field help strings
feed `ppo train --help` directly.
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
from collections.abc import Callable, Mapping
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
    "eval_every": (1, MAX_COUNT),
    "eval_episodes": (1, 10**6),
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
    "stop_at_return": (-math.inf, math.inf, False),
}
MAX_LAYERS, MAX_WIDTH = 64, 2**20
MAX_ASYNC_ENVS = 256  # one process each
MAX_TEXT = 4096  # env ids and paths


# Sections of `ppo train --help`, in order; each field names its own in its metadata.
GROUPS = ("Env", "PPO", "Network", "Normalization", "Evaluation", "Run", "TRPO")


def _f(default: Any, help: str, group: str, **extra: Any) -> Any:
    metadata = {"help": help, "group": group, **extra}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _in_group(group: str) -> Callable[..., Any]:
    """The field maker for one section of `ppo train --help`."""
    return lambda default, help, **extra: _f(default, help, group, **extra)


_env, _ppo, _net, _norm, _eval, _run, _trpo = (
    _in_group(g) for g in ("Env", "PPO", "Network", "Normalization", "Evaluation", "Run", "TRPO"))


@dataclass
class Config:
    env_id: str = _env("LunarLander-v3", "Gymnasium env id; 'module:Id' imports module first "
                     "(which registers Id), 'module:Class' names an env class.")
    env_kwargs: dict[str, Any] = _env(
        {}, "Keyword arguments for the env's constructor (gymnasium.make), e.g. "
        "continuous=true; on the command line KEY=VALUE, repeatable, VALUE a TOML literal.")
    wrappers: list[dict[str, Any]] = _env(
        [], "Gymnasium wrappers applied to each env in order: tables with `path` "
        "('module:Class') and optional `kwargs`; on the command line the path, repeatable.")
    seed: int = _run(0, "Seed for torch, NumPy, the envs and the action sampler.")
    total_timesteps: int = _run(1_500_000, "Env steps to train for, summed over envs.")
    num_envs: int = _env(1, "Parallel envs; each fills rollout_steps per update.")
    vector: str = _env(
        "auto",
        "Vectorization: sync (in-process), async (subprocesses), native (the env's own "
        "vectorized class) or auto (native when the env has one and num_envs >= 8, else sync).",
        choices=("auto", "sync", "async", "native"),
    )
    device: str = _run("cpu", "Torch device for the learner: cpu or cuda.")
    learner: str = _run(
        "auto",
        "Minibatch step: torch (plain autograd, any device), numpy (CPU fast path, same math) "
        "or auto (numpy on CPU).",
        choices=("auto", "torch", "numpy"),
    )
    threads: int = _run(1, "Torch CPU threads; 1 is fastest for small MLPs and deterministic.")

    rollout_steps: int = _ppo(2048, "Steps collected per env per update (the rollout length T).")
    minibatch_size: int = _ppo(64, "Samples per gradient step.")
    epochs: int = _ppo(4, "K: passes over each rollout, freshly shuffled each time.")
    lr: float = _ppo(3e-4, "Adam learning rate.")
    anneal_lr: bool = _ppo(False, "Decay the learning rate linearly to 0 over the run.")
    adam_eps: float = _ppo(1e-5, "Adam epsilon (1e-5 as in the reference implementations).")
    gamma: float = _ppo(0.99, "Discount factor.")
    gae_lambda: float = _ppo(0.95, "GAE bias-variance knob.")
    clip_eps: float = _ppo(0.2, "Clip range of the importance ratio: [1-eps, 1+eps].")
    anneal_clip: bool = _ppo(False, "Decay the clip range linearly to 0 over the run.")
    clip_value: bool = _ppo(
        True,
        "Clip the value update around the rollout-time value. With a shared trunk it keeps "
        "large value gradients off the policy's features; with separate networks and "
        "unscaled returns it slows the critic (measured on LunarLander, README).",
    )
    value_clip_eps: float = _ppo(0.2, "Clip range of the value update.")
    vf_coef: float = _ppo(0.5, "Weight of the value loss.")
    ent_coef: float = _ppo(0.01, "Weight of the entropy bonus.")
    max_grad_norm: float = _ppo(0.5, "Global gradient-norm clip; 0 turns it off.")
    target_kl: float | None = _ppo(
        None, "Stop the epoch loop early once approx KL exceeds this; unset turns it off."
    )
    norm_adv: str = _ppo(
        "batch",
        "Advantage normalization: per rollout batch, per minibatch (CleanRL, SB3) or off.",
        choices=("batch", "minibatch", "off"),
    )
    algo: str = _ppo(
        "ppo",
        "Policy update: ppo (clipped surrogate, K epochs of minibatches) or trpo (one "
        "natural-gradient step within a KL trust region; the critic is fitted with Adam over "
        "the same epochs and minibatches). trpo needs --no-shared-trunk.",
        choices=("ppo", "trpo"),
    )
    max_kl: float = _trpo(
        0.01, "TRPO: trust-region radius delta, the bound on mean KL(pi_old||pi).")
    cg_iters: int = _trpo(10, "TRPO: conjugate-gradient iterations for the step direction.")
    cg_damping: float = _trpo(
        0.1, "TRPO: damping added to the Fisher matrix (F + damping * I).")
    line_search_steps: int = _trpo(
        10, "TRPO: backtracking tries (step fractions 1, 1/2, 1/4, ...) before skipping the step."
    )

    max_nonfinite_steps: int = _run(
        10, "Stop after this many minibatch steps (TRPO: updates) in a row with a NaN/Inf "
        "loss or gradient (each one is skipped, not applied)."
    )

    hidden_sizes: list[int] = _net(
        [64, 64], "Hidden layer widths of each MLP (none: the heads act on the features).")
    actor_hidden_sizes: list[int] | None = _net(
        None, "Hidden widths of the actor when the networks are separate (default: hidden_sizes)."
    )
    critic_hidden_sizes: list[int] | None = _net(
        None, "Hidden widths of the critic when the networks are separate (default: hidden_sizes)."
    )
    activation: str = _net("tanh", "Hidden-layer activation.", choices=("tanh", "relu"))
    shared_trunk: bool = _net(
        True, "One trunk for policy and value; learns LunarLander faster than two networks "
        "(measured, README). --no-shared-trunk for separate actor and critic networks."
    )
    ortho_init: bool = _net(
        True, "Orthogonal initialization (gain sqrt 2 hidden, 0.01 policy head, 1 value head); "
        "off: PyTorch's default initialization."
    )
    init_log_std: float = _net(
        0.0, "Initial log standard deviation of a Gaussian policy (with use_sde: of every "
        "entry of the exploration noise's weight matrix).")
    use_sde: bool = _net(
        False, "Generalized state-dependent exploration (gSDE, Raffin et al. 2022), for "
        "continuous actions: the noise added to the mean action is the actor's last hidden "
        "layer times a random matrix, held for sde_sample_freq steps, so exploration is smooth "
        "in time and its scale depends on the state.")
    sde_sample_freq: int = _net(
        -1, "With use_sde: draw each env's noise matrix anew every this many steps; -1 once "
        "per rollout.")
    normalize_obs: bool = _norm(False, "Normalize observations by running mean and variance.")
    normalize_reward: bool = _norm(
        False, "Scale rewards by the running std of the discounted return."
    )
    obs_clip: float = _norm(10.0, "Clip normalized observations to +-obs_clip.")
    reward_clip: float = _norm(10.0, "Clip scaled rewards to +-reward_clip.")

    # Ablations of two details of the standard algorithm, for the experiments that measure them.
    advantages_per_epoch: bool = _ppo(
        False, "Ablation: recompute GAE before every epoch with the current critic, instead of "
        "once per rollout."
    )
    old_logprobs_from_current: bool = _ppo(
        False, "Ablation: take pi_old's log-probs from the current weights at every minibatch "
        "step, so the ratio is always 1 and the clip never acts."
    )

    run_dir: str | None = _run(None, "Run directory (default runs/<env>__<seed>__<time>).")
    checkpoint_every: int = _run(50, "Write a checkpoint every N updates (and always at the end).")
    eval_every: int | None = _eval(
        None, "Evaluate every N updates on separate envs with their own seeds (observation "
        "normalization frozen): eval_return and eval_return_std columns, and "
        "checkpoints/best.safetensors for the best evaluation; unset: no evaluation.")
    eval_episodes: int = _eval(10, "Episodes per evaluation.")
    eval_deterministic: bool = _eval(
        True, "Evaluate the policy's most likely actions; --no-eval-deterministic samples.")
    stop_at_return: float | None = _eval(
        None, "Stop (with a checkpoint) once the evaluation return, or without evaluation the "
        "mean training return of the last 100 episodes, reaches this.")
    tensorboard: bool = _run(True, "Write TensorBoard event files into the run directory.")
    track: bool = _run(
        False, "Log the config and every metric to Weights & Biases (needs the wandb extra; "
        "WANDB_MODE=offline logs to the run directory without a server)."
    )
    wandb_project: str = _run("ppo", "Weights & Biases project of --track.")
    wandb_group: str | None = _run(
        None, "Weights & Biases group of --track (default for --seeds: the group directory's "
        "name)."
    )
    dist_timeout: float = _run(
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
            if value is not None and not low <= value <= high:
                raise ConfigError(f"{name} must be in [{low}, {_big(high)}], got {value}")
        for name, (low, high, low_open) in FLOAT_RANGES.items():
            value = getattr(self, name)
            if value is None and name in ("target_kl", "stop_at_return"):
                continue
            if not math.isfinite(value) or value > high or value < low or (
                    low_open and value == low):
                interval = (f"{'(' if low_open else '['}{low:g}, {high:g}]"
                            if math.isfinite(high) else "")
                raise ConfigError(f"{name} must be a finite number{' in ' if interval else ''}"
                                  f"{interval}, got {value}")
        if self.sde_sample_freq != -1 and self.sde_sample_freq < 1:
            raise ConfigError(f"sde_sample_freq must be -1 (once per rollout) or >= 1, got "
                              f"{self.sde_sample_freq}")
        if self.minibatch_size > self.batch_size:
            raise ConfigError(
                f"minibatch_size {self.minibatch_size} is larger than the rollout "
                f"({self.rollout_steps} steps x {self.num_envs} envs = {self.batch_size})"
            )
        for name in ("hidden_sizes", "actor_hidden_sizes", "critic_hidden_sizes"):
            sizes = getattr(self, name)
            if sizes is not None and (len(sizes) > MAX_LAYERS or any(
                    not 1 <= h <= MAX_WIDTH for h in sizes)):
                raise ConfigError(f"{name} must be at most {MAX_LAYERS} widths in "
                                  f"[1, {MAX_WIDTH}], got {_short(sizes)}")
        if self.vector == "async" and self.num_envs > MAX_ASYNC_ENVS:
            raise ConfigError(f"num_envs must be <= {MAX_ASYNC_ENVS} with vector async (one "
                              f"process per env), got {self.num_envs}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(
                    f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}"
                )
        if not all(isinstance(k, str) for k in self.env_kwargs):
            raise ConfigError(f"env_kwargs keys must be strings, got {self.env_kwargs!r}")
        self.wrappers = [_wrapper_entry("wrappers", entry) for entry in self.wrappers]
        for name in ("env_id", "run_dir", "wandb_project", "wandb_group"):
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
        if self.advantages_per_epoch or self.old_logprobs_from_current:
            raise ConfigError("the ablation switches advantages_per_epoch and "
                              "old_logprobs_from_current apply to algo ppo only")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def replace(self, **changes: Any) -> Config:
        return from_dict({**self.to_dict(), **changes})

FLAG_NAMES = {"env_id": "--env", "wrappers": "--wrapper"}


def flag_name(field_name: str) -> str:
    """The `ppo train` flag of a Config field: --env for env_id, --wrapper for wrappers,
    else --field-name."""
    return FLAG_NAMES.get(field_name, "--" + field_name.replace("_", "-"))


def to_flags(values: dict[str, Any]) -> list[str]:
    """Config values as `ppo train` arguments; None (unset) values are left out."""
    args = []
    for name, value in values.items():
        flag = flag_name(name)
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif name == "env_kwargs":
            args += [a for k, v in value.items() for a in (flag, f"{k}={_toml_literal(v)}")]
        elif name == "wrappers":
            if any(w.get("kwargs") for w in value):
                raise ConfigError("wrapper kwargs can't be given as flags; use a config file")
            args += [a for w in value for a in (flag, w["path"])]
        elif isinstance(value, list):
            args += [flag, ",".join(map(str, value))]
        elif value is not None:
            args += [flag, str(value)]
    return args


def _toml_literal(value: Any) -> str:
    """A value as TOML writes it (what --env-kwargs reads back)."""
    import tomli_w

    return tomli_w.dumps({"v": value})[len("v = "):].strip()


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
    if kind == "list[dict[str, Any]]":
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {_short(value)}")
        return [_wrapper_entry(name, entry) for entry in value]
    expected = {"str": str, "bool": bool, "int": numbers.Integral, "float": numbers.Real,
                "dict[str, Any]": dict}[kind]
    if not isinstance(value, expected) or (isinstance(value, bool) and kind != "bool"):
        article = {"str": "a string", "bool": "true or false", "int": "an integer",
                   "float": "a number", "dict[str, Any]": "a table"}[kind]
        raise ConfigError(f"{name} must be {article}{' or unset' if optional else ''}, "
                          f"got {_short(value)} ({type(value).__name__})")
    return {"int": int, "float": float}.get(kind, lambda v: v)(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _big(n: int) -> str:
    return "2^63-1" if n == 2**63 - 1 else f"{n:,}"


# Keys renamed since runs were first saved: old config files and checkpoints still load.
RENAMED = {"pitfall_recompute_advantages": "advantages_per_epoch",
           "pitfall_fresh_old_logprobs": "old_logprobs_from_current"}


def _wrapper_entry(name: str, entry: Any) -> dict[str, Any]:
    """One wrapper: {"path": "module:Class", "kwargs": {...}}; a bare string is a path."""
    if isinstance(entry, str):
        entry = {"path": entry}
    if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
            and set(entry) <= {"path", "kwargs"} and isinstance(entry.get("kwargs", {}), dict)):
        raise ConfigError(f"{name} entries must be tables with a string `path` ('module:Class') "
                          f"and an optional `kwargs` table, got {entry!r}")
    if ":" not in entry["path"]:
        raise ConfigError(f"wrapper path must be 'module:Class', got {entry['path']!r}")
    return {"path": entry["path"], "kwargs": dict(entry.get("kwargs", {}))}


def from_dict(values: dict[str, Any]) -> Config:
    """Build a validated Config; unknown keys and wrong types are errors that name them."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config is a table of settings, got {type(values).__name__}")
    values = {RENAMED.get(k, k): v for k, v in values.items()}
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
    actions are `action_width` wide (Discrete: the number of actions); a generous estimate
    of the built-in networks."""
    if cfg.shared_trunk:
        trunks = [cfg.hidden_sizes]
    else:
        trunks = [cfg.actor_hidden_sizes or cfg.hidden_sizes,
                  cfg.critic_hidden_sizes or cfg.hidden_sizes]
    params = 0
    for widths in trunks:
        params += sum((n_in + 1) * n_out
                      for n_in, n_out in zip([obs_width, *widths[:-1]], widths, strict=True))
    last = [widths[-1] if widths else obs_width for widths in trunks]
    params += (last[0] + 1) * action_width + (last[-1] + 1) + action_width  # heads, log std
    # Observations are held three times (rollout, learner batch, minibatch gathers); the
    # whole batch passes through the networks at once to freeze log-probs and values.
    per_sample = 12 * obs_width + 8 * action_width + 128 + 8 * sum(map(sum, trunks))
    workers = cfg.num_envs * ASYNC_WORKER_BYTES if cfg.vector == "async" else 0
    return MemoryEstimate(params * BYTES_PER_PARAMETER, cfg.batch_size * per_sample, workers)


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


def named_imports(values: Mapping[str, Any]) -> dict[str, str]:
    """What a config's values would make ppo import, as {'module:...' path: how to name it
    yourself}: an env id with a module part ('module:Class' or 'module:Id'), and each
    wrapper path."""
    found = {}
    env_id = values.get("env_id")
    if isinstance(env_id, str) and ":" in env_id:
        found[env_id] = f"--env {env_id} (in Python: env_id={env_id!r})"
    for entry in values.get("wrappers") or []:
        path = entry.get("path") if isinstance(entry, dict) else entry
        if isinstance(path, str):
            found[path] = f"--wrapper {path} (in Python: wrappers=[{path!r}])"
    return found


def refuse_unnamed_imports(from_file: Mapping[str, Any], named: Mapping[str, Any],
                           origin: str) -> None:
    """ConfigError if values read from `origin` (a checkpoint, a config file, a preset) would
    make ppo import a module the user did not name too (in `named`: the command line, or
    the arguments of their own code). Importing a module runs its code: a file never makes
    ppo do that on its own say-so."""
    mine = named_imports(named)
    for path, how in named_imports(from_file).items():
        if path not in mine:
            what = "env" if path == from_file.get("env_id") else "wrapper"
            raise ConfigError(
                f"{origin} names {what} {path!r}, which would import module "
                f"{path.split(':', 1)[0]!r}; ppo imports no module on a file's say-so: name "
                f"it yourself with {how}")


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
