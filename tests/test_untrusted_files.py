"""Files are untrusted data: an env id read from a checkpoint, a config file or a preset never
makes ppo import the module it names; the user naming the same env makes it work."""

import sys

import pytest
from click.testing import CliRunner

import ppo.cli
from ppo.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ppo.cli import main
from ppo.config import ConfigError
from ppo.envs import env_spec

SMALL = ["--defaults", "plain", "--rollout-steps", "64", "--minibatch-size", "32",
         "--no-tensorboard", "--quiet"]
MODULE = '''
import pathlib
pathlib.Path(__file__).with_name("IMPORTED").write_text("{name}")
from gymnasium.envs.classic_control import CartPoleEnv
class Env(CartPoleEnv):
    pass
'''


@pytest.fixture()
def module(tmp_path, monkeypatch):
    """A module whose import leaves a mark; a fresh name per test, so each imports anew."""
    name = f"planted_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def _imported(tmp_path):
    return (tmp_path / "IMPORTED").exists()


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_env_spec_imports_only_what_the_user_names(tmp_path, module):
    env_id = f"{module}:Env"
    with pytest.raises(ConfigError) as info:
        env_spec(env_id, origin="run/checkpoints/update_000002.safetensors")
    assert str(info.value) == (
        f"run/checkpoints/update_000002.safetensors names env '{env_id}', which would import "
        f"module '{module}'; ppo imports no module on a file's say-so: name it yourself with "
        f"--env {env_id} (in Python: env_id='{env_id}')")
    assert not _imported(tmp_path) and module not in sys.modules
    assert env_spec("CartPole-v1", origin="config.toml").id == "CartPole-v1"  # the registry's
    assert env_spec(env_id).entry_point == env_id  # named by the user: imported
    assert _imported(tmp_path)


@pytest.fixture()
def module_run(tmp_path, module):
    """A run the user trained on their own module env, naming it on the command line."""
    result = _invoke("train", "--env", f"{module}:Env", *SMALL, "--total-timesteps", 128,
                     "--run-dir", "run")
    assert result.exit_code == 0, result.output
    (tmp_path / "IMPORTED").unlink()
    sys.modules.pop(module, None)
    return tmp_path / "run"


def test_eval_and_resume_need_the_user_to_name_a_module_env(tmp_path, module, module_run):
    env_id = f"{module}:Env"
    before = sorted(p.name for p in module_run.rglob("*"))
    _one_error_line(_invoke("eval", "run", "--episodes", 1), "update_000002", "--env " + env_id)
    _one_error_line(_invoke("train", "--resume", "run", "--total-timesteps", 192),
                    "--env " + env_id)
    _one_error_line(_invoke("train", "--resume", "run", "--env", "CartPole-v1"),
                    "keeps its env")
    assert not _imported(tmp_path)
    assert sorted(p.name for p in module_run.rglob("*")) == before
    result = _invoke("eval", "run", "--episodes", 1, "--env", env_id)
    assert result.exit_code == 0 and "return" in result.stdout, result.output
    result = _invoke("train", "--resume", "run", "--total-timesteps", 192, "--env", env_id)
    assert result.exit_code == 0, result.output
    assert latest_checkpoint(module_run).name == "update_000003.safetensors"


def test_a_checkpoint_edited_to_name_a_module_is_not_imported(tmp_path, module):
    result = _invoke("train", "--env", "CartPole-v1", *SMALL, "--total-timesteps", 64,
                     "--run-dir", "run")
    assert result.exit_code == 0, result.output
    path = latest_checkpoint(tmp_path / "run")
    tensors, meta = load_checkpoint(path)
    meta["config"]["env_id"] = f"{module}:Env"
    save_checkpoint(path, tensors, meta)  # valid checksums: whoever edits can re-save
    _one_error_line(_invoke("eval", "run", "--episodes", 1), "would import module")
    _one_error_line(_invoke("eval", "run", "--checkpoint", path), "would import module")
    assert not _imported(tmp_path)


def test_config_files_and_presets_never_import(tmp_path, module, monkeypatch):
    """Naming a config file is not naming what it says: config files are shared like data."""
    (tmp_path / "shared.toml").write_text(f'env_id = "{module}:Env"\n')
    _one_error_line(_invoke("train", "--config", "shared.toml", *SMALL, "--total-timesteps", 64,
                            "--run-dir", "fresh"), "shared.toml names env", "--env")
    monkeypatch.setattr(ppo.cli, "load_preset", lambda name: {"env_id": f"{module}:Env"})
    _one_error_line(_invoke("train", "--preset", "any", *SMALL, "--run-dir", "fresh"),
                    "preset any names env")
    assert not _imported(tmp_path) and not (tmp_path / "fresh").exists()
    result = _invoke("train", "--config", "shared.toml", "--env", f"{module}:Env", *SMALL,
                     "--total-timesteps", 64, "--run-dir", "fresh")
    assert result.exit_code == 0, result.output
    assert _imported(tmp_path)
