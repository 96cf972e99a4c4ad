"""Speed of `ppo` against Stable-Baselines3 and against the env alone, side by side.

Workloads (LunarLander-v3, the standard setup: minibatch 64, K=4, lr 3e-4, eps 0.2,
entropy 0.01, gamma 0.99, lambda 0.95, vf 0.5, grad clip 0.5, value clipping 0.2):

  1. 1 env, 2048-step rollouts: `ppo` against SB3 configured the same way.
  2. 8 envs x 256-step rollouts: the same pair.
  3. env-only: the same env(s) stepped with random actions, no learning: the ceiling
     (1 env for workload 1, 8 envs stepped in turn for workload 2).

Every measurement runs in its own child process (`--child`), one thread, the seeds of its
round, in the order ppo, SB3, env-only, ppo, SB3, env-only, ... so that drift in the
machine's load hits all three alike. Steps/s is measured inside the child around training
only; start-up (interpreter, imports, construction) is reported apart, as is the time of
a whole 2048-step `ppo train`. Peak memory is the child's max RSS.

    pip install -e ".[bench]"
    python benchmarks/speed.py                      # 200k steps, 3 runs, workloads 1,2,3
    python benchmarks/speed.py --steps 8192 --runs 1
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ENV_ID = "LunarLander-v3"
RESULTS = Path(__file__).resolve().parent / "results" / "speed.md"
# The standard PPO hyperparameters (Schulman et al. 2017), spelled out so that a change of
# `ppo`'s defaults cannot silently change the benchmark.
MINIBATCH, EPOCHS, LR, CLIP, ENT, GAMMA, LAMBDA, VF, GRAD_CLIP = (
    64, 4, 3e-4, 0.2, 0.01, 0.99, 0.95, 0.5, 0.5)
ADAM_EPS = 1e-5
SETTINGS = {1: ("1 env x 2048 steps", 1, 2048), 2: ("8 envs x 256 steps", 8, 256)}
TIMING_COLUMNS = ("time_env", "time_act", "time_advantages", "time_optimize")
# One thread each: torch is limited in the child, the BLAS behind NumPy here.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------------- children
def child_ppo(num_envs: int, rollout_steps: int, steps: int, seed: int) -> dict:
    import torch

    from ppo.agent import PPO
    from ppo.config import Config

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(
            env_id=ENV_ID, seed=seed, total_timesteps=steps, num_envs=num_envs,
            rollout_steps=rollout_steps, minibatch_size=MINIBATCH, epochs=EPOCHS, lr=LR,
            adam_eps=ADAM_EPS, gamma=GAMMA, gae_lambda=LAMBDA, clip_eps=CLIP,
            clip_value=True, value_clip_eps=CLIP, vf_coef=VF, ent_coef=ENT,
            max_grad_norm=GRAD_CLIP, threads=1, run_dir=str(Path(tmp) / "run"),
            tensorboard=False,
        )
        agent = PPO(cfg, verbose=False)
        start_wall, tick = time.time(), time.perf_counter()
        agent.learn()
        train_s = time.perf_counter() - tick
        agent.close()
        with open(Path(tmp) / "run" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    sums = {c: sum(float(r[c]) for r in rows) for c in (*TIMING_COLUMNS, "time_total")}
    return {"steps": agent.global_step, "train_s": train_s, "start_wall": start_wall,
            "timings": sums}


def child_sb3(num_envs: int, rollout_steps: int, steps: int, seed: int) -> dict:
    import torch
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    # make_vec_env: DummyVecEnv of Monitor-wrapped envs, what SB3 itself builds from an id.
    # But not its default render_mode="rgb_array": LunarLander then adds a Box2D particle
    # per engine firing that only render() clears, so its step slows as episodes lengthen
    # (2-3x by 200k steps). ppo and env-only step the env with no render mode.
    envs = make_vec_env(ENV_ID, n_envs=num_envs, seed=seed, env_kwargs={"render_mode": None})
    # MlpPolicy's defaults already are the standard network: separate 64-64 tanh actor and
    # critic, orthogonal init. SB3's Adam eps is 1e-5 by default; set anyway, as ppo's.
    model = SB3PPO(
        "MlpPolicy", envs, n_steps=rollout_steps, batch_size=MINIBATCH, n_epochs=EPOCHS,
        learning_rate=LR, gamma=GAMMA, gae_lambda=LAMBDA, clip_range=CLIP,
        clip_range_vf=CLIP, ent_coef=ENT, vf_coef=VF, max_grad_norm=GRAD_CLIP,
        policy_kwargs={"optimizer_kwargs": {"eps": ADAM_EPS}}, seed=seed, device="cpu",
        verbose=0,
    )
    start_wall, tick = time.time(), time.perf_counter()
    model.learn(total_timesteps=steps)
    train_s = time.perf_counter() - tick
    return {"steps": model.num_timesteps, "train_s": train_s, "start_wall": start_wall}


def child_env(num_envs: int, rollout_steps: int, steps: int, seed: int) -> dict:
    # No torch here: the ceiling is the env alone, and importing torch would only add memory.
    import gymnasium as gym
    from gymnasium.vector.utils import batch_space

    envs = [gym.make(ENV_ID) for _ in range(num_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=seed + i)
    rounds = steps // num_envs
    # Draw every action up front, so the ceiling counts env stepping only.
    action_space = batch_space(envs[0].action_space, rounds * num_envs)
    action_space.seed(seed)
    actions = action_space.sample()
    start_wall, tick = time.time(), time.perf_counter()
    k = 0
    for _ in range(rounds):
        for env in envs:
            _, _, terminated, truncated, _ = env.step(actions[k])
            k += 1
            if terminated or truncated:
                env.reset()
    train_s = time.perf_counter() - tick
    return {"steps": k, "train_s": train_s, "start_wall": start_wall}


CHILDREN = {"ppo": child_ppo, "SB3": child_sb3, "env-only": child_env}


# ---------------------------------------------------------------------- parent
def measure(impl: str, workload: int, steps: int, seed: int) -> dict:
    """Run one child; add its peak RSS (from wait4, so of that process alone) and start-up."""
    _, num_envs, rollout_steps = SETTINGS[workload]
    cmd = [sys.executable, __file__, "--child", impl, "--num-envs", str(num_envs),
           "--rollout-steps", str(rollout_steps), "--steps", str(steps), "--seed", str(seed)]
    spawned = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, **ONE_THREAD},
                            text=True)
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"child {impl} (workload {workload}) failed with status {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    result["startup_s"] = result["start_wall"] - spawned
    result["sps"] = result["steps"] / result["train_s"]
    return result


def measure_cli_startup() -> dict:
    """A whole `ppo train` of one 2048-step update, as a user runs it: the bound on the time
    from the command to its first update (which it includes, with the final checkpoint)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        # The console script beside this interpreter: exactly what a user types.
        cmd = [str(Path(sys.executable).with_name("ppo")), "train", "--quiet",
               "--total-timesteps", "2048", "--no-tensorboard", "--run-dir", str(run_dir)]
        tick = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total = time.perf_counter() - tick
        with open(run_dir / "metrics.csv") as f:
            update_s = float(next(csv.DictReader(f))["time_total"])
    return {"total_s": total, "update_s": update_s}


def plan(workloads: set[int]) -> list[tuple[str, int]]:
    """One round: per setting, ppo, SB3 and its env-only ceiling, in that order."""
    order = []
    for workload in (1, 2):
        if workload in workloads:
            order += [("ppo", workload), ("SB3", workload)]
        if 3 in workloads:
            order.append(("env-only", workload))
    return order


def spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return (f"{format(statistics.median(values), fmt)} "
            f"({format(min(values), fmt)}-{format(max(values), fmt)})")


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def report(results: dict, cli: list[dict], args: argparse.Namespace, started: str) -> str:
    lines = [
        "# Speed benchmark",
        "",
        f"- date: {started}",
        f"- machine: {os.cpu_count()} CPUs (`nproc` {len(os.sched_getaffinity(0))}), "
        f"{cpu_model()}, Python {platform.python_version()}",
        f"- torch {version('torch')}, gymnasium {version('gymnasium')}, "
        f"stable-baselines3 {version('stable-baselines3')}",
        f"- {ENV_ID}, {args.steps} steps per run, {args.runs} run(s) each, alternating "
        "ppo / SB3 / env-only, one thread each, seed = run index",
        f"- command: `python benchmarks/speed.py {' '.join(sys.argv[1:])}`",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "Steps/s: median (min-max) over runs, training only. Start-up: from spawning "
              "the child to the start of training (interpreter, imports, env and model).", "",
              "| workload | impl | steps/s | peak RSS MiB | start-up s |",
              "|---|---|---|---|---|"]
    for (impl, workload), runs in results.items():
        lines.append(
            f"| {SETTINGS[workload][0]} | {impl} | {spread([r['sps'] for r in runs], '.0f')} "
            f"| {spread([r['rss_mib'] for r in runs], '.0f')} "
            f"| {spread([r['startup_s'] for r in runs], '.2f')} |")

    def median_sps(key: tuple[str, int]) -> float | None:
        return statistics.median(r["sps"] for r in results[key]) if key in results else None

    lines += ["", "| workload | ppo / SB3 | ppo / env-only |", "|---|---|---|"]
    for workload in (1, 2):
        ppo = median_sps(("ppo", workload))
        if ppo is None:
            continue
        ratios = [median_sps((other, workload)) for other in ("SB3", "env-only")]
        cells = ["-" if r is None else f"{ppo / r:.2f}x" for r in ratios]
        lines.append(f"| {SETTINGS[workload][0]} | {cells[0]} | {cells[1]} |")

    lines += ["", "Where ppo's training time goes (metrics.csv timings summed over updates "
              "and runs, % of the training wall time). act: action selection; advantages: "
              "the frozen forward pass and GAE; optimize: the K epochs of minibatch steps; "
              "rollout other: the rest of each update (buffers, episode stats); logging: "
              "wall time outside the updates (metrics.csv, checkpoints).", "",
              "| workload | env | act | advantages | optimize | rollout other | logging |",
              "|---|---|---|---|---|---|---|"]
    for workload in (1, 2):
        runs = results.get(("ppo", workload))
        if not runs:
            continue
        wall = sum(r["train_s"] for r in runs)
        parts = [sum(r["timings"][c] for r in runs) for c in TIMING_COLUMNS]
        in_updates = sum(r["timings"]["time_total"] for r in runs)
        parts += [in_updates - sum(parts), wall - in_updates]
        lines.append(f"| {SETTINGS[workload][0]} | "
                     + " | ".join(f"{100 * p / wall:.1f}%" for p in parts) + " |")

    if cli:
        totals = [c["total_s"] for c in cli]
        before = [c["total_s"] - c["update_s"] for c in cli]
        lines += ["", "`ppo train --quiet --total-timesteps 2048 --no-tensorboard` end to end "
                  "(one update; target: first update within 5 s):", "",
                  "| whole command s | its one update s | whole minus the update s |",
                  "|---|---|---|",
                  f"| {spread(totals, '.2f')} | {spread([c['update_s'] for c in cli], '.2f')} "
                  f"| {spread(before, '.2f')} |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200_000, help="env steps per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--workloads", default="1,2,3",
                        help="comma-separated subset of 1 (1 env), 2 (8 envs), 3 (env-only)")
    parser.add_argument("--no-cli", action="store_true",
                        help="skip timing a whole 2048-step `ppo train`")
    parser.add_argument("--note", help="free text for the results file, e.g. machine load")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown results file")
    # Internal: one measurement in this process, its result as JSON on stdout.
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--num-envs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rollout-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = CHILDREN[args.child](args.num_envs, args.rollout_steps, args.steps, args.seed)
        print(json.dumps(result))
        return

    workloads = {int(w) for w in args.workloads.split(",")}
    if not workloads <= {1, 2, 3}:
        parser.error(f"--workloads takes 1, 2 and 3, got {args.workloads}")
    started = datetime.datetime.now().isoformat(timespec="minutes")
    results: dict[tuple[str, int], list[dict]] = {key: [] for key in plan(workloads)}
    cli: list[dict] = []
    for seed in range(args.runs):
        for impl, workload in plan(workloads):
            r = measure(impl, workload, args.steps, seed)
            results[(impl, workload)].append(r)
            print(f"run {seed + 1}/{args.runs} {SETTINGS[workload][0]:<20} {impl:<8} "
                  f"{r['sps']:7.0f} steps/s  {r['rss_mib']:5.0f} MiB  "
                  f"start-up {r['startup_s']:.2f} s", flush=True)
        if not args.no_cli:
            cli.append(measure_cli_startup())
            print(f"run {seed + 1}/{args.runs} ppo train 2048 steps: "
                  f"{cli[-1]['total_s']:.2f} s", flush=True)
    text = report(results, cli, args, started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print("\n" + text + f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
