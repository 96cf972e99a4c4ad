"""Experiments: variants x seeds of `ppo train`, run by the launcher (resumable), summarized
as Markdown tables and figures. The same summaries serve `ppo compare` for any groups of runs.

Tables give, over a group's runs, the interquartile mean (IQM) of the final return with a 95%
stratified-bootstrap confidence interval (Agarwal et al. 2021), and every run on its own.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppo import zoo
from ppo.config import to_flags
from ppo.stats import iqm, iqm_estimate

# Solved: the mean return over the last WINDOW episodes beats the env's threshold (Gymnasium's
# reward_threshold for CartPole-v1 and LunarLander-v3; Pendulum-v1 has none, -300 is this
# project's), counted once WINDOW episodes have ended.
SOLVED = {"LunarLander-v3": 200.0, "CartPole-v1": 475.0, "Pendulum-v1": -300.0,
          "ppo.wrappers:CartPoleNoVelocity-v1": 475.0, "ALE/Breakout-v5": 15.0}
WINDOW = 100
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
    # Where each run's settings start (`ppo train --defaults`; a variant may say "defaults"):
    # the experiments measured against the standard settings start from the plain defaults.
    defaults: str = "plain"
    # Per task, its own step budget instead of `steps`; with it, each run evaluates itself
    # (zoo.EVALUATIONS times) and the report is the zoo table.
    budgets: dict[str, int] = field(default_factory=dict)


EXPERIMENTS = {
    "lunarlander": Experiment(
        "LunarLander-v3 with the standard PPO settings (Schulman et al. 2017), 5 seeds.",
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
        "Clip range 0.2 against 1.0 (the clip out of reach at the standard step size).",
        {"eps=0.2": {"clip_eps": 0.2}, "eps=1.0": {"clip_eps": 1.0}}, twin_axes=True),
    "eps-ablation-harsh": Experiment(
        "No clip at all (eps=1000), 20 epochs, lr 1e-3, against the same with eps=0.2.",
        {"eps=0.2,K=20,lr=1e-3": {"clip_eps": 0.2, "epochs": 20, "lr": 1e-3},
         "no clip,K=20,lr=1e-3": {"clip_eps": 1000.0, "epochs": 20, "lr": 1e-3,
                                  "clip_value": False}},
        twin_axes=True),
    "mistakes": Experiment(
        "Each common implementation mistake, as a switch, against the standard settings.",
        {
            "standard": {},
            "advantages in epoch loop": {"advantages_per_epoch": True},
            "old log-probs recomputed": {"old_logprobs_from_current": True},
            "no value clipping": {"clip_value": False},
            "no advantage normalization": {"norm_adv": "off"},
            "K=20 epochs": {"epochs": 20},
            "eps=0.5": {"clip_eps": 0.5},
        }),
    "zoo": Experiment(
        "`ppo train --env X` and nothing else on the RL Zoo's tasks and budgets, with the "
        "settings shipped for the task and with those for its kind of task alone.",
        {label: {"defaults": defaults} for label, defaults in zoo.VARIANTS.items()},
        tasks=list(zoo.TARGETS), base={},
        budgets={task: budget for task, (budget, _) in zoo.TARGETS.items()}),
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
        {"ppo": {}}, seeds=1, steps=500_000,
        base={"env_id": "CarRacing-v3", "checkpoint_every": 2}, defaults="task"),
    "memory": Experiment(
        "CartPole without its velocities (ppo.wrappers:CartPoleNoVelocity-v1): an LSTM policy "
        "against an MLP on the same observation and settings (the RL Zoo's for RecurrentPPO).",
        {"lstm": {"policy": "lstm"}, "mlp": {"policy": "mlp"}}, seeds=3, steps=300_000,
        base={"env_id": "ppo.wrappers:CartPoleNoVelocity-v1"}, defaults="task"),
}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in ".=-" else "_" for c in label)


def _args(options: dict[str, Any], defaults: str) -> tuple[str, ...]:
    """`ppo train` options of a variant: where its settings start, its preset if any, then
    Config fields."""
    options = dict(options)
    preset = options.pop("preset", None)
    defaults = options.pop("defaults", defaults)
    return ("--defaults", defaults, *(["--preset", preset] if preset else []),
            *to_flags(options), "--no-tensorboard")


def _with_evaluation(options: dict[str, Any], defaults: str, budget: int) -> dict[str, Any]:
    """A zoo run's options with its evaluation schedule, from the batch its settings give."""
    from ppo.config import from_dict
    from ppo.settings import resolve

    values = resolve({k: v for k, v in options.items() if k != "defaults"},
                     defaults=options.get("defaults", defaults)).values
    batch = from_dict({**values, "total_timesteps": budget}).batch_size
    return {**options, "eval_every": zoo.eval_every(batch, budget),
            "eval_episodes": zoo.EVAL_EPISODES}


def _share_runs_without_a_file(runs: dict[tuple[str, str], list[Path]]) -> None:
    """Where a zoo task ships no settings file, `ppo train --env X` runs the kind's settings:
    its task-settings row is the kind-settings runs, not a second set of the same runs."""
    from ppo.settings import task_file

    label_of = {defaults: label for label, defaults in zoo.VARIANTS.items()}
    task_label, kind_label = label_of["task"], label_of["kind"]
    for task, label in list(runs):
        if label == task_label and task_file(task) is None and (task, kind_label) in runs:
            runs[(task, task_label)] = runs[(task, kind_label)]


def run_experiment(name: str, out: Path, seeds: int | None, steps: int | None,
                   jobs: int, tasks: list[str] | None = None) -> Path:
    """Run what is not finished yet, then write results.md and the figures; return results.md.
    `tasks`: a subset of a task experiment's tasks."""
    from ppo.config import ConfigError
    from ppo.launcher import Job, finished, run_jobs

    exp = EXPERIMENTS[name]
    if tasks:
        if not exp.tasks:
            raise ConfigError(f"experiment {name} has no tasks to choose from")
        if unknown := [t for t in tasks if t not in exp.tasks]:
            raise ConfigError(f"experiment {name} has no task {unknown[0]!r}; its tasks: "
                              f"{', '.join(exp.tasks)}")
        exp = dataclasses.replace(exp, tasks=tasks)
    seeds, steps = seeds or exp.seeds, steps or exp.steps
    root = out / name
    runs = {(task, label): [root / _slug(task) / _slug(label) / f"seed{s}" if exp.tasks
                            else root / _slug(label) / f"seed{s}" for s in range(seeds)]
            for task in exp.tasks or [exp.base["env_id"]] for label in exp.variants}
    if exp.budgets:
        _share_runs_without_a_file(runs)
    todo, seen = [], set()
    for (task, label), dirs in runs.items():
        if dirs[0] in seen:
            continue
        seen.add(dirs[0])
        options = {**exp.base, "env_id": task, **exp.variants[label]}
        budget = exp.budgets.get(task, steps)
        if exp.budgets:
            options = _with_evaluation(options, exp.defaults, budget)
        todo += [Job(run_dir, seed, budget, _args(options, exp.defaults))
                 for seed, run_dir in enumerate(dirs)]
    left = sum(not finished(job) for job in todo)
    print(f"{name}: {left} of {len(todo)} runs to do, {jobs} at a time", flush=True)
    run_jobs(todo, jobs, report=lambda line: print(f"  {line}", flush=True))
    if exp.budgets:
        return zoo.report(runs, root, _metrics)
    if exp.tasks:
        return report_tasks(name, runs, exp, root)
    return report(name, {label: dirs for (_, label), dirs in runs.items()}, exp, root)


def solved_at(metrics: dict[str, np.ndarray], threshold: float) -> int | None:
    """Index of the first update at which the run counts as solved (see SOLVED), or None."""
    solved = (metrics["episodes"] >= WINDOW) & (metrics["episodic_return"] > threshold)
    return int(np.argmax(solved)) if solved.any() else None


def summarize(metrics: dict[str, np.ndarray], threshold: float | None) -> dict[str, float]:
    """Final return, first step and wall-clock at which the run was solved, and mean approx
    KL and clip fraction over the run; empty for a run that has logged nothing."""
    if not len(metrics.get("update", [])):
        return {}
    wall = np.cumsum(metrics["time_total"])
    first = None if threshold is None else solved_at(metrics, threshold)
    return {
        "final_return": float(metrics["episodic_return"][-1]),
        "steps_to_solve": math.nan if first is None else float(metrics["global_step"][first]),
        "time_to_solve": math.nan if first is None else float(wall[first]),
        "wall_clock": float(wall[-1]),
        "steps": float(metrics["global_step"][-1]),
        "approx_kl": float(np.nanmean(metrics["approx_kl"])),
        "max_kl": float(np.nanmax(metrics["approx_kl"])),
        "clipfrac": float(np.nanmean(metrics["clipfrac"])),
    }


def _metrics(run_dir: Path) -> dict[str, np.ndarray]:
    """Columns of a run's metrics.csv; empty when the run has logged nothing yet."""
    from ppo.metrics import read_metrics

    return read_metrics(run_dir) if (run_dir / "metrics.csv").is_file() else {}


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _iqm_ci(values: list[float]) -> str:
    """IQM over runs with its 95% bootstrap CI; runs without a value are left out."""
    values = _finite(values)
    return iqm_estimate(values).format() if values else "-"


def _iqm(values: list[float], digits: int = 1) -> str:
    values = _finite(values)
    return f"{iqm(values):.{digits}f}" if values else "-"


def _cell(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


STATISTICS_NOTE = ("Over runs: interquartile mean (IQM), with its 95% stratified-bootstrap "
                   "confidence interval in brackets (Agarwal et al. 2021).")


def summary_tables(groups: dict[str, list[Path]], thresholds: dict[str, float | None],
                   name: str = "variant") -> tuple[list[str], list[str]]:
    """A row per group and a row per run, as Markdown. `thresholds`: per group, the return
    that counts as solved (None: none known)."""
    table = [f"| {name} | runs | final return: IQM [95% CI] | solved | median steps to solve | "
             "median wall-clock to solve (s) | IQM approx KL | IQM max approx KL | "
             "IQM clip fraction |",
             "|---|---|---|---|---|---|---|---|---|"]
    per_run = [f"| {name} | seed | final return | steps to solve | wall-clock to solve (s) | "
               "steps | total wall-clock (s) |", "|---|---|---|---|---|---|---|"]
    for label, dirs in groups.items():
        threshold = thresholds.get(label)
        done = [(d, s) for d in dirs if (s := summarize(_metrics(d), threshold))]
        if not done:
            continue
        stats = [s for _, s in done]
        solved = [s for s in stats if not math.isnan(s["steps_to_solve"])]

        def median(key: str, solved: list[dict[str, float]] = solved) -> str:
            return f"{np.median([s[key] for s in solved]):.0f}" if solved else "-"

        table.append(
            f"| {label} | {len(stats)} | {_iqm_ci([s['final_return'] for s in stats])} | "
            f"{'-' if threshold is None else f'{len(solved)}/{len(stats)}'} | "
            f"{median('steps_to_solve')} | {median('time_to_solve')} | "
            f"{_iqm([s['approx_kl'] for s in stats], 4)} | "
            f"{_iqm([s['max_kl'] for s in stats], 3)} | "
            f"{_iqm([s['clipfrac'] for s in stats], 3)} |")
        per_run += [f"| {label} | {_seed(d)} | {_cell(s['final_return'], 1)} | "
                    f"{_cell(s['steps_to_solve'])} | {_cell(s['time_to_solve'])} | "
                    f"{s['steps']:.0f} | {s['wall_clock']:.0f} |" for d, s in done]
    return table, per_run


def _seed(run_dir: Path) -> str:
    """A run's seed, from its config.toml (else its seedN directory name)."""
    try:
        return str(tomllib.loads((run_dir / "config.toml").read_text())["seed"])
    except (OSError, tomllib.TOMLDecodeError, KeyError):
        match = re.fullmatch(r"seed(\d+)", run_dir.name)
        return match.group(1) if match else "-"


def report(name: str, runs: dict[str, list[Path]], exp: Experiment, root: Path) -> Path:
    from ppo import figures

    threshold = SOLVED.get(exp.base["env_id"])
    table, per_run = summary_tables(runs, dict.fromkeys(runs, threshold))
    lines = [f"# {name}", "", exp.description, "",
             f"Solved: mean return over the last {WINDOW} episodes > {threshold}. "
             f"{STATISTICS_NOTE}", "", *table]
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
        profiles = figures.plot_profiles({exp.base["env_id"]: final_returns(existing)},
                                         root / "profiles.png")
        lines += ["", f"![performance profiles]({profiles.name})"]
    path = root / "results.md"
    path.write_text("\n".join([*lines, "", "## Per seed", "", *per_run]) + "\n")
    return path


def report_tasks(name: str, runs: dict[tuple[str, str], list[Path]], exp: Experiment,
                 root: Path) -> Path:
    """A row per task and variant (final return, wall-clock, KL) and a learning-curve figure
    per task: returns of different tasks share no scale."""
    from ppo import figures

    lines = [f"# {name}", "", exp.description, "",
             "Final return: mean over the last 100 episodes at the end of each run. Wall-clock: "
             f"seconds of training (env, update, logging), per run. {STATISTICS_NOTE} The "
             "other columns are IQMs over seeds too.", "",
             "| task | variant | seeds | steps | final return: IQM [95% CI] | wall-clock (s) | "
             "steps/s | approx KL | max approx KL |",
             "|---|---|---|---|---|---|---|---|---|"]
    per_seed = ["", "## Per seed", "", "| task | variant | seed | steps | final return | "
                "wall-clock (s) |", "|---|---|---|---|---|---|"]
    for (task, label), dirs in runs.items():
        done = [(d, s) for d in dirs if (s := summarize(_metrics(d), None))]
        if not done:
            continue
        stats = [s for _, s in done]
        lines.append(
            f"| {task} | {label} | {len(stats)} | {_iqm([s['steps'] for s in stats], 0)} | "
            f"{_iqm_ci([s['final_return'] for s in stats])} | "
            f"{_iqm([s['wall_clock'] for s in stats], 0)} | "
            f"{_iqm([s['steps'] / s['wall_clock'] for s in stats], 0)} | "
            f"{_iqm([s['approx_kl'] for s in stats], 4)} | "
            f"{_iqm([s['max_kl'] for s in stats], 3)} |")
        per_seed += [f"| {task} | {label} | {_seed(d)} | {s['steps']:.0f} | "
                     f"{_cell(s['final_return'], 1)} | {s['wall_clock']:.0f} |" for d, s in done]
    profiles = {}
    for task in exp.tasks:
        existing = {label: [d for d in dirs if (d / "metrics.csv").exists()]
                    for (t, label), dirs in runs.items() if t == task}
        all_dirs = [d for dirs in existing.values() for d in dirs]
        if all_dirs:
            labels = [label for label, dirs in existing.items() for _ in dirs]
            curves = figures.plot_runs(all_dirs, root / f"curves_{_slug(task)}.png",
                                       labels=labels, title=task)
            lines += ["", f"![{task} learning curves]({curves.name})"]
            profiles[task] = final_returns(existing)
    if any(any(len(s) for s in groups.values()) for groups in profiles.values()):
        path = figures.plot_profiles(profiles, root / "profiles.png")
        lines += ["", f"![performance profiles]({path.name})"]
    path = root / "results.md"
    path.write_text("\n".join(lines + per_seed) + "\n")
    return path


def final_returns(groups: dict[str, list[Path]]) -> dict[str, np.ndarray]:
    """Per group, the final return of each run that has one."""
    return {label: np.array(_finite([summarize(_metrics(d), None).get("final_return", math.nan)
                                     for d in dirs]))
            for label, dirs in groups.items()}


def group_members(group_dir: Path) -> list[Path]:
    """The runs of a group directory (its subdirectories holding a run, e.g. seed0, seed1,
    ...), or the directory itself when it is a single run."""
    group_dir = Path(group_dir)
    if (group_dir / "metrics.csv").is_file():
        return [group_dir]
    if not group_dir.is_dir():
        raise ValueError(f"not a directory: {group_dir}")

    def order(path: Path) -> tuple[int, str]:
        match = re.fullmatch(r"seed(\d+)", path.name)
        return (int(match.group(1)) if match else -1, path.name)

    runs = sorted((d for d in group_dir.iterdir() if (d / "metrics.csv").is_file()), key=order)
    if not runs:
        raise ValueError(f"{group_dir} holds no run with a metrics.csv (neither itself nor "
                         "its subdirectories)")
    return runs


def env_of(run_dir: Path) -> str:
    """The env id in a run's config.toml."""
    try:
        return str(tomllib.loads((Path(run_dir) / "config.toml").read_text())["env_id"])
    except (OSError, tomllib.TOMLDecodeError, KeyError) as e:
        raise ValueError(f"{run_dir}: no readable env_id in config.toml ({e})") from None


def compare(group_dirs: list[Path], threshold: float | None, out: Path) -> str:
    """`ppo compare`: per group, the IQM of the final return with its 95% CI, solved runs and
    steps to solve; then every run; performance profiles drawn to `out`. Returns Markdown."""
    from ppo import figures

    groups = {str(d): group_members(d) for d in group_dirs}
    envs = {label: env_of(dirs[0]) for label, dirs in groups.items()}
    for label, dirs in groups.items():
        if others := sorted({env_of(d) for d in dirs} - {envs[label]}):
            raise ValueError(f"{label} mixes envs: {envs[label]}, {', '.join(others)}")
    thresholds = {label: SOLVED.get(env) if threshold is None else threshold
                  for label, env in envs.items()}
    table, per_run = summary_tables(groups, thresholds, name="group")
    known = {t for t in thresholds.values() if t is not None}
    solved = (f"Solved: mean return over the last {WINDOW} episodes > "
              f"{', '.join(f'{t:g}' for t in sorted(known))}. " if known else "")
    by_env: dict[str, dict[str, np.ndarray]] = {}
    for label, returns in final_returns(groups).items():
        by_env.setdefault(envs[label], {})[label] = returns
    path = figures.plot_profiles(by_env, out)
    return "\n".join([f"{solved}{STATISTICS_NOTE}", "", *table, "", *per_run, "",
                      f"Performance profiles: {path}"]) + "\n"
