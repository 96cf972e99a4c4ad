"""Speed of the CNN path on Atari Breakout: `ppo --preset atari` against Stable-Baselines3's
PPO with CnnPolicy and its AtariWrapper, configured identically, and where the time goes.

Both sides: ALE/Breakout-v5 with frameskip 1 and no sticky actions, 30 no-op starts, frame
skip 4 with a max over two frames, life loss ends the training episode, FIRE on reset,
84x84 grayscale, rewards clipped to their sign, 4 stacked frames; 8 envs stepped in turn in
the learning process; the Nature CNN shared by the policy and value heads; 8 x 128 steps, 4
epochs of minibatches of 256, lr 2.5e-4, clip 0.1, value clip 0.1, entropy 0.01, vf 0.5,
grad clip 0.5, gamma 0.99, lambda 0.95; one torch thread. ppo runs twice: in float32 as SB3
does, and with the CNN in bfloat16 (`--precision bfloat16`).

Each measurement runs in its own child process, in the order ppo, SB3, ppo, SB3, ... so that
drift in the machine's load hits both alike; steps/s is measured around training only, after
one warm-up update. The split of each side's time: env stepping with acting (collection)
against the update (for ppo also env.step alone, acting alone, and batch preparation).

    pip install -e ".[bench]"
    python benchmarks/atari_speed.py                # 3 rounds of 4096 steps
    python benchmarks/atari_speed.py --steps 2048 --rounds 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "atari_speed.md"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV_ID = "ALE/Breakout-v5"
ENV_KWARGS = {"frameskip": 1, "repeat_action_probability": 0.0}
N_ENVS, N_STEPS, MINIBATCH, EPOCHS = 8, 128, 256, 4
WARMUP = N_ENVS * N_STEPS
SPS = "sps"


def child_ppo(steps: int, seed: int, precision: str = "float32") -> dict:
    import torch

    from ppo.agent import PPO
    from ppo.cli import load_preset
    from ppo.config import from_dict

    torch.set_num_threads(1)
    cfg = from_dict({**load_preset("atari"), "seed": seed, "total_timesteps": 10**8,
                     "tensorboard": False, "threads": 1, "precision": precision})
    agent = PPO(cfg, verbose=False)
    rows: list[dict] = []
    agent.learn(WARMUP)
    start = time.perf_counter()
    agent.learn(steps, callback=lambda row, _: rows.append(row))
    elapsed = time.perf_counter() - start
    agent.close()
    split = {k: sum(r[k] for r in rows) for k in
             ("time_env", "time_act", "time_advantages", "time_optimize")}
    return {"sps": steps / elapsed, "elapsed": elapsed,
            "collect": split["time_env"] + split["time_act"], **split}


def child_sb3(steps: int, seed: int) -> dict:
    import ale_py
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    torch.set_num_threads(1)
    env = VecFrameStack(make_atari_env(ENV_ID, n_envs=N_ENVS, seed=seed,
                                       env_kwargs=ENV_KWARGS), n_stack=4)
    model = PPO("CnnPolicy", env, n_steps=N_STEPS, batch_size=MINIBATCH, n_epochs=EPOCHS,
                learning_rate=2.5e-4, clip_range=0.1, clip_range_vf=0.1, ent_coef=0.01,
                vf_coef=0.5, max_grad_norm=0.5, gamma=0.99, gae_lambda=0.95, seed=seed,
                device="cpu", verbose=0)
    split = {"collect": 0.0, "update": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            tick = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                split[name] += time.perf_counter() - tick
        return wrapper

    model.learn(WARMUP)
    model.collect_rollouts = timed("collect", model.collect_rollouts)
    model.train = timed("update", model.train)
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    env.close()
    return {"sps": steps / elapsed, "elapsed": elapsed, **split}


def run_child(kind: str, steps: int, seed: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--steps", str(steps),
                          "--seed", str(seed)], capture_output=True, text=True,
                         env={**os.environ, **ONE_THREAD}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=("ppo", "ppo-bf16", "sb3"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        if args.child == "sb3":
            print(json.dumps(child_sb3(args.steps, args.seed)))
        else:
            precision = "bfloat16" if args.child == "ppo-bf16" else "float32"
            print(json.dumps(child_ppo(args.steps, args.seed, precision)))
        return
    results: dict[str, list[dict]] = {"ppo": [], "ppo-bf16": [], "sb3": []}
    for seed in range(args.rounds):
        for kind in ("ppo", "ppo-bf16", "sb3"):
            results[kind].append(run_child(kind, args.steps, seed))
            print(kind, seed, {k: round(v, 2) for k, v in results[kind][-1].items()},
                  flush=True)
    write(results, args)


def write(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    ours, theirs = med("ppo", "sps"), med("sb3", "sps")

    def ratios(kind: str) -> list[float]:
        return [a["sps"] / b["sps"] for a, b in zip(results[kind], results["sb3"], strict=True)]

    def share(kind: str, key: str) -> str:
        return f"{100 * statistics.median(r[key] / r['elapsed'] for r in results[kind]):.0f}%"

    from importlib import metadata

    lines = [
        "# Atari Breakout: ppo's CNN path against Stable-Baselines3", "",
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other work, one torch thread each; "
        f"torch {metadata.version('torch')}, stable-baselines3 "
        f"{metadata.version('stable-baselines3')}, ale-py {metadata.version('ale-py')}. "
        f"{args.rounds} rounds of {args.steps} steps each after a warm-up update, ppo and "
        "SB3 alternating (`python benchmarks/atari_speed.py`).", "",
        "| | steps/s (median) | per round | collection (env + acting) | update |",
        "|---|---|---|---|---|",
        f"| ppo `--preset atari` | {ours:.1f} | "
        f"{', '.join(f'{r[SPS]:.1f}' for r in results['ppo'])} | "
        f"{share('ppo', 'collect')} | {share('ppo', 'time_optimize')} |",
        f"| ppo `--preset atari --precision bfloat16` | {med('ppo-bf16', 'sps'):.1f} | "
        f"{', '.join(f'{r[SPS]:.1f}' for r in results['ppo-bf16'])} | "
        f"{share('ppo-bf16', 'collect')} | {share('ppo-bf16', 'time_optimize')} |",
        f"| SB3 PPO CnnPolicy + AtariWrapper | {theirs:.1f} | "
        f"{', '.join(f'{r[SPS]:.1f}' for r in results['sb3'])} | "
        f"{share('sb3', 'collect')} | {share('sb3', 'update')} |", "",
        f"Ratio ppo / SB3: {statistics.median(ratios('ppo')):.2f}x in float32 as SB3, "
        f"{statistics.median(ratios('ppo-bf16')):.2f}x with the CNN in bfloat16 (medians of "
        "the rounds' ratios).", "",
        "Where ppo's time goes (median share of the measured wall-clock): env.step "
        f"{share('ppo', 'time_env')}, acting (the CNN forward for 8 envs, sampling) "
        f"{share('ppo', 'time_act')}, batch preparation (GAE) "
        f"{share('ppo', 'time_advantages')}, the update (4 epochs x 4 minibatches of 256, "
        f"forward and backward) {share('ppo', 'time_optimize')}.",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
