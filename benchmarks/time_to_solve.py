"""Wall-clock and env steps to solve LunarLander-v3: `ppo` against Stable-Baselines3.

Solved: the mean return of the last 100 episodes exceeds 200, checked after every update.
Both run the standard setup (1 env, 2048-step rollouts, minibatch 64, K=4, lr 3e-4, eps 0.2,
entropy 0.01) as the same algorithm: SB3's MlpPolicy defaults, i.e. separate 64-64 actor
and critic, no value clipping, advantages normalized per minibatch; `ppo` is set to match
(its own defaults, shared trunk and value clipping, solve faster: see the README).

Each run is its own child process, one thread; a run stops when solved or at --max-steps.
Time is the child's CPU time from after its imports to the update that solved it: with one
thread that is the wall-clock on a core of its own, and it stays true when runs share the
machine (`--jobs`, or other work), which wall-clock would not.

    pip install -e ".[bench]"
    python benchmarks/time_to_solve.py                 # 5 seeds, up to 1.5M steps each
    python benchmarks/time_to_solve.py --jobs 2        # two runs at a time
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from speed import (
    ADAM_EPS,
    CLIP,
    ENT,
    ENV_ID,
    EPOCHS,
    GAMMA,
    GRAD_CLIP,
    LAMBDA,
    LR,
    MINIBATCH,
    ONE_THREAD,
    VF,
    version,
)

RESULTS = Path(__file__).resolve().parent / "results" / "time_to_solve.md"
TARGET = 200.0


def child_ppo(seed: int, max_steps: int) -> dict:
    from ppo.agent import PPO
    from ppo.config import Config

    start = time.process_time()  # after the imports, as for SB3
    agent = PPO(Config(env_id=ENV_ID, seed=seed, num_envs=1, rollout_steps=2048,
                       minibatch_size=MINIBATCH, epochs=EPOCHS, lr=LR, clip_eps=CLIP,
                       ent_coef=ENT, gamma=GAMMA, gae_lambda=LAMBDA, vf_coef=VF,
                       max_grad_norm=GRAD_CLIP, adam_eps=ADAM_EPS, shared_trunk=False,
                       clip_value=False, norm_adv="minibatch", total_timesteps=max_steps,
                       tensorboard=False), verbose=False)
    while agent.global_step < max_steps:
        row = agent.iteration()
        if row["episodic_return"] > TARGET:
            return {"solved": True, "steps": agent.global_step,
                    "seconds": time.process_time() - start}
    return {"solved": False, "steps": agent.global_step, "seconds": time.process_time() - start}


def child_sb3(seed: int, max_steps: int) -> dict:
    import numpy as np
    import torch
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class StopWhenSolved(BaseCallback):
        """Checked once per rollout, as `ppo` checks once per update."""

        solved_at: float | None = None

        def _on_rollout_end(self) -> None:
            episodes = self.model.ep_info_buffer
            if len(episodes) and np.mean([e["r"] for e in episodes]) > TARGET:
                self.solved_at = time.process_time()

        def _on_step(self) -> bool:
            return self.solved_at is None

    torch.set_num_threads(1)
    start = time.process_time()
    # No render mode: SB3's default rgb_array slows LunarLander 2-3x (see speed.py).
    envs = make_vec_env(ENV_ID, n_envs=1, seed=seed, env_kwargs={"render_mode": None})
    model = SB3PPO("MlpPolicy", envs, n_steps=2048, batch_size=MINIBATCH, n_epochs=EPOCHS,
                   learning_rate=LR, gamma=GAMMA, gae_lambda=LAMBDA, clip_range=CLIP,
                   ent_coef=ENT, vf_coef=VF, max_grad_norm=GRAD_CLIP,
                   policy_kwargs={"optimizer_kwargs": {"eps": ADAM_EPS}}, seed=seed,
                   device="cpu", verbose=0)
    stop = StopWhenSolved()
    model.learn(total_timesteps=max_steps, callback=stop)
    solved = stop.solved_at is not None
    # The callback stops one env step into the next rollout; count the solving update's steps.
    steps = model.num_timesteps - 1 if solved else model.num_timesteps
    end = stop.solved_at if solved else time.process_time()
    return {"solved": solved, "steps": steps, "seconds": end - start}


CHILDREN = {"ppo": child_ppo, "SB3": child_sb3}


def measure(impl: str, seed: int, max_steps: int) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--seed", str(seed),
           "--max-steps", str(max_steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    if done.returncode != 0:
        sys.exit(f"child {impl} seed {seed} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: dict[str, list[dict]], args: argparse.Namespace, started: str) -> str:
    def medians(runs: list[dict]) -> tuple[str, str]:
        solved = [r for r in runs if r["solved"]]
        if len(solved) * 2 <= len(runs):  # the median run did not solve
            return "-", "-"
        # Unsolved runs count as slower than every solved one.
        steps = sorted(r["steps"] if r["solved"] else float("inf") for r in runs)
        secs = sorted(r["seconds"] if r["solved"] else float("inf") for r in runs)
        return f"{statistics.median(steps):,.0f}", f"{statistics.median(secs):,.0f}"

    lines = [
        "# Time to solve LunarLander-v3: ppo against Stable-Baselines3", "",
        f"Started {started}; ppo {version('ppo')}, stable-baselines3 "
        f"{version('stable-baselines3')}, torch {version('torch')}; one thread each; "
        f"{args.seeds} seeds, at most {args.max_steps:,} steps, {args.jobs} at a time; load "
        f"average at the end "
        f"{os.getloadavg()[0]:.1f}.", "",
        "| library | solved | median steps to solve | median CPU time to solve (s) |",
        "|---|---|---|---|",
    ]
    for impl, runs in results.items():
        steps, secs = medians(runs)
        lines.append(f"| {impl} | {sum(r['solved'] for r in runs)}/{len(runs)} | {steps} "
                     f"| {secs} |")
    lines += ["", "| library | seed | solved | steps | CPU time (s) |", "|---|---|---|---|---|"]
    for impl, runs in results.items():
        for seed, r in enumerate(runs):
            lines.append(f"| {impl} | {seed} | {'yes' if r['solved'] else 'no'} "
                         f"| {r['steps']:,} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=1_500_000)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown results file")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.seed, args.max_steps)))
        return
    started = datetime.datetime.now().isoformat(timespec="minutes")
    plan = [(impl, seed) for seed in range(args.seeds) for impl in CHILDREN]

    def run(item: tuple[str, int]) -> dict:
        impl, seed = item
        r = measure(impl, seed, args.max_steps)
        print(f"seed {seed} {impl:<4} solved={r['solved']} steps={r['steps']:,} "
              f"{r['seconds']:.0f} CPU s", flush=True)
        return r

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(run, plan))
    results: dict[str, list[dict]] = {impl: [] for impl in CHILDREN}
    for (impl, _), r in zip(plan, done, strict=True):
        results[impl].append(r)
    text = report(results, args, started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print("\n" + text + f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
