"""The zoo table's report: final evaluations over seeds, who reached the target and when, a
figure per task, and the variant labelled by what it actually ran."""

import csv

import numpy as np

from ppo import zoo
from ppo.experiments import _metrics


def _run(path, evaluations, step=1000, seconds=2.0):
    """A run directory whose metrics.csv holds an evaluation every other update."""
    path.mkdir(parents=True)
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["update", "global_step", "episodic_return", "eval_return",
                         "time_total", "approx_kl"])
        for i, value in enumerate(evaluations):
            writer.writerow([2 * i + 1, (2 * i + 1) * step, value - 5, "", seconds, 0.01])
            writer.writerow([2 * i + 2, (2 * i + 2) * step, value - 5, value, seconds, 0.01])
    return path


def test_report_gives_final_evaluations_and_time_to_target(tmp_path):
    runs = {
        ("CartPole-v1", "task settings"): [_run(tmp_path / "cp" / f"seed{s}", evals)
                                           for s, evals in enumerate(
                                               [[100, 500, 500], [200, 300, 500], [50, 60, 70]])],
        ("MountainCar-v0", "task settings"): [_run(tmp_path / "mc" / "seed0", [-200, -100])],
    }
    text = zoo.report(runs, tmp_path, _metrics).read_text()
    finals = np.array([500, 500, 70])
    row = [line for line in text.splitlines() if line.startswith("| CartPole-v1 | 100,000")][0]
    # Seeds 0 and 1 reach 500 at their 2nd and 3rd evaluation: steps 4,000 and 6,000, after
    # 4 and 6 updates of 2 s.
    assert f"{finals.mean():.1f} ± {finals.std():.1f} | 2/3 | 5,000 | 10 |" in row
    assert "| MountainCar-v0 | 1,000,000 | -110.4 | task settings (none shipped: the kind's) |" \
        in text
    assert "| CartPole-v1 | task settings | 2 | 6,000 | 70.0 | - | - |" in text
    assert (tmp_path / "curves_CartPole-v1.png").stat().st_size > 0
    table_end = text.index("## Learning curves")
    assert text.count("| task | budget |", 0, table_end) == 1  # one table, figures after it


def test_a_task_without_a_settings_file_trains_once_for_both_rows(tmp_path, monkeypatch):
    """MountainCar-v0 ships no file: `ppo train --env MountainCar-v0` is the kind's settings,
    so its task-settings row reads the kind-settings runs instead of training them again."""
    import ppo.launcher
    from ppo.experiments import run_experiment

    started = []
    monkeypatch.setattr(ppo.launcher, "run_jobs",
                        lambda jobs, parallel, report: started.extend(jobs))
    run_experiment("zoo", tmp_path, 1, None, 1, ["MountainCar-v0", "CartPole-v1"])
    dirs = sorted(str(job.run_dir.relative_to(tmp_path / "zoo")) for job in started)
    assert dirs == ["CartPole-v1/kind_settings/seed0", "CartPole-v1/task_settings/seed0",
                    "MountainCar-v0/kind_settings/seed0"]
