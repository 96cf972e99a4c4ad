"""Config: the seed's defaults, validation naming the bad value, TOML round trips."""

import dataclasses

import pytest
import tomli_w

from ppo.config import GROUPS, Config, ConfigError, flag_name, from_dict, load_toml, to_flags


def test_defaults_are_the_seed_standard_setup():
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
