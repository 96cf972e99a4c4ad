"""The `ppo` command: help, bad input (one line, status 2, nothing overwritten), config
files, resume and eval."""

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from ppo.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ppo.cli import main
from ppo.config import Config, load_toml

TESTS = Path(__file__).parent
SMALL = ["--env", "CartPole-v1", "--rollout-steps", "64", "--minibatch-size", "32",
         "--no-tensorboard", "--quiet"]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _snapshot(root):
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "run"
    result = _invoke("train", *SMALL, "--total-timesteps", 128, "--checkpoint-every", 1,
                     "--run-dir", path)
    assert result.exit_code == 0, result.output
    return path


def _assert_user_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---------------------------------------------------------------- help
def test_train_help_lists_every_flag_with_its_default():
    result = _invoke("train", "--help")
    assert result.exit_code == 0
    chunks = re.split(r"\n  (?=--)", result.output)
    by_flag = {chunk.split()[0]: " ".join(chunk.split()) for chunk in chunks[1:]}
    for f in dataclasses.fields(Config):
        flag = "--env" if f.name == "env_id" else "--" + f.name.replace("_", "-")
        assert flag in by_flag, flag
        if f.type == "bool":
            assert f"--no-{flag[2:]}" in by_flag[flag]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        assert f"[default: {shown}]" in by_flag[flag], (flag, by_flag[flag])
    # The seed's standard setup, spelled out.
    for flag, shown in [("--clip-eps", "0.2"), ("--gamma", "0.99"), ("--gae-lambda", "0.95"),
                        ("--epochs", "4"), ("--lr", "0.0003"), ("--rollout-steps", "2048"),
                        ("--minibatch-size", "64"), ("--vf-coef", "0.5"),
                        ("--ent-coef", "0.01"), ("--max-grad-norm", "0.5"),
                        ("--num-envs", "1"), ("--env", "LunarLander-v3")]:
        assert f"[default: {shown}]" in by_flag[flag]
    for flag in ("--config", "--resume", "--preset", "--target-kl", "--anneal-lr", "--seed",
                 "--total-timesteps", "--device"):
        assert flag in by_flag


# ---------------------------------------------------------------- bad input
BAD_TRAIN = [
    (["--env", "NoSuchEnv-v0"], ["unknown env id", "NoSuchEnv-v0"]),
    (["--env", "Blackjack-v1"], ["unsupported observation space Tuple"]),
    (["--env", "helpers_envs:MultiDiscreteActionEnv"], ["unsupported action space"]),
    (["--env", "helpers_envs:DictObsEnv"], ["unsupported observation space Dict"]),
    (["--minibatch-size", "4096"], ["minibatch_size", "larger than the rollout"]),
    (["--clip-eps", "0"], ["clip_eps"]),
    (["--clip-eps", "-0.2"], ["clip_eps"]),
    (["--lr", "0"], ["lr"]),
    (["--lr", "-0.0003"], ["lr"]),
    (["--epochs", "0"], ["epochs"]),
    (["--epochs", "-3"], ["epochs"]),
    (["--gamma", "1.5"], ["gamma", "[0, 1]"]),
    (["--gamma", "-0.1"], ["gamma"]),
    (["--gae-lambda", "1.01"], ["gae_lambda", "[0, 1]"]),
    (["--gae-lambda", "-1"], ["gae_lambda"]),
    (["--hidden-sizes", "64,x"], ["hidden_sizes"]),
    (["--preset", "no-such-preset"], ["unknown preset"]),
    (["--config", "no-such-file.toml"], ["config file not found"]),
]


@pytest.mark.parametrize(("flags", "needles"), BAD_TRAIN, ids=[" ".join(f) for f, _ in BAD_TRAIN])
def test_bad_train_input(tmp_path, flags, needles):
    fresh = tmp_path / "fresh"
    result = _invoke("train", *SMALL, "--total-timesteps", 64, *flags, "--run-dir", fresh)
    _assert_user_error(result, *needles)
    assert not fresh.exists()  # nothing written for a run that never started


@pytest.mark.parametrize(("flags", "needles"), BAD_TRAIN, ids=[" ".join(f) for f, _ in BAD_TRAIN])
def test_bad_train_input_leaves_an_existing_run_alone(run_dir, flags, needles):
    before = _snapshot(run_dir)
    _assert_user_error(_invoke("train", *SMALL, *flags, "--run-dir", run_dir))
    assert _snapshot(run_dir) == before


def test_run_dir_that_holds_a_run(run_dir):
    before = _snapshot(run_dir)
    result = _invoke("train", *SMALL, "--total-timesteps", 64, "--run-dir", run_dir)
    _assert_user_error(result, "already holds a run", "--resume")
    assert _snapshot(run_dir) == before


@pytest.fixture()
def run_copy(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


def _corrupt(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def test_missing_checkpoints(run_copy, tmp_path):
    for checkpoint in (run_copy / "checkpoints").iterdir():
        checkpoint.unlink()
    before = _snapshot(run_copy)
    _assert_user_error(_invoke("eval", run_copy), "no checkpoint")
    _assert_user_error(_invoke("train", "--resume", run_copy, "--total-timesteps", 256),
                       "no checkpoint")
    _assert_user_error(_invoke("eval", run_copy, "--checkpoint", tmp_path / "nope.safetensors"),
                       "checkpoint not found")
    _assert_user_error(_invoke("eval", tmp_path / "no-such-run"), "run directory not found")
    _assert_user_error(_invoke("train", "--resume", tmp_path / "no-such-run"),
                       "not a run directory")
    assert _snapshot(run_copy) == before


def test_corrupt_checkpoints(run_copy):
    for checkpoint in (run_copy / "checkpoints").iterdir():
        _corrupt(checkpoint)
    before = _snapshot(run_copy)
    _assert_user_error(_invoke("eval", run_copy, "--episodes", 1), "corrupted",
                       "update_000001", "update_000002")
    _assert_user_error(_invoke("train", "--resume", run_copy, "--total-timesteps", 256),
                       "corrupted")
    assert _snapshot(run_copy) == before


def test_corrupt_latest_checkpoint_falls_back_with_a_note(run_copy):
    _corrupt(latest_checkpoint(run_copy))
    result = _invoke("eval", run_copy, "--episodes", 1)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("note: skipped checkpoint update_000002.safetensors: it is "
                                    "corrupted")
    assert "(stochastic, update 1)" in result.stdout
    result = _invoke("train", "--resume", run_copy, "--total-timesteps", 192)
    assert result.exit_code == 0, result.output
    assert "skipped checkpoint update_000002" in result.stderr
    assert "resuming from update_000001.safetensors, update 1" in result.stderr
    rows = (run_copy / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3]


def test_pickle_planted_as_checkpoint(run_copy, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for checkpoint in (run_copy / "checkpoints").iterdir():
        checkpoint.write_bytes(pickle.dumps(Planted()))
    before = _snapshot(run_copy)
    _assert_user_error(_invoke("eval", run_copy, "--episodes", 1), "not a valid ppo checkpoint")
    _assert_user_error(_invoke("train", "--resume", run_copy, "--total-timesteps", 256))
    _assert_user_error(_invoke("eval", run_copy, "--checkpoint",
                               run_copy / "checkpoints" / "update_000001.safetensors"),
                       "not a valid ppo checkpoint")
    assert not marker.exists()
    assert _snapshot(run_copy) == before


def test_checkpoint_for_other_spaces(run_copy):
    path = latest_checkpoint(run_copy)
    tensors, meta = load_checkpoint(path)
    meta["spaces"]["action"] = '["Discrete", 3]'
    save_checkpoint(path, tensors, meta)
    before = _snapshot(run_copy)
    _assert_user_error(_invoke("eval", run_copy, "--episodes", 1), "spaces")
    _assert_user_error(_invoke("train", "--resume", run_copy, "--total-timesteps", 256),
                       "spaces")
    assert _snapshot(run_copy) == before


def test_resume_refuses_to_change_the_run(run_copy):
    before = _snapshot(run_copy)
    _assert_user_error(_invoke("train", "--resume", run_copy, "--lr", "0.1"), "keeps its config")
    assert _snapshot(run_copy) == before


def test_bad_input_in_a_real_process(run_dir):
    """The installed command, not the test runner: one line on stderr, status 2."""
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    for args in (["train", "--clip-eps", "0", "--run-dir", str(run_dir)],
                 ["eval", str(run_dir / "no-such")]):
        proc = subprocess.run([Path(sys.executable).parent / "ppo", *args], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
        assert "Traceback" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------- config files
def test_config_file_with_flag_overrides(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps({"env_id": "CartPole-v1", "rollout_steps": 32,
                                     "minibatch_size": 16, "total_timesteps": 1000,
                                     "gamma": 0.9, "tensorboard": False}))
    out = tmp_path / "run"
    result = _invoke("train", "--config", config, "--total-timesteps", 64, "--gamma", 0.95,
                     "--run-dir", out, "--quiet")
    assert result.exit_code == 0, result.output
    resolved = load_toml(out / "config.toml")
    assert resolved["rollout_steps"] == 32 and resolved["minibatch_size"] == 16  # from the file
    assert resolved["total_timesteps"] == 64 and resolved["gamma"] == 0.95  # flags win
    assert resolved["clip_eps"] == 0.2  # defaults fill the rest
    assert resolved["run_dir"] == str(out)
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 2


def test_config_file_unknown_keys_are_named(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('env_id = "CartPole-v1"\nclip_epsilon = 0.1\nlearning_rate = 1e-3\n')
    result = _invoke("train", "--config", config, "--run-dir", tmp_path / "run")
    _assert_user_error(result, "unknown config key", "clip_epsilon", "learning_rate")
    bad = tmp_path / "bad.toml"
    bad.write_text('epochs = "four"\n')
    _assert_user_error(_invoke("train", "--config", bad, "--run-dir", tmp_path / "run"),
                       "epochs")
    bad.write_text("epochs = [\n")
    _assert_user_error(_invoke("train", "--config", bad, "--run-dir", tmp_path / "run"),
                       "not valid TOML")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- train, resume, eval
def test_train_output_and_resume(run_copy):
    metrics = (run_copy / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 2
    result = _invoke("train", "--resume", run_copy, "--total-timesteps", 256)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines.pop(0) == f"resuming {run_copy} at update 2, step 128"
    assert [line.split()[1] for line in lines if line.startswith("update ")] == ["003", "004"]
    assert re.match(r"^update 003 step 192 return=\S+ kl=\d\.\d{3} clipfrac=\d\.\d\d "
                    r"loss_pi=[+-]\d\.\d{3} loss_v=\S+ entropy=\d\.\d{3} ev=\S+ sps=\d+$",
                    lines[0])
    rows = (run_copy / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4]


def test_eval_prints_mean_and_std(run_dir):
    from ppo.evaluation import evaluate
    from ppo.trainer import PPO

    before = _snapshot(run_dir)
    result = _invoke("eval", run_dir, "--episodes", 3, "--deterministic")
    assert result.exit_code == 0, result.output
    match = re.search(r"CartPole-v1: return (-?\d+\.\d) \+- (\d+\.\d) over 3 episodes "
                      r"\(deterministic, update 2\)", result.stdout)
    assert match, result.stdout
    agent = PPO.load(run_dir, num_envs=1, vector="sync")
    returns = evaluate(agent, 3, True, 10_000)
    assert float(match.group(1)) == pytest.approx(returns.mean(), abs=0.051)
    assert float(match.group(2)) == pytest.approx(returns.std(), abs=0.051)
    assert _snapshot(run_dir) == before  # eval writes nothing into the run


def test_eval_video(run_dir, tmp_path):
    video = tmp_path / "episode.mp4"
    result = _invoke("eval", run_dir, "--episodes", 1, "--video", video)
    assert result.exit_code == 0, result.output
    assert video.stat().st_size > 1000
    assert video.read_bytes()[4:8] == b"ftyp"  # an MP4 container


def test_eval_with_explicit_checkpoint(run_dir):
    first = run_dir / "checkpoints" / "update_000001.safetensors"
    result = _invoke("eval", run_dir, "--episodes", 1, "--checkpoint", first)
    assert result.exit_code == 0 and "update 1)" in result.stdout


def test_broken_preset_file_is_one_line_error(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import ppo.cli

    bad = tmp_path / "broken.toml"
    bad.write_text('env_id = "CartPole-v1"\nenv_id = "again"\n')
    monkeypatch.setattr(ppo.cli, "preset_names", lambda: ["broken"])
    monkeypatch.setattr(ppo.cli, "load_preset", lambda name: ppo.cli.load_toml(bad))
    result = CliRunner().invoke(ppo.cli.main, ["presets"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("error:") and "not valid TOML" in result.output
