"""Weights & Biases tracking, offline: the resolved config, every metrics column and the run
directory's name reach the W&B run, a resumed run continues it, and nothing contacts a
server."""

import math

import pytest
from click.testing import CliRunner

import ppo.extras
from helpers_wandb import offline_runs
from ppo.cli import main
from ppo.config import Config
from ppo.metrics import COLUMNS, MetricsLogger, tracking_sinks

pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _row(update):
    row = {column: float(update) / 10 for column in COLUMNS}
    row.update(update=update, global_step=512 * update, episodes=3 * update)
    if update == 1:
        row["episodic_return"] = math.nan  # no episode finished yet: left out, like TensorBoard
    return row


def _log(cfg, updates, first_update=1):
    logger = MetricsLogger(cfg.run_dir, verbose=False, tensorboard=False, total_updates=10,
                           first_update=first_update, sinks=tracking_sinks(cfg))
    for update in updates:
        logger.log(_row(update))
    logger.close()


def test_track_logs_the_config_and_every_column(tmp_path):
    run_dir = tmp_path / "CartPole-v1__0__20250101-120000"
    run_dir.mkdir()
    cfg = Config(env_id="CartPole-v1", run_dir=str(run_dir), track=True,
                 wandb_project="ppo-tests", wandb_group="five-seeds")
    _log(cfg, [1, 2, 3])
    [run] = offline_runs(run_dir)
    assert (run["name"], run["project"], run["group"]) == (run_dir.name, "ppo-tests",
                                                           "five-seeds")
    assert run["config"] == cfg.to_dict()
    assert [row["global_step"] for row in run["history"]] == [512, 1024, 1536]
    assert set(run["history"][1]) == set(COLUMNS)
    assert set(run["history"][0]) == set(COLUMNS) - {"episodic_return"}
    assert run["history"][2]["approx_kl"] == pytest.approx(0.3)


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = Config(env_id="CartPole-v1", run_dir=str(run_dir), track=True)
    _log(cfg, [1, 2])
    _log(cfg, [3, 4], first_update=3)
    first, second = offline_runs(run_dir)
    assert first["id"] == second["id"] == (run_dir / "wandb_id").read_text()
    assert [row["update"] for row in second["history"]] == [3, 4]


def test_no_tracking_unless_asked(tmp_path):
    assert tracking_sinks(Config(run_dir=str(tmp_path))) == []


def test_track_without_the_extra_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(ppo.extras.EXTRAS, "wandb", ("no_such_module_for_ppo_tests",))
    run_dir = tmp_path / "run"
    for args in (["train", "--env", "CartPole-v1", "--track", "--run-dir", run_dir],
                 ["train", "--env", "CartPole-v1", "--track", "--seeds", "0-1", "--run-dir",
                  run_dir]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2, result.output
        assert result.stderr == ('error: --track needs the wandb extra: '
                                 'pip install -e ".[wandb]"\n')
        assert not run_dir.exists()
