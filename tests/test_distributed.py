"""Data-parallel training: ranks stay replicas, statistics are global, a dead rank stops the
rest with an error, and `ppo train --nproc` reads like a single-process run."""

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner

from ppo.agent import PPO
from ppo.cli import main
from ppo.config import Config
from ppo.distributed import Moments, _interleave, join_from_env
from ppo.metrics import COLUMNS
from ppo.normalization import RunningMeanStd
from ppo.rollout import EpisodeStats

SRC = str(Path(__file__).resolve().parents[1] / "src")
# The CartPole preset's shape at a smaller scale: 4 envs x 256 steps per rank.
CARTPOLE = dict(env_id="CartPole-v1", num_envs=4, rollout_steps=256, minibatch_size=256,
                epochs=10, lr=1e-3, shared_trunk=False, clip_value=False, tensorboard=False)
SMALL_CLI = ["--env", "CartPole-v1", "--num-envs", "2", "--rollout-steps", "64",
             "--minibatch-size", "32", "--no-tensorboard"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun tells each worker."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)}


def _spawn(worker, *args, nprocs: int = 2) -> None:
    """Run worker(rank, port, *args) in nprocs fresh processes; a failure in any re-raises."""
    mp.spawn(worker, args=(_free_port(), *args), nprocs=nprocs)


# ---------------------------------------------------------------- the statistics, in one process
def test_moments_merge_and_split_match_one_pass_over_the_data():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3.0, 2.0, (50, 3)), rng.normal(-1.0, 0.5, (70, 3))
    both = Moments.of_sample(np.concatenate([a, b]))
    merged = Moments.of_sample(a) + Moments.of_sample(b)
    assert merged.count == both.count
    np.testing.assert_allclose(merged.mean, both.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.m2, both.m2, rtol=1e-12)
    np.testing.assert_allclose(merged.std(), np.concatenate([a, b]).std(0, ddof=1), rtol=1e-12)
    part = both - Moments.of_sample(a)
    np.testing.assert_allclose(part.mean, b.mean(0), rtol=1e-10)
    np.testing.assert_allclose(part.m2 / part.count, b.var(0), rtol=1e-10)
    # RunningMeanStd keeps the same moments as it streams batches.
    stats = RunningMeanStd((3,))
    stats.update(a)
    stats.update(b)
    streamed = Moments.of_stats(stats) - Moments.of_stats(RunningMeanStd((3,)))
    np.testing.assert_allclose(streamed.mean, both.mean, rtol=1e-10)
    np.testing.assert_allclose(streamed.m2, both.m2, rtol=1e-10)


def test_interleave_keeps_the_most_recent_of_every_list_at_the_tail():
    assert _interleave([[1, 2, 3], [10, 20]]) == [1, 2, 10, 3, 20]
    assert _interleave([[], [5]]) == [5]


def test_a_plain_process_joins_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert join_from_env("cpu", 60.0) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert join_from_env("cpu", 60.0) is None
    assert not torch.distributed.is_initialized()


# ---------------------------------------------------------------- the statistics, over 2 ranks
def _statistics_worker(rank: int, port: int) -> None:
    os.environ.update(_rank_env(rank, 2, port))
    replicas = join_from_env("cpu", 60.0)
    rng = np.random.default_rng(1)
    # Both ranks draw the same data and each takes its own slice of it.
    adv = rng.normal(0.7, 3.0, 1000).astype(np.float32)
    mean, std = replicas.mean_std(adv[:400] if rank == 0 else adv[400:])
    np.testing.assert_allclose([mean, std], [adv.mean(), adv.std(ddof=1)], rtol=1e-5)

    base_obs, base_rew = RunningMeanStd((3,)), RunningMeanStd()
    base_obs.update(rng.normal(size=(20, 3)))
    base_rew.update(rng.normal(size=20))
    new_obs = [rng.normal(5.0, 2.0, (n, 3)) for n in (30, 45)]
    new_rew = [rng.normal(1.0, 4.0, n) for n in (12, 7)]
    new_episodes = [[(0.0, 1000 + i) for i in range(3)], [(float(i), i) for i in range(120)]]

    def copy(stats):
        fresh = RunningMeanStd(np.shape(stats.mean))
        fresh.load({k: np.copy(v) for k, v in stats.state().items()})
        return fresh

    episodes = EpisodeStats(num_envs=1)
    episodes.recent.extend([(-1.0, 5)] * 10)
    episodes.episodes = 10
    collector = SimpleNamespace(obs_normalizer=SimpleNamespace(stats=copy(base_obs)),
                                reward_scaler=SimpleNamespace(stats=copy(base_rew)),
                                episodes=episodes)
    with replicas.pooling(collector):
        collector.obs_normalizer.stats.update(new_obs[rank][:10])
        collector.obs_normalizer.stats.update(new_obs[rank][10:])
        collector.reward_scaler.stats.update(new_rew[rank])
        for ret, length in new_episodes[rank]:
            episodes.recent.append((ret, length))
            episodes.episodes += 1

    # One process seeing all of it: the same numbers, on every rank.
    for pooled, base, new in ((collector.obs_normalizer.stats, base_obs, new_obs),
                              (collector.reward_scaler.stats, base_rew, new_rew)):
        for part in new:
            base.update(part)
        np.testing.assert_allclose(pooled.mean, base.mean, rtol=1e-10)
        np.testing.assert_allclose(pooled.var, base.var, rtol=1e-10)
        np.testing.assert_allclose(pooled.count, base.count, rtol=1e-12)
    assert episodes.episodes == 10 + 3 + 120
    # The window keeps each rank's most recent episodes alike (rank 0 had only 3 to give).
    assert len(episodes.recent) == 100
    assert {1000, 1001, 1002} <= {n for _, n in episodes.recent}
    assert episodes.recent[-1] == new_episodes[1][-1]
    replicas.close()


def test_global_advantage_and_pooled_statistics_match_one_process():
    _spawn(_statistics_worker)


# ---------------------------------------------------------------- training over 2 ranks
def _train_worker(rank: int, port: int, settings: dict, iterations: int, out: Path) -> None:
    os.environ.update(_rank_env(rank, 2, port))
    agent = PPO(Config(**settings), verbose=False)
    rows = [agent.iteration() for _ in range(iterations)]
    obs_stats = agent.obs_normalizer.stats.state() if agent.obs_normalizer else {}
    np.savez(out / f"rank{rank}.npz",
             params=torch.nn.utils.parameters_to_vector(agent.model.parameters()).detach(),
             obs_mean=obs_stats.get("mean", []), obs_var=obs_stats.get("var", []),
             recent=np.array(agent.collector.episodes.recent),
             returns=[r["episodic_return"] for r in rows],
             steps=[r["global_step"] for r in rows], epochs=[r["epochs_run"] for r in rows])
    agent.close()


def _train_two_ranks(tmp_path, settings, iterations):
    _spawn(_train_worker, settings, iterations, tmp_path)
    return [dict(np.load(tmp_path / f"rank{r}.npz")) for r in (0, 1)]


@pytest.mark.slow
def test_two_ranks_stay_identical_and_learn_cartpole(tmp_path):
    # 20 updates x 2 ranks x 1024 steps = 41k steps; a random policy scores ~22.
    ranks = _train_two_ranks(tmp_path, dict(CARTPOLE, normalize_obs=True, anneal_lr=True,
                                            total_timesteps=40_960), iterations=20)
    for key in ("params", "obs_mean", "obs_var", "recent", "returns", "steps"):
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)
    assert list(ranks[0]["steps"]) == [2048 * (i + 1) for i in range(20)]
    assert ranks[0]["returns"][-1] > 100, ranks[0]["returns"]


def test_torch_learner_kl_stop_and_next_step_resets_keep_ranks_identical(tmp_path):
    # 8 envs make CartPole's native vector env (next-step resets: ranks keep unequal numbers
    # of valid steps); a small target_kl stops epochs early on the global KL.
    settings = dict(CARTPOLE, num_envs=8, rollout_steps=64, minibatch_size=64, learner="torch",
                    target_kl=0.003, normalize_reward=True, clip_value=True)
    ranks = _train_two_ranks(tmp_path, settings, iterations=4)
    for key in ("params", "epochs", "returns", "steps"):
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)
    assert min(ranks[0]["epochs"]) < settings["epochs"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (nccl)")
def test_two_ranks_on_two_gpus_stay_identical(tmp_path):
    ranks = _train_two_ranks(tmp_path, dict(CARTPOLE, device="cuda"), iterations=3)
    np.testing.assert_array_equal(ranks[0]["params"], ranks[1]["params"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_with_an_index_under_torchrun_is_refused(monkeypatch):
    from ppo.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        join_from_env("cuda:0", 60.0)


# ---------------------------------------------------------------- the command line
def _ppo(*args, env=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": SRC, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ppo", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, **kwargs)


LINE = re.compile(r"^update \d{3} step \d+/\d+ \(\d+%\) return=\S+ kl=\S+ clipfrac=\S+ "
                  r"loss_pi=\S+ loss_v=\S+ entropy=\S+ ev=\S+ sps=\d+ elapsed=\S+ eta=\S+$")


def _rows(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def nproc_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nproc") / "run"
    result = _ppo("train", "--nproc", 2, *SMALL_CLI, "--total-timesteps", 768,
                  "--checkpoint-every", 2, "--run-dir", run_dir)
    return run_dir, result


def test_nproc_runs_torchrun_and_reads_like_one_process(nproc_run):
    run_dir, result = nproc_run
    assert result.returncode == 0, result.stderr
    # Rank 0 alone speaks: one line per update, as a single process writes it.
    updates = [ln for ln in result.stdout.splitlines() if ln.startswith("update ")]
    assert len(updates) == 3 and all(LINE.match(ln) for ln in updates), result.stdout
    assert result.stdout.count("run directory:") == 1
    with open(run_dir / "metrics.csv") as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    # global_step counts both ranks' steps: 2 ranks x 2 envs x 64 steps per update.
    assert [int(r["global_step"]) for r in _rows(run_dir)] == [256, 512, 768]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "update_000002.safetensors", "update_000003.safetensors"]
    assert (run_dir / "config.toml").exists()


def test_nproc_resume_continues_the_run(nproc_run):
    run_dir, first = nproc_run
    assert first.returncode == 0, first.stderr
    result = _ppo("train", "--nproc", 2, "--resume", run_dir, "--total-timesteps", 1280,
                  "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("resuming") == 1
    rows = _rows(run_dir)
    assert [int(r["update"]) for r in rows] == [1, 2, 3, 4, 5]
    assert int(rows[-1]["global_step"]) == 1280
    assert int(rows[-1]["episodes"]) >= int(rows[2]["episodes"])


def _assert_one_line_error(result, needle):
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


def test_nproc_zero_is_an_error():
    _assert_one_line_error(CliRunner().invoke(main, ["train", "--nproc", "0"]), "--nproc")


def test_nproc_under_torchrun_is_an_error():
    result = CliRunner().invoke(main, ["train", "--nproc", "2"], env={"WORLD_SIZE": "2"})
    _assert_one_line_error(result, "already runs under torchrun")


# ---------------------------------------------------------------- a rank dies or hangs
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_lost_rank_stops_the_others_with_an_error(tmp_path, sig):
    port, env = _free_port(), {**os.environ, "PYTHONPATH": SRC}
    metrics = tmp_path / "run" / "metrics.csv"
    args = [sys.executable, "-m", "ppo", "train", *SMALL_CLI, "--total-timesteps", 10**8,
            "--dist-timeout", 5, "--run-dir", metrics.parent, "--quiet"]
    ranks = [subprocess.Popen(list(map(str, args)), env={**env, **_rank_env(r, 2, port)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and len(metrics.read_text().splitlines()) > 2):
            assert ranks[0].poll() is None and time.monotonic() < deadline, "no training"
            time.sleep(0.2)
        ranks[1].send_signal(sig)
        start = time.monotonic()
        stderr = ranks[0].communicate(timeout=60)[1]
        assert time.monotonic() - start < 60
        assert ranks[0].returncode == 2
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: rank 0 of 2 lost contact with the other ranks"), stderr
        assert "resume with --resume" in last
    finally:
        for p in ranks:
            p.kill()
            p.communicate()
