"""Where the time per env step goes in the standard LunarLander setup (1 env x 2048 steps,
K 4, minibatch 64, 64-64 tanh shared trunk), today and with the Numba kernels.

Every figure is CPU time of this single-threaded process (`time.process_time`), so that it
holds on a shared machine; each the best of `--repeats` measurements. Components, in
microseconds per env step:

  - env-only: the ceiling, as defined in benchmarks/env_ceiling.py;
  - vector env: stepping the env as ppo builds it (InProcessVectorEnv of ReplayableEpisodes)
    with random actions, less env-only;
  - collector: `Collector.collect` (acting, storing, checks), less the vector env; with
    today's NumPy `InferencePolicy`, and with `kernels.act` in its place;
  - advantages: the frozen forward pass over the rollout and GAE, per step;
  - minibatch steps: 128 steps of 64 per 2048-step rollout (K 4), amortized per env step;
    `NumpyLearner.step` against `kernels.ppo_grad` + `kernels.clip_and_adam`.

It measures the engine as of this commit (Collector, InferencePolicy, NumpyLearner).

    python benchmarks/step_budget.py
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from env_ceiling import env_only  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "step_budget.md"
ENV_ID, T, MINIBATCH, EPOCHS = "LunarLander-v3", 2048, 64, 4


class KernelPolicy:
    """`InferencePolicy`'s acting interface on top of `kernels.act` (same noise stream)."""

    def __init__(self, policy, theta: np.ndarray, layout) -> None:
        from ppo import kernels

        self.inner = policy
        self.snapshot = kernels.policy_snapshot(theta, layout, kernels.TANH)
        self.kernels = kernels

    def noise(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return self.inner.noise(rng, shape)

    def sample(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return self.kernels.act(self.snapshot, obs, noise)


def cpu_us_per(fn, count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        tick = time.process_time()
        fn()
        best = min(best, time.process_time() - tick)
    return best / count * 1e6


def measure(repeats: int) -> dict[str, float]:
    import torch

    from ppo import kernels
    from ppo.advantages import gae
    from ppo.config import Config
    from ppo.envs import make_vector_env
    from ppo.numpy_learner import NumpyLearner
    from ppo.policy import ActorCritic, InferencePolicy
    from ppo.rollout import Collector

    torch.set_num_threads(1)
    cfg = Config(env_id=ENV_ID, tensorboard=False)
    out = {}
    out["env-only"] = min(1e6 / env_only(ENV_ID, 1, 20_000, seed)["cpu_sps"]
                          for seed in range(repeats))

    envs = make_vector_env(cfg)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(T)]

    def step_envs() -> None:
        for a in actions:
            envs.step(a)

    out["vector env"] = cpu_us_per(step_envs, T, repeats) - out["env-only"]

    torch.manual_seed(0)
    model = ActorCritic(8, envs.single_action_space, [64, 64], True)
    learner = NumpyLearner(model, torch.optim.Adam(model.parameters(), lr=3e-4, eps=1e-5), cfg)
    layout = kernels.mlp_layout(8, [64, 64], 4, True, False)
    for name, policy in (("numpy", InferencePolicy(model)),
                         ("numba", KernelPolicy(InferencePolicy(model), learner.theta, layout))):
        collector = Collector(envs, policy, np.random.default_rng(0), None, None)
        collector.reset(0)
        collector.collect(T, 0)  # warm-up (and compilation)
        out[f"collector ({name})"] = (cpu_us_per(lambda c=collector: c.collect(T, 0), T, repeats)
                                      - out["vector env"] - out["env-only"])
    rollout = collector.collect(T, 0)

    obs, acts = rollout.obs.reshape(T, -1), rollout.actions.reshape(T)

    def advantages() -> None:
        _, values = learner.evaluate(obs, acts)
        successors = learner.values(np.concatenate([rollout.last_obs, rollout.final_obs]))
        next_values = np.empty((T, 1), np.float32)
        next_values[:-1, 0] = values[1:]
        next_values[-1] = successors[:1]
        next_values[rollout.final_steps] = successors[1:]
        gae(rollout.rewards, values.reshape(T, 1), next_values, rollout.terminated,
            rollout.episode_end, cfg.gamma, cfg.gae_lambda)

    out["advantages"] = cpu_us_per(advantages, T, repeats)

    logp, values = learner.evaluate(obs, acts)
    rng = np.random.default_rng(0)
    adv = rng.standard_normal(T).astype(np.float32)
    returns = (values + rng.standard_normal(T)).astype(np.float32)
    learner.load_batch(obs, acts, logp, values)
    learner.set_advantages(adv, returns)
    steps_per_update = EPOCHS * T // MINIBATCH
    order = [rng.permutation(T)[:MINIBATCH] for _ in range(steps_per_update)]

    def numpy_steps() -> None:
        for index in order:
            learner.step(index)

    theta = learner.theta.copy()
    grad, m, v = (np.zeros_like(theta) for _ in range(3))
    coefs = kernels.PPOCoefs(0.2, True, 0.2, 0.5, 0.01, False, False)
    adam = kernels.AdamCoefs(3e-4, 0.9, 0.999, 1e-5, 0.5)

    def numba_steps() -> None:
        for step, index in enumerate(order, 1):
            kernels.ppo_grad(theta, grad, layout, kernels.TANH, obs, acts, logp, values, adv,
                             returns, index, coefs)
            kernels.clip_and_adam(theta, grad, m, v, step, adam)

    numba_steps()
    out["minibatch steps (numpy)"] = cpu_us_per(numpy_steps, T, repeats)
    out["minibatch steps (numba)"] = cpu_us_per(numba_steps, T, repeats)
    envs.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--note", help="free text for the results file, e.g. machine load")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    r = measure(args.repeats)
    for k, value in r.items():
        print(f"{k:28s} {value:6.1f} us/step", flush=True)
    today = ["vector env", "collector (numpy)", "advantages", "minibatch steps (numpy)"]
    kernels = ["vector env", "collector (numba)", "advantages", "minibatch steps (numba)"]
    env = r["env-only"]
    lines = ["# Where the time per env step goes (LunarLander-v3, 1 env x 2048, K 4, minibatch "
             "64)", "", f"- command: `python benchmarks/step_budget.py {' '.join(sys.argv[1:])}`",
             f"- CPU time of one single-threaded process, best of {args.repeats}; load average "
             f"(1 min) {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| us per env step | today (NumPy) | with the Numba kernels |", "|---|---|---|",
              f"| env-only (the ceiling) | {env:.1f} | {env:.1f} |"]
    for a, b in zip(today, kernels, strict=True):
        label = a.replace(" (numpy)", "")
        lines.append(f"| {label} | {r[a]:.1f} | {r[b]:.1f} |")
    over_today, over_kernels = sum(r[k] for k in today), sum(r[k] for k in kernels)
    lines += [f"| **all but the env** | **{over_today:.1f}** | **{over_kernels:.1f}** |",
              f"| ppo / env-only steps/s (by CPU time) | {env / (env + over_today):.2f} | "
              f"{env / (env + over_kernels):.2f} |"]
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
