"""Every hyperparameter of a run: its default, its meaning and its validation.

Defaults are the standard PPO settings (Schulman et al. 2017) with the details of the
reference implementations, as measured on LunarLander-v3 (README). Field help strings
feed `ppo train --help` directly.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """Bad user input: reported as one line, never as a traceback."""


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

    policy: str = _net(
        "auto",
        "Network kind: mlp (vector observations into MLPs), cnn (images through the Nature "
        "CNN of Mnih et al. 2015, other parts alongside, then the MLPs), lstm (an LSTM over "
        "the MLP or CNN features, its state carried through episodes) or auto (cnn for image "
        "observations, else mlp).",
        choices=("auto", "mlp", "cnn", "lstm"),
    )
    lstm_hidden_size: int = _net(128, "policy lstm: width of the LSTM's hidden state.")
    precision: str = _net(
        "float32",
        "Arithmetic of the image encoder (CNN): float32, or bfloat16 (autocast; weights, "
        "Adam, the MLPs and the losses stay float32), ~1.8x faster on CPUs with AVX512-BF16 "
        "or AMX and on recent GPUs.",
        choices=("float32", "bfloat16"),
    )
    hidden_sizes: list[int] = _net(
        [64, 64], "Hidden layer widths of each MLP (none: the heads act on the features).")
    actor_hidden_sizes: list[int] | None = _net(
        None, "Hidden widths of the actor when the networks are separate (default: hidden_sizes)."
    )
    critic_hidden_sizes: list[int] | None = _net(
        None, "Hidden widths of the critic when the networks are separate (default: hidden_sizes)."
    )
    activation: str = _net("tanh", "Hidden-layer activation (gelu: the torch learner only).",
                           choices=("tanh", "relu", "gelu"))
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
        """Raise ConfigError naming the first bad value; return self for chaining."""
        positive_ints = ("total_timesteps", "num_envs", "threads", "rollout_steps",
                         "minibatch_size", "epochs", "checkpoint_every", "max_nonfinite_steps",
                         "eval_episodes", "lstm_hidden_size",
                         "cg_iters", "line_search_steps")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "clip_eps", "value_clip_eps", "adam_eps", "obs_clip", "reward_clip",
                     "max_kl", "dist_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("vf_coef", "ent_coef", "max_grad_norm", "cg_damping"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.sde_sample_freq != -1 and self.sde_sample_freq < 1:
            raise ConfigError(f"sde_sample_freq must be -1 (once per rollout) or >= 1, got "
                              f"{self.sde_sample_freq}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1 when set, got {self.eval_every}")
        if self.stop_at_return is not None and not math.isfinite(self.stop_at_return):
            raise ConfigError(f"stop_at_return must be a finite number, got {self.stop_at_return}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ConfigError(f"target_kl must be > 0 when set, got {self.target_kl}")
        if self.minibatch_size > self.batch_size:
            raise ConfigError(
                f"minibatch_size {self.minibatch_size} is larger than the rollout "
                f"({self.rollout_steps} steps x {self.num_envs} envs = {self.batch_size})"
            )
        for name in ("hidden_sizes", "actor_hidden_sizes", "critic_hidden_sizes"):
            sizes = getattr(self, name)
            if sizes is not None and any(h < 1 for h in sizes):
                raise ConfigError(f"{name} must be positive widths, got {sizes}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(
                    f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}"
                )
        if not all(isinstance(k, str) for k in self.env_kwargs):
            raise ConfigError(f"env_kwargs keys must be strings, got {self.env_kwargs!r}")
        self.wrappers = [_wrapper_entry("wrappers", entry) for entry in self.wrappers]
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if self.learner == "numpy" and self.device != "cpu":
            raise ConfigError("learner numpy runs on the CPU only; use learner torch with cuda")
        if self.algo == "trpo":
            self._validate_trpo()
        if self.policy == "lstm":
            self._validate_recurrent()
        return self

    def _validate_recurrent(self) -> None:
        # Minibatches are whole env sequences, so that the LSTM sees each from its stored state.
        if self.algo == "trpo":
            raise ConfigError("policy lstm trains with algo ppo only, not trpo")
        if self.minibatch_size % self.rollout_steps:
            raise ConfigError(
                f"policy lstm trains on whole env sequences: minibatch_size must be a multiple "
                f"of rollout_steps ({self.rollout_steps}), got {self.minibatch_size}")
        if self.advantages_per_epoch:
            raise ConfigError("the ablation advantages_per_epoch takes feed-forward policies")
        if self.vector == "native":
            raise ConfigError("policy lstm needs envs reset on the step their episode ends: "
                              "use vector sync or async, not native")

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
    """Check a TOML value against the field's declared type, allowing int where float fits."""
    expected = {
        "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
        "float | None": (int, float), "str | None": (str,), "list[int]": (list,),
        "int | None": (int,),
        "list[int] | None": (list,), "dict[str, Any]": (dict,), "list[dict[str, Any]]": (list,),
    }[annotation]
    if isinstance(value, bool) and bool not in expected:
        raise ConfigError(f"{name} must be {annotation}, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{name} must be {annotation}, got {value!r}")
    if annotation == "list[dict[str, Any]]":
        return [_wrapper_entry(name, entry) for entry in value]
    if annotation.startswith("list[int]") and not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"{name} must be a list of integers, got {value!r}")
    return float(value) if "float" in annotation else value


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
    values = {RENAMED.get(k, k): v for k, v in values.items()}
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    typed = {k: _coerce(k, v, fields[k].type) for k, v in values.items() if v is not None}
    return Config(**typed).validate()


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file into a plain dict (validated later, with flags merged in)."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
