"""The solve-time race: CPU time and env steps until solved, `ppo` against Stable-Baselines3.

Tasks and targets (the target is the task's Gymnasium `reward_threshold` where it has one):

  CartPole-v1     475     (Gymnasium's reward_threshold)
  Pendulum-v1     -200    (Gymnasium registers no threshold; the old Gym wiki page on
                           Pendulum-v0 calls an average return of -100 to -150 good, so
                           -200 is a loose, informal bar)
  LunarLander-v3  200     (Gymnasium's reward_threshold)
  HalfCheetah-v5  1500    (a fixed bar; Gymnasium's threshold is 4800)

Solved, the same definition for both libraries: after an update, at least 100 training
episodes have ended and the mean undiscounted return of the last 100 of them (the raw env
reward, before any normalization; actions sampled, as in training) is at or above the
target. It is checked after every update; the steps are those collected up to that update.

SB3 runs with the RL Baselines3 Zoo's PPO settings (rl_zoo3 2.9.2, `hyperparams/ppo.yml`:
published values, written out below), built as the Zoo builds them: DummyVecEnv of Monitor-
wrapped envs, VecNormalize (with the algorithm's gamma) where the Zoo sets `normalize`,
linear schedules going to 0 over the Zoo's `n_timesteps`, which is also the run's budget. The
Zoo's periodic evaluation is left out: it is not part of the learning. HalfCheetah-v5 takes
the Zoo's HalfCheetah-v4 entry (the Zoo has none for v5). `ppo` runs a settings file (a
shipped preset by default), with its own budget.

Each run is its own child process, one thread. Time is the child's CPU time from after its
imports to the end of the update that solved it; with one thread that is the wall-clock on a
core of its own, and it stays honest when runs share the machine. The child's wall-clock is
recorded too. Every finished run is appended to a JSON-lines file; a run already there is not
run again, so an interrupted race resumes where it stopped. The Markdown report is rewritten
from that file after every run.

    pip install -e ".[bench]"
    python benchmarks/race.py --impl sb3 --tasks CartPole-v1 Pendulum-v1
    python benchmarks/race.py --impl ppo --ppo-settings CartPole-v1=my_cartpole.toml
    python benchmarks/race.py --impl ppo --ppo-settings CartPole-v1=zoo   # the Zoo's settings
    python benchmarks/race.py --report          # rewrite the report from the results file
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_JSONL = HERE / "results" / "race.jsonl"
RESULTS_MD = HERE / "results" / "race.md"
WINDOW = 100  # episodes in the solved mean
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ZOO_SOURCE = "rl_zoo3 2.9.2 (PyPI), rl_zoo3/hyperparams/ppo.yml"


@dataclass(frozen=True)
class ZooSettings:
    """One entry of the Zoo's ppo.yml, in SB3's own argument names."""

    zoo_entry: str
    n_timesteps: int
    n_envs: int = 1
    normalize: bool = False
    ppo_kwargs: dict[str, Any] = field(default_factory=dict)
    linear: tuple[str, ...] = ()  # ppo_kwargs keys given as `lin_<value>`
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    relu: bool = False


@dataclass(frozen=True)
class Task:
    env_id: str
    target: float
    zoo: ZooSettings
    ppo_preset: str  # the shipped preset the `ppo` side runs unless told otherwise


TASKS = {
    "CartPole-v1": Task("CartPole-v1", 475.0, ZooSettings(
        "CartPole-v1", 100_000, n_envs=8,
        ppo_kwargs=dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                        ent_coef=0.0, learning_rate=0.001, clip_range=0.2),
        linear=("learning_rate", "clip_range")), "cartpole"),
    "Pendulum-v1": Task("Pendulum-v1", -200.0, ZooSettings(
        "Pendulum-v1", 100_000, n_envs=4,
        ppo_kwargs=dict(n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0,
                        learning_rate=1e-3, clip_range=0.2, use_sde=True, sde_sample_freq=4)),
        "pendulum"),
    "LunarLander-v3": Task("LunarLander-v3", 200.0, ZooSettings(
        "LunarLander-v3", 1_000_000, n_envs=16,
        ppo_kwargs=dict(n_steps=1024, batch_size=64, gae_lambda=0.98, gamma=0.999, n_epochs=4,
                        ent_coef=0.01)), "lunarlander"),
    "HalfCheetah-v5": Task("HalfCheetah-v5", 1500.0, ZooSettings(
        "HalfCheetah-v4", 1_000_000, n_envs=1, normalize=True,
        ppo_kwargs=dict(batch_size=64, n_steps=512, gamma=0.98, learning_rate=2.0633e-05,
                        ent_coef=0.000401762, clip_range=0.1, n_epochs=20, gae_lambda=0.92,
                        max_grad_norm=0.8, vf_coef=0.58096),
        policy_kwargs=dict(log_std_init=-2, ortho_init=False,
                           net_arch=dict(pi=[256, 256], vf=[256, 256])),
        relu=True), "mujoco"),
}


# ---------------------------------------------------------------------- children
class SolveWatch:
    """Applies the solved definition to the (mean, count) seen after each update."""

    def __init__(self, target: float, start_cpu: float, start_wall: float) -> None:
        self.target, self.start_cpu, self.start_wall = target, start_cpu, start_wall
        self.result: dict[str, Any] | None = None
        self.last_mean = float("nan")

    def after_update(self, steps: int, mean: float, episodes: int) -> bool:
        """Record the update; True once solved."""
        self.last_mean = mean
        if self.result is None and episodes >= WINDOW and mean >= self.target:
            self.result = self.outcome(True, steps, mean)
        return self.result is not None

    def outcome(self, solved: bool, steps: int, mean: float) -> dict[str, Any]:
        return {"solved": solved, "steps": int(steps), "mean_return": float(mean),
                "cpu_s": time.process_time() - self.start_cpu,
                "wall_s": time.perf_counter() - self.start_wall}


def child_sb3(task: Task, seed: int, settings: str | None, budget_factor: float) -> dict:
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    watch = SolveWatch(task.target, time.process_time(), time.perf_counter())
    zoo = task.zoo
    budget = int(zoo.n_timesteps * budget_factor)
    spec = gym.spec(task.env_id)

    def make_env(**kwargs: Any) -> gym.Env:  # as the Zoo does: no render mode
        return spec.make(**kwargs)

    envs = make_vec_env(make_env, n_envs=zoo.n_envs, seed=seed)
    if zoo.normalize:
        envs = VecNormalize(envs, gamma=zoo.ppo_kwargs.get("gamma", 0.99))
    kwargs = dict(zoo.ppo_kwargs)
    for key in zoo.linear:  # the Zoo's lin_<v>: v times the fraction of the budget left
        kwargs[key] = (lambda v: lambda remaining: remaining * v)(kwargs[key])
    policy_kwargs = dict(zoo.policy_kwargs)
    if zoo.relu:
        policy_kwargs["activation_fn"] = torch.nn.ReLU
    model = PPO("MlpPolicy", envs, seed=seed, device="cpu", verbose=0,
                policy_kwargs=policy_kwargs or None, **kwargs)

    class AfterEachUpdate(BaseCallback):
        """SB3 calls on_rollout_end before the update and on_rollout_start after it."""

        pending: tuple[int, float, int] | None = None
        episodes = 0

        def _on_rollout_end(self) -> None:
            recent = self.model.ep_info_buffer  # the last 100 Monitor (raw) returns
            mean = float(np.mean([e["r"] for e in recent])) if recent else float("nan")
            self.pending = (self.num_timesteps, mean, self.episodes)

        def _on_rollout_start(self) -> None:
            if self.pending is not None:
                watch.after_update(*self.pending)
                self.pending = None

        def _on_step(self) -> bool:
            self.episodes += sum("episode" in info for info in self.locals["infos"])
            return watch.result is None

    callback = AfterEachUpdate()
    model.learn(total_timesteps=budget, callback=callback)
    if callback.pending is not None:  # the last update of the budget
        watch.after_update(*callback.pending)
    return watch.result or watch.outcome(False, model.num_timesteps, watch.last_mean)


def ppo_settings_values(settings: str, env_id: str) -> tuple[dict[str, Any], list[str]]:
    """A settings file's values and the proposed keys left out: `settings` is a path to a TOML
    file, the name of a shipped preset, or `zoo` for the task's file in ppo/settings (the RL
    Zoo's settings). A file's [proposed] table names what the engine cannot do yet; it is
    dropped, and the run records what was left out."""
    from importlib import resources

    from ppo.config import load_toml

    path = Path(settings)
    if not path.exists():
        package = resources.files("ppo")
        path = Path(str(package / "settings" / f"{env_id.replace('/', '-')}.toml"
                        if settings == "zoo" else package / "presets" / f"{settings}.toml"))
    values = load_toml(path)
    proposed = values.pop("proposed", {})
    return values, sorted(proposed)


def child_ppo(task: Task, seed: int, settings: str | None, budget_factor: float) -> dict:
    try:
        from ppo.agent import PPO
    except ImportError:  # before the engine's move to ppo.agent
        from ppo.trainer import PPO
    from ppo.config import from_dict

    watch = SolveWatch(task.target, time.process_time(), time.perf_counter())
    values, left_out = ppo_settings_values(settings or task.ppo_preset, task.env_id)
    values.update(env_id=task.env_id, seed=seed, threads=1, run_dir=None, tensorboard=False)
    values["total_timesteps"] = int(values.get("total_timesteps", 1_000_000) * budget_factor)
    cfg = from_dict(values)
    agent = PPO(cfg, verbose=False)

    def callback(row: dict[str, float], _agent: Any = None) -> bool:
        return not watch.after_update(int(row["global_step"]), float(row["episodic_return"]),
                                      int(row["episodes"]))

    if "callback" in inspect.signature(agent.learn).parameters:
        agent.learn(callback=callback)
    else:
        while agent.global_step < cfg.total_timesteps and callback(agent.iteration()):
            pass
    result = watch.result or watch.outcome(False, agent.global_step, watch.last_mean)
    return {**result, "left_out": left_out}


CHILDREN = {"sb3": child_sb3, "ppo": child_ppo}


# ---------------------------------------------------------------------- parent
def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def settings_label(impl: str, task: Task, settings: str | None) -> str:
    if impl == "sb3":
        return f"RL Zoo {task.zoo.zoo_entry}"
    return settings or f"preset {task.ppo_preset}"


def run_key(r: dict) -> tuple:
    return (r["impl"], r["task"], r["settings"], r["budget_factor"], r["seed"])


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(impl: str, task: Task, seed: int, settings: str | None,
            budget_factor: float) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--tasks", task.env_id, "--seed", str(seed),
           "--budget-factor", str(budget_factor)]
    if settings:
        cmd += ["--ppo-settings", f"{task.env_id}={settings}"]
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    if done.returncode != 0:
        raise RuntimeError(f"child {impl} {task.env_id} seed {seed} failed:\n"
                           f"{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"impl": impl, "task": task.env_id, "settings": settings_label(impl, task, settings),
            "budget_factor": budget_factor, "seed": seed, "target": task.target, **result,
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": {d: version(d) for d in ("ppo", "stable-baselines3", "torch",
                                                 "gymnasium", "numpy")}}


def _span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-" \
           f"{format(max(values), fmt)})"


def _median_with_unsolved(runs: list[dict], key: str, fmt: str) -> str:
    """Median over all runs, an unsolved run counting as slower than any solved one; the
    range is over the solved runs."""
    ordered = sorted(r[key] if r["solved"] else math.inf for r in runs)
    median = statistics.median(ordered)
    solved = [r[key] for r in runs if r["solved"]]
    if math.isinf(median):
        return "-"
    return f"{format(median, fmt)} ({format(min(solved), fmt)}-{format(max(solved), fmt)})"


def report(results: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["task"], r["impl"], r["settings"], r["budget_factor"]), []).append(r)
    order = list(TASKS)
    lines = [
        "# The solve-time race: ppo against Stable-Baselines3 (RL Zoo settings)", "",
        "Solved: after an update, at least 100 training episodes have ended and the mean "
        "return of the last 100 is at or above the target (raw env reward, sampled "
        "actions). CPU time is the run's own (one thread, one process per run), from after "
        "its imports to the end of the solving update. Median over seeds, (min-max) over "
        "the seeds that solved; a run that did not solve within its budget counts as slower "
        "than every one that did ('-': the median run did not solve). Produced by "
        "`benchmarks/race.py`; every run is in `race.jsonl`.", "",
        "| task | target | library | settings | solved | steps to solve | CPU s to solve "
        "| wall s to solve |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(groups, key=lambda k: (order.index(k[0]) if k[0] in order else 99,
                                             k[1], k[2], k[3])):
        runs = sorted(groups[key], key=lambda r: r["seed"])
        task, impl, settings, factor = key
        label = settings if factor == 1 else f"{settings}, budget x{factor:g}"
        left_out = sorted({k for r in runs for k in r.get("left_out", [])})
        if left_out:
            label += f" (without {', '.join(left_out)})"
        lines.append(
            f"| {task} | {runs[0]['target']:g} | {impl} | {label} "
            f"| {sum(r['solved'] for r in runs)}/{len(runs)} "
            f"| {_median_with_unsolved(runs, 'steps', ',.0f')} "
            f"| {_median_with_unsolved(runs, 'cpu_s', '.1f')} "
            f"| {_median_with_unsolved(runs, 'wall_s', '.1f')} |")
    lines += ["", "Per run:", "",
              "| task | library | settings | seed | solved | steps | CPU s | wall s "
              "| last mean | load before/after | date |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups, key=lambda k: (order.index(k[0]) if k[0] in order else 99,
                                             k[1], k[2], k[3])):
        for r in sorted(groups[key], key=lambda r: r["seed"]):
            lines.append(
                f"| {r['task']} | {r['impl']} | {r['settings']} | {r['seed']} "
                f"| {'yes' if r['solved'] else 'no'} | {r['steps']:,} | {r['cpu_s']:.1f} "
                f"| {r['wall_s']:.1f} | {r['mean_return']:.1f} "
                f"| {r['load_before']:.1f}/{r['load_after']:.1f} | {r['date']} |")
    versions = results[-1]["versions"] if results else {}
    lines += ["", "Versions (last run): " + ", ".join(f"{k} {v}" for k, v in versions.items())
              + f"; Python {platform.python_version()}; SB3 settings from {ZOO_SOURCE}."]
    return "\n".join(lines) + "\n"


def parse_settings(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        task, sep, path = pair.partition("=")
        if not sep or task not in TASKS:
            sys.exit(f"error: --ppo-settings takes TASK=FILE with TASK one of {', '.join(TASKS)}")
        out[task] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", nargs="+", choices=sorted(CHILDREN), default=["sb3", "ppo"])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--ppo-settings", nargs="*", default=[], metavar="TASK=FILE",
                        help="ppo's settings on TASK: a TOML file, a preset name, or 'zoo' "
                        "for the RL Zoo's settings shipped in ppo/settings")
    parser.add_argument("--budget-factor", type=float, default=1.0,
                        help="multiply each run's budget (SB3: the Zoo's n_timesteps, which "
                        "also stretches its linear schedules)")
    parser.add_argument("--results", type=Path, default=RESULTS_JSONL)
    parser.add_argument("--output", type=Path, default=RESULTS_MD)
    parser.add_argument("--report", action="store_true", help="only rewrite the report")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seeds < 1 or args.jobs < 1 or not args.budget_factor > 0:
        sys.exit("error: --seeds and --jobs must be >= 1 and --budget-factor > 0")
    settings = parse_settings(args.ppo_settings)
    if args.child:
        task = TASKS[args.tasks[0]]
        out = CHILDREN[args.child](task, args.seed, settings.get(task.env_id),
                                   args.budget_factor)
        print(json.dumps(out))
        return
    if args.report:
        args.output.write_text(report(load_results(args.results)))
        print(f"written to {args.output}")
        return

    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {run_key(r) for r in load_results(args.results)}
    plan = []
    for env_id in args.tasks:
        task = TASKS[env_id]
        for impl in args.impl:
            chosen = settings.get(env_id) if impl == "ppo" else None
            label = settings_label(impl, task, chosen)
            plan += [(impl, task, seed, chosen) for seed in range(args.seeds)
                     if (impl, env_id, label, args.budget_factor, seed) not in done]
    print(f"{len(plan)} runs to do ({len(done)} already in {args.results})", flush=True)
    lock = threading.Lock()

    def run(item: tuple[str, Task, int, str | None]) -> bool:
        impl, task, seed, chosen = item
        try:
            r = measure(impl, task, seed, chosen, args.budget_factor)
        except RuntimeError as e:  # reported; the other runs go on
            print(e, file=sys.stderr, flush=True)
            return False
        with lock:
            with args.results.open("a") as f:  # one line per run, written whole
                f.write(json.dumps(r) + "\n")
            print(f"{r['date']} {impl} {task.env_id} seed {seed}: solved={r['solved']} "
                  f"steps={r['steps']:,} cpu={r['cpu_s']:.1f}s wall={r['wall_s']:.1f}s "
                  f"mean={r['mean_return']:.1f}", flush=True)
            args.output.write_text(report(load_results(args.results)))
        return True

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        ok = all(list(pool.map(run, plan)))
    print(f"\nwritten to {args.output}")
    if not ok:
        sys.exit("some runs failed (see above); run the same command again to retry them")


if __name__ == "__main__":
    main()
