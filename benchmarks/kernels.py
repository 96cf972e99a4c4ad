"""The Numba kernels (benchmarks/numba_kernels.py: a measured prototype, not used by the
engine) against the NumPy fast path, call by call.

Measured, one thread (BLAS included), each figure the best of 7 repeats of a timed loop, in
CPU time of the process:

  - act: one observation through the actor and a sampled action; the NumPy policy's
    `sample` (what the collector uses) against `kernels.act`.
  - minibatch step: PPO's loss, its gradient, the global grad-norm clip and Adam on 64 samples
    of a 2048-sample batch; the NumPy learner's `step` against `kernels.ppo_grad` +
    `kernels.clip_and_adam` (the torch learner for reference).
  - for LunarLander's sizes (8 observations, 4 actions, Categorical) and HalfCheetah's (17
    observations, 6 actions, Gaussian), 64-64 tanh shared and separate, 256-256 tanh separate.

And, each in a fresh process: the import of numba; the first call of every kernel with an
empty on-disk cache (compilation), and again with the cache filled (loading).

    python benchmarks/kernels.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

RESULTS = Path(__file__).resolve().parent / "results" / "kernels.md"
NETWORKS = [  # (env sizes, hidden, shared trunk)
    ("LunarLander", [64, 64], True),
    ("LunarLander", [64, 64], False),
    ("LunarLander", [256, 256], False),
    ("HalfCheetah", [64, 64], False),
    ("HalfCheetah", [256, 256], False),
]
SIZES = {"LunarLander": (8, 4, False), "HalfCheetah": (17, 6, True)}


def best_us(fn, number: int) -> float:
    """CPU microseconds per call (process time: stable on a shared machine)."""
    return min(timeit.repeat(fn, number=number, repeat=7, timer=time.process_time)) / number * 1e6


def per_call(env: str, hidden: list[int], shared: bool) -> dict[str, float]:
    import numba_kernels as kernels
    import numpy as np
    import torch
    from gymnasium import spaces

    from ppo.advantages import Batch
    from ppo.config import Config
    from ppo.learners import make_learner
    from ppo.networks import ActorCritic
    from ppo.policy import make_policy
    from ppo.spaces import ActionSpec

    torch.set_num_threads(1)
    obs_dim, n_actions, gaussian = SIZES[env]
    spec = ActionSpec(spaces.Box(-1, 1, (n_actions,), np.float32) if gaussian
                      else spaces.Discrete(n_actions))
    rng = np.random.default_rng(0)
    batch_size = 2048
    obs = rng.standard_normal((batch_size, obs_dim)).astype(np.float32)
    actions = (rng.standard_normal((batch_size, n_actions)).astype(np.float32) if gaussian
               else rng.integers(0, n_actions, (batch_size, 1)))

    def learner(kind: str):
        torch.manual_seed(0)
        cfg = Config(hidden_sizes=hidden, shared_trunk=shared, learner=kind)
        return make_learner(cfg, ActorCritic(obs_dim, spec, cfg), None)

    numpy_learner = learner("numpy")
    logp, values = numpy_learner.evaluate(obs, actions)
    advantages = rng.standard_normal(batch_size).astype(np.float32)
    returns = (values + rng.standard_normal(batch_size)).astype(np.float32)
    batch = Batch(obs, actions, None, logp, values, advantages, returns, 0.0, None)
    numpy_learner.load(batch)
    index = rng.permutation(batch_size)[:64]
    result = {}

    policy = make_policy(numpy_learner.model, spec)
    one = obs[:1]
    noise = policy.noise(rng, (1,))
    result["act numpy"] = best_us(lambda: policy.sample(one, noise), 5000)
    layout = kernels.mlp_layout(obs_dim, hidden, n_actions, shared, gaussian)
    theta = numpy_learner.theta.copy()
    snapshot = kernels.policy_snapshot(theta, layout, kernels.TANH)
    kernels.act(snapshot, one, noise)
    result["act numba"] = best_us(lambda: kernels.act(snapshot, one, noise), 5000)

    result["step numpy"] = best_us(lambda: numpy_learner.step(index), 200)
    grad, m, v = (np.zeros_like(theta) for _ in range(3))
    coefs = kernels.PPOCoefs(0.2, True, 0.2, 0.5, 0.01, False, False)
    adam = kernels.AdamCoefs(3e-4, 0.9, 0.999, 1e-5, 0.5)
    flat_actions = actions if gaussian else actions.reshape(-1)

    def grad_only() -> None:
        kernels.ppo_grad(theta, grad, layout, kernels.TANH, obs, flat_actions, logp, values,
                         advantages, returns, index, coefs)

    def numba_step() -> None:
        grad_only()
        kernels.clip_and_adam(theta, grad, m, v, 1, adam)

    numba_step()
    result["step numba"] = best_us(numba_step, 200)
    result["  of which grad"] = best_us(grad_only, 200)
    result["  of which clip + Adam"] = best_us(
        lambda: kernels.clip_and_adam(theta, grad, m, v, 1, adam), 500)

    torch_learner = learner("torch")
    torch_learner.load(batch)
    result["step torch"] = best_us(lambda: torch_learner.step(index), 30)
    return result


def first_calls() -> dict[str, float]:
    """Seconds to import numba and the kernels, then to make the first call of each kernel
    (compiled, or loaded from the cache given by NUMBA_CACHE_DIR)."""
    tick = time.perf_counter()
    import numba  # noqa: F401
    seconds = {"import numba": time.perf_counter() - tick}
    tick = time.perf_counter()
    import numba_kernels as kernels
    import numpy as np
    seconds["import ppo.kernels (after numba)"] = time.perf_counter() - tick
    rng = np.random.default_rng(0)
    for gaussian in (False, True):
        name = "Gaussian" if gaussian else "Categorical"
        layout = kernels.mlp_layout(8, [64, 64], 3, False, gaussian)
        theta = rng.standard_normal(layout.size).astype(np.float32) * 0.1
        obs = rng.standard_normal((128, 8)).astype(np.float32)
        actions = (rng.standard_normal((128, 3)).astype(np.float32) if gaussian
                   else rng.integers(0, 3, 128))
        vectors = [rng.standard_normal(128).astype(np.float32) for _ in range(4)]
        tick = time.perf_counter()
        snapshot = kernels.policy_snapshot(theta, layout, kernels.TANH)
        kernels.act(snapshot, obs[:1], np.zeros((1, 3)))
        seconds[f"first act, {name}"] = time.perf_counter() - tick
        tick = time.perf_counter()
        kernels.ppo_grad(theta, np.zeros_like(theta), layout, kernels.TANH, obs, actions,
                         *vectors, np.arange(64), kernels.PPOCoefs(0.2, True, 0.2, 0.5, 0.01,
                                                                   False, False))
        seconds[f"first minibatch gradient, {name}"] = time.perf_counter() - tick
    tick = time.perf_counter()
    kernels.clip_and_adam(theta, np.zeros_like(theta), np.zeros_like(theta),
                          np.zeros_like(theta), 1, kernels.AdamCoefs(3e-4, 0.9, 0.999, 1e-5, 0.5))
    seconds["first clip + Adam"] = time.perf_counter() - tick
    return seconds


def run_child(args: list[str], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                         text=True, env={**os.environ, **(env or {})}).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--note", help="free text for the results file, e.g. machine load")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "first-calls":
        print(json.dumps(first_calls()))
        return
    if args.child is not None:
        env, hidden, shared = json.loads(args.child)
        print(json.dumps(per_call(env, hidden, shared)))
        return

    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as cache:
        cold = run_child(["--child", "first-calls"], {"NUMBA_CACHE_DIR": cache})
        warm = run_child(["--child", "first-calls"], {"NUMBA_CACHE_DIR": cache})
    print(json.dumps({"cold": cold, "warm": warm}, indent=1), flush=True)
    calls = {}
    for env, hidden, shared in NETWORKS:
        name = f"{env} {'-'.join(map(str, hidden))} {'shared' if shared else 'separate'}"
        calls[name] = run_child(["--child", json.dumps([env, hidden, shared])])
        loads.append(os.getloadavg()[0])
        print(name, json.dumps(calls[name]), flush=True)

    lines = ["# Numba kernels against the NumPy fast path", "",
             "- command: `python benchmarks/kernels.py "
             f"{' '.join(sys.argv[1:])}`",
             f"- load average (1 min) before and during: {', '.join(f'{x:.1f}' for x in loads)} "
             f"on {os.cpu_count()} CPUs; one thread per process",
             "- per call: best of 7 repeats of a timed loop, CPU microseconds"]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "First calls, seconds, each in a fresh process (cold: empty on-disk cache, "
              "so every kernel is compiled; warm: loaded from the cache the cold run wrote):",
              "", "| | cold s | warm s |", "|---|---|---|"]
    lines += [f"| {k} | {cold[k]:.3f} | {warm[k]:.3f} |" for k in cold]
    columns = list(next(iter(calls.values())))
    lines += ["", "Microseconds per call (act: one observation; step: a minibatch of 64):", "",
              "| network | " + " | ".join(columns) + " |",
              "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{row[c]:.1f}" for c in columns) + " |"
              for name, row in calls.items()]
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
