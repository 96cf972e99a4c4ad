"""The env-only ceiling: how many steps per second the env alone runs, measured one way.

`ppo steps/s / env-only steps/s` is honest only if the denominator is always measured the
same way. This is that way (`env_only` below; `benchmarks/speed.py` should call it):

- Envs: `gymnasium.make(env_id)` with no render mode, one per env: Gymnasium's default
  wrappers for the id (time limit, order enforcing, passive env checker), nothing of ppo's
  (no episode recording, no vector-env class).
- Actions: uniform random over the action space, drawn before the clock starts for the
  whole run (a batched copy of the space, seeded), so drawing them is not timed.
- Stepping: in this process, the envs in turn (env 0, 1, ..., N-1, then again), each reset
  on the step its episode ends (terminated or truncated): the same work per step as
  ppo's in-process vector env, without stacking the results into arrays.
- Resets: env i is reset with seed + i once, then unseeded.
- Clock: wall-clock (`time.perf_counter`) and CPU time of the process (`time.process_time`)
  around the stepping loop only, after 1000 warm-up steps (imports, construction and the
  first resets are excluded). On an idle machine both agree; on a shared one the CPU figure
  is the stable one. A ratio must take both of its numbers with the same clock.
- One thread: OMP/OpenBLAS/MKL limited to 1 (MuJoCo and Box2D are single-threaded).

Random actions are not the policy's: a LunarLander episode under random actions is ~90 steps
and ends in a crash, a trained lander's hovers and lands over ~250-400 steps. Per-step cost
differs slightly with the state (contacts, resets amortized over fewer steps), so the ceiling
is the env's speed on random play, stated as such.

    python benchmarks/env_ceiling.py            # LunarLander-v3 and HalfCheetah-v5, 1 and 8 envs
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
RESULTS = Path(__file__).resolve().parent / "results" / "env_ceiling.md"
WARMUP = 1000
DEFAULT_CASES = [("LunarLander-v3", 1), ("LunarLander-v3", 8), ("HalfCheetah-v5", 1),
                 ("HalfCheetah-v5", 8)]


def env_only(env_id: str, num_envs: int, steps: int, seed: int = 0) -> dict[str, float]:
    """Steps/s of `num_envs` envs stepped in turn with random actions (see the module
    docstring): {"steps", "wall_s", "cpu_s", "wall_sps", "cpu_sps"}."""
    import gymnasium as gym
    from gymnasium.vector.utils import batch_space

    envs = [gym.make(env_id) for _ in range(num_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=seed + i)
    rounds = (steps + WARMUP) // num_envs
    space = batch_space(envs[0].action_space, rounds * num_envs)
    space.seed(seed)
    actions = space.sample()
    k = 0
    warmup_rounds = WARMUP // num_envs
    wall = cpu = 0.0
    for r in range(rounds):
        if r == warmup_rounds:
            wall, cpu, start = time.perf_counter(), time.process_time(), k
        for env in envs:
            _, _, terminated, truncated, _ = env.step(actions[k])
            k += 1
            if terminated or truncated:
                env.reset()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    counted = k - start
    for env in envs:
        env.close()
    return {"steps": counted, "wall_s": wall, "cpu_s": cpu, "wall_sps": counted / wall,
            "cpu_sps": counted / cpu}


def measure(env_id: str, num_envs: int, steps: int, seed: int) -> dict[str, float]:
    """`env_only` in a fresh, single-threaded child process."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps([env_id, num_envs, steps, seed])],
        check=True, capture_output=True, text=True, env={**os.environ, **ONE_THREAD}).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="timed steps per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--note", help="free text for the results file, e.g. machine load")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(env_only(*json.loads(args.child))))
        return

    results: dict[tuple[str, int], list[dict]] = {case: [] for case in DEFAULT_CASES}
    loads = []
    for run in range(args.runs):  # alternating, so that drift in load hits all cases alike
        for env_id, num_envs in DEFAULT_CASES:
            loads.append(os.getloadavg()[0])
            r = measure(env_id, num_envs, args.steps, run)
            results[(env_id, num_envs)].append(r)
            print(f"run {run + 1} {env_id} x{num_envs}: {r['wall_sps']:.0f} steps/s wall, "
                  f"{r['cpu_sps']:.0f} by CPU time", flush=True)

    def cell(values: list[float]) -> str:
        return (f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"
                if len(values) > 1 else f"{values[0]:,.0f}")

    lines = ["# Env-only ceiling", "",
             "Steps/s of the env alone, as defined in `benchmarks/env_ceiling.py`: "
             "`gymnasium.make(id)`, no render mode, random actions drawn up front, envs "
             "stepped in turn in one process with same-step resets, one thread; timed around "
             "the stepping loop after 1000 warm-up steps. Median (min-max) over runs.", "",
             f"- command: `python benchmarks/env_ceiling.py {' '.join(sys.argv[1:])}`",
             f"- {args.steps} timed steps per run, {args.runs} runs, cases alternating; load "
             f"average (1 min) at each start: {min(loads):.1f}-{max(loads):.1f} on "
             f"{os.cpu_count()} CPUs"]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| env | envs | steps/s (wall-clock) | steps/s (CPU time) | us per step (CPU) |",
              "|---|---|---|---|---|"]
    for (env_id, num_envs), runs in results.items():
        cpu = [r["cpu_sps"] for r in runs]
        lines.append(f"| {env_id} | {num_envs} | {cell([r['wall_sps'] for r in runs])} | "
                     f"{cell(cpu)} | {1e6 / statistics.median(cpu):.1f} |")
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
