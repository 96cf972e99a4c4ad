"""Evaluate the any-env runs: each seed's final policy, deterministic, against the task's target.

    python docs/experiments/any-env/evaluate.py TASK GROUP_DIR [GROUP_DIR ...]

TASK is one of the keys of TASKS. For the toy-text tasks the deterministic policy (the agent's
`predict(obs, deterministic=True)` in every state) is valued exactly with the dynamic
programming of tests/optimal.py, under the registered time limits; Blackjack is also played
for 100,000 hands. MiniGrid and LunarLander are played for 100 episodes (seeds 10,000 on, as
`ppo eval` does). Prints one line per seed and a summary, and writes GROUP_DIR/evaluation.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))

from optimal import evaluate_by_episodes, exact_policy_value, optimal_value  # noqa: E402
from ppo import PPO  # noqa: E402
from ppo.envs import make_env  # noqa: E402
from ppo.evaluation import evaluate  # noqa: E402

# task: (env id, how it is valued, the target as (kind, number))
TASKS = {
    "FrozenLake-v1": ("FrozenLake-v1", "exact", ("within", 0.02)),
    "Taxi-v4": ("Taxi-v4", "exact", ("within", 0.5)),
    "CliffWalking-v1": ("CliffWalking-v1", "exact", ("within", 0.0)),
    "Blackjack-v1": ("Blackjack-v1", "exact", ("within", 0.02)),
    "MiniGrid-DoorKey-5x5-v0": ("minigrid:MiniGrid-DoorKey-5x5-v0", "episodes", ("at_least", 0.96)),
    "LunarLanderContinuous": ("LunarLander-v3", "episodes", ("above", 200.0)),
}
EPISODES, SEED = 100, 10_000
HANDS = 100_000


def seed_dirs(group: Path) -> list[Path]:
    found = sorted(p for p in group.glob("seed*") if (p / "config.toml").exists())
    return found or [group]


def action_masks_by_state(agent: PPO):
    """The env's valid actions of a state, where the env reports them in info (Taxi does: its
    `action_mask`), as the agent sees them when acting (ppo eval and training alike)."""
    env = make_env(agent.config)
    try:
        _, info = env.reset(seed=0)
        return env.unwrapped.action_mask if "action_mask" in info else None
    finally:
        env.close()


def value(task: str, run: Path) -> dict[str, float]:
    env_id, how, _ = TASKS[task]
    agent = PPO.load(run, verbose=False, num_envs=1, vector="sync",
                     **({"env_id": env_id} if ":" in env_id else {}))
    out: dict[str, float] = {"steps": agent.global_step}
    try:
        if how == "exact":
            mask_of = action_masks_by_state(agent)

            def policy(obs):
                masks = None if mask_of is None else mask_of(obs)
                return int(agent.predict(obs, deterministic=True, action_masks=masks)[0])

            out["value"] = exact_policy_value(env_id, policy)
            if env_id == "Blackjack-v1":
                out["sampled"] = evaluate_by_episodes(make_env(agent.config), policy, HANDS,
                                                      seed=SEED).mean
        else:
            returns = evaluate(agent, EPISODES, deterministic=True, seed=SEED)
            out.update(value=float(returns.mean()), std=float(returns.std()))
    finally:
        agent.close()
    return out


def meets(task: str, score: float, optimum: float | None) -> bool:
    kind, number = TASKS[task][2]
    if kind == "within":
        return score >= optimum - number - 1e-9
    return score >= number if kind == "at_least" else score > number


def main(task: str, groups: list[str]) -> None:
    if task not in TASKS:
        raise SystemExit(f"error: task must be one of {', '.join(TASKS)}")
    optimum = optimal_value(TASKS[task][0]) if TASKS[task][1] == "exact" else None
    for group in map(Path, groups):
        results = {}
        for run in seed_dirs(group):
            results[run.name] = r = value(task, run)
            extra = f", {HANDS:,} hands: {r['sampled']:.4f}" if "sampled" in r else (
                f" +- {r['std']:.3f}" if "std" in r else "")
            print(f"{group}/{run.name}: {r['value']:.4f}{extra} at {int(r['steps']):,} steps, "
                  f"target met: {meets(task, r['value'], optimum)}")
        scores = [r["value"] for r in results.values()]
        met = sum(meets(task, s, optimum) for s in scores)
        head = f"optimum {optimum:.4f}; " if optimum is not None else ""
        print(f"{group}: {head}mean {np.mean(scores):.4f}, min {np.min(scores):.4f}, "
              f"{met}/{len(scores)} seeds meet the target")
        (group / "evaluation.json").write_text(json.dumps(
            {"task": task, "optimum": optimum, "seeds": results}, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
