"""Diagnostics: metrics.csv, TensorBoard, Weights & Biases (offline), the console line and
the health check."""

import csv
import math
import re

import gymnasium as gym
import numpy as np
import pytest

from ppo.agent import PPO
from ppo.checkpoint import RunDirError
from ppo.config import Config
from ppo.console import console_line
from ppo.metrics import (
    COLUMNS,
    CsvSink,
    HealthCheck,
    MetricsLogger,
    check_metrics,
    repair_metrics,
)

REQUIRED = ["update", "global_step", "episodic_return", "episodic_length", "approx_kl",
            "clipfrac", "policy_loss", "value_loss", "entropy", "explained_variance",
            "learning_rate", "sps"]


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


class _Recorder(gym.Wrapper):
    """Writes each finished episode's undiscounted return and length to a shared list."""

    def __init__(self, env, log):
        super().__init__(env)
        self.log, self.ret, self.len = log, 0.0, 0

    def reset(self, **kw):
        self.ret, self.len = 0.0, 0
        return self.env.reset(**kw)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.ret += float(reward)
        self.len += 1
        if terminated or truncated:
            self.log.append((self.ret, self.len))
        return obs, reward, terminated, truncated, info


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("metrics") / "run"
    episodes = []
    cfg = Config(env_id="CartPole-v1", num_envs=2, rollout_steps=256, minibatch_size=128,
                 total_timesteps=8 * 512, run_dir=str(run_dir), tensorboard=True)
    PPO(cfg, env=lambda: _Recorder(gym.make("CartPole-v1"), episodes), verbose=False).learn()
    return run_dir, episodes


def test_metrics_csv_columns_and_rows(logged_run):
    run_dir, _ = logged_run
    header, rows = _rows(run_dir / "metrics.csv")
    assert header == list(COLUMNS)
    assert set(REQUIRED) <= set(header)
    assert [int(r["update"]) for r in rows] == list(range(1, 9))
    assert [int(r["global_step"]) for r in rows] == [512 * u for u in range(1, 9)]
    for row in rows:
        for key in header:
            assert math.isfinite(float(row[key])), (key, row[key])
        assert 0.0 <= float(row["clipfrac"]) <= 1.0
        assert float(row["approx_kl"]) >= 0.0
        assert 0.0 < float(row["entropy"]) <= math.log(2) + 1e-6
        assert float(row["learning_rate"]) == 3e-4
        assert float(row["sps"]) > 0
        assert int(row["epochs_run"]) == 4 and int(row["nonfinite_steps"]) == 0


def test_episodic_return_is_the_mean_of_the_last_100_episodes(logged_run):
    run_dir, episodes = logged_run
    _, rows = _rows(run_dir / "metrics.csv")
    assert int(rows[-1]["episodes"]) == len(episodes) > 100  # the window is really exercised
    for row in rows:
        done = episodes[: int(row["episodes"])][-100:]
        assert float(row["episodic_return"]) == pytest.approx(np.mean([r for r, _ in done]))
        assert float(row["episodic_length"]) == pytest.approx(np.mean([n for _, n in done]))


def test_tensorboard_scalars_match_the_csv(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = logged_run
    _, rows = _rows(run_dir / "metrics.csv")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for key in ("approx_kl", "episodic_return", "learning_rate"):
        scalars = events.Scalars(f"ppo/{key}")
        assert [s.step for s in scalars] == [int(r["global_step"]) for r in rows]
        np.testing.assert_allclose([s.value for s in scalars], [float(r[key]) for r in rows],
                                   rtol=1e-6)


def test_no_episode_yet_is_an_empty_cell(tmp_path):
    from helpers_envs import CounterEnv

    cfg = Config(env_id="counter", rollout_steps=16, minibatch_size=16, total_timesteps=16,
                 run_dir=str(tmp_path / "run"), tensorboard=False)
    PPO(cfg, env=CounterEnv(), verbose=False).learn()
    _, rows = _rows(tmp_path / "run" / "metrics.csv")
    assert rows[0]["episodic_return"] == "" and rows[0]["episodes"] == "0"


def _row(update=1, kl=0.01, clipfrac=0.2, **kw):
    row = {"update": update, "global_step": 2048 * update, "episodic_return": 104.2,
           "episodic_length": 104.2, "approx_kl": kl, "clipfrac": clipfrac,
           "policy_loss": -0.041, "value_loss": 0.28, "entropy": 0.61,
           "explained_variance": 0.5, "sps": 4321.0}
    row.update(kw)
    return row


def test_console_line_has_the_seed_shape():
    line = console_line(_row(update=20, kl=0.024, clipfrac=0.15, global_step=40960))
    assert line == ("update 020 step 40960 return=+104.2 kl=0.024 clipfrac=0.15 "
                    "loss_pi=-0.041 loss_v=0.28 entropy=0.610 ev=0.50 sps=4321")
    assert "return=   n/a" in console_line(_row(episodic_return=float("nan")))


def test_health_check_warns_once_per_stretch():
    health = HealthCheck(patience=3)
    kl_pattern = [0.05] * 6 + [0.01] * 2 + [0.05] * 4  # two stretches of high KL
    warnings = [health.check(_row(u, kl=kl)) for u, kl in enumerate(kl_pattern, 1)]
    flagged = [u for u, w in enumerate(warnings, 1) if w]
    assert flagged == [3, 11]
    assert all(len(w) == 1 and "approx KL" in w[0] for w in warnings if w)
    assert warnings[2][0].startswith("warning: update 3:")


def test_health_check_clip_fraction_band():
    health = HealthCheck(patience=2)
    out = [health.check(_row(u, clipfrac=c)) for u, c in
           enumerate([0.05, 0.02, 0.01, 0.2, 0.5, 0.6, 0.7, 0.3, 0.1], 1)]
    assert [u for u, w in enumerate(out, 1) if w] == [2, 6]
    assert "idle" in out[1][0] and "pinned" in out[5][0]
    # Both signs at once give two warnings on the same update, still once each.
    health = HealthCheck(patience=1)
    assert len(health.check(_row(kl=0.1, clipfrac=0.5))) == 2
    assert health.check(_row(kl=0.1, clipfrac=0.5)) == []


def test_health_check_without_a_clip_watches_kl_only():
    health = HealthCheck(patience=1, clipfrac=False)  # TRPO: no clip to be idle or pinned
    assert health.check(_row(clipfrac=0.0)) == []
    assert ["approx KL" in w for w in health.check(_row(kl=0.1, clipfrac=0.9))] == [True]


def test_console_output_is_plain_lines_with_single_warnings(capsys):
    logger = MetricsLogger(None, verbose=True, tensorboard=False, total_updates=6,
                           first_update=1)
    for u in range(1, 7):
        logger.log(_row(u, kl=0.1, clipfrac=0.5))
    logger.close()
    out = capsys.readouterr().out
    assert "\r" not in out  # piped: no progress bar
    lines = out.splitlines()
    assert sum(line.startswith("update ") for line in lines) == 6
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 2  # KL and clip fraction, once each for the whole stretch
    assert all(re.match(r"^update \d{3} step \d+/12288 \(\d+%\) return=.* "
                        r"elapsed=\d:\d\d:\d\d eta=\d:\d\d:\d\d$", line)
               or line.startswith("warning:") for line in lines)
    assert lines[-1].startswith("update 006 step 12288/12288 (100%) ")
    assert lines[-1].endswith(" eta=0:00:00")


def test_quiet_run_prints_nothing(tmp_path, capsys):
    cfg = Config(env_id="CartPole-v1", rollout_steps=32, minibatch_size=32, total_timesteps=64,
                 tensorboard=False)
    PPO(cfg, verbose=False).learn()
    assert capsys.readouterr().out == ""
    PPO(cfg, verbose=True).learn()
    assert len(capsys.readouterr().out.splitlines()) == 2


HEADER = ",".join(COLUMNS) + "\n"


def _csv_row(update):
    return f"{update},{64 * update}," + ",".join(["0.5"] * (len(COLUMNS) - 2)) + "\n"


ROWS = _csv_row(1) + _csv_row(2)
# (file contents, damage named in the note or None, rows kept for a resume at update 2)
DAMAGED = [
    (HEADER + ROWS, None, [1, 2]),
    (HEADER + ROWS + _csv_row(3) + _csv_row(4), None, [1, 2]),  # rows past the checkpoint: a crash
    (HEADER + ROWS + "3,192,1.5,", None, [1, 2]),  # a row cut mid-write
    ((HEADER + ROWS).replace("\n", "\r\n"), None, [1, 2]),
    (HEADER + _csv_row(1) + "garbage,\x01,line\n" + _csv_row(2), "no metrics row (line 3)", [1, 2]),
    ((HEADER + ROWS).encode() + b"\0" * 4096, "NUL bytes", [1, 2]),
    ((HEADER + _csv_row(1)).encode() + b"\0" * 300, "NUL bytes", [1]),
    (ROWS, "has no header", [1, 2]),
    ("update,global_step,return\n" + ROWS, "unexpected header", [1, 2]),
    (HEADER + ROWS + _csv_row(1), "update 1 twice", [1, 2]),
    (HEADER + _csv_row(2) + _csv_row(1), "out of order", [1, 2]),
    ((HEADER + ROWS).encode() + b"\xff\xfe\n", "not UTF-8", [1, 2]),
    (HEADER + _csv_row(1) + _csv_row(2).rsplit(",", 3)[0] + "\n", "no metrics row", [1]),
    (HEADER + _csv_row(1) + "x" + _csv_row(2), "no metrics row", [1]),
]


@pytest.mark.parametrize(("content", "damage", "kept"), DAMAGED,
                         ids=[d or f"clean-{i}" for i, (_, d, _) in enumerate(DAMAGED)])
def test_metrics_repaired_to_the_checkpoint(tmp_path, content, damage, kept):
    path = tmp_path / "metrics.csv"
    original = content if isinstance(content, bytes) else content.encode()
    path.write_bytes(original)
    repair = check_metrics(path, 2)
    assert path.read_bytes() == original  # checking writes nothing
    assert (repair.damage is None) == (damage is None)
    if damage:
        assert damage in repair.damage
    notes = repair_metrics(path, repair, 2)
    assert path.read_text() == HEADER + "".join(_csv_row(u) for u in kept)
    aside = list(tmp_path.glob("metrics.csv.damaged-*"))
    if damage:
        assert [a.read_bytes() for a in aside] == [original]  # the damaged file, kept whole
        assert notes[0].startswith(f"note: {path} ") and aside[0].name in notes[0]
    else:
        assert aside == []
    missing = ", ".join(str(u) for u in (1, 2) if u not in kept)
    assert [n for n in notes if "no row" in n] == (
        [f"note: {path} has no row for update(s) {missing}; those rows are lost"] if missing
        else [])
    assert check_metrics(path, 2).changed is False  # a second resume finds nothing to do


def test_empty_or_missing_metrics_get_a_header_and_a_note(tmp_path):
    path = tmp_path / "metrics.csv"
    for setup in (lambda: path.write_text(""), lambda: path.unlink()):
        setup()
        notes = repair_metrics(path, check_metrics(path, 3), 3)
        assert path.read_text() == HEADER
        assert notes == [f"note: {path} has no row for update(s) 1-3; those rows are lost"]
    path.unlink()
    assert check_metrics(path, 0).changed is False  # a fresh run: the logger writes it


def test_metrics_that_are_no_regular_file_are_refused(tmp_path):
    import os

    fifo = tmp_path / "metrics.csv"
    os.mkfifo(fifo)
    with pytest.raises(RunDirError, match="is a FIFO, not a regular file"):
        check_metrics(fifo, 2)
    fifo.unlink()
    fifo.symlink_to("/dev/zero")
    with pytest.raises(RunDirError, match="character device"):
        check_metrics(fifo, 2)


def test_a_failed_write_names_the_metrics_file(tmp_path, monkeypatch):
    sink = CsvSink(tmp_path, first_update=1)

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sink.file, "flush", full)
    row = dict.fromkeys(COLUMNS, 1.0)
    with pytest.raises(OSError) as info:
        sink.log(row)
    assert info.value.filename == str(tmp_path / "metrics.csv")
    assert info.value.strerror == "No space left on device"


def test_columns_added_mid_run_are_kept_by_the_repair(tmp_path):
    """Evaluation and episode-info columns widen the header; a resume keeps them."""
    path = tmp_path / "metrics.csv"
    header = ",".join([*COLUMNS, "eval_return", "info/is_success"]) + "\r\n"

    def row(update):
        return _csv_row(update).rstrip("\n") + ",12.5,\r\n"

    path.write_text(header + row(1) + row(2) + "garbage\r\n" + row(3), newline="")
    repair = check_metrics(path, 2)
    assert repair.damage == "has 1 line(s) that are no metrics row (line 4)"
    repair_metrics(path, repair, 2)
    assert path.read_bytes() == (header + row(1) + row(2)).encode()
    assert check_metrics(path, 2).changed is False
