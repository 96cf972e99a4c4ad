"""Stable-Baselines3's PPO arguments as ppo's Config values, exactly where SB3's meaning and
ppo's coincide, and a ConfigError naming the argument where they don't.

SB3's defaults, spelled out in ppo's terms: separate 64-64 tanh actor and critic
(shared_trunk false), no value clipping, advantages normalized per minibatch, orthogonal
initialization, log std 0, Adam eps 1e-5, 2048 steps per env per rollout, minibatches of 64,
10 epochs, lr 3e-4, gamma 0.99, GAE lambda 0.95, clip range 0.2, no entropy bonus, value
weight 0.5, gradient norm clipped at 0.5. Like SB3, observations and rewards are not
normalized.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from ppo.config import ConfigError

# SB3's PPO defaults (stable_baselines3/ppo/ppo.py, PPO.__init__ and ActorCriticPolicy).
DEFAULTS: dict[str, Any] = {
    "learning_rate": 3e-4, "n_steps": 2048, "batch_size": 64, "n_epochs": 10, "gamma": 0.99,
    "gae_lambda": 0.95, "clip_range": 0.2, "clip_range_vf": None, "normalize_advantage": True,
    "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5, "use_sde": False,
    "sde_sample_freq": -1, "target_kl": None, "policy_kwargs": None,
}
ACTIVATIONS = {nn.Tanh: "tanh", nn.ReLU: "relu"}
# Progress remaining (1 at the start, 0 at the end) at which a schedule is checked.
PROBES = (1.0, 0.75, 0.5, 0.25, 0.0)


def schedule(name: str, value: float | Callable[[float], float]) -> tuple[float, bool]:
    """A constant, or an SB3 schedule (a function of the progress remaining, 1 -> 0), as
    (initial value, decays linearly to 0). Other schedules can't be honoured."""
    if not callable(value):
        return float(value), False
    start = float(value(1.0))
    points = [float(value(p)) for p in PROBES]
    if all(math.isclose(v, start, rel_tol=1e-9) for v in points):
        return start, False
    if all(math.isclose(v, start * p, rel_tol=1e-6, abs_tol=1e-12)
           for v, p in zip(points, PROBES, strict=True)):
        return start, True
    raise ConfigError(f"{name}: only constant schedules and linear ones decaying to 0 (as "
                      f"progress_remaining * initial value) map onto ppo; this one gives "
                      f"{', '.join(f'{v:.3g}' for v in points)} at progress remaining "
                      f"{', '.join(map(str, PROBES))}")


def _net_arch(net_arch: Any) -> dict[str, Any]:
    """SB3 >= 1.8: a list is the hidden sizes of both networks (nothing shared); dict(pi=,
    vf=) gives each its own."""
    if isinstance(net_arch, list) and all(isinstance(h, int) for h in net_arch):
        return {"hidden_sizes": list(net_arch)}
    if isinstance(net_arch, dict) and set(net_arch) <= {"pi", "vf"}:
        pi, vf = list(net_arch.get("pi", [])), list(net_arch.get("vf", []))
        return {"hidden_sizes": pi, "actor_hidden_sizes": pi, "critic_hidden_sizes": vf}
    raise ConfigError(f"policy_kwargs net_arch must be a list of layer widths or "
                      f"dict(pi=[...], vf=[...]), got {net_arch!r}")


def policy_values(policy_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """policy_kwargs as Config values (the feature extractor is handled by the caller)."""
    kwargs = dict(policy_kwargs or {})
    values: dict[str, Any] = {"shared_trunk": False, "hidden_sizes": [64, 64]}
    if "net_arch" in kwargs and kwargs["net_arch"] is not None:
        values.update(_net_arch(kwargs.pop("net_arch")))
    kwargs.pop("net_arch", None)
    if "activation_fn" in kwargs:
        fn = kwargs.pop("activation_fn")
        if fn not in ACTIVATIONS:
            known = ", ".join(c.__name__ for c in ACTIVATIONS)
            raise ConfigError(f"policy_kwargs activation_fn: ppo has {known}, not "
                              f"{getattr(fn, '__name__', fn)!r}")
        values["activation"] = ACTIVATIONS[fn]
    if "ortho_init" in kwargs:
        values["ortho_init"] = bool(kwargs.pop("ortho_init"))
    if "log_std_init" in kwargs:
        values["init_log_std"] = float(kwargs.pop("log_std_init"))
    optimizer = kwargs.pop("optimizer_kwargs", None) or {}
    if kwargs.pop("optimizer_class", None) not in (None, _adam()):
        raise ConfigError("policy_kwargs optimizer_class: ppo trains with Adam only")
    if set(optimizer) - {"eps"}:
        raise ConfigError(f"policy_kwargs optimizer_kwargs: only eps maps onto ppo (Adam's "
                          f"epsilon), not {', '.join(sorted(set(optimizer) - {'eps'}))}")
    values["adam_eps"] = float(optimizer.get("eps", 1e-5))
    fixed = {"share_features_extractor": True, "squash_output": False, "full_std": True,
             "use_expln": False, "normalize_images": True, "use_sde": None}
    for name, default in fixed.items():
        if name in kwargs and kwargs.pop(name) != default:
            raise ConfigError(f"policy_kwargs {name}: only {default} is supported")
    kwargs.pop("features_extractor_class", None)
    kwargs.pop("features_extractor_kwargs", None)
    if kwargs:
        raise ConfigError(f"policy_kwargs {', '.join(sorted(kwargs))}: not an SB3 "
                          "ActorCriticPolicy argument ppo knows")
    return values


def _adam() -> type:
    import torch

    return torch.optim.Adam


def config_values(args: dict[str, Any]) -> dict[str, Any]:
    """SB3 PPO constructor arguments (defaults filled in) as Config values."""
    lr, anneal_lr = schedule("learning_rate", args["learning_rate"])
    clip, anneal_clip = schedule("clip_range", args["clip_range"])
    if args["clip_range_vf"] is not None:
        raise ConfigError(
            "clip_range_vf: SB3 clips the value prediction and takes its squared error; ppo "
            "clips as OpenAI baselines' ppo2 (the larger of the clipped and unclipped errors), "
            "which ppo.PPO offers as clip_value / value_clip_eps; leave clip_range_vf None")
    if args["batch_size"] < 2:
        raise ConfigError(f"batch_size must be > 1 (as in SB3), got {args['batch_size']}")
    values = {
        "lr": lr, "anneal_lr": anneal_lr, "clip_eps": clip, "anneal_clip": anneal_clip,
        "clip_value": False, "rollout_steps": args["n_steps"],
        "minibatch_size": args["batch_size"], "epochs": args["n_epochs"],
        "gamma": args["gamma"], "gae_lambda": args["gae_lambda"],
        "norm_adv": "minibatch" if args["normalize_advantage"] else "off",
        "ent_coef": args["ent_coef"], "vf_coef": args["vf_coef"],
        "max_grad_norm": args["max_grad_norm"],
        # SB3 stops once approx KL passes 1.5 x target_kl (its ppo.py train()).
        "target_kl": None if args["target_kl"] is None else 1.5 * args["target_kl"],
        "normalize_obs": False, "normalize_reward": False,
        # gSDE as SB3's defaults make it (Raffin et al. 2022): the latent features detached,
        # one log std per (feature, action) entry.
        "use_sde": bool(args["use_sde"]), "sde_sample_freq": args["sde_sample_freq"],
        **policy_values(args["policy_kwargs"]),
    }
    return values
