"""Config: the standard defaults, validation naming the bad value, TOML round trips."""

import dataclasses
import os

import pytest
import tomli_w

from ppo.config import GROUPS, Config, ConfigError, flag_name, from_dict, load_toml, to_flags


def test_defaults_are_the_standard_setup():
    cfg = Config()
    assert cfg.env_id == "LunarLander-v3"
    assert cfg.clip_eps == 0.2
    assert cfg.gamma == 0.99
    assert cfg.gae_lambda == 0.95
    assert cfg.epochs == 4
    assert cfg.lr == 3e-4
    assert cfg.rollout_steps == 2048
    assert cfg.minibatch_size == 64
    assert cfg.vf_coef == 0.5
    assert cfg.ent_coef == 0.01
    assert cfg.max_grad_norm == 0.5
    assert cfg.norm_adv == "batch"
    assert cfg.num_envs == 1
    assert cfg.target_kl is None
    assert cfg.anneal_lr is False
    assert cfg.hidden_sizes == [64, 64]
    assert cfg.device == "cpu"
    cfg.validate()


def test_every_field_has_help():
    for f in dataclasses.fields(Config):
        assert f.metadata.get("help"), f.name


def test_batch_size_and_updates():
    cfg = Config(rollout_steps=128, num_envs=4, total_timesteps=10_000)
    assert cfg.batch_size == 512
    assert cfg.num_updates == 19
    assert Config(rollout_steps=128, total_timesteps=10).num_updates == 1


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"clip_eps": 0.0}, "clip_eps"),
        ({"clip_eps": -0.2}, "clip_eps"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"gamma": 1.01}, "gamma"),
        ({"gamma": -0.1}, "gamma"),
        ({"gae_lambda": 1.5}, "gae_lambda"),
        ({"gae_lambda": -0.01}, "gae_lambda"),
        ({"minibatch_size": 129, "rollout_steps": 128}, "minibatch_size"),
        ({"minibatch_size": 0}, "minibatch_size"),
        ({"rollout_steps": 0}, "rollout_steps"),
        ({"num_envs": 0}, "num_envs"),
        ({"target_kl": 0.0}, "target_kl"),
        ({"vf_coef": -1.0}, "vf_coef"),
        ({"max_grad_norm": -0.5}, "max_grad_norm"),
        ({"norm_adv": "sometimes"}, "norm_adv"),
        ({"vector": "threads"}, "vector"),
        ({"device": "tpu"}, "device"),
        ({"hidden_sizes": [64, 0]}, "hidden_sizes"),
    ],
)
def test_bad_values_are_named(changes, named):
    with pytest.raises(ConfigError, match=named):
        Config(**changes).validate()
    with pytest.raises(ConfigError, match=named):
        from_dict(changes)


def test_boundary_values_are_accepted():
    Config(gamma=0.0, gae_lambda=0.0).validate()
    Config(gamma=1.0, gae_lambda=1.0).validate()
    Config(rollout_steps=64, minibatch_size=64).validate()
    Config(rollout_steps=16, num_envs=4, minibatch_size=64).validate()  # batch is T * N


def test_minibatch_error_mentions_the_rollout():
    with pytest.raises(ConfigError, match=r"128 steps x 2 envs = 256"):
        Config(rollout_steps=128, num_envs=2, minibatch_size=512).validate()


def test_unknown_keys_are_all_named():
    with pytest.raises(ConfigError, match="unknown config key") as info:
        from_dict({"clip_eps": 0.1, "bogus": 1, "also_wrong": 2})
    assert "also_wrong" in str(info.value) and "bogus" in str(info.value)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"epochs": "4"}, "epochs"),
        ({"epochs": 4.5}, "epochs"),
        ({"anneal_lr": 1}, "anneal_lr"),
        ({"lr": True}, "lr"),
        ({"hidden_sizes": [64, "x"]}, "hidden_sizes"),
        ({"hidden_sizes": 64}, "hidden_sizes"),
        ({"env_id": 3}, "env_id"),
    ],
)
def test_wrong_types_are_named(values, named):
    with pytest.raises(ConfigError, match=named):
        from_dict(values)


def test_ints_coerce_to_float_fields():
    cfg = from_dict({"lr": 1, "target_kl": 1})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert isinstance(cfg.target_kl, float)


def test_toml_round_trip(tmp_path):
    cfg = Config(env_id="CartPole-v1", seed=7, hidden_sizes=[32, 16], target_kl=0.015,
                 norm_adv="minibatch", anneal_lr=True)
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps(cfg.to_dict()))
    assert from_dict(load_toml(path)) == cfg


def test_to_dict_drops_unset_and_replace_validates():
    cfg = Config()
    assert "target_kl" not in cfg.to_dict() and "run_dir" not in cfg.to_dict()
    assert cfg.replace(epochs=10).epochs == 10
    assert cfg.epochs == 4
    with pytest.raises(ConfigError, match="epochs"):
        cfg.replace(epochs=0)


def test_load_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)


def test_every_field_is_in_a_help_group():
    for f in dataclasses.fields(Config):
        assert f.metadata["group"] in GROUPS, f.name


def test_flags_of_config_values():
    assert flag_name("env_id") == "--env" and flag_name("clip_eps") == "--clip-eps"
    assert to_flags({"env_id": "CartPole-v1", "clip_value": False, "anneal_lr": True,
                     "hidden_sizes": [32, 16], "lr": 1e-3, "target_kl": None}) == [
        "--env", "CartPole-v1", "--no-clip-value", "--anneal-lr", "--hidden-sizes", "32,16",
        "--lr", "0.001"]


def test_flags_parse_back_to_the_same_config(monkeypatch):
    """Every field of a config written as flags and read by `ppo train` gives it back."""
    from click.testing import CliRunner

    import ppo.agent
    from ppo.cli import main

    cfg = Config(env_id="CartPole-v1", hidden_sizes=[8], clip_value=False, target_kl=0.02,
                 lr=1.5e-4, rollout_steps=32, minibatch_size=16, tensorboard=False,
                 wandb_group="g", run_dir="unused")
    seen = []

    def capture(config, verbose):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(ppo.agent, "PPO", capture)
    result = CliRunner().invoke(main, ["train", *to_flags(cfg.to_dict())])
    assert result.exit_code == 0 and seen == [cfg]


# ---------------------------------------------------------------- hostile values
@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"lr": float("inf")}, "lr"), ({"lr": float("nan")}, "lr"), ({"lr": 1.5}, "lr"),
        ({"ent_coef": float("nan")}, "ent_coef"), ({"ent_coef": float("inf")}, "ent_coef"),
        ({"vf_coef": float("inf")}, "vf_coef"), ({"max_grad_norm": float("nan")}, "max_grad_norm"),
        ({"max_grad_norm": float("inf")}, "max_grad_norm"),
        ({"target_kl": float("inf")}, "target_kl"), ({"clip_eps": float("inf")}, "clip_eps"),
        ({"init_log_std": 1e6}, "init_log_std"), ({"dist_timeout": 1e300}, "dist_timeout"),
        ({"obs_clip": float("nan")}, "obs_clip"), ({"adam_eps": 2.0}, "adam_eps"),
        ({"seed": -1}, "seed"), ({"seed": 2**63}, "seed"), ({"seed": 2**64}, "seed"),
        ({"threads": 100_000}, "threads"), ({"num_envs": 10**9}, "num_envs"),
        ({"total_timesteps": 10**30}, "total_timesteps"), ({"epochs": 10**12}, "epochs"),
        ({"checkpoint_every": 10**30}, "checkpoint_every"),
        ({"line_search_steps": 100_000}, "line_search_steps"),
        ({"hidden_sizes": [100_000_000]}, "hidden_sizes"),
        ({"hidden_sizes": [64] * 5000}, "hidden_sizes"),
        ({"device": "cuda:x"}, "device"), ({"device": "cuda:0; rm"}, "device"),
        ({"env_id": ""}, "env_id"), ({"env_id": "a\0b"}, "env_id"),
        ({"run_dir": ""}, "run_dir"), ({"run_dir": "runs/a\0b"}, "run_dir"),
    ],
)
def test_values_no_run_can_use_are_named(changes, named):
    with pytest.raises(ConfigError, match=named):
        Config(**changes).validate()
    with pytest.raises(ConfigError, match=named):
        from_dict(changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": "0.1"}, "lr must be a number, got '0.1' (str)"),
        ({"gamma": "0.99"}, "gamma must be a number"),
        ({"epochs": 4.0}, "epochs must be an integer, got 4.0 (float)"),
        ({"num_envs": True}, "num_envs must be an integer, got True (bool)"),
        ({"hidden_sizes": "64,64"}, "hidden_sizes must be a list of integers, got '64,64'"),
        ({"hidden_sizes": [1e8]}, "hidden_sizes must be a list of integers"),
        ({"hidden_sizes": (64, "a")}, "hidden_sizes must be a list of integers"),
        ({"env_id": None}, "env_id must be a string, got None"),
        ({"run_dir": 3}, "run_dir must be a string or unset, got 3 (int)"),
        ({"anneal_lr": "yes"}, "anneal_lr must be true or false"),
        ({"target_kl": "x"}, "target_kl must be a number or unset"),
    ],
)
def test_wrong_types_are_config_errors_in_validate(changes, message):
    """The Python API, not only files: no TypeError from a comparison deep inside."""
    with pytest.raises(ConfigError) as info:
        Config(**changes).validate()
    assert message in str(info.value)


def test_numbers_are_coerced_to_the_declared_types():
    import numpy as np

    cfg = Config(lr=1, seed=np.int64(3), gamma=np.float32(0.5), hidden_sizes=(32, np.int64(16)),
                 target_kl=1).validate()
    assert (cfg.lr, cfg.seed, cfg.gamma, cfg.hidden_sizes, cfg.target_kl) == (
        1.0, 3, 0.5, [32, 16], 1.0)
    assert type(cfg.lr) is float and type(cfg.seed) is int and type(cfg.gamma) is float
    assert all(type(h) is int for h in cfg.hidden_sizes)


def test_range_edges_are_accepted():
    Config(seed=2**63 - 1, lr=1.0, max_grad_norm=0.0, ent_coef=0.0, clip_eps=1000.0,
           init_log_std=-20.0, threads=512, num_envs=4096, vector="async").validate()
    Config(device="cuda:1", learner="torch").validate()


def test_from_dict_refuses_a_config_that_is_not_a_table():
    with pytest.raises(ConfigError, match="a config is a table of settings, got list"):
        from_dict([1, 2])


# ---------------------------------------------------------------- memory
def test_memory_estimate_counts_networks_rollouts_and_workers():
    from ppo.config import ASYNC_WORKER_BYTES, BYTES_PER_PARAMETER, estimate_memory

    cfg = Config(hidden_sizes=[10, 20], rollout_steps=100, num_envs=2, minibatch_size=10)
    shared = estimate_memory(cfg, obs_width=3, action_width=4)
    # trunk 3->10->20, policy and value heads 20->4+1, and a log std of 4
    params = (3 + 1) * 10 + (10 + 1) * 20 + (20 + 1) * 5 + 4
    assert shared.network == params * BYTES_PER_PARAMETER
    assert shared.rollout == 200 * (12 * 3 + 8 * 4 + 128 + 8 * 30)
    assert shared.workers == 0
    separate = estimate_memory(cfg.replace(shared_trunk=False, vector="async"), 3, 4)
    assert separate.network == (params + (3 + 1) * 10 + (10 + 1) * 20) * BYTES_PER_PARAMETER
    assert separate.workers == min(2, len(os.sched_getaffinity(0))) * ASYNC_WORKER_BYTES
    assert separate.total == separate.network + separate.rollout + separate.workers


def test_memory_check_refuses_before_allocating():
    from ppo.config import available_memory, check_memory

    huge = Config(hidden_sizes=[100_000, 100_000])
    with pytest.raises(ConfigError, match=r"needs about 323\.\d GB of memory .* more than the "
                                          r"1\.0 GB available: lower hidden_sizes"):
        check_memory(huge, 1, 1, available=10**9)
    assert check_memory(Config(), 8, 4, available=10**9).total < 10**8
    available = available_memory()
    assert available is None or available > 0
    with pytest.raises(ConfigError, match="memory"):
        check_memory(Config(rollout_steps=10**8, num_envs=4096, minibatch_size=64), 1, 1)


# ---------------------------------------------------------------- files
def test_only_regular_files_of_bounded_size_are_read(tmp_path):
    import os

    from ppo.config import read_regular_file

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    for path, message in [
        (fifo, "is a FIFO, not a regular file"),
        ("/dev/zero", "is a character device, not a regular file"),
        (tmp_path, "is a directory, not a regular file"),
        (tmp_path / "missing.toml", "config file not found"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_toml(path)
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(3 << 30)  # sparse: nothing is read
    with pytest.raises(ConfigError, match="is 3,221,225,472 bytes, more than the 1,048,576"):
        load_toml(big)
    link = tmp_path / "link.toml"
    link.symlink_to("/dev/urandom")
    with pytest.raises(ConfigError, match="character device"):
        load_toml(link)
    ok = tmp_path / "ok.bin"
    ok.write_bytes(b"12345")
    assert read_regular_file(ok, "thing", 5) == b"12345"
    with pytest.raises(RuntimeError, match="thing .* is 5 bytes, more than the 4 a thing may have"):
        read_regular_file(ok, "thing", 4, RuntimeError)


def test_config_file_not_utf8_is_named(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('env_id = "Caf\xe9-v0"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"config file {bad} is not UTF-8 text"):
        load_toml(bad)
