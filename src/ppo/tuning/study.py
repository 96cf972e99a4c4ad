"""`ppo tune`: an Optuna study (TPE sampling, median pruning on the evaluation return) over a
search space, minimizing the env steps to solve a task, stored in SQLite so that the same
command resumes a killed run.

The tuning directory holds `tune.toml` (what the study measures: env, target, budget,
evaluation, base settings, search space), `study.sqlite3` (Optuna's storage), a directory per
trial (`trials/NNNN`: the settings it trained with, its run, its log and outcome) and
`best.toml`, the best trial's settings for `ppo train --config`.

Trials run as separate processes, `jobs` at a time: each trains on one core, and a crash or
a stuck env takes down one trial, not the study. This process alone samples (ask) and records
results (tell); the trials report their evaluations to the storage for pruning. A trial
interrupted by a stop or a kill is marked failed and queued again with the same settings.
"""

from __future__ import annotations

import csv
import fcntl
import io
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from ppo.checkpoint import write_atomic
from ppo.config import ConfigError, from_dict, load_toml
from ppo.launcher import ONE_THREAD, Stopped
from ppo.tuning.space import SearchSpace, fit
from ppo.tuning.trial import objective, read_outcome

if TYPE_CHECKING:
    import optuna

SPEC_FILE, STUDY_FILE, BEST_FILE, TRIALS_FILE = ("tune.toml", "study.sqlite3", "best.toml",
                                                 "trials.csv")
STUDY_NAME = "ppo-tune"
# Random trials before TPE takes over, and before the pruner acts (the RL Zoo's choice).
STARTUP_TRIALS = 5
# Settings of a trial that belong to the tuner (where files go, evaluation, the budget), not
# to the settings found.
RUN_KEYS = {"run_dir", "seed", "checkpoint_every", "tensorboard", "track", "wandb_project",
            "wandb_group", "eval_every", "eval_episodes", "stop_at_return", "threads",
            "device", "dist_timeout"}


@dataclass(frozen=True)
class TuneSpec:
    """What a study measures. `base`: the settings every trial starts from (the sampled ones
    replace theirs); `space`: the search space as its file says it; `seeds`: seeds each trial
    trains on (trial.combine: solved only if all solved, mean steps)."""

    env_id: str
    target: float
    budget: int
    eval_steps: int
    eval_episodes: int
    seed: int
    base: dict[str, Any]
    space: dict[str, Any]
    seeds: int = 1  # seeds per trial (seed, seed + 1, ...); its value combines them

    @property
    def evaluations(self) -> int:
        return max(1, self.budget // self.eval_steps)

    def write(self, tune_dir: Path) -> None:
        write_atomic(tune_dir / SPEC_FILE, tomli_w.dumps(asdict(self)).encode())

    @classmethod
    def read(cls, tune_dir: Path) -> TuneSpec:
        return cls(**load_toml(Path(tune_dir) / SPEC_FILE))


def trial_dir(tune_dir: Path, number: int) -> Path:
    return Path(tune_dir) / "trials" / f"{number:04d}"


def _storage(tune_dir: Path) -> str:
    return f"sqlite:///{Path(tune_dir).resolve() / STUDY_FILE}"


def make_pruner(spec: TuneSpec) -> optuna.pruners.BasePruner:
    """Median pruning once a third of the evaluations are in (as the RL Zoo does)."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS,
                                       n_warmup_steps=spec.evaluations // 3)


def load_study(tune_dir: Path, spec: TuneSpec,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=_storage(tune_dir), study_name=STUDY_NAME,
                               direction="minimize", sampler=sampler,
                               pruner=make_pruner(spec), load_if_exists=True)


def _counts_as_done(trial: optuna.trial.FrozenTrial) -> bool:
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted"))


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """An interrupted trial: failed, and its settings queued to run again first."""
    import optuna
    from optuna.trial import TrialState

    optuna.trial.Trial(study, trial._trial_id).set_user_attr("interrupted", True)
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


class _Lock:
    """One `ppo tune` at a time in a tuning directory."""

    def __init__(self, tune_dir: Path) -> None:
        self.file = open(tune_dir / ".lock", "w")  # noqa: SIM115 (held while tuning)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise ConfigError(f"another ppo tune is running in {tune_dir}") from None

    def release(self) -> None:
        self.file.close()


def check_spec(tune_dir: Path, spec: TuneSpec) -> None:
    """A directory that already holds a study must hold this one (then it resumes)."""
    tune_dir = Path(tune_dir)
    if (tune_dir / SPEC_FILE).is_file():
        before = asdict(TuneSpec.read(tune_dir))
        now = asdict(spec)
        if changed := sorted(k for k in now if before.get(k) != now[k]):
            raise ConfigError(f"{tune_dir} holds a study of other settings ({', '.join(changed)})"
                              "; use another --out")
    elif tune_dir.exists() and any(tune_dir.iterdir()):
        raise ConfigError(f"{tune_dir} is not empty and holds no study ({SPEC_FILE}); use "
                          "another --out")


def _trial_values(spec: TuneSpec, sampled: dict[str, Any], here: Path) -> dict[str, Any]:
    """A trial's full settings: the base, the sampled values, and the tuner's run settings
    (no checkpoints but the last: a trial never resumes)."""
    return fit({**spec.base, **sampled, "total_timesteps": spec.budget, "seed": spec.seed,
                "run_dir": str(here / "run"), "tensorboard": False,
                "checkpoint_every": 1 << 30})


def _describe(trial: optuna.trial.FrozenTrial, spec: TuneSpec) -> str:
    attrs = trial.user_attrs
    if "solved" not in attrs:
        return f"failed, see {attrs.get('log', 'its log')}"
    best = f"best evaluation {attrs['best_return']:.1f}"
    if attrs["solved"]:
        return f"solved after {attrs['steps']} env steps"
    if attrs["pruned"]:
        return f"pruned after {attrs['steps_run']} env steps ({best})"
    return f"not solved within {spec.budget} env steps ({best})"


def write_trials_table(tune_dir: Path, study: optuna.Study) -> None:
    """trials.csv: every finished trial, its result and its sampled settings."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    params = sorted({k for t in trials for k in t.params})
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["trial", "state", "value", "solved", "steps", "best_return", *params])
    for t in trials:
        a = t.user_attrs
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                         a.get("solved", ""), a.get("steps", ""), a.get("best_return", ""),
                         *(t.params.get(k, "") for k in params)])
    write_atomic(Path(tune_dir) / TRIALS_FILE, text.getvalue().encode())


def write_best(tune_dir: Path, study: optuna.Study, spec: TuneSpec) -> Path | None:
    """best.toml: the best completed trial's settings, for `ppo train --config`."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    best = min(done, key=lambda t: t.value)
    # Every setting written out: the file means the same whatever settings it is laid over.
    values = from_dict(load_toml(trial_dir(tune_dir, best.number) / "settings.toml")).to_dict()
    settings = {k: v for k, v in values.items() if k not in RUN_KEYS}
    a = best.user_attrs
    result = (f"reached a mean evaluation return >= {spec.target:g}\n# ({spec.eval_episodes} "
              f"episodes, every {spec.eval_steps} env steps) after {a['steps']} env steps"
              if a["solved"] else
              f"did not reach {spec.target:g} within {spec.budget} env steps\n# (best "
              f"evaluation {a['best_return']:.1f})")
    seeds = (f"seeds {spec.seed}-{spec.seed + spec.seeds - 1} (mean)" if spec.seeds > 1
             else f"seed {spec.seed}")
    header = (f"# Found by `ppo tune` for {spec.env_id} (Optuna: TPE sampling, median pruning),\n"
              f"# the best of {sum(map(_counts_as_done, study.trials))} trials: trial "
              f"{best.number} {result}, {seeds}.\n"
              "# Train with: ppo train --config best.toml\n")
    path = Path(tune_dir) / BEST_FILE
    write_atomic(path, (header + tomli_w.dumps(settings)).encode())
    return path


def tune(tune_dir: Path, spec: TuneSpec, space: SearchSpace, trials: int, jobs: int,
         report: Callable[[str], Any] = print) -> Path | None:
    """Run trials until `trials` have finished (counting those of earlier runs), `jobs` at a
    time; return best.toml's path (None while no trial completed). Raises Stopped after a
    stop signal: the same call resumes."""
    import optuna
    from optuna.trial import TrialState

    tune_dir = Path(tune_dir)
    check_spec(tune_dir, spec)
    tune_dir.mkdir(parents=True, exist_ok=True)
    lock = _Lock(tune_dir)
    try:
        spec.write(tune_dir)
        study = load_study(tune_dir, spec)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            _requeue(study, trial)  # left running by a run that was killed
        # Seeded by the trials so far, so that a resumed study samples anew.
        study.sampler = optuna.samplers.TPESampler(n_startup_trials=STARTUP_TRIALS,
                                                   seed=spec.seed + len(study.trials))
        _run_trials(tune_dir, study, spec, space, trials, jobs, report)
        write_trials_table(tune_dir, study)
        return write_best(tune_dir, study, spec)
    finally:
        lock.release()


def _run_trials(tune_dir: Path, study: optuna.Study, spec: TuneSpec, space: SearchSpace,
                trials: int, jobs: int, report: Callable[[str], Any]) -> None:
    from optuna.trial import TrialState

    done = sum(map(_counts_as_done, study.get_trials(deepcopy=False)))
    running: dict[int, tuple[subprocess.Popen, optuna.Trial]] = {}
    stop: list[int] = []

    def forward(signum: int, _: Any) -> None:
        stop.append(signum)
        for process, _trial in running.values():
            process.send_signal(signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running or (done + len(running) < trials and not stop):
            while len(running) < jobs and done + len(running) < trials and not stop:
                trial = study.ask()
                here = trial_dir(tune_dir, trial.number)
                values = _trial_values(spec, space.sample(trial), here)
                try:
                    from_dict(values)
                except ConfigError as e:
                    trial.set_user_attr("error", str(e))
                    study.tell(trial, state=TrialState.FAIL)
                    done += 1
                    report(f"trial {trial.number}: failed: {e}")
                    continue
                running[trial.number] = (_launch(tune_dir, here, trial.number, values), trial)
            time.sleep(0.2)
            for number, (process, trial) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[number]
                if _finish(tune_dir, study, spec, trial, process.returncode, bool(stop)):
                    done += 1
                    frozen = study.get_trials(deepcopy=False)[number]
                    report(f"trial {number} ({done}/{trials}): {_describe(frozen, spec)}")
                    write_trials_table(tune_dir, study)
                    write_best(tune_dir, study, spec)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if stop:
        raise Stopped(stop[0], trials - done)


def _launch(tune_dir: Path, here: Path, number: int, values: dict[str, Any]) -> subprocess.Popen:
    """Start a trial's process; a trial that ran before starts over."""
    import shutil

    if here.exists():
        shutil.rmtree(here)
    here.mkdir(parents=True)
    write_atomic(here / "settings.toml", tomli_w.dumps(values).encode())
    with open(here / "train.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "ppo.tuning.trial", str(tune_dir),
                                 str(number)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **ONE_THREAD})


def _finish(tune_dir: Path, study: optuna.Study, spec: TuneSpec, trial: optuna.Trial,
            code: int, stopping: bool) -> bool:
    """Record a trial's end with the study; False when it was interrupted (queued again)."""
    from optuna.trial import TrialState

    here = trial_dir(tune_dir, trial.number)
    outcome = read_outcome(here)
    if outcome is None:
        if stopping or code in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT,
                                -signal.SIGTERM):
            _requeue(study, study.get_trials(deepcopy=False)[trial.number])
            return False
        trial.set_user_attr("log", str(here / "train.log"))
        study.tell(trial, state=TrialState.FAIL)
        return True
    last_step = outcome.evaluations[-1][0] if outcome.evaluations else 0
    attrs = {"solved": outcome.solved, "steps": outcome.steps, "pruned": outcome.pruned,
             "steps_run": last_step,
             "best_return": outcome.best_return if math.isfinite(outcome.best_return) else None}
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if outcome.pruned:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, objective(outcome, spec.target, spec.budget))
    return True


def build_spec(env_id: str, config_file: Path | None, defaults: str, target: float | None,
               budget: int | None, eval_steps: int | None, eval_episodes: int,
               seed: int | None, space_file: Path | None, seeds: int = 1
               ) -> tuple[TuneSpec, SearchSpace]:
    """A study's definition from `ppo tune`'s options, checked: the base settings are the
    env's own (as `ppo train --env X` starts from), then the config file's."""
    from ppo import settings
    from ppo.envs import env_spec

    given = load_toml(config_file) if config_file else {}
    if taken := sorted(k for k in given if k in {"run_dir", "eval_every", "stop_at_return",
                                                 "track"}):
        raise ConfigError(f"ppo tune sets {', '.join(taken)} itself; leave "
                          f"{'it' if len(taken) == 1 else 'them'} out of the config file")
    values = settings.resolve({"env_id": env_id}, given, None, defaults).values
    config = from_dict(values)
    budget = budget or config.total_timesteps
    seed = config.seed if seed is None else seed
    # The settings as given, not every field: a study resumes under a later ppo whose Config
    # has fields more.
    base = {k: v for k, v in values.items() if k not in RUN_KEYS}
    if target is None:
        target = env_spec(env_id).reward_threshold
        if target is None:
            raise ConfigError(f"{env_id} has no reward threshold: give the return that counts "
                              "as solved with --target")
    eval_steps = eval_steps or max(1, budget // 50)
    if eval_steps > budget:
        raise ConfigError(f"--eval-steps {eval_steps} is more than the budget ({budget} env "
                          "steps): no evaluation would happen before the end")
    space = SearchSpace.load(space_file, {**base, "total_timesteps": budget})
    spec = TuneSpec(env_id, float(target), budget, eval_steps, eval_episodes, seed, base,
                    space.to_dict(), seeds)
    return spec, space
