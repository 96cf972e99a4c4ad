"""Steps/s on MuJoCo: `ppo --preset mujoco` against Stable-Baselines3 configured the same way.

The learning results at 1M steps come from `ppo experiment ppo-vs-trpo` (README); this
measures what a 1M-step run costs in wall-clock with each library on this machine. SB3 gets
the preset's settings: 1 env x 2048 steps, 10 epochs of minibatches of 64, lr 3e-4 annealed,
gamma 0.99, lambda 0.95, eps 0.2, no entropy bonus, value clipping 0.2, separate 64-64 tanh
networks, observations normalized and rewards scaled (VecNormalize, clipped at 10).

Each run is a child process, one thread, alternating ppo, SB3, ppo, SB3, ...; steps/s is
measured around training only.

    pip install -e ".[bench]"
    python benchmarks/mujoco_speed.py                  # HalfCheetah-v5 and Humanoid-v5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from speed import ONE_THREAD, version

RESULTS = Path(__file__).resolve().parent / "results" / "mujoco_speed.md"
TASKS = ("HalfCheetah-v5", "Humanoid-v5")


def child_ppo(env_id: str, steps: int, seed: int) -> dict:
    from ppo.agent import PPO
    from ppo.cli import load_preset
    from ppo.config import from_dict

    agent = PPO(from_dict({**load_preset("mujoco"), "env_id": env_id, "seed": seed,
                           "total_timesteps": steps, "tensorboard": False}), verbose=False)
    tick = time.perf_counter()
    agent.learn()
    return {"steps": agent.global_step, "train_s": time.perf_counter() - tick}


def child_sb3(env_id: str, steps: int, seed: int) -> dict:
    import torch
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    envs = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed), gamma=0.99,
                        clip_obs=10.0, clip_reward=10.0)
    model = SB3PPO(
        "MlpPolicy", envs, n_steps=2048, batch_size=64, n_epochs=10,
        learning_rate=lambda progress: 3e-4 * progress, gamma=0.99, gae_lambda=0.95,
        clip_range=0.2, clip_range_vf=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]},
                       "activation_fn": torch.nn.Tanh, "optimizer_kwargs": {"eps": 1e-5}},
        seed=seed, device="cpu", verbose=0)
    tick = time.perf_counter()
    model.learn(total_timesteps=steps)
    return {"steps": model.num_timesteps, "train_s": time.perf_counter() - tick}


CHILDREN = {"ppo": child_ppo, "SB3": child_sb3}


def measure(impl: str, env_id: str, steps: int, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--env", env_id, "--steps", str(steps),
           "--seed", str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    if done.returncode != 0:
        sys.exit(f"child {impl} on {env_id} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["sps"] = result["steps"] / result["train_s"]
    return result


def report(results: dict[tuple[str, str], list[dict]], args: argparse.Namespace,
           started: str, loads: list[float]) -> str:
    lines = [
        "# Steps/s on MuJoCo: ppo against Stable-Baselines3", "",
        f"Started {started}; ppo {version('ppo')}, stable-baselines3 "
        f"{version('stable-baselines3')}, torch {version('torch')}, mujoco {version('mujoco')};"
        f" one thread each; {args.steps:,} steps per run, median of {args.runs}; load average "
        f"{min(loads):.1f} to {max(loads):.1f}.", "",
        "| task | ppo steps/s | SB3 steps/s | ppo / SB3 | 1M steps: ppo | 1M steps: SB3 |",
        "|---|---|---|---|---|---|",
    ]
    for task in args.tasks:
        ppo, sb3 = (statistics.median(r["sps"] for r in results[(impl, task)])
                    for impl in CHILDREN)
        lines.append(f"| {task} | {ppo:,.0f} | {sb3:,.0f} | {ppo / sb3:.1f}x "
                     f"| {1e6 / ppo / 60:.1f} min | {1e6 / sb3 / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40_960, help="env steps per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown results file")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--env", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.env, args.steps, args.seed)))
        return
    started = datetime.datetime.now().isoformat(timespec="minutes")
    results: dict[tuple[str, str], list[dict]] = {}
    loads = []
    for seed in range(args.runs):
        for task in args.tasks:
            for impl in CHILDREN:
                r = measure(impl, task, args.steps, seed)
                results.setdefault((impl, task), []).append(r)
                loads.append(os.getloadavg()[0])
                print(f"run {seed + 1}/{args.runs} {task:<16} {impl:<4} {r['sps']:7,.0f} steps/s",
                      flush=True)
    text = report(results, args, started, loads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print("\n" + text + f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
