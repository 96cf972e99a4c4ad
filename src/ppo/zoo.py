"""The zoo table: `ppo train --env X` with nothing else, on the tasks and step budgets of the
RL Baselines3 Zoo's published PPO results, against their scores (Raffin 2020, benchmark.md;
Humanoid, which the Zoo does not report, against CleanRL's 1M-step figure, Huang et al. 2022).

Each run evaluates itself during training (deterministic actions, separate envs and seeds:
`--eval-every`, `--eval-episodes`) and at its end; the table gives the final evaluation over
seeds (mean ± std), how many seeds reached the target, and the steps and training wall-clock
until the evaluation first did. Two variants: the settings shipped for the task, and the
settings chosen by the kind of task alone (the task's own file switched off).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# task: (step budget, published PPO score at that budget)
TARGETS: dict[str, tuple[int, float]] = {
    "CartPole-v1": (100_000, 500.0),
    "Acrobot-v1": (1_000_000, -73.5),
    "MountainCar-v0": (1_000_000, -110.4),
    "MountainCarContinuous-v0": (20_000, 88.3),
    "Pendulum-v1": (100_000, -172.0),
    "LunarLander-v3": (1_000_000, 242.0),
    "LunarLanderContinuous-v3": (1_000_000, 271.0),
    "BipedalWalker-v3": (5_000_000, 288.0),
    "HalfCheetah-v5": (1_000_000, 5819.0),
    "Hopper-v5": (1_000_000, 2410.0),
    "Walker2d-v5": (1_000_000, 3479.0),
    "Ant-v5": (1_000_000, 1327.0),
    "Swimmer-v5": (1_000_000, 282.0),
    "Humanoid-v5": (1_000_000, 716.0),
}
VARIANTS = {"task settings": "task", "kind settings": "kind"}
EVALUATIONS = 20  # evaluations per run, evenly spread
EVAL_EPISODES = 20


def eval_every(batch_size: int, budget: int) -> int:
    """Updates between evaluations, for about EVALUATIONS of them over the run."""
    return max(1, budget // batch_size // EVALUATIONS)


def _run_result(metrics: dict[str, np.ndarray], target: float) -> dict[str, float]:
    """Final evaluation, and the step and training seconds at which the evaluation first
    reached the target (NaN if it never did)."""
    evaluations = metrics.get("eval_return", np.zeros(0))
    done = np.flatnonzero(np.isfinite(evaluations))
    if not len(done):
        return {}
    reached = [i for i in done if evaluations[i] >= target]
    first = reached[0] if reached else None
    wall = np.cumsum(metrics["time_total"])
    return {"final": float(evaluations[done[-1]]), "steps": float(metrics["global_step"][-1]),
            "steps_to_target": math.nan if first is None else float(metrics["global_step"][first]),
            "time_to_target": math.nan if first is None else float(wall[first])}


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def report(runs: dict[tuple[str, str], list[Path]], root: Path, read) -> Path:
    """results.md: a row per task and variant, every run, a figure per task.
    `read(run_dir)` gives a run's metrics columns (empty if it logged nothing)."""
    from ppo import figures
    from ppo.settings import task_file

    header = ("| task | budget | target | variant | final evaluation (mean ± std) | reached | "
              "median steps to target | median training time to target (s) |")
    lines = ["# zoo", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             header, "|---|---|---|---|---|---|---|---|"]
    figure_lines = ["", "## Learning curves", ""]
    per_run = ["", "## Per run", "", "| task | variant | seed | steps | final evaluation | "
               "steps to target | training time to target (s) |", "|---|---|---|---|---|---|---|"]
    for task, (budget, target) in TARGETS.items():
        for label in VARIANTS:
            dirs = runs.get((task, label), [])
            results = [(d, r) for d in dirs if (r := _run_result(read(d), target))]
            if not results:
                continue
            finals = [r["final"] for _, r in results]
            hit = [r for _, r in results if math.isfinite(r["steps_to_target"])]

            def median(key: str, hit: list[dict[str, float]] = hit) -> str:
                return f"{np.median([r[key] for r in hit]):,.0f}" if hit else "-"

            shown = label
            if VARIANTS[label] == "task" and task_file(task) is None:
                shown = f"{label} (none shipped: the kind's)"
            lines.append(f"| {task} | {budget:,} | {target:g} | {shown} | "
                         f"{np.mean(finals):.1f} ± {np.std(finals):.1f} | "
                         f"{len(hit)}/{len(results)} | {median('steps_to_target')} | "
                         f"{median('time_to_target')} |")
            per_run += [f"| {task} | {label} | {d.name[4:]} | {r['steps']:,.0f} | "
                        f"{r['final']:.1f} | {_cell(r['steps_to_target'])} | "
                        f"{_cell(r['time_to_target'])} |" for d, r in results]
        groups = {label: [d for d in runs.get((task, label), []) if "eval_return" in read(d)]
                  for label in VARIANTS}
        groups = {label: dirs for label, dirs in groups.items() if dirs}
        if len(groups) == 2 and len(set(map(tuple, groups.values()))) == 1:
            groups = {"kind settings (no task file)": next(iter(groups.values()))}
        if groups:
            slug = task.replace("/", "-")
            figure = figures.plot_evaluations(groups, root / f"curves_{slug}.png", task, target)
            figure_lines += [f"![{task}]({figure.name})", ""]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "results.md"
    path.write_text("\n".join(lines + figure_lines + per_run) + "\n")
    return path
