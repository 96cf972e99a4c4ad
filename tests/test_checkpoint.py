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
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ppo.checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left on device") as info:
        write_atomic(path, b"new contents")
    assert info.value.filename == str(path)  # the error names the file it could not write
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


# ---------------------------------------------------------------- checksum-valid but hostile
def _resave(trained, tmp_path, edit):
    """The latest checkpoint, edited and saved again with valid checksums."""
    _, run_dir = trained
    tensors, meta = load_checkpoint(latest_checkpoint(run_dir))
    edit(tensors, meta)
    target = tmp_path / "update_000003.safetensors"
    save_checkpoint(target, tensors, meta)
    return target


def test_header_without_the_meta_checksum_is_refused(trained, tmp_path):
    """No unauthenticated older-format path: metadata without its checksum may be edited."""
    import hashlib
    import json

    from safetensors.torch import save

    _, run_dir = trained
    tensors, meta = load_checkpoint(latest_checkpoint(run_dir))
    meta["update"] = 7
    target = tmp_path / "old.safetensors"
    target.write_bytes(save(tensors, metadata={
        "format": "ppo-checkpoint/1", "sha256": ppo.checkpoint._digest(tensors),
        "meta": json.dumps(meta)}))
    with pytest.raises(CheckpointError, match=f"{target} is refused: its header lacks "
                                              "meta_sha256"):
        load_checkpoint(target)
    meta_json = json.dumps(meta)
    target.write_bytes(save(tensors, metadata={
        "format": "ppo-checkpoint/1", "sha256": ppo.checkpoint._digest(tensors),
        "meta": meta_json, "meta_sha256": hashlib.sha256(meta_json.encode()).hexdigest(),
        "exec": "os.system('x')"}))
    with pytest.raises(CheckpointError, match="header has unknown keys exec"):
        load_checkpoint(target)


@pytest.mark.parametrize(("name", "value"), [("model.actor.0.weight", float("nan")),
                                             ("optim.0.exp_avg_sq", float("inf")),
                                             ("obs_norm.var", float("-inf"))])
def test_non_finite_tensors_are_refused(trained, tmp_path, name, value):
    target = _resave(trained, tmp_path, lambda t, m: t[name].view(-1)[0].fill_(value))
    with pytest.raises(CheckpointError, match=f"{target} holds non-finite values .* in {name}"):
        load_checkpoint(target)


def test_metadata_that_is_not_an_object_is_refused(trained, tmp_path):
    import hashlib

    from safetensors.torch import save

    _, run_dir = trained
    tensors, _ = load_checkpoint(latest_checkpoint(run_dir))
    target = tmp_path / "list.safetensors"
    target.write_bytes(save(tensors, metadata={
        "format": "ppo-checkpoint/1", "sha256": ppo.checkpoint._digest(tensors),
        "meta": "[1, 2]", "meta_sha256": hashlib.sha256(b"[1, 2]").hexdigest()}))
    with pytest.raises(CheckpointError, match="its metadata is a JSON list, not an object"):
        load_checkpoint(target)


def _expected(agent):
    from ppo.checkpoint import adam_specs, specs_of

    tensors, _ = ppo.checkpoint.agent_state(agent)
    fixed = {k: v for k, v in specs_of(tensors).items()
             if not k.startswith(("optim.", "collector."))}
    return fixed, [adam_specs(agent.learner.optimizer)]


STRUCTURE = [
    ("meta lacks spaces", lambda t, m: m.pop("spaces"), "the metadata lacks spaces"),
    ("meta has an extra key", lambda t, m: m.update(evil=1), "unexpected key(s) evil"),
    ("update is a string", lambda t, m: m.update(update="3"), "update must be an integer"),
    ("update is a bool", lambda t, m: m.update(update=True), "update must be an integer"),
    ("negative episodes", lambda t, m: m.update(episodes=-5), "episodes must be an integer >= 0"),
    ("NaN lr", lambda t, m: m.update(lr=float("nan")), "lr must be a finite number"),
    ("rng state garbage", lambda t, m: m["rng"].update(action={"x": 1}), "rng.action lacks"),
    ("rng of another generator", lambda t, m: m["rng"]["shuffle"].update(bit_generator="MT19937"),
     "rng.shuffle.bit_generator must be 'PCG64'"),
    ("recent episodes garbage", lambda t, m: m.update(recent_episodes=[["a"]]),
     "recent_episodes[0] has 1 items, not 2"),
    ("config is a list", lambda t, m: m.update(config=[1]), "config is a list, not an object"),
    ("an extra tensor", lambda t, m: t.update({"model.extra": torch.zeros(3)}),
     "unexpected tensor(s) model.extra"),
    ("a missing tensor", lambda t, m: t.pop("rng.torch"), "lacks tensor rng.torch"),
    ("float64 weights", lambda t, m: t.update({"model.value_head.bias": torch.zeros(1).double()}),
     "tensor model.value_head.bias is float64 [1], expected float32 [1]"),
    ("a wrong shape", lambda t, m: t.update({"model.value_head.bias": torch.zeros(3)}),
     "is float32 [3], expected float32 [1]"),
    ("part of Adam's state", lambda t, m: t.pop("optim.2.exp_avg"), "lacks tensor optim.2"),
    ("an Adam step vector", lambda t, m: t.update({"optim.0.step": torch.zeros(5)}),
     "optim.0.step is float32 [5], expected float32 []"),
    ("rng.torch too short", lambda t, m: t.update({"rng.torch": torch.zeros(3, dtype=torch.uint8)}),
     "rng.torch is uint8 [3]"),
]


@pytest.mark.parametrize(("edit", "message"), [s[1:] for s in STRUCTURE],
                         ids=[s[0] for s in STRUCTURE])
def test_structure_problems_name_the_file(trained, tmp_path, edit, message):
    from ppo.checkpoint import check_checkpoint

    agent, _ = trained
    target = _resave(trained, tmp_path, edit)
    tensors, meta = load_checkpoint(target)
    expected, optional = _expected(agent)
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(tensors, meta, target, expected, optional, ("collector.",))
    assert str(info.value).startswith(f"{target} does not fit this agent: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_intact_checkpoint_fits_its_agent(trained):
    from ppo.checkpoint import check_checkpoint, check_meta

    agent, run_dir = trained
    tensors, meta = load_checkpoint(latest_checkpoint(run_dir))
    expected, optional = _expected(agent)
    check_checkpoint(tensors, meta, latest_checkpoint(run_dir), expected, optional,
                     ("collector.",))
    check_meta(meta, latest_checkpoint(run_dir))
    # Before its first step Adam holds no state; the checkpoint may lack the whole group.
    fresh = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
    check_checkpoint(fresh, meta, latest_checkpoint(run_dir), expected, optional,
                     ("collector.",))


def test_stored_config_is_checked_and_names_the_file(trained, tmp_path):
    from ppo.checkpoint import check_meta

    target = _resave(trained, tmp_path, lambda t, m: m["config"].update(lr="0.1"))
    _, meta = load_checkpoint(target)
    with pytest.raises(CheckpointError, match=f"{target} holds an invalid config: lr must be a "
                                              "number"):
        check_meta(meta, target)


# ---------------------------------------------------------------- the newest valid checkpoint
def test_newest_valid_checkpoint_falls_back_and_says_why(trained, tmp_path):
    import shutil

    from ppo.checkpoint import check_meta, newest_valid_checkpoint

    _, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    found = newest_valid_checkpoint(copy)
    assert (found.path.name, found.meta["update"], found.skipped) == (
        "update_000003.safetensors", 3, [])
    newest = checkpoint_path(copy, 3)
    newest.write_bytes(newest.read_bytes()[:-10])
    shutil.copy(checkpoint_path(copy, 2), checkpoint_path(copy, 9))  # renamed: update 2 inside
    os.mkfifo(checkpoint_path(copy, 11))
    found = newest_valid_checkpoint(copy, check=lambda t, m, p: check_meta(m, p))
    assert found.path == checkpoint_path(copy, 2)
    assert [s.split(":")[0] for s in found.skipped] == [
        "update_000011.safetensors", "update_000009.safetensors", "update_000003.safetensors"]
    assert "is a FIFO" in found.skipped[0]
    assert "named for update 9 but holds update 2" in found.skipped[1]
    for path in (checkpoint_path(copy, 2), checkpoint_path(copy, 9)):
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"no valid checkpoint in {copy}: "
                                              "update_000011.safetensors: it is a FIFO"):
        newest_valid_checkpoint(copy)


# ---------------------------------------------------------------- one writer per run directory
HOLD_LOCK = """
import sys, time
from ppo.checkpoint import run_dir_lock
with run_dir_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(run_dir):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_writer_is_refused_until_the_first_dies(tmp_path):
    from ppo.checkpoint import RunDirError, run_dir_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = _holder(run_dir)
    try:
        busy = f"run directory {run_dir} is in use by another process \\(pid {holder.pid}\\)"
        with pytest.raises(RunDirError, match=busy), run_dir_lock(run_dir):
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup, the OS releases the lock
        holder.wait()
    assert (run_dir / ".lock").exists()  # left behind, and harmless
    with run_dir_lock(run_dir):
        assert (run_dir / ".lock").read_text() == f"{os.getpid()}\n"
    assert not (run_dir / ".lock").exists()


def test_the_lock_is_reentrant_in_its_thread_only(tmp_path):
    import threading

    from ppo.checkpoint import RunDirError, run_dir_lock

    errors = []

    def other_thread():
        try:
            with run_dir_lock(tmp_path / "run"):
                pass
        except RunDirError as e:
            errors.append(str(e))

    with run_dir_lock(tmp_path / "run", create=True):
        with run_dir_lock(tmp_path / "run"):  # the CLI holds it around the agent, which takes it
            pass
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert (tmp_path / "run" / ".lock").exists()
    assert len(errors) == 1 and "in use by another process" in errors[0]
    assert os.listdir(tmp_path / "run") == []


def test_a_planted_lock_file_never_redirects_writes(tmp_path):
    from ppo.checkpoint import RunDirError, run_dir_lock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(victim)
    with pytest.raises(RunDirError, match="cannot lock run directory"), run_dir_lock(run_dir):
        pass
    (run_dir / ".lock").unlink()
    os.link(victim, run_dir / ".lock")
    with pytest.raises(RunDirError, match="is not a plain file"), run_dir_lock(run_dir):
        pass
    assert victim.read_text() == "precious"
    with pytest.raises(RunDirError, match="is not a directory"), run_dir_lock(victim):
        pass


def test_run_files_make_a_run(tmp_path):
    from ppo.checkpoint import run_files

    assert run_files(tmp_path / "missing") == []
    assert run_files(tmp_path) == []
    (tmp_path / ".lock").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert run_files(tmp_path) == []
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "metrics.csv").write_text("")
    assert run_files(tmp_path) == ["metrics.csv", "tensorboard"]
