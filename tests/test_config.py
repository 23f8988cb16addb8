"""Every validation rule answers with one line naming the option, the rule and the value."""

import pytest

from pglab.config import Config, build_config, parse_override
from pglab.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("lr=-0.01", ["algo.lr", "> 0", "-0.01"]),
        ("value_lr=0", ["algo.value_lr", "> 0", "0"]),
        ("gamma=1.5", ["algo.gamma", "[0, 1]", "1.5"]),
        ("lam=-0.1", ["algo.lam", "[0, 1]", "-0.1"]),
        ("weights=xyz", ["algo.weights", "r, fr, dfr, dfrb, td, gae", "xyz"]),
        ("algo.name=nope", ["algo.name", "reinforce", "nope"]),
        ("optimizer=lbfgs", ["algo.optimizer", "adam", "lbfgs"]),
        ("seed=-1", ["run.seed", "[0, 4294967295]", "-1"]),
        ("seed=1.5", ["run.seed", "integer", "1.5"]),
        ("total_steps=0", ["run.total_steps", ">= 1", "0"]),
        ("hidden=[8, -1]", ["policy.hidden", "positive integers", "-1"]),
        ("hidden=8", ["policy.hidden", "list", "8"]),
        ("dropout=1.0", ["policy.dropout", "[0, 1)", "1.0"]),
        ("activation=swishy", ["policy.activation", "tanh", "swishy"]),
        ("normalize_weights=3", ["algo.normalize_weights", "true or false", "3"]),
        ("stop_at_return=soon", ["run.stop_at_return", "auto", "soon"]),
        ("batch_mode=weekly", ["algo.batch_mode", "episodes", "weekly"]),
        ("eval_episodes=0", ["run.eval_episodes", ">= 1", "0"]),
        ("kwargs=3", ["env.kwargs", "table", "3"]),
        ("lr=nan", ["algo.lr", "> 0", "nan"]),
    ],
)
def test_bad_values_get_one_clear_line(override, words):
    with pytest.raises(ConfigError) as error:
        build_config(overrides=[override])
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_and_ambiguous_keys():
    with pytest.raises(ConfigError, match="unknown option 'lrr'.*did you mean lr"):
        build_config(overrides=["lrr=0.1"])
    with pytest.raises(ConfigError, match="ambiguous.*algo.name, run.name"):
        build_config(overrides=["name=x"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lr")


def test_toml_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'lr = 0.02\n[policy]\nhidden = [8]\n[algo]\nname = "reinforce"\nweights = "fr"\n'
    )
    config = build_config(path, overrides=["lr=0.05"])
    assert config.policy.hidden == [8] and config.algo.weights == "fr"
    assert config.algo.lr == 0.05  # --set beats the file


def test_presets_layer_under_the_users_values(tmp_path):
    config = build_config(flags={"env.id": "CartPole-v1", "algo.name": "ppo"})
    assert config.run.preset == "ppo/CartPole-v1"
    assert config.algo.epochs == 5 and config.policy.ortho_init  # preset, algo defaults
    mine = build_config(flags={"algo.name": "ppo"}, overrides=["epochs=3"])
    assert mine.algo.epochs == 3 and mine.algo.gamma == 0.98
    bare = build_config(flags={"algo.name": "ppo", "run.preset": "none"})
    assert bare.run.preset == "none" and bare.algo.epochs == 10  # PPO's own defaults
    borrowed = build_config(flags={"env.id": "Acrobot-v1", "run.preset": "ppo/CartPole-v1"})
    assert borrowed.env.id == "Acrobot-v1" and borrowed.algo.gamma == 0.98
    with pytest.raises(
        ConfigError, match="run.preset must be auto, none or one of .*ppo/CartPole-v1"
    ):
        build_config(flags={"run.preset": "ppo/NoSuchEnv-v0"})
    with pytest.raises(ConfigError, match="algo.weights must be gae for ppo.*--algo reinforce"):
        build_config(overrides=["weights=fr"])
    with pytest.raises(ConfigError, match="policy.shared must be false for trpo"):
        build_config(overrides=["algo=trpo", "shared=true"])


def test_toml_file_errors(tmp_path):
    bad_key = tmp_path / "a.toml"
    bad_key.write_text("[algo]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match="unknown option 'algo.learning_rate' in .*a.toml"):
        build_config(bad_key)
    bad_type = tmp_path / "b.toml"
    bad_type.write_text('[run]\nseed = "three"\n')
    with pytest.raises(ConfigError, match="run.seed must be an integer; got 'three'"):
        build_config(bad_type)
    broken = tmp_path / "c.toml"
    broken.write_text("[algo\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(tmp_path / "missing.toml")


def test_resolve_fills_auto_values_and_round_trips():
    config = build_config(overrides=["algo=reinforce", "weights=fr"]).resolve(475.0)
    assert config.algo.batch_mode == "episodes" and config.algo.batch_size == 20
    assert config.run.stop_at_return == 475.0 and config.run.group == "CartPole-v1"
    critic = build_config(overrides=["algo=reinforce", "weights=gae"]).resolve(None)
    assert critic.algo.batch_mode == "steps" and critic.run.stop_at_return == "none"
    assert Config.from_dict(config.to_dict()) == config


def test_override_values_are_read_as_toml():
    assert parse_override("policy.hidden=[8]") == ("policy.hidden", [8])
    assert parse_override("lr=1e-3") == ("algo.lr", 0.001)
    assert parse_override("weights=gae") == ("algo.weights", "gae")
    assert parse_override("normalize_weights=false") == ("algo.normalize_weights", False)
    assert build_config(overrides=["total_steps=2e5"]).run.total_steps == 200_000


def test_every_shipped_preset_is_valid():
    from pglab.config import available_presets, load_toml, preset_path

    names = available_presets()
    assert {
        "ppo/CartPole-v1",
        "ppo/Pendulum-v1",
        "ppo/HalfCheetah-v5",
        "reinforce/ALE/Pong-v5",
    } <= set(names)
    for name in names:
        algo = name.split("/", 1)[0]
        env = load_toml(preset_path(name)).get("env", {})
        env_id = env.get("id", name.split("/", 1)[1])
        flags = {"algo.name": algo, "env.id": env_id, "env.kwargs": env.get("kwargs", {})}
        assert build_config(flags=flags).run.preset == name
