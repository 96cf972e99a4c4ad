"""Env steps to solve a task, over seeds, for settings files: measured as `ppo tune` measures
its trials (ppo.tuning.trial.steps_to_solve: evaluate every --eval-steps env steps, solved at
the first evaluation whose mean return reaches --target).

    python docs/experiments/tune/measure.py --env CartPole-v1 --target 475 --budget 100000 \
        --eval-steps 2000 --seeds 1,2,3 shipped=task tuned=docs/experiments/tune/CartPole-v1.toml

`NAME=task` measures the settings shipped for the env (what `ppo train --env X` uses); any
other value is a TOML file for `ppo train --config`. Results are kept in --out (JSON) as they
come, so a killed run resumes; the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ppo.config import from_dict, load_toml
from ppo.settings import resolve
from ppo.tuning.trial import steps_to_solve


def settings_of(env_id: str, source: str) -> dict:
    given = {} if source == "task" else load_toml(Path(source))
    return resolve({"env_id": env_id}, given).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--target", type=float, required=True)
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--eval-steps", type=int, required=True)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("variants", nargs="+", help="NAME=task or NAME=settings.toml")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for variant in args.variants:
        name, _, source = variant.partition("=")
        values = settings_of(args.env, source)
        for seed in seeds:
            key = f"{name}/seed{seed}"
            if key in results:
                continue
            config = from_dict({**values, "seed": seed, "total_timesteps": args.budget,
                                "tensorboard": False, "eval_every": None})
            outcome = steps_to_solve(config, args.target, args.eval_steps, args.eval_episodes)
            results[key] = {"solved": outcome.solved, "steps": outcome.steps,
                            "best_return": outcome.best_return,
                            "evaluations": outcome.evaluations}
            args.out.write_text(json.dumps(results, indent=1))
            print(key, "solved after" if outcome.solved else "not solved within",
                  outcome.steps, "steps", flush=True)
    print(f"\n| settings | {' | '.join(f'seed {s}' for s in seeds)} | mean | solved |")
    print(f"|---|{'---|' * len(seeds)}---|---|")
    for variant in args.variants:
        name = variant.partition("=")[0]
        runs = [results[f"{name}/seed{s}"] for s in seeds]
        cells = [f"{r['steps']:,}" if r["solved"] else f"> {args.budget:,}" for r in runs]
        solved = [r["steps"] for r in runs if r["solved"]]
        mean = f"{np.mean(solved):,.0f}" if len(solved) == len(runs) else "n/a"
        print(f"| {name} | {' | '.join(cells)} | {mean} | {len(solved)}/{len(runs)} |")


if __name__ == "__main__":
    main()
