"""Figures: the objective's gradient is zero exactly on the fenced side of each hinge, runs
group by configuration, and every plot writes an image without touching pyplot state."""

import csv
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import tomli_w

from ppo import figures
from ppo.figures import (
    clipped_objective,
    clipped_objective_grad,
    group_runs,
    plot_objective,
    plot_return_and_kl,
    plot_runs,
    read_metrics,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLUMNS = ("update", "global_step", "episodic_return", "approx_kl", "clipfrac")


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def _make_run(root, name, clip_eps, seed, step=2048, updates=20):
    """A run dir like the trainer's: config.toml and a metrics.csv whose first returns are empty."""
    run_dir = root / name
    run_dir.mkdir()
    config = {"env_id": "CartPole-v1", "seed": seed, "clip_eps": clip_eps, "epochs": 4,
              "hidden_sizes": [64, 64], "run_dir": str(run_dir)}
    (run_dir / "config.toml").write_text(tomli_w.dumps(config))
    rng = np.random.default_rng(seed)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for u in range(1, updates + 1):
            ret = "" if u < 3 else f"{10 * u + rng.normal():.2f}"
            writer.writerow([u, u * step, ret, f"{0.01 * clip_eps * u:.5f}",
                             f"{min(0.9, 0.02 * u):.3f}"])
    return run_dir


@pytest.fixture
def runs(tmp_path):
    return [_make_run(tmp_path, "a0", 0.2, 0), _make_run(tmp_path, "a1", 0.2, 1, step=1500),
            _make_run(tmp_path, "b0", 1.0, 0)]


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    yield
    assert plt.get_fignums() == [], "a figure leaked into pyplot's global state"


@pytest.mark.parametrize("adv", [1.0, -1.0, 2.5, -0.3])
@pytest.mark.parametrize("eps", [0.1, 0.2, 0.5])
def test_gradient_is_zero_exactly_on_the_fenced_side(adv, eps):
    lo, hi, d = 1.0 - eps, 1.0 + eps, 0.01
    r = np.array([0.5 * lo, lo - d, lo, lo + d, 1.0, hi - d, hi, hi + d, 1.5 * hi])
    grad = clipped_objective_grad(r, adv, eps)
    outside_low, inside, outside_high = r < lo, (r >= lo) & (r <= hi), r > hi
    np.testing.assert_array_equal(grad[inside], adv)  # hinges themselves included
    if adv > 0:  # r capped at 1+eps: flat to the right, unclipped to the left
        np.testing.assert_array_equal(grad[outside_high], 0.0)
        np.testing.assert_array_equal(grad[outside_low], adv)
    else:  # r floored at 1-eps: flat to the left, unclipped to the right
        np.testing.assert_array_equal(grad[outside_low], 0.0)
        np.testing.assert_array_equal(grad[outside_high], adv)


@pytest.mark.parametrize("adv", [1.0, -1.0])
def test_gradient_matches_finite_differences_of_the_objective(adv):
    eps, h = 0.2, 1e-6
    r = np.linspace(0.05, 1.95, 97)
    r = r[np.minimum(abs(r - 0.8), abs(r - 1.2)) > 1e-3]  # away from the kinks
    numeric = (clipped_objective(r + h, adv, eps) - clipped_objective(r - h, adv, eps)) / (2 * h)
    np.testing.assert_allclose(clipped_objective_grad(r, adv, eps), numeric, atol=1e-6)


@pytest.mark.parametrize("eps", [0.2, 1.0])
def test_plot_objective_writes_a_png(tmp_path, eps):
    path = plot_objective(eps, tmp_path / "objective.png")
    assert path == tmp_path / "objective.png" and _is_png(path)


def test_plot_objective_format_from_suffix(tmp_path):
    assert plot_objective(0.2, tmp_path / "objective.svg").read_text().lstrip().startswith("<?xml")
    assert _is_png(plot_objective(0.2, tmp_path / "objective"))  # no suffix: PNG
    with pytest.raises(ValueError, match="format"):
        plot_objective(0.2, tmp_path / "objective_eps0.2")


@pytest.mark.parametrize("eps", [0.0, -0.1, math.nan, math.inf])
def test_plot_objective_rejects_bad_eps(tmp_path, eps):
    with pytest.raises(ValueError, match="eps"):
        plot_objective(eps, tmp_path / "objective.png")


def test_read_metrics_empty_cells_are_nan(runs):
    metrics = read_metrics(runs[0])
    assert set(COLUMNS) <= set(metrics)
    assert np.isnan(metrics["episodic_return"][:2]).all()
    assert np.isfinite(metrics["episodic_return"][2:]).all()
    assert metrics["global_step"][-1] == 20 * 2048


def test_runs_group_by_config_without_seed_and_run_dir(runs):
    groups = group_runs(runs)
    assert groups == {"clip_eps=0.2": runs[:2], "clip_eps=1.0": runs[2:]}


def test_a_single_config_is_labelled_by_env_id(runs):
    assert group_runs(runs[:2]) == {"CartPole-v1": runs[:2]}


def test_majority_values_are_left_out_of_labels(tmp_path):
    dirs = [_make_run(tmp_path, f"r{i}", eps, 0) for i, eps in enumerate((0.2, 0.2, 0.5))]
    config = dirs[1] / "config.toml"
    config.write_text(config.read_text().replace("epochs = 4", "epochs = 20"))
    assert list(group_runs(dirs)) == ["baseline", "epochs=20", "clip_eps=0.5"]


def test_labels_override_grouping(runs):
    assert group_runs(runs, labels=["x", "y", "x"]) == {"x": [runs[0], runs[2]], "y": [runs[1]]}
    with pytest.raises(ValueError, match="labels"):
        group_runs(runs, labels=["x"])


def test_runs_on_different_grids_are_averaged_on_a_common_grid(tmp_path):
    a, b = _make_run(tmp_path, "a", 0.2, 0, step=100), _make_run(tmp_path, "b", 0.2, 1, step=50)
    _, grid, stats = figures._group_curves({"g": [a, b]}, ["approx_kl"])["g"]
    mean, low, high = stats["approx_kl"]
    # approx_kl = 0.002 * step / step_size in both runs: at step 200, a has 0.004, b 0.008.
    i = np.flatnonzero(grid == 200)[0]
    assert (low[i], high[i]) == pytest.approx((0.004, 0.008)) and mean[i] == pytest.approx(0.006)
    # Past b's last step (1000) only a counts.
    j = np.flatnonzero(grid == 2000)[0]
    assert mean[j] == low[j] == high[j] == pytest.approx(0.04)


def test_plot_runs_writes_a_png(runs, tmp_path):
    assert _is_png(plot_runs(runs, tmp_path / "out" / "curves.png"))
    assert _is_png(plot_runs(runs, tmp_path / "labelled.png", labels=["s", "s", "n"]))


def test_plot_runs_names_a_dir_without_metrics(runs, tmp_path):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(ValueError, match="not_a_run.*metrics.csv"):
        plot_runs([*runs, empty], tmp_path / "curves.png", labels=["a", "a", "b", "c"])
    (runs[2] / "metrics.csv").unlink()  # a run that has not logged yet, grouped by config
    with pytest.raises(ValueError, match=f"{runs[2].name}.*metrics.csv"):
        plot_runs(runs, tmp_path / "curves.png")


def test_plot_runs_names_a_missing_column(runs, tmp_path):
    path = runs[0] / "metrics.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(ln.rsplit(",", 1)[0] for ln in lines) + "\n")  # drop clipfrac
    with pytest.raises(ValueError, match="lacks column.*clipfrac"):
        plot_runs(runs, tmp_path / "curves.png")


def test_plot_return_and_kl_writes_a_png(runs, tmp_path):
    path = plot_return_and_kl({"eps=0.2": runs[:2], "eps=1.0": runs[2:]}, tmp_path / "rk.png")
    assert _is_png(path)


def test_plot_profiles_writes_a_panel_per_task(tmp_path):
    scores = {"CartPole-v1": {"a": np.array([400.0, 480.0, 500.0]), "b": np.array([20.0])},
              "Pendulum-v1": {"a": np.array([-200.0, -150.0]), "empty": np.array([])}}
    assert _is_png(figures.plot_profiles(scores, tmp_path / "profiles.png"))
    with pytest.raises(ValueError, match="no scores"):
        figures.plot_profiles({"CartPole-v1": {"a": np.array([])}}, tmp_path / "none.png")
