"""One trial of `ppo tune`: train with the trial's settings, evaluate every so many env steps,
stop once the evaluation return reaches the target (solved) or the pruner gives up on it.

The measurement is `steps_to_solve`, used alike for the trials and for checking the settings
they find against others. A trial runs as its own process (`python -m ppo.tuning.trial DIR
NUMBER`, started by ppo.tuning.study), which reports each evaluation to the study in
SQLite for pruning and leaves its outcome in `outcome.json` of its directory.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ppo.config import Config, from_dict, load_toml
from ppo.envs import make_env
from ppo.evaluation import Evaluator

# report(evaluation index, eval_return) -> True to stop (prune) the trial.
Report = Callable[[int, float], bool]


@dataclass
class Outcome:
    """How a run went: whether and when (env steps) an evaluation reached the target, the
    best evaluation return, every evaluation as (env step, return), and whether the pruner
    stopped it."""

    solved: bool
    steps: int
    best_return: float
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    pruned: bool = False


def objective(outcome: Outcome, target: float, budget: int) -> float:
    """What the study minimizes: the env steps to solve; an unsolved run ranks after every
    solved one (above the budget), the further its best evaluation fell short, the worse."""
    if outcome.solved:
        return float(outcome.steps)
    shortfall = max(0.0, target - outcome.best_return)
    return budget * (1.0 + shortfall / (abs(target) + 1.0))


class SolveWatch:
    """learn(callback=...): after the first update past every `every` env steps (and after
    the last), evaluate `episodes` episodes with ppo's Evaluator; stop once the return
    reaches `target`, or when `report` says to prune. Evaluation k covers steps up to
    k * every, so runs with different batch sizes report comparable points."""

    def __init__(self, config: Config, target: float, every: int, episodes: int,
                 report: Report | None = None, alive: Callable[[], bool] = lambda: True
                 ) -> None:
        self.target, self.every, self.budget = target, every, config.total_timesteps
        self.report, self.alive = report, alive
        self.evaluator = Evaluator(lambda: make_env(config), 1, episodes,
                                   config.eval_deterministic, config.seed)
        self.outcome = Outcome(False, config.total_timesteps, -math.inf)
        self.next_at = every

    def __call__(self, row: dict[str, Any], agent: Any) -> bool:
        if not self.alive():
            return False
        step = agent.global_step
        if step < min(self.next_at, self.budget):
            return True
        index = step // self.every
        self.next_at = (index + 1) * self.every
        value = self.evaluator.run(agent)["eval_return"]
        out = self.outcome
        out.evaluations.append((step, value))
        out.best_return = max(out.best_return, value)
        if value >= self.target:
            out.solved, out.steps = True, step
            return False
        if self.report is not None and self.report(index, value):
            out.pruned = True
            return False
        return True

    def close(self) -> None:
        self.evaluator.close()


def steps_to_solve(config: Config, target: float, every: int, episodes: int = 10,
                   report: Report | None = None, alive: Callable[[], bool] = lambda: True,
                   verbose: bool = False) -> Outcome:
    """Train `config` for at most config.total_timesteps env steps, evaluating as SolveWatch
    does; the outcome says whether, and after how many env steps, the target was reached."""
    from ppo.agent import PPO

    watch = SolveWatch(config, target, every, episodes, report, alive)
    agent = PPO(config, verbose=verbose)
    try:
        agent.learn(callback=watch)
    finally:
        watch.close()
        agent.close()
    return watch.outcome


def combine(outcomes: list[Outcome]) -> Outcome:
    """Runs of one trial on several seeds as one outcome: solved only if every seed solved,
    the mean of their steps (the budget where unsolved), the worst of their best returns;
    pruned if one was. A single lucky seed no longer decides a trial."""
    steps = round(sum(o.steps for o in outcomes) / len(outcomes))
    return Outcome(all(o.solved for o in outcomes), steps,
                   min(o.best_return for o in outcomes),
                   [e for o in outcomes for e in o.evaluations], any(o.pruned for o in outcomes))


def steps_to_solve_over_seeds(config: Config, seeds: int, target: float, every: int,
                              episodes: int = 10, report: Report | None = None,
                              alive: Callable[[], bool] = lambda: True) -> Outcome:
    """`steps_to_solve` on seeds config.seed, config.seed + 1, ... (each run in its own
    `run<k>` beside config.run_dir), combined. Evaluations are reported to the pruner one
    seed after the other (seed k's from index k x (budget / every + 1)), so trials compare at
    like points; a pruned or abandoned trial stops there."""
    outcomes: list[Outcome] = []
    stride = config.total_timesteps // every + 1
    for k in range(seeds):
        seeded = config.replace(seed=config.seed + k)
        if seeds > 1 and config.run_dir:
            seeded = seeded.replace(run_dir=f"{config.run_dir}{k}")
        outcomes.append(steps_to_solve(
            seeded, target, every, episodes,
            None if report is None else lambda index, value, k=k: report(k * stride + index,
                                                                          value),
            alive))
        if outcomes[-1].pruned or not alive():
            break
    return combine(outcomes)


# ---------------------------------------------------------------------- a trial's process
def write_outcome(trial_dir: Path, outcome: Outcome) -> None:
    from ppo.checkpoint import write_atomic

    write_atomic(Path(trial_dir) / "outcome.json", json.dumps(asdict(outcome)).encode())


def read_outcome(trial_dir: Path) -> Outcome | None:
    path = Path(trial_dir) / "outcome.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data["evaluations"] = [tuple(e) for e in data["evaluations"]]
    return Outcome(**data)


def run(tune_dir: Path, number: int) -> None:
    """Run trial `number` of the study in `tune_dir`: its settings are in its directory's
    settings.toml, written by the study; evaluations go to the study as they come."""
    import optuna

    from ppo.tuning.study import TuneSpec, load_study, trial_dir

    spec = TuneSpec.read(tune_dir)
    here = trial_dir(tune_dir, number)
    config = from_dict(load_toml(here / "settings.toml"))
    study = load_study(tune_dir, spec)
    trial_id = next(t._trial_id for t in study.get_trials(deepcopy=False) if t.number == number)
    trial = optuna.trial.Trial(study, trial_id)

    def report(index: int, value: float) -> bool:
        # Lower is better for the study: the shortfall from the target.
        trial.report(spec.target - value, index)
        return trial.should_prune()

    parent = os.getppid()
    outcome = steps_to_solve_over_seeds(config, spec.seeds, spec.target, spec.eval_steps,
                                        spec.eval_episodes, report,
                                        alive=lambda: os.getppid() == parent)
    if os.getppid() == parent:  # an orphan (its tuning run was killed) leaves no outcome
        write_outcome(here, outcome)


if __name__ == "__main__":
    from ppo.signals import Interrupted

    try:
        run(Path(sys.argv[1]), int(sys.argv[2]))
    except Interrupted as e:  # the tuning run was stopped: it starts this trial over later
        sys.exit(128 + e.signum)
