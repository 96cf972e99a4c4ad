"""Run directories as `ppo train` leaves them, for tests of what reads them."""

COLUMNS = ["update", "global_step", "episodic_return", "episodes", "approx_kl", "clipfrac",
           "time_total"]


def write_run(run_dir, returns, clip_eps=0.2, steps_per_update=1000, episodes_per_update=100,
              env_id="LunarLander-v3", seed=0):
    """A run directory as `ppo train` leaves it: config.toml and metrics.csv."""
    run_dir.mkdir(parents=True)
    lines = [",".join(COLUMNS)]
    for i, ret in enumerate(returns, start=1):
        cell = "" if ret is None else str(ret)
        lines.append(f"{i},{i * steps_per_update},{cell},{i * episodes_per_update},0.01,0.1,2.0")
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    (run_dir / "config.toml").write_text(
        f'env_id = "{env_id}"\nseed = {seed}\nclip_eps = {clip_eps}\n')
    return run_dir
