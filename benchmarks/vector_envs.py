"""Vector envs side by side: in-process, Gymnasium's AsyncVectorEnv, ppo's
SubprocessVectorEnv (workers x envs per worker, stepped whole or in two groups) and EnvPool.

Two loops, each case in a fresh single-threaded child process:

  - env-only: random actions drawn up front, `step` in a loop;
  - with an actor: each step's actions come from a 64-64 tanh MLP policy in NumPy
    (the policy ppo's collector uses) on the step's observations. With two
    groups the loop is pipelined: the workers step one group while the caller computes the
    actions of the other.

Reported: steps/s by wall-clock, and CPU microseconds per env step of the caller and of its
workers (what the design costs, whatever the cores it got). On a shared machine the
wall-clock figures depend on the load (see the load column), so the table adds what the CPU
costs imply for two idle cores, from a simple model: the workers' CPU spread over
min(workers, 2) cores, plus the caller's CPU in series with it (one group) or overlapped
with it (two groups: bounded by the total over two cores).

    pip install envpool            # optional
    python benchmarks/vector_envs.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RESULTS = Path(__file__).resolve().parent / "results" / "vector_envs.md"
# (kind, workers, groups); kind: inprocess, async, subprocess, envpool
CASES = [("inprocess", 0, 1), ("async", 0, 1), ("subprocess", 1, 1), ("subprocess", 2, 1),
         ("subprocess", 2, 2), ("subprocess", 4, 1), ("subprocess", 4, 2), ("envpool", 2, 1)]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make(kind: str, env_id: str, num_envs: int, workers: int, groups: int):
    from functools import partial

    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    from ppo.envs import InProcessVectorEnv
    from ppo.subprocess_vector import SubprocessVectorEnv

    fns = [partial(gym.make, env_id)] * num_envs
    if kind == "inprocess":
        return InProcessVectorEnv(fns)
    if kind == "async":
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    if kind == "subprocess":
        return SubprocessVectorEnv(fns, num_workers=workers, groups=groups)
    import envpool

    return envpool.make(env_id, env_type="gymnasium", num_envs=num_envs, num_threads=workers,
                        seed=0)


def run_case(kind: str, env_id: str, num_envs: int, workers: int, groups: int, steps: int,
             actor: bool) -> dict[str, float]:
    import numpy as np
    import torch
    from gymnasium.vector.utils import batch_space

    from ppo.config import Config
    from ppo.networks import ActorCritic
    from ppo.policy import make_policy
    from ppo.spaces import ActionSpec

    torch.manual_seed(0)
    envs = make(kind, env_id, num_envs, workers, groups)
    obs_space, action_space = envs.single_observation_space, envs.single_action_space
    rng = np.random.default_rng(0)
    obs, _ = envs.reset(seed=0) if kind != "envpool" else envs.reset()
    rounds = steps // num_envs
    spec = ActionSpec(action_space)
    policy = make_policy(ActorCritic(int(np.prod(obs_space.shape)), spec, Config()), spec)
    noise = policy.noise(rng, (rounds + 2, num_envs))

    def act(o: np.ndarray, t: int, rows: slice) -> np.ndarray:
        return spec.to_env(policy.sample(np.asarray(o, np.float32).reshape(len(o), -1),
                                         noise[t, rows]))

    batched = batch_space(action_space, num_envs)
    batched.seed(0)
    random_actions = [batched.sample() for _ in range(min(rounds, 1000))]
    pids = [p.pid for p in getattr(envs, "processes", [])]
    cpu_children = [_cpu_seconds(pid) for pid in pids]
    cpu, wall = time.process_time(), time.perf_counter()
    if groups == 1:
        for t in range(rounds):
            actions = act(obs, t, slice(None)) if actor else random_actions[t % 1000]
            obs = envs.step(actions)[0]
    else:  # pipelined: the workers step one group while the caller acts for the other
        parts = envs.group_envs
        for g, rows in enumerate(parts):
            envs.step_async(act(obs[rows], 0, rows) if actor else random_actions[0][rows], g)
        for t in range(1, rounds):
            for g, rows in enumerate(parts):
                group_obs = envs.step_wait(g)[0]
                actions = act(group_obs, t, rows) if actor else random_actions[t % 1000][rows]
                envs.step_async(actions, g)
        for g in range(len(parts)):
            envs.step_wait(g)
    wall = time.perf_counter() - wall
    caller_cpu = time.process_time() - cpu
    workers_cpu = sum(_cpu_seconds(pid) - before for pid, before in zip(pids, cpu_children,
                                                                          strict=True))
    envs.close()
    done = rounds * num_envs
    return {"steps": done, "wall_sps": done / wall,
            "cpu_us_per_step": (caller_cpu + workers_cpu) / done * 1e6,
            "caller_cpu_us_per_step": caller_cpu / done * 1e6,
            "workers_cpu_us_per_step": workers_cpu / done * 1e6, "load": os.getloadavg()[0]}


def _model_time(case: tuple[str, int, int], caller: float, workers: float) -> float | None:
    """Wall us per env step on two idle cores implied by the CPU costs (see the docstring);
    None where the model does not apply (threads inside the caller: EnvPool)."""
    kind, num_workers, groups = case
    if kind in ("inprocess", "envpool"):
        return caller if kind == "inprocess" else None
    num_workers = num_workers or 8  # AsyncVectorEnv: one process per env
    spread = workers / min(num_workers, 2)
    if groups == 1:
        return caller + spread
    return max(spread, (caller + workers) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default="LunarLander-v3,HalfCheetah-v5")
    parser.add_argument("--num-envs", default="8", help="comma-separated, e.g. 8,16")
    parser.add_argument("--steps", type=int, default=40_000, help="env steps per case")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--note", help="free text for the results file, e.g. machine load")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(*json.loads(args.child))))
        return

    try:
        import envpool  # noqa: F401
        cases = CASES
    except ImportError:
        cases = [c for c in CASES if c[0] != "envpool"]
    plan = [(env_id, n, case, actor) for env_id in args.envs.split(",")
            for n in map(int, args.num_envs.split(",")) for actor in (False, True)
            for case in cases]
    results: dict[tuple, list[dict]] = {key: [] for key in plan}
    for run in range(args.runs):
        for env_id, n, (kind, workers, groups), actor in plan:
            child = json.dumps([kind, env_id, n, workers, groups, args.steps, actor])
            out = subprocess.run([sys.executable, __file__, "--child", child], check=True,
                                 capture_output=True, text=True,
                                 env={**os.environ, **ONE_THREAD}).stdout
            r = json.loads(out.splitlines()[-1])
            results[(env_id, n, (kind, workers, groups), actor)].append(r)
            print(f"run {run + 1} {env_id} x{n} {kind} w{workers} g{groups} "
                  f"{'actor' if actor else 'env-only'}: {r['wall_sps']:.0f} steps/s, "
                  f"{r['cpu_us_per_step']:.1f} CPU us/step, load {r['load']:.1f}", flush=True)

    def name(kind: str, workers: int, groups: int) -> str:
        if kind == "inprocess":
            return "in-process (InProcessVectorEnv)"
        if kind == "async":
            return "Gymnasium AsyncVectorEnv (1 env per process)"
        if kind == "envpool":
            return f"EnvPool, {workers} threads"
        return f"SubprocessVectorEnv, {workers} workers" + (f", {groups} groups" if groups > 1
                                                            else "")

    lines = ["# Vector envs", "", f"- command: `python benchmarks/vector_envs.py "
             f"{' '.join(sys.argv[1:])}`",
             f"- {args.steps} env steps per case, {args.runs} runs (median), {os.cpu_count()} "
             "CPUs; every process niced (10) like the rest of the machine's work"]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "Wall-clock steps/s (x: against in-process in the same loop); CPU us per env "
              "step of the caller + its workers; model x: the speed-up over in-process on two "
              "idle cores that the CPU costs imply (see the docstring). load: 1-min load "
              "average at the end of the runs.", "",
              "| env | envs | vector env | env-only steps/s | x | CPU us/step | model x | with "
              "actor steps/s | x | CPU us/step | model x | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for env_id in args.envs.split(","):
        for n in map(int, args.num_envs.split(",")):
            base = {actor: statistics.median(r["wall_sps"] for r in results[
                (env_id, n, cases[0], actor)]) for actor in (False, True)}
            base_cpu = {actor: statistics.median(r["cpu_us_per_step"] for r in results[
                (env_id, n, cases[0], actor)]) for actor in (False, True)}
            for case in cases:
                cells = []
                for actor in (False, True):
                    runs = results[(env_id, n, case, actor)]
                    sps = statistics.median(r["wall_sps"] for r in runs)
                    caller = statistics.median(r["caller_cpu_us_per_step"] for r in runs)
                    workers = statistics.median(r["workers_cpu_us_per_step"] for r in runs)
                    model = _model_time(case, caller, workers)
                    cells += [f"{sps:,.0f}", f"{sps / base[actor]:.2f}",
                              f"{caller:.1f} + {workers:.1f}",
                              "-" if model is None else f"{base_cpu[actor] / model:.2f}"]
                load = max(r["load"] for actor in (False, True)
                           for r in results[(env_id, n, case, actor)])
                envs_per_worker = "" if case[1] == 0 or case[0] == "envpool" else \
                    f" ({n // case[1]} envs each)"
                lines.append(f"| {env_id} | {n} | {name(*case)}{envs_per_worker} | "
                             + " | ".join(cells) + f" | {load:.1f} |")
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
