"""An env in any form Gymnasium users hold one: an id, a made env, wrappers, an env
object, a callable, a vector env; for training, resuming, loading and evaluating."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control import CartPoleEnv

import pglab
from pglab.checkpoint import load_checkpoint, save_checkpoint
from pglab.cli import main
from pglab.errors import ConfigError, EnvError

SHORT = {"total_steps": 1024, "progress": "off", "eval_episodes": 2, "checkpoint_every": 0}


def _cut_short(run, steps=2048):
    """Make the finished ``run`` one that stopped before its budget (now ``steps``)."""
    path = run.path / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    state["config"]["run"]["total_steps"] = steps
    save_checkpoint(path, state)


TIME_AWARE = "gymnasium.wrappers.TimeAwareObservation"


def test_an_env_made_by_gymnasium_is_an_ordinary_run(tmp_path):
    run = pglab.train(gym.make("CartPole-v1"), "ppo", out=str(tmp_path), **SHORT)
    env = run.agent.config.env
    assert env.id == "CartPole-v1" and env.object == "" and env.wrappers == []
    assert run.summary["preset"] != "none"  # the id's tuned preset applies
    assert pglab.load(run.path).observation_space.shape == (4,)


def test_a_made_env_keeps_its_kwargs_and_wrappers(tmp_path):
    made = gym.wrappers.TimeAwareObservation(gym.make("CartPole-v1", max_episode_steps=50))
    run = pglab.train(made, "a2c", out=str(tmp_path), **SHORT)
    env = run.agent.config.env
    assert env.max_episode_steps == 50
    assert [w["name"].rsplit(":", 1)[-1] for w in env.wrappers] == ["TimeAwareObservation"]
    assert run.agent.observation_space.shape == (5,)  # the time is part of the observation
    _cut_short(run)
    resumed = pglab.resume(run.path)  # from the folder alone
    assert resumed.summary["total_steps"] >= 2048
    assert pglab.evaluate(pglab.load(run.path), episodes=2).mean <= 50


def test_wrappers_by_name_from_the_api_and_the_command_line(tmp_path, capsys):
    run = pglab.train("CartPole-v1", "ppo", wrappers=[TIME_AWARE], out=str(tmp_path), **SHORT)
    assert run.agent.observation_space.shape == (5,)
    table = f'{{name = "{TIME_AWARE}", kwargs = {{normalize_time = true}}}}'
    code = main(
        ["train", "--env", "CartPole-v1", "--algo", "reinforce", "--steps", "1000",
         "--set", f"env.wrappers=[{table}]", "--out", str(tmp_path / "cli"), "--set", "progress=off"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    [written] = [p.read_text() for p in (tmp_path / "cli").glob("*/*/config.toml")]
    assert "TimeAwareObservation" in written and "normalize_time = true" in written


@pytest.mark.parametrize(
    "value",
    [
        3,
        ["not a path"],
        [{"name": TIME_AWARE, "kwargs": 3}],
        [{"kwargs": {}}],
        [{"name": "x.Y", "z": 1}],
    ],
)
def test_malformed_wrappers_are_one_config_error(value):
    with pytest.raises(ConfigError, match="env.wrappers"):
        pglab.train("CartPole-v1", "ppo", wrappers=value, **SHORT)


def test_a_wrapper_that_is_not_one_is_named(tmp_path):
    with pytest.raises(EnvError, match="gymnasium.spaces.Box.*not a gymnasium.Wrapper"):
        pglab.train(
            "CartPole-v1", "ppo", wrappers=["gymnasium.spaces.Box"], out=str(tmp_path), **SHORT
        )


def test_a_wrapper_named_only_in_a_file_is_not_imported(tmp_path):
    run = pglab.train("CartPole-v1", "ppo", wrappers=[TIME_AWARE], out=str(tmp_path), **SHORT)
    path = run.path / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    state["config"]["env"]["wrappers"] = [{"name": "evil_module.Wrap", "kwargs": {}}]
    save_checkpoint(path, state)
    with pytest.raises(EnvError, match="--allow-import evil_module"):
        pglab.load(run.path)


def test_an_env_object_trains_and_needs_passing_again_to_resume(tmp_path):
    env = CartPoleEnv()  # not made by gymnasium.make: no spec
    run = pglab.train(env, "ppo", out=str(tmp_path), preset="none", **SHORT)
    config = run.agent.config.env
    assert config.id == "CartPoleEnv" and "CartPoleEnv" in config.object
    assert pglab.load(run.path).action_space == gym.spaces.Discrete(2)  # no env needed
    with pytest.raises(EnvError, match="Python object"):
        pglab.resume(run.path)
    with pytest.raises(EnvError, match="Python object"):
        pglab.evaluate(pglab.load(run.path))
    assert pglab.evaluate(run.agent, CartPoleEnv(), episodes=2).mean > 0


def test_a_callable_makes_every_copy_and_gets_the_ids_preset(tmp_path):
    made = []

    def make():
        made.append(1)
        return gym.make("CartPole-v1")

    run = pglab.train(make, "ppo", out=str(tmp_path), **SHORT)
    assert run.agent.config.env.id == "CartPole-v1" and run.summary["preset"] != "none"
    assert len(made) >= run.agent.config.env.num_envs + 1  # training and evaluation copies
    _cut_short(run)
    resumed = pglab.resume(run.path, env=make)
    assert resumed.summary["total_steps"] >= 2048


def test_a_vector_env_trains_as_it_is_and_stays_open(tmp_path):
    envs = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    run = pglab.train(envs, "ppo", out=str(tmp_path), preset="none", batch_size=256, **SHORT)
    assert run.agent.config.env.num_envs == 4
    envs.reset(seed=0)
    envs.step(np.zeros(4, dtype=np.int64))  # pglab did not close it
    with pytest.raises(ConfigError, match="serves one run"):
        pglab.train(envs, "ppo", seeds=[0, 1], out=str(tmp_path), **SHORT)
    with pytest.raises(ConfigError, match="num_envs"):
        pglab.train(envs, "ppo", num_envs=8, out=str(tmp_path), **SHORT)
    envs.close()


def test_evaluate_takes_every_env_form(tmp_path):
    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), **SHORT)
    for env in ("CartPole-v1", gym.make("CartPole-v1"), lambda: gym.make("CartPole-v1")):
        assert pglab.evaluate(run.agent, env, episodes=2).mean > 0
    with pytest.raises(EnvError, match="observation space"):
        pglab.evaluate(run.agent, "Acrobot-v1", episodes=1)


def test_what_is_not_an_env_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match="env must be"):
        pglab.train(42, "ppo", out=str(tmp_path), **SHORT)
    with pytest.raises(EnvError, match="must return a gymnasium.Env"):
        pglab.train(lambda: 42, "ppo", out=str(tmp_path), **SHORT)
    with pytest.raises(ConfigError, match="jobs must be 1"):
        pglab.train(CartPoleEnv(), "ppo", seeds=[0, 1], jobs=2, out=str(tmp_path), **SHORT)
