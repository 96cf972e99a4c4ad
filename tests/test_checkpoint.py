"""Checkpoints: exact round trips, resume, atomic writes, and refusal of anything suspect."""

import csv
import os
import pickle
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppo.checkpoint
from ppo.agent import PPO
from ppo.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_atomic,
)
from ppo.config import Config, ConfigError
from ppo.signals import Interrupted


def _cfg(tmp_path, name="run", **kw):
    settings = dict(env_id="CartPole-v1", rollout_steps=64, num_envs=2, minibatch_size=32,
                    total_timesteps=3 * 128, tensorboard=False, normalize_obs=True,
                    normalize_reward=True, run_dir=str(tmp_path / name))
    settings.update(kw)
    return Config(**settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 3-update run with every kind of state a checkpoint holds."""
    tmp_path = tmp_path_factory.mktemp("ckpt")
    agent = PPO(_cfg(tmp_path, checkpoint_every=2), verbose=False).learn()
    return agent, tmp_path / "run"


def _state_equal(a, b):
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(),
                                  strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0)
    sa, sb = a.learner.optimizer.state_dict(), b.learner.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for index in sa["state"]:
        for slot in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(torch.as_tensor(sa["state"][index][slot]),
                                       torch.as_tensor(sb["state"][index][slot]), rtol=0, atol=0)


def test_round_trip_restores_everything(trained):
    agent, run_dir = trained
    path = latest_checkpoint(run_dir)
    assert path == checkpoint_path(run_dir, 3)
    assert checkpoint_path(run_dir, 2).exists()  # checkpoint_every=2, plus the end
    torch.manual_seed(123)  # the torch RNG state must come from the file
    loaded = PPO.load(path)
    _state_equal(agent, loaded)
    assert float(loaded.learner.optimizer.state_dict()["state"][0]["step"]) == 3 * 4 * 4
    assert (loaded.update, loaded.global_step) == (3, 384)
    assert loaded.collector.episodes.episodes == agent.collector.episodes.episodes
    assert list(loaded.collector.episodes.recent) == list(agent.collector.episodes.recent)
    assert loaded.action_rng.bit_generator.state == agent.action_rng.bit_generator.state
    assert loaded.shuffle_rng.bit_generator.state == agent.shuffle_rng.bit_generator.state
    tensors, _ = load_checkpoint(path)
    assert torch.equal(torch.get_rng_state(), tensors["rng.torch"])
    for mine, theirs in ((loaded.obs_normalizer.stats, agent.obs_normalizer.stats),
                         (loaded.collector.reward_scaler.stats,
                          agent.collector.reward_scaler.stats)):
        np.testing.assert_array_equal(mine.mean, theirs.mean)
        np.testing.assert_array_equal(mine.var, theirs.var)
        assert mine.count == theirs.count
    assert agent.obs_normalizer.stats.count > 100  # statistics were really collected
    # Everything but where the run lives: a loaded agent writes nowhere until told.
    assert loaded.config == agent.config.replace(run_dir=None)
    obs = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0],
                                  agent.predict(obs, deterministic=True)[0])


def test_loaded_agent_trains_identically(trained, tmp_path):
    """Same weights, optimizer moments and RNG streams: one more update on the same rollout
    gives the same weights."""
    agent, run_dir = trained
    a = PPO.load(latest_checkpoint(run_dir))
    b = PPO.load(latest_checkpoint(run_dir))
    for x in (a, b):
        x.iteration()
    _state_equal(a, b)


def test_numpy_learner_rebinds_after_load(trained):
    """After loading, training steps must move the loaded weights (shared memory rebound)."""
    _, run_dir = trained
    agent = PPO.load(latest_checkpoint(run_dir))
    before = [p.detach().clone() for p in agent.model.parameters()]
    agent.iteration()
    assert any(not torch.equal(a, b) for a, b in
               zip(before, agent.model.parameters(), strict=True))
    assert float(agent.learner.optimizer.state_dict()["state"][0]["step"]) == 3 * 16 + 16


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_resume_continues_numbering_without_duplicates(tmp_path):
    cfg = _cfg(tmp_path, checkpoint_every=2)
    PPO(cfg, verbose=False).learn()
    run_dir = tmp_path / "run"
    # Simulate a crash after update 3 whose last periodic checkpoint was update 2.
    checkpoint_path(run_dir, 3).unlink()
    assert [r["update"] for r in _rows(run_dir)] == ["1", "2", "3"]
    agent = PPO.resume(run_dir, verbose=False, total_timesteps=5 * 128)
    assert (agent.update, agent.global_step) == (2, 256)
    agent.learn()
    rows = _rows(run_dir)
    assert [int(r["update"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [int(r["global_step"]) for r in rows] == [128 * u for u in range(1, 6)]
    assert latest_checkpoint(run_dir) == checkpoint_path(run_dir, 5)


def test_fresh_agent_refuses_a_used_run_dir(trained):
    agent, run_dir = trained
    before = (run_dir / "metrics.csv").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        PPO(agent.config, verbose=False).learn()
    assert (run_dir / "metrics.csv").read_bytes() == before


def test_leftover_temp_file_is_ignored(trained, tmp_path):
    _, run_dir = trained
    latest = latest_checkpoint(run_dir)
    for name in (".update_000999.safetensors.tmp", "update_000999.safetensors.tmp",
                 "update_abc.safetensors"):
        (run_dir / "checkpoints" / name).write_bytes(b"half a checkpoint")
    try:
        assert latest_checkpoint(run_dir) == latest
        PPO.load(run_dir)
    finally:
        for name in (".update_000999.safetensors.tmp", "update_000999.safetensors.tmp",
                     "update_abc.safetensors"):
            (run_dir / "checkpoints" / name).unlink()


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    write_atomic(path, b"old")
    assert path.read_bytes() == b"old"

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ppo.checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new contents")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def _copy_latest(run_dir, tmp_path):
    data = latest_checkpoint(run_dir).read_bytes()
    target = tmp_path / "copy.safetensors"
    target.write_bytes(data)
    return target, data


def test_tampered_payload_byte_is_detected(trained, tmp_path):
    _, run_dir = trained
    target, data = _copy_latest(run_dir, tmp_path)
    header_len = int.from_bytes(data[:8], "little")
    for offset in (8 + header_len + 10, len(data) - 1):
        tampered = bytearray(data)
        tampered[offset] ^= 0x01
        target.write_bytes(bytes(tampered))
        with pytest.raises(CheckpointError, match="corrupted"):
            load_checkpoint(target)
        with pytest.raises(CheckpointError):
            PPO.load(target)


def test_tampered_header_and_truncation_are_detected(trained, tmp_path):
    _, run_dir = trained
    target, data = _copy_latest(run_dir, tmp_path)
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(target)
    tampered = data.replace(b'"update\\": 3', b'"update\\": 7')
    assert tampered != data
    target.write_bytes(tampered)
    with pytest.raises(CheckpointError):
        load_checkpoint(target)
    target.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(target)


def test_edited_meta_with_valid_digest_is_still_a_checkpoint(trained, tmp_path):
    """The digest covers the tensors; a re-saved checkpoint with other meta is accepted as a
    file, and its spaces are checked on load."""
    _, run_dir = trained
    tensors, meta = load_checkpoint(latest_checkpoint(run_dir))
    meta["spaces"]["observation"] = '["Box", [8]]'
    target = tmp_path / "other.safetensors"
    save_checkpoint(target, tensors, meta)
    with pytest.raises(CheckpointError, match="spaces"):
        PPO.load(target)


class _Planted:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_planted_pickle_is_refused_and_not_executed(tmp_path, how):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    planted = run_dir / "checkpoints" / "update_000001.safetensors"
    if how == "pickle":
        planted.write_bytes(pickle.dumps(_Planted(marker)))
    else:
        torch.save({"model": _Planted(marker)}, planted)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not a valid ppo checkpoint"):
        PPO.load(run_dir)
    with pytest.raises(CheckpointError):
        load_checkpoint(planted)
    assert not marker.exists()


def test_checkpoint_for_other_spaces_is_refused(trained):
    _, run_dir = trained
    path = latest_checkpoint(run_dir)
    with pytest.raises(CheckpointError, match="spaces"):
        PPO.load(path, env=gym.make("Acrobot-v1"), num_envs=1)
    with pytest.raises(CheckpointError, match="spaces"):
        PPO.load(path, env_id="MountainCar-v0")


def test_missing_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="not a run directory"):
        PPO.resume(tmp_path / "empty")


def test_checkpoint_files_are_safetensors_with_json_meta(trained):
    _, run_dir = trained
    from safetensors import safe_open

    with safe_open(str(latest_checkpoint(run_dir)), framework="pt") as f:
        keys = set(f.keys())
        header = f.metadata()
    assert header["format"] == "ppo-checkpoint/1"
    assert any(k.startswith("model.") for k in keys)
    assert any(k.startswith("optim.") for k in keys)
    assert {"rng.torch", "obs_norm.mean", "reward_norm.var"} <= keys


def test_sigint_finishes_the_update_and_checkpoints(tmp_path, monkeypatch):
    agent = PPO(_cfg(tmp_path, total_timesteps=10 * 128, checkpoint_every=100), verbose=False)
    real = agent.iteration

    def iteration():
        row = real()
        if row["update"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return row

    monkeypatch.setattr(agent, "iteration", iteration)
    # Whatever handler was there before (a background job inherits SIG_IGN) comes back.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as info:
        agent.learn()
    assert info.value.signum == signal.SIGINT
    assert latest_checkpoint(tmp_path / "run") == checkpoint_path(tmp_path / "run", 2)
    assert len(_rows(tmp_path / "run")) == 2
    assert signal.getsignal(signal.SIGINT) is before
