"""The seed's exercise, ablation and pitfalls as resumable experiments: variants x seeds,
run as parallel `ppo train` processes, summarized as a Markdown table and figures."""

from __future__ import annotations

import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppo.checkpoint import CHECKPOINT_NAME

SOLVED = {"LunarLander-v3": 200.0, "CartPole-v1": 475.0, "Pendulum-v1": -300.0,
          "ppo.wrappers:CartPoleNoVelocity-v1": 475.0, "ALE/Breakout-v5": 15.0}
MUJOCO = ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "InvertedPendulum-v5", "Humanoid-v5"]


@dataclass
class Experiment:
    """Variants x seeds of `ppo train`. `base` and each variant are its options (Config fields,
    or "preset"); with `tasks`, every variant runs on each of these env ids."""

    description: str
    variants: dict[str, dict[str, Any]]
    seeds: int = 3
    steps: int = 1_500_000
    base: dict[str, Any] = field(default_factory=lambda: {"env_id": "LunarLander-v3"})
    twin_axes: bool = False
    tasks: list[str] = field(default_factory=list)


EXPERIMENTS = {
    "lunarlander": Experiment(
        "The seed's exercise: LunarLander-v3, standard hyperparameters, 5 seeds.",
        {"standard": {}}, seeds=5),
    "trunk": Experiment(
        "Shared trunk or two networks, each with and without value clipping: the measurement "
        "behind the defaults.",
        {"shared trunk, value clip": {"shared_trunk": True, "clip_value": True},
         "shared trunk, no value clip": {"shared_trunk": True, "clip_value": False},
         "two networks, value clip": {"shared_trunk": False, "clip_value": True},
         "two networks, no value clip": {"shared_trunk": False, "clip_value": False}},
        seeds=5),
    "eps-ablation": Experiment(
        "Clip range 0.2 against 1.0 (the ratchet removed).",
        {"eps=0.2": {"clip_eps": 0.2}, "eps=1.0": {"clip_eps": 1.0}}, twin_axes=True),
    "eps-ablation-harsh": Experiment(
        "No clip at all (eps=1000), 20 epochs, lr 1e-3, against the same with eps=0.2.",
        {"eps=0.2,K=20,lr=1e-3": {"clip_eps": 0.2, "epochs": 20, "lr": 1e-3},
         "no clip,K=20,lr=1e-3": {"clip_eps": 1000.0, "epochs": 20, "lr": 1e-3,
                                  "clip_value": False}},
        twin_axes=True),
    "pitfalls": Experiment(
        "Each of the seed's pitfalls against the standard configuration.",
        {
            "standard": {},
            "advantages in epoch loop": {"advantages_per_epoch": True},
            "old log-probs recomputed": {"old_logprobs_from_current": True},
            "no value clipping": {"clip_value": False},
            "no advantage normalization": {"norm_adv": "off"},
            "K=20 epochs": {"epochs": 20},
            "eps=0.5": {"clip_eps": 0.5},
        }),
    "mujoco": Experiment(
        "PPO on the MuJoCo set with the standard continuous-control settings (preset mujoco).",
        {"ppo": {}}, steps=1_000_000, base={"preset": "mujoco"}, tasks=MUJOCO),
    "ppo-vs-trpo": Experiment(
        "PPO and TRPO (max KL 0.01, CG 10 iterations, damping 0.1) on the MuJoCo set: the "
        "same networks, rollout, GAE and critic fit (preset mujoco); only the policy step "
        "differs.",
        {"ppo": {"algo": "ppo"}, "trpo": {"algo": "trpo"}},
        steps=1_000_000, base={"preset": "mujoco"}, tasks=MUJOCO),
    "breakout": Experiment(
        "Atari Breakout with the standard pipeline and settings (preset atari: CleanRL's "
        "ppo_atari, Huang et al. 2022), 1M steps (4M frames); the return is the game score "
        "over all lives. Random play scores about 1.7 (Mnih et al. 2015).",
        {"ppo": {}}, seeds=2, steps=1_000_000,
        base={"preset": "atari", "env_id": "ALE/Breakout-v5"}),
    "carracing": Experiment(
        "CarRacing-v3 from pixels, continuous actions, with its shipped settings "
        "(settings/CarRacing-v3.toml).",
        {"ppo": {}}, seeds=1, steps=500_000, base={"env_id": "CarRacing-v3"}),
    "memory": Experiment(
        "CartPole without its velocities (ppo.wrappers:CartPoleNoVelocity-v1): an LSTM policy "
        "against an MLP on the same observation and settings (the RL Zoo's for RecurrentPPO).",
        {"lstm": {"policy": "lstm"}, "mlp": {"policy": "mlp"}}, seeds=3, steps=300_000,
        base={"env_id": "ppo.wrappers:CartPoleNoVelocity-v1"}),
}


def _flag(key: str, value: Any) -> list[str]:
    name = "--env" if key == "env_id" else "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [name if value else "--no-" + name[2:]]
    return [name, str(value)]


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in ".=-" else "_" for c in label)


def _metrics(run_dir: Path) -> dict[str, np.ndarray]:
    """Columns of a run's metrics.csv; empty when the run has logged nothing yet."""
    from ppo.figures import read_metrics

    return read_metrics(run_dir) if (run_dir / "metrics.csv").is_file() else {}


def _finished(run_dir: Path, steps: int) -> bool:
    steps_logged = _metrics(run_dir).get("global_step", np.zeros(0))
    return len(steps_logged) > 0 and steps_logged[-1] >= steps


def _command(run_dir: Path, overrides: dict[str, Any], seed: int, steps: int) -> list[str]:
    base = [sys.executable, "-m", "ppo", "train", "--quiet"]
    has_checkpoint = any(CHECKPOINT_NAME.match(p.name)
                         for p in (run_dir / "checkpoints").glob("*.safetensors"))
    if has_checkpoint:
        return [*base, "--resume", str(run_dir), "--total-timesteps", str(steps)]
    if run_dir.exists():  # started but never checkpointed: start over
        for p in sorted(run_dir.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        run_dir.rmdir()
    flags = [f for k, v in overrides.items() for f in _flag(k, v)]
    return [*base, *flags, "--seed", str(seed), "--total-timesteps", str(steps),
            "--run-dir", str(run_dir), "--no-tensorboard"]


def run_experiment(name: str, out: Path, seeds: int | None, steps: int | None,
                   jobs: int) -> Path:
    """Run what is not finished yet, then write results.md and the figures; return results.md."""
    exp = EXPERIMENTS[name]
    seeds, steps = seeds or exp.seeds, steps or exp.steps
    root = out / name
    runs = {(task, label): [root / _slug(task) / _slug(label) / f"seed{s}" if exp.tasks
                            else root / _slug(label) / f"seed{s}" for s in range(seeds)]
            for task in exp.tasks or [exp.base["env_id"]] for label in exp.variants}
    todo = [
        (run_dir, {**exp.base, "env_id": task, **exp.variants[label]}, seed)
        for (task, label), dirs in runs.items() for seed, run_dir in enumerate(dirs)
        if not _finished(run_dir, steps)
    ]

    def launch(item: tuple[Path, dict[str, Any], int]) -> tuple[Path, int]:
        run_dir, overrides, seed = item
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(run_dir.parent / f"seed{seed}.log", "w") as log:
            done = subprocess.run(_command(run_dir, overrides, seed, steps), stdout=log,
                                  stderr=subprocess.STDOUT)
        return run_dir, done.returncode

    print(f"{name}: {len(todo)} of {seeds * len(runs)} runs to do, {jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for run_dir, code in pool.map(launch, todo):
            print(f"  {run_dir}: {'done' if code == 0 else f'failed ({code}), see its log'}",
                  flush=True)
    if exp.tasks:
        return report_tasks(name, runs, exp, root)
    return report(name, {label: dirs for (_, label), dirs in runs.items()}, exp, root)


def summarize(metrics: dict[str, np.ndarray], threshold: float | None) -> dict[str, float]:
    """Final return, first step and wall-clock at which the return passed the threshold,
    and mean approx KL and clip fraction over the run."""
    if not len(metrics.get("update", [])):
        return {}
    wall = np.cumsum(metrics["time_total"])
    returns = metrics["episodic_return"]
    solved = (np.flatnonzero(returns > threshold) if threshold is not None
              else np.zeros(0, int))
    first = solved[0] if len(solved) else None
    return {
        "final_return": float(returns[-1]),
        "steps_to_solve": math.nan if first is None else float(metrics["global_step"][first]),
        "time_to_solve": math.nan if first is None else float(wall[first]),
        "wall_clock": float(wall[-1]),
        "steps": float(metrics["global_step"][-1]),
        "approx_kl": float(np.nanmean(metrics["approx_kl"])),
        "max_kl": float(np.nanmax(metrics["approx_kl"])),
        "clipfrac": float(np.nanmean(metrics["clipfrac"])),
    }


def _fmt(values: list[float], digits: int = 1) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def report(name: str, runs: dict[str, list[Path]], exp: Experiment, root: Path) -> Path:
    from ppo import figures

    threshold = SOLVED.get(exp.base["env_id"])
    lines = [f"# {name}", "", exp.description, "",
             f"Solved: mean return over the last 100 episodes > {threshold}.", "",
             "| variant | seeds | final return | solved | median steps to solve | "
             "median wall-clock to solve (s) | mean approx KL | max approx KL | "
             "mean clip fraction |",
             "|---|---|---|---|---|---|---|---|---|"]
    per_seed = ["", "## Per seed", "", "| variant | seed | final return | steps to solve | "
                "wall-clock to solve (s) | total wall-clock (s) |", "|---|---|---|---|---|---|"]
    for label, dirs in runs.items():
        stats = [summarize(_metrics(d), threshold) for d in dirs]
        stats = [s for s in stats if s]
        if not stats:
            continue
        solved = [s for s in stats if not math.isnan(s["steps_to_solve"])]
        def med(key: str, solved: list[dict[str, float]] = solved) -> str:
            return f"{np.median([s[key] for s in solved]):.0f}" if solved else "-"

        lines.append(
            f"| {label} | {len(stats)} | {_fmt([s['final_return'] for s in stats])} | "
            f"{len(solved)}/{len(stats)} | {med('steps_to_solve')} | {med('time_to_solve')} | "
            f"{_fmt([s['approx_kl'] for s in stats], 4)} | "
            f"{_fmt([s['max_kl'] for s in stats], 3)} | "
            f"{_fmt([s['clipfrac'] for s in stats], 3)} |")
        for d, s in zip(dirs, stats, strict=False):
            per_seed.append(
                f"| {label} | {d.name[4:]} | {s['final_return']:.1f} | "
                f"{'-' if math.isnan(s['steps_to_solve']) else int(s['steps_to_solve'])} | "
                f"{'-' if math.isnan(s['time_to_solve']) else round(s['time_to_solve'])} | "
                f"{s['wall_clock']:.0f} |")
    existing = {label: [d for d in dirs if (d / "metrics.csv").exists()]
                for label, dirs in runs.items()}
    existing = {k: v for k, v in existing.items() if v}
    if existing:
        all_dirs = [d for dirs in existing.values() for d in dirs]
        labels = [label for label, dirs in existing.items() for _ in dirs]
        curves = figures.plot_runs(all_dirs, root / "curves.png", labels=labels)
        lines += ["", f"![learning curves]({curves.name})"]
        if exp.twin_axes:
            twin = figures.plot_return_and_kl(existing, root / "return_and_kl.png")
            lines += ["", f"![return and KL]({twin.name})"]
    path = root / "results.md"
    path.write_text("\n".join(lines + per_seed) + "\n")
    return path


def report_tasks(name: str, runs: dict[tuple[str, str], list[Path]], exp: Experiment,
                 root: Path) -> Path:
    """A row per task and variant (final return, wall-clock, KL) and a learning-curve figure
    per task: returns of different tasks share no scale."""
    from ppo import figures

    lines = [f"# {name}", "", exp.description, "",
             "Final return: mean over the last 100 episodes at the end of each run; mean ± std "
             "over seeds. Wall-clock: seconds of training (env, update, logging), per run.", "",
             "| task | variant | seeds | steps | final return | wall-clock (s) | steps/s | "
             "mean approx KL | max approx KL |",
             "|---|---|---|---|---|---|---|---|---|"]
    per_seed = ["", "## Per seed", "", "| task | variant | seed | steps | final return | "
                "wall-clock (s) |", "|---|---|---|---|---|---|"]
    for (task, label), dirs in runs.items():
        done = [(d, s) for d in dirs if (s := summarize(_metrics(d), None))]
        if not done:
            continue
        stats = [s for _, s in done]
        lines.append(
            f"| {task} | {label} | {len(stats)} | {_fmt([s['steps'] for s in stats], 0)} | "
            f"{_fmt([s['final_return'] for s in stats])} | "
            f"{_fmt([s['wall_clock'] for s in stats], 0)} | "
            f"{_fmt([s['steps'] / s['wall_clock'] for s in stats], 0)} | "
            f"{_fmt([s['approx_kl'] for s in stats], 4)} | "
            f"{_fmt([s['max_kl'] for s in stats], 3)} |")
        per_seed += [f"| {task} | {label} | {d.name[4:]} | {s['steps']:.0f} | "
                     f"{s['final_return']:.1f} | {s['wall_clock']:.0f} |" for d, s in done]
    for task in exp.tasks:
        existing = {label: [d for d in dirs if (d / "metrics.csv").exists()]
                    for (t, label), dirs in runs.items() if t == task}
        all_dirs = [d for dirs in existing.values() for d in dirs]
        if all_dirs:
            labels = [label for label, dirs in existing.items() for _ in dirs]
            curves = figures.plot_runs(all_dirs, root / f"curves_{_slug(task)}.png",
                                       labels=labels, title=task)
            lines += ["", f"![{task} learning curves]({curves.name})"]
    path = root / "results.md"
    path.write_text("\n".join(lines + per_seed) + "\n")
    return path
