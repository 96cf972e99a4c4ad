"""`ppo tune`: the search space file, the objective, the measurement, a tiny study that writes
settings `ppo train --config` takes, resuming a killed study, and bad input."""

import csv
import math
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import tomli_w
from click.testing import CliRunner

from ppo import extras
from ppo.cli import main
from ppo.config import ConfigError, from_dict, load_toml
from ppo.tuning.space import SearchSpace, default_path
from ppo.tuning.study import STUDY_FILE, STUDY_NAME, TuneSpec, build_spec
from ppo.tuning.trial import (
    Outcome,
    combine,
    objective,
    steps_to_solve,
    steps_to_solve_over_seeds,
)

BASE = {"env_id": "CartPole-v1", "num_envs": 1, "rollout_steps": 64, "minibatch_size": 32,
        "epochs": 1}


def _write(path, data):
    path.write_text(tomli_w.dumps(data))
    return path


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_user_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---------------------------------------------------------------- the search space
def test_default_space_loads_against_every_shipped_base():
    for base in ({}, {"env_id": "CartPole-v1", "num_envs": 8, "rollout_steps": 32,
                      "minibatch_size": 256}):
        space = SearchSpace.load(None, base)
        names = {d.name for d in space.dimensions}
        assert {"lr", "rollout_steps", "minibatch_size", "epochs", "gamma", "gae_lambda",
                "clip_eps", "ent_coef", "hidden_sizes"} <= names
    lr = next(d for d in space.dimensions if d.name == "lr")
    assert lr.log and lr.low < lr.high
    assert space.source == str(default_path())


def test_space_samples_each_kind_of_dimension(tmp_path):
    path = _write(tmp_path / "space.toml", {
        "lr": {"low": 1e-4, "high": 1e-3, "log": True},
        "epochs": {"low": 1, "high": 3},
        "hidden_sizes": {"choices": [[8], [16, 16]]},
        "anneal_lr": {"choices": [True, False]},
    })
    space = SearchSpace.load(path, BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = space.sample(study.ask())
        assert 1e-4 <= values["lr"] <= 1e-3
        assert values["epochs"] in (1, 2, 3) and isinstance(values["epochs"], int)
        assert values["hidden_sizes"] in ([8], [16, 16])
        assert isinstance(values["anneal_lr"], bool)
        from_dict({**BASE, **values})


@pytest.mark.parametrize("entry, needle", [
    ({"no_such_setting": {"choices": [1]}}, "unknown setting 'no_such_setting'"),
    ({"lr": {"low": 1e-3, "high": 1e-4}}, "lr has an empty range"),
    ({"lr": {"low": 1e-3, "high": 1e-3}}, "lr has an empty range"),
    ({"epochs": {"choices": []}}, "epochs has no choices"),
    ({"lr": {"low": 0.0, "high": 1e-3, "log": True}}, "needs low > 0"),
    ({"lr": {"low": 1e-4}}, "lr takes either choices, or low and high"),
    ({"lr": 0.001}, "lr must be a table"),
    ({"env_id": {"choices": ["Acrobot-v1"]}}, "env_id defines the run"),
    ({"total_timesteps": {"choices": [1000]}}, "total_timesteps defines the run"),
    ({"lr": {"low": -1.0, "high": 1e-3}}, "lr = -1.0: lr must be"),
    ({"activation": {"choices": ["tanh", "sigmoid"]}}, "activation must be one of"),
    ({"epochs": {"choices": [1, 1]}}, "lists a choice twice"),
])
def test_bad_space_files(tmp_path, entry, needle):
    path = _write(tmp_path / "space.toml", entry)
    with pytest.raises(ConfigError) as info:
        SearchSpace.load(path, BASE)
    assert needle in str(info.value)


def test_a_minibatch_larger_than_the_rollout_is_cut_to_it(tmp_path):
    path = _write(tmp_path / "space.toml", {"minibatch_size": {"choices": [512]}})
    space = SearchSpace.load(path, BASE)  # 512 > 64 steps x 1 env: fits once cut
    values = space.sample(optuna.create_study().ask())
    assert values == {"minibatch_size": 512}
    from ppo.tuning.space import fit

    assert fit({**BASE, **values})["minibatch_size"] == 64


# ---------------------------------------------------------------- objective and measurement
def test_objective_ranks_solved_by_steps_then_unsolved_by_shortfall():
    target, budget = 475.0, 10_000
    fast, slow = Outcome(True, 2_000, 480.0), Outcome(True, 9_000, 500.0)
    near, far = Outcome(False, budget, 400.0), Outcome(False, budget, 20.0)
    values = [objective(o, target, budget) for o in (fast, slow, near, far)]
    assert values == sorted(values) and len(set(values)) == 4
    assert values[0] == 2_000 and values[2] > budget
    assert objective(Outcome(False, budget, -150.0), -200.0, budget) == budget


def test_steps_to_solve_evaluates_on_a_fixed_grid_and_stops_at_the_target():
    config = from_dict({**BASE, "total_timesteps": 640, "tensorboard": False})
    never = steps_to_solve(config, math.inf, every=200, episodes=1)
    # Updates end at multiples of 64; an evaluation follows the first past each 200, and the last.
    assert [step for step, _ in never.evaluations] == [256, 448, 640]
    assert not never.solved and never.steps == 640
    assert never.best_return == max(r for _, r in never.evaluations)
    first = steps_to_solve(config, -math.inf, every=200, episodes=1)
    assert first.solved and first.steps == 256 and len(first.evaluations) == 1


def test_pruning_stops_the_run_at_the_evaluation_it_is_asked():
    config = from_dict({**BASE, "total_timesteps": 640, "tensorboard": False})
    asked = []

    def report(index, value):
        asked.append(index)
        return index == 2

    out = steps_to_solve(config, math.inf, every=200, episodes=1, report=report)
    assert asked == [1, 2] and out.pruned and not out.solved


def test_seeds_of_a_trial_combine_into_one_outcome():
    lucky = Outcome(True, 2_000, -150.0, [(2_000, -150.0)])
    unlucky = Outcome(False, 10_000, -400.0, [(2_000, -900.0), (10_000, -400.0)])
    both = combine([lucky, unlucky])
    assert not both.solved and both.steps == 6_000 and both.best_return == -400.0
    assert len(both.evaluations) == 3 and not both.pruned
    # The lucky seed alone would rank first; with its unlucky twin the trial ranks after
    # every trial that solved on all its seeds.
    assert objective(both, -200.0, 10_000) > objective(Outcome(True, 9_000, -190.0), -200.0,
                                                        10_000)
    assert combine([lucky, Outcome(True, 4_000, -180.0)]).steps == 3_000


def test_a_trial_on_several_seeds_trains_each_and_reports_them_in_turn(tmp_path):
    config = from_dict({**BASE, "total_timesteps": 256, "tensorboard": False,
                        "run_dir": str(tmp_path / "run")})
    asked = []

    def report(index, value):
        asked.append(index)
        return False

    out = steps_to_solve_over_seeds(config, 2, math.inf, every=128, episodes=1, report=report)
    assert asked == [1, 2, 4, 5]  # seed 1's evaluations after seed 0's (3 a seed at most)
    assert not out.solved and out.steps == 256 and len(out.evaluations) == 4
    assert (tmp_path / "run0" / "metrics.csv").is_file()
    assert (tmp_path / "run1" / "metrics.csv").is_file()
    assert load_toml(tmp_path / "run1" / "config.toml")["seed"] == config.seed + 1


# ---------------------------------------------------------------- the command
def _tiny(tmp_path):
    """Options of a study whose trials take one or two short updates."""
    space = _write(tmp_path / "space.toml", {"lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                             "epochs": {"choices": [1, 2]}})
    base = _write(tmp_path / "base.toml", {k: v for k, v in BASE.items() if k != "env_id"})
    return ["--env", "CartPole-v1", "--defaults", "plain", "--config", base, "--space", space,
            "--budget", 128, "--eval-steps", 64, "--eval-episodes", 1]


def _finished(tune_dir):
    with open(tune_dir / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_tiny_study_writes_settings_that_ppo_train_takes(tmp_path):
    out = tmp_path / "tune"
    result = _invoke("tune", *_tiny(tmp_path), "--trials", 2, "--jobs", 2, "--out", out)
    assert result.exit_code == 0, result.output
    rows = _finished(out)
    assert [r["trial"] for r in rows] == ["0", "1"]
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    best = load_toml(out / "best.toml")
    assert best["env_id"] == "CartPole-v1" and best["total_timesteps"] == 128
    assert best["lr"] in {float(r["lr"]) for r in rows}
    assert "run_dir" not in best and "seed" not in best
    assert (out / "best.toml").read_text().startswith("# Found by `ppo tune` for CartPole-v1")
    run = tmp_path / "run"
    trained = _invoke("train", "--config", out / "best.toml", "--run-dir", run, "--quiet",
                      "--no-tensorboard")
    assert trained.exit_code == 0, trained.output
    assert load_toml(run / "config.toml")["lr"] == best["lr"]
    # The same command again: the study has its trials; nothing more runs.
    again = _invoke("tune", *_tiny(tmp_path), "--trials", 2, "--out", out)
    assert again.exit_code == 0 and "trial" not in again.stdout.replace("best settings", "")
    # More trials continue the study.
    more = _invoke("tune", *_tiny(tmp_path), "--trials", 3, "--out", out)
    assert more.exit_code == 0 and len(_finished(out)) == 3


@pytest.mark.slow
def test_a_killed_study_resumes_with_the_same_command(tmp_path):
    out = tmp_path / "tune"
    args = [str(a) for a in ("tune", *_tiny(tmp_path), "--trials", 2, "--out", out)]
    parent = subprocess.Popen([sys.executable, "-m", "ppo", *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "trials" / "0001" / "settings.toml").exists():  # trial 1 started
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / STUDY_FILE}")
    states = {t.number: t.state for t in study.trials}
    done = [n for n, s in states.items() if s.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 2
    killed = study.trials[1]
    assert killed.state.name == "FAIL" and killed.user_attrs["interrupted"]
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 1)
    assert retry.params == killed.params and retry.number in done
    assert not any(s.name == "RUNNING" for s in states.values())
    assert (out / "best.toml").is_file()


def test_bad_tune_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "tune"
    tiny = _tiny(tmp_path)
    _assert_user_error(_invoke("tune", *tiny, "--trials", 0, "--out", out), "--trials")
    _assert_user_error(_invoke("tune", *tiny, "--trials", 2, "--out", out, "--track"),
                       "--track")
    for entry, needle in [({"no_such": {"choices": [1]}}, "unknown setting 'no_such'"),
                          ({"lr": {"low": 1e-2, "high": 1e-4}}, "empty range"),
                          ({"epochs": {"choices": []}}, "no choices")]:
        space = _write(tmp_path / "bad.toml", entry)
        _assert_user_error(_invoke("tune", *tiny, "--trials", 2, "--out", out, "--space",
                                   space), needle)
    _assert_user_error(_invoke("tune", "--env", "Pendulum-v1", "--trials", 2, "--out", out),
                       "--target")
    tracked = _write(tmp_path / "tracked.toml", {"track": True})
    _assert_user_error(_invoke("tune", "--env", "CartPole-v1", "--trials", 2, "--out", out,
                               "--config", tracked), "track")
    monkeypatch.setattr(extras, "installed", lambda extra: extra != "tune")
    _assert_user_error(_invoke("tune", *tiny, "--trials", 2, "--out", out),
                       'pip install -e ".[tune]"')
    assert not out.exists()


def test_a_directory_holding_another_study_is_refused(tmp_path):
    spec, _ = build_spec("CartPole-v1", None, "task", None, 1000, None, 1, 0, None)
    out = tmp_path / "tune"
    out.mkdir()
    spec.write(out)
    before = (out / "tune.toml").read_bytes()
    result = _invoke("tune", "--env", "CartPole-v1", "--trials", 1, "--budget", 2000, "--out",
                     out)
    _assert_user_error(result, "holds a study of other settings (budget, ")
    assert (out / "tune.toml").read_bytes() == before
    assert TuneSpec.read(out) == spec
    assert not (out / STUDY_FILE).exists()
