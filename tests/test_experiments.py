"""Experiment bookkeeping: what counts as solved, which runs are left, what the table says."""

import math
import sys

import numpy as np
import pytest

from ppo.experiments import EXPERIMENTS, _command, _finished, report, summarize

COLUMNS = ["update", "global_step", "episodic_return", "approx_kl", "clipfrac", "time_total"]


def _write_run(run_dir, returns, clip_eps=0.2, steps_per_update=1000):
    run_dir.mkdir(parents=True)
    lines = [",".join(COLUMNS)]
    for i, ret in enumerate(returns, start=1):
        cell = "" if ret is None else str(ret)
        lines.append(f"{i},{i * steps_per_update},{cell},0.01,0.1,2.0")
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    (run_dir / "config.toml").write_text(
        f'env_id = "LunarLander-v3"\nseed = 0\nclip_eps = {clip_eps}\n')
    return run_dir


def _metrics(returns):
    n = len(returns)
    return {"update": np.arange(1, n + 1.0), "global_step": 1000.0 * np.arange(1, n + 1),
            "episodic_return": np.array([math.nan if r is None else r for r in returns]),
            "approx_kl": np.full(n, 0.01), "clipfrac": np.full(n, 0.1),
            "time_total": np.full(n, 2.0)}


def test_summary_takes_the_first_step_past_the_threshold():
    s = summarize(_metrics([None, 150.0, 201.0, 190.0, 230.0]), threshold=200.0)
    assert s["steps_to_solve"] == 3000
    assert s["time_to_solve"] == pytest.approx(6.0)
    assert s["final_return"] == 230.0
    assert s["wall_clock"] == pytest.approx(10.0)


def test_unsolved_run_has_no_step_to_solve():
    s = summarize(_metrics([None, 10.0, 20.0]), threshold=200.0)
    assert math.isnan(s["steps_to_solve"]) and math.isnan(s["time_to_solve"])


def test_finished_runs_are_skipped_and_checkpointed_ones_resumed(tmp_path):
    done = _write_run(tmp_path / "done", [1.0] * 5)
    assert _finished(done, 5000) and not _finished(done, 6000)
    (done / "checkpoints").mkdir()
    (done / "checkpoints" / "update_000005.safetensors").write_bytes(b"")
    command = _command(done, {"clip_eps": 1.0}, seed=0, steps=6000)
    assert command[:3] == [sys.executable, "-m", "ppo"]
    assert "--resume" in command and str(done) in command


def test_fresh_run_gets_its_variant_as_flags(tmp_path):
    command = _command(tmp_path / "new", {"env_id": "LunarLander-v3", "clip_eps": 1.0,
                                           "clip_value": False}, seed=3, steps=1000)
    assert command[5:7] == ["--env", "LunarLander-v3"]
    assert "--no-clip-value" in command
    assert command[command.index("--seed") + 1] == "3"


def test_report_tables_each_variant(tmp_path):
    runs = {
        "eps=0.2": [_write_run(tmp_path / "a" / f"seed{s}", [None, 100.0, 210.0])
                    for s in range(2)],
        "eps=1.0": [_write_run(tmp_path / "b" / "seed0", [None, -50.0, -300.0],
                               clip_eps=1.0)],
    }
    text = report("eps-ablation", runs, EXPERIMENTS["eps-ablation"], tmp_path).read_text()
    assert "| eps=0.2 | 2 | 210.0 ± 0.0 | 2/2 | 3000 |" in text
    assert "| eps=1.0 | 1 | -300.0 | 0/1 | - |" in text
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "return_and_kl.png").stat().st_size > 0
