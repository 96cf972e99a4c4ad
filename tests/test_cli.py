"""The `ppo` command: help, bad input (one line, status 2, nothing overwritten), config
files, resume and eval."""

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from ppo.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ppo.cli import main
from ppo.config import GROUPS, Config, flag_name, load_toml

TESTS = Path(__file__).parent
SMALL = ["--env", "CartPole-v1", "--defaults", "plain", "--rollout-steps", "64",
         "--minibatch-size", "32", "--no-tensorboard", "--quiet"]


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
        flag = flag_name(f.name)
        assert flag in by_flag, flag
        if f.type == "bool":
            assert f"--no-{flag[2:]}" in by_flag[flag]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        if f.type in ("dict[str, Any]", "list[dict[str, Any]]"):  # repeatable flags
            shown = "none"
        assert f"[default: {shown}]" in by_flag[flag], (flag, by_flag[flag])
    # The standard PPO settings (Schulman et al. 2017), spelled out.
    for flag, shown in [("--clip-eps", "0.2"), ("--gamma", "0.99"), ("--gae-lambda", "0.95"),
                        ("--epochs", "4"), ("--lr", "0.0003"), ("--rollout-steps", "2048"),
                        ("--minibatch-size", "64"), ("--vf-coef", "0.5"),
                        ("--ent-coef", "0.01"), ("--max-grad-norm", "0.5"),
                        ("--num-envs", "1"), ("--env", "LunarLander-v3")]:
        assert f"[default: {shown}]" in by_flag[flag]
    for flag in ("--config", "--resume", "--preset", "--target-kl", "--anneal-lr", "--seed",
                 "--total-timesteps", "--device", "--seeds", "--jobs", "--track"):
        assert flag in by_flag


def test_train_help_groups_the_flags():
    """The command's own options, then a section per group of Config fields, in GROUPS
    order; each flag under its field's group."""
    output = _invoke("train", "--help").output
    titles = re.findall(r"^(\w[\w ]*):$", output, flags=re.M)
    assert titles == ["Options", *GROUPS]
    sections = dict(zip(titles, re.split(r"^\w[\w ]*:$", output, flags=re.M)[1:], strict=True))
    for f in dataclasses.fields(Config):
        assert f.metadata["group"] in GROUPS, f.name
        assert re.search(rf"^  {flag_name(f.name)}\b", sections[f.metadata["group"]], re.M), f.name
    for flag in ("--config", "--preset", "--defaults", "--resume", "--seeds", "--jobs",
                 "--quiet", "--nproc"):
        assert re.search(rf"^  {flag}\b", sections["Options"], re.M), flag
    assert "--clip-eps" in sections["PPO"] and "--max-kl" in sections["TRPO"]


# ---------------------------------------------------------------- bad input
BAD_TRAIN = [
    (["--env", "NoSuchEnv-v0"], ["unknown env id", "NoSuchEnv-v0"]),
    (["--env", "helpers_envs:SequenceObsEnv"], ["unsupported observation space Sequence"]),
    (["--env", "helpers_envs:IntBoxActionEnv"], ["unsupported action space"]),
    (["--env", "helpers_envs:TextActionEnv"], ["unsupported action space Text"]),
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
    assert "(deterministic, update 1)" in result.stdout
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


def test_a_real_process_ends_with_everything_written(tmp_path):
    """The installed command skips the interpreter's teardown (ppo.cli.entry): its output,
    TensorBoard's events and the run's files are complete, and the status is the command's."""
    run = tmp_path / "run"
    args = [a for a in SMALL if a not in ("--no-tensorboard", "--quiet")]
    proc = subprocess.run([Path(sys.executable).parent / "ppo", "train", *args,
                           "--total-timesteps", "128", "--run-dir", str(run)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().splitlines()[-1].startswith("best checkpoint:")
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header and 2 updates
    events = list((run / "tensorboard").glob("events.*"))
    assert events and events[0].stat().st_size > 100


# ---------------------------------------------------------------- config files
def test_config_file_with_flag_overrides(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps({"env_id": "CartPole-v1", "rollout_steps": 32,
                                     "minibatch_size": 16, "total_timesteps": 1000,
                                     "gamma": 0.9, "tensorboard": False}))
    out = tmp_path / "run"
    result = _invoke("train", "--config", config, "--total-timesteps", 64, "--gamma", 0.95,
                     "--run-dir", out, "--quiet", "--defaults", "plain")
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
    assert "resuming" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines.pop(0) == f"resuming {run_copy} at update 2, step 128"
    assert [line.split()[1] for line in lines if line.startswith("update ")] == ["003", "004"]
    assert re.match(r"^update 003 step 192/256 \(75%\) return=\S+ kl=\d\.\d{3} "
                    r"clipfrac=\d\.\d\d loss_pi=[+-]\d\.\d{3} loss_v=\S+ entropy=\d\.\d{3} "
                    r"ev=\S+ sps=\d+ elapsed=\d+:\d\d:\d\d eta=\d+:\d\d:\d\d$", lines[0])
    rows = (run_copy / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4]


def test_eval_prints_mean_and_std(run_dir):
    from ppo.agent import PPO
    from ppo.evaluation import evaluate

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


# ---------------------------------------------------------------- many seeds
class RecordedTrain:
    """Stands in for the `ppo train` children of --seeds: records each command line and
    writes a finished run."""

    commands: list[list[str]] = []

    def __init__(self, command, stdout, stderr, env):
        from helpers_runs import write_run

        RecordedTrain.commands.append(command)
        seed = int(command[command.index("--seed") + 1])
        write_run(Path(command[command.index("--run-dir") + 1]), [None, 100.0 * (seed + 1)],
                  env_id="CartPole-v1", seed=seed, steps_per_update=64)

    def wait(self):
        return 0


@pytest.fixture
def recorded_train(monkeypatch):
    import ppo.launcher

    RecordedTrain.commands = []
    monkeypatch.setattr(ppo.launcher.subprocess, "Popen", RecordedTrain)
    return RecordedTrain.commands


def test_seeds_run_as_children_with_this_command_line(tmp_path, recorded_train):
    group = tmp_path / "group"
    result = _invoke("train", "--seeds", "0-2,5", "--jobs", 2, "--env", "CartPole-v1",
                     "--no-clip-value", "--hidden-sizes", "32,32", "--lr", "0.001",
                     "--total-timesteps", 128, "--run-dir", group)
    assert result.exit_code == 0, result.output
    assert sorted(int(c[c.index("--seed") + 1]) for c in recorded_train) == [0, 1, 2, 5]
    for command in recorded_train:
        seed = command[command.index("--seed") + 1]
        assert command[command.index("--run-dir") + 1] == str(group / f"seed{seed}")
        assert command[command.index("--total-timesteps") + 1] == "128"
        for flag in (["--env", "CartPole-v1"], ["--no-clip-value"], ["--hidden-sizes", "32,32"],
                     ["--lr", "0.001"]):
            assert " ".join(flag) in " ".join(command)
        assert "--seeds" not in command and "--jobs" not in command
    done = [line for line in result.stdout.splitlines() if ": done, final return " in line]
    assert len(done) == 4  # one line per finished seed
    assert "group directory: " in result.stderr and "4 of 4 seeds to train" in result.stderr
    assert result.stdout.splitlines()[-1].startswith("final return over 4 seeds: IQM ")
    assert load_toml(group / "group.toml")["hidden_sizes"] == [32, 32]
    # The same command again: every seed is finished, nothing runs.
    recorded_train.clear()
    again = _invoke("train", "--seeds", "0-2,5", "--env", "CartPole-v1", "--no-clip-value",
                    "--hidden-sizes", "32,32", "--lr", "0.001", "--total-timesteps", 128,
                    "--run-dir", group)
    assert again.exit_code == 0 and recorded_train == []
    assert "0 of 4 seeds to train" in again.stderr


BAD_SEEDS = [
    (["--seeds", "5-1"], ["5-1", "empty"]),
    (["--seeds", "x"], ["--seeds", "0-4"]),
    (["--seeds", "-1"], ["--seeds"]),
    (["--seeds", "0-2,2"], ["twice"]),
    (["--seeds", "0-1", "--seed", "3"], ["--seed"]),
    (["--seeds", "0-1", "--nproc", "2"], ["--nproc"]),
    (["--seeds", "0-1", "--lr", "0"], ["lr"]),
    (["--jobs", "2"], ["--jobs applies to --seeds"]),
]


@pytest.mark.parametrize(("flags", "needles"), BAD_SEEDS, ids=[" ".join(f) for f, _ in BAD_SEEDS])
def test_bad_seeds_input(tmp_path, flags, needles, recorded_train):
    group = tmp_path / "group"
    _assert_user_error(_invoke("train", *SMALL, *flags, "--run-dir", group), *needles)
    assert not group.exists() and recorded_train == []


def test_a_group_keeps_its_settings(tmp_path, recorded_train):
    group = tmp_path / "group"
    assert _invoke("train", "--seeds", "0-1", "--env", "CartPole-v1", "--total-timesteps", 128,
                   "--run-dir", group).exit_code == 0
    before = _snapshot(group)
    _assert_user_error(_invoke("train", "--seeds", "0-1", "--env", "CartPole-v1", "--lr", "0.01",
                               "--run-dir", group), "other settings", "lr")
    # Longer runs are the same settings: the seeds are resumed to the new length.
    longer = _invoke("train", "--seeds", "0-1", "--env", "CartPole-v1", "--total-timesteps",
                     1000, "--run-dir", group)
    assert longer.exit_code == 0 and "2 of 2 seeds to train" in longer.stderr
    not_a_group = tmp_path / "elsewhere"
    not_a_group.mkdir()
    (not_a_group / "notes.txt").write_text("mine")
    _assert_user_error(_invoke("train", "--seeds", "0-1", "--run-dir", not_a_group),
                       "no group of seeds")
    assert _snapshot(group).keys() >= before.keys()


def test_seeds_end_to_end(tmp_path):
    """Real `ppo train` children: two seeds in parallel, then `ppo compare` on the group."""
    group = tmp_path / "group"
    result = _invoke("train", "--seeds", "0-1", "--jobs", 2, *SMALL, "--total-timesteps", 128,
                     "--checkpoint-every", 1, "--run-dir", group)
    assert result.exit_code == 0, result.output
    for seed in (0, 1):
        config = load_toml(group / f"seed{seed}" / "config.toml")
        assert config["seed"] == seed and config["total_timesteps"] == 128
        assert latest_checkpoint(group / f"seed{seed}").name == "update_000002.safetensors"
        assert (group / f"seed{seed}.log").exists()
    compared = _invoke("compare", group, "--out", tmp_path / "profiles.png")
    assert compared.exit_code == 0, compared.output
    assert f"| {group} | 2 | " in compared.stdout
    assert (tmp_path / "profiles.png").stat().st_size > 0


def test_compare_and_plot_report_iqm(tmp_path):
    from helpers_runs import write_run
    from ppo.stats import iqm_estimate

    for seed in range(4):
        write_run(tmp_path / "g" / f"seed{seed}", [None, 10.0 * seed], env_id="CartPole-v1",
                  seed=seed)
    compared = _invoke("compare", tmp_path / "g")
    assert compared.exit_code == 0, compared.output
    assert "| 4 | 15.0 [" in compared.stdout and (tmp_path / "g" / "profiles.png").exists()
    plotted = _invoke("plot", tmp_path / "g", "--out", tmp_path / "curves.png")
    assert plotted.exit_code == 0, plotted.output
    assert plotted.stdout.splitlines() == [
        f"CartPole-v1: final return over 4 runs: IQM {iqm_estimate([0, 10, 20, 30]).format()} "
        "(95% bootstrap CI)",
        str(tmp_path / "curves.png"), str(tmp_path / "curves-profiles.png")]
    _assert_user_error(_invoke("compare", tmp_path / "nothing-here"), "nothing-here")


# ---------------------------------------------------------------- extras
def test_a_missing_extra_is_named_in_one_line(run_dir, tmp_path, monkeypatch):
    import ppo.extras

    for extra in ("video", "atari", "mujoco"):
        monkeypatch.setitem(ppo.extras.EXTRAS, extra, ("no_such_module_for_ppo_tests",))
    video = tmp_path / "episode.mp4"
    _assert_user_error(_invoke("eval", run_dir, "--video", video),
                       '--video needs the video extra: pip install -e ".[video]"')
    assert not video.exists()
    for env, extra in (("ALE/Pong-v5", "atari"), ("HalfCheetah-v5", "mujoco")):
        fresh = tmp_path / extra
        _assert_user_error(_invoke("train", "--env", env, "--run-dir", fresh),
                           f'env {env} needs the {extra} extra: pip install -e ".[{extra}]"')
        assert not fresh.exists()


# ---------------------------------------------------------------- hostile input
def test_run_files_without_config_make_a_run(run_copy):
    (run_copy / "config.toml").unlink()
    for keep in ("checkpoints", "metrics.csv"):
        before = _snapshot(run_copy)
        result = _invoke("train", *SMALL, "--total-timesteps", 64, "--run-dir", run_copy)
        _assert_user_error(result, "already holds a run", keep)
        assert _snapshot(run_copy) == before
        shutil.rmtree(run_copy / keep) if keep == "checkpoints" else (run_copy / keep).unlink()


def test_a_second_writer_is_refused(run_copy):
    """Another process holds the run: a resume or a fresh run into it stops before writing."""
    script = ("import sys, time\nfrom ppo.checkpoint import run_dir_lock\n"
              "with run_dir_lock(sys.argv[1]):\n    print('held', flush=True)\n"
              "    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(run_copy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = _snapshot(run_copy)
        _assert_user_error(_invoke("train", "--resume", run_copy, "--total-timesteps", 256),
                           f"run directory {run_copy} is in use by another process (pid "
                           f"{holder.pid})")
        assert _snapshot(run_copy) == before
    finally:
        holder.kill()
        holder.wait()
    result = _invoke("train", "--resume", run_copy, "--total-timesteps", 192)
    assert result.exit_code == 0, result.output  # the OS released the dead holder's lock
    assert not (run_copy / ".lock").exists()


def test_resume_repairs_damaged_metrics_and_keeps_them_aside(run_copy):
    metrics = run_copy / "metrics.csv"
    damaged = metrics.read_bytes() + b"garbage\x00\n" + b"\x00" * 100
    metrics.write_bytes(damaged)
    result = _invoke("train", "--resume", run_copy, "--total-timesteps", 192)
    assert result.exit_code == 0, result.output
    aside = list(run_copy.glob("metrics.csv.damaged-*"))
    assert [a.read_bytes() for a in aside] == [damaged]
    assert f"note: {metrics} holds NUL bytes" in result.stderr and aside[0].name in result.stderr
    rows = metrics.read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3]


def test_resume_checks_everything_before_writing(run_copy):
    """A metrics.csv that cannot be read stops the resume before config.toml is rewritten."""
    (run_copy / "metrics.csv").unlink()
    os.mkfifo(run_copy / "metrics.csv")
    before = _snapshot(run_copy)
    _assert_user_error(_invoke("train", "--resume", run_copy), "metrics.csv is a FIFO")
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize(("flags", "needles"), [
    (["--lr", "inf"], ["lr must be a finite number in (0, 1]"]),
    (["--ent-coef", "nan"], ["ent_coef"]),
    (["--seed", "-1"], ["seed must be in [0, 2^63-1], got -1"]),
    (["--threads", "100000"], ["threads"]),
    (["--hidden-sizes", "100000,100000"], ["needs about", "GB of memory"]),
    (["--num-envs", "100000", "--vector", "async"], ["num_envs"]),
    (["--config", "/dev/zero"], ["/dev/zero is a character device, not a regular file"]),
    (["--run-dir", ""], ["run_dir"]),
])
def test_numbers_and_files_no_run_can_use(tmp_path, flags, needles):
    fresh = tmp_path / "fresh"
    args = ["train", *SMALL, "--total-timesteps", 64, "--run-dir", fresh, *flags]
    _assert_user_error(_invoke(*args), *needles)
    assert not fresh.exists()


def test_eval_refuses_a_video_path_before_evaluating(run_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    for video, needle in [(tmp_path / "episode", "ending in .mp4, .mkv, .mov"),
                          (tmp_path / "episode.txt", "ending in .mp4"),
                          (run_dir / "checkpoints", "ending in .mp4"),
                          (tmp_path / "afile" / "x.mp4", "is not a writable directory")]:
        result = _invoke("eval", run_dir, "--episodes", 1, "--video", video)
        _assert_user_error(result, "--video", needle)
        assert result.stdout == ""  # refused before evaluating


def test_the_numpy_reference_checks_its_env_first():
    _assert_user_error(_invoke("reference", "numpy", "--env", "Nope-v0"),
                       "unknown env id 'Nope-v0'")
    _assert_user_error(_invoke("reference", "numpy", "--env", "Pendulum-v1"),
                       "flat Box observations and Discrete actions", "Pendulum-v1 has Box "
                       "observations and Box actions")
    _assert_user_error(_invoke("reference", "numpy", "--seed", -1), "--seed")


def test_nproc_checks_the_config_once_before_launching(tmp_path, monkeypatch):
    import ppo.cli

    def launch(*args):
        raise AssertionError("torchrun was launched")

    monkeypatch.setattr(ppo.cli, "_launch_torchrun", launch)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    _assert_user_error(_invoke("train", "--nproc", 2, "--env", "Nope-v0", "--run-dir",
                               tmp_path / "fresh"), "unknown env id 'Nope-v0'")
    _assert_user_error(_invoke("train", "--nproc", 2, "--env", "helpers_envs:SequenceObsEnv",
                               "--run-dir", tmp_path / "fresh"), "unsupported observation space")
    _assert_user_error(_invoke("train", "--nproc", 100, "--run-dir", tmp_path / "fresh"),
                       "--nproc 100 is more processes than this machine's 4 cores")
    assert not (tmp_path / "fresh").exists()


def test_no_command_prints_the_help():
    result = _invoke()
    assert result.exit_code == 0 and "Commands:" in result.stdout and result.stderr == ""


def test_ctrl_c_before_training_is_one_line(tmp_path, monkeypatch):
    from ppo.agent import PPO

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PPO, "__init__", interrupted)
    result = _invoke("train", *SMALL, "--run-dir", tmp_path / "fresh")
    assert result.exit_code == 130
    assert result.stderr.strip() == "error: interrupted before training started"
    assert not (tmp_path / "fresh").exists()


def test_an_error_during_training_is_one_line_naming_the_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    fresh = tmp_path / "fresh"
    proc = subprocess.run(
        [Path(sys.executable).parent / "ppo", "train", "--env", "helpers_envs:NaNRewardEnv",
         "--defaults", "plain", "--rollout-steps", "64", "--minibatch-size", "32",
         "--no-tensorboard", "--total-timesteps", "640", "--run-dir", str(fresh)],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"(run directory {fresh})" in lines[0]
    assert f"run directory: {fresh}\n" in proc.stdout


def test_stdout_closed_by_its_reader_stops_with_a_checkpoint(tmp_path):
    """`ppo train | head -n 3`: the run stops after the update, checkpoint written."""
    run = tmp_path / "run"
    command = (f"{Path(sys.executable).parent / 'ppo'} train {' '.join(SMALL[:-1])} "
               f"--total-timesteps 640000 --checkpoint-every 1000 --run-dir {run} "
               f"2>{tmp_path / 'err'} | head -n 3; echo ${{PIPESTATUS[0]}} > {tmp_path / 'rc'}")
    subprocess.run(["bash", "-c", command], timeout=120, check=True, capture_output=True)
    assert (tmp_path / "rc").read_text().strip() == "141"
    err = (tmp_path / "err").read_text()  # the run's summary, then why it stopped
    assert err.splitlines()[-1].startswith("standard output was closed (its reader exited): "
                                           "stopped after update")
    assert "Traceback" not in err and "error" not in err
    updates = len((run / "metrics.csv").read_text().splitlines()) - 1
    assert latest_checkpoint(run).name == f"update_{updates:06d}.safetensors"


@pytest.mark.parametrize(("flags", "sig", "cause"), [
    (["--num-envs", "2", "--vector", "async"], signal.SIGINT, "SIGINT received"),
    ([], signal.SIGHUP, "the terminal closed (SIGHUP)"),
], ids=["ctrl-c-to-the-group-async", "hangup"])
def test_stop_signals_to_the_process_group_stop_cleanly(tmp_path, flags, sig, cause):
    """As a terminal sends them: to every process of the group, env workers included. The
    run stops after the update with a checkpoint; no worker prints a traceback."""
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [Path(sys.executable).parent / "ppo", "train", *SMALL, "--total-timesteps",
         str(64 * 10**5), "--checkpoint-every", "1000", *flags, "--run-dir", str(run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "metrics.csv").exists()
                   and len((run / "metrics.csv").read_text().splitlines()) > 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        stderr = proc.communicate(timeout=60)[1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, stderr
    updates = len((run / "metrics.csv").read_text().splitlines()) - 1
    assert stderr.splitlines()[-1] == (f"{cause}: stopped after update {updates} with a "
                                       f"checkpoint; continue with: ppo train --resume {run}")
    assert "Traceback" not in stderr and "error" not in stderr
    assert latest_checkpoint(run).name == f"update_{updates:06d}.safetensors"
