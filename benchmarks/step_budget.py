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

It takes the collector, policy and learner from a `PPO` agent built with the standard
settings; the Numba figures swap in `kernels.act` for the policy's sampling and the kernels'
minibatch step for the learner's.

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
    """The collector's acting interface on top of `kernels.act` (same noise stream)."""

    def __init__(self, policy, theta: np.ndarray, layout) -> None:
        from ppo import kernels

        self.inner = policy
        self.snapshot = kernels.policy_snapshot(theta, layout, kernels.TANH)
        self.kernels = kernels

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def sample(self, obs: np.ndarray, noise: np.ndarray, mask=None) -> np.ndarray:
        return self.kernels.act(self.snapshot, obs, noise)[:, None]  # (N, 1) columns


def cpu_us_per(fn, count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        tick = time.process_time()
        fn()
        best = min(best, time.process_time() - tick)
    return best / count * 1e6


def measure(repeats: int) -> dict[str, float]:
    import torch

    from ppo import PPO, kernels
    from ppo.advantages import prepare_batch
    from ppo.config import Config
    from ppo.envs import make_vector_env

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
    envs.close()

    agent = PPO(cfg, verbose=False)
    agent.learn(total_timesteps=T)  # envs started, weights past their initialization
    collector, learner = agent.collector, agent.learner
    layout = kernels.mlp_layout(8, [64, 64], 4, True, False)
    numpy_policy = collector.policy
    for name, policy in (("numpy", numpy_policy),
                         ("numba", KernelPolicy(numpy_policy, learner.theta, layout))):
        collector.policy = policy
        collector.collect(T, 0)  # warm-up (and compilation)
        out[f"collector ({name})"] = (cpu_us_per(lambda: collector.collect(T, 0), T, repeats)
                                      - out["vector env"] - out["env-only"])
    collector.policy = numpy_policy
    rollout = collector.collect(T, 0)

    def advantages() -> None:
        prepare_batch(rollout, learner.evaluate, learner.values, cfg)

    out["advantages"] = cpu_us_per(advantages, T, repeats)

    batch = prepare_batch(rollout, learner.evaluate, learner.values, cfg)
    learner.load(batch)
    rng = np.random.default_rng(0)
    steps_per_update = EPOCHS * T // MINIBATCH
    order = [rng.permutation(len(batch.obs))[:MINIBATCH] for _ in range(steps_per_update)]

    def numpy_steps() -> None:
        for index in order:
            learner.step(index)

    theta = learner.theta.copy()
    grad, m, v = (np.zeros_like(theta) for _ in range(3))
    coefs = kernels.PPOCoefs(0.2, True, 0.2, 0.5, 0.01, False, False)
    adam = kernels.AdamCoefs(3e-4, 0.9, 0.999, 1e-5, 0.5)
    acts = batch.actions.reshape(-1)

    def numba_steps() -> None:
        for step, index in enumerate(order, 1):
            kernels.ppo_grad(theta, grad, layout, kernels.TANH, batch.obs, acts, batch.logp_old,
                             batch.values, batch.advantages, batch.returns, index, coefs)
            kernels.clip_and_adam(theta, grad, m, v, step, adam)

    numba_steps()
    out["minibatch steps (numpy)"] = cpu_us_per(numpy_steps, T, repeats)
    out["minibatch steps (numba)"] = cpu_us_per(numba_steps, T, repeats)
    agent.close()
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
