"""Broken environments end in one clear error, never a hang, a traceback or a wrong culprit.

The envs live in ``tests/faulty_envs.py`` and are made by ``faulty_envs:Class`` ids.
"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import SyncVectorEnv

import pglab
from faulty_envs import FAULTS, NeverEnds
from pglab.config import build_config, load_toml
from pglab.envs import cartpole, guard, make_vec_env
from pglab.envs.guard import DEFAULT_EPISODE_CAP
from pglab.errors import ConfigError, EnvError, EnvFaultError
from pglab.policies import make_actor
from pglab.rollout import Collector

TESTS = Path(__file__).parent
FAULTY = "faulty_envs:FaultyEnv"


@pytest.fixture(autouse=True)
def _fresh_guard_memory(monkeypatch):
    """Each test sees the first warning and the first env check of its process."""
    monkeypatch.setattr(guard, "_warned_caps", set())
    monkeypatch.setattr(guard, "_checked", set())


def _step_until_error(envs, steps=20):
    envs.reset(seed=0)
    for _ in range(steps):
        envs.step(np.zeros(envs.num_envs, dtype=np.int64))


# ---------------------------------------------------------------- episodes that never end


def _train_never_ending(tmp_path, name, **options):
    """REINFORCE with episode batches on one copy of an env whose episodes never end."""
    return pglab.train(
        "faulty_envs:NeverEnds",
        "reinforce",
        weights="fr",
        num_envs=1,
        eval_episodes=1,
        eval_every=0,
        checkpoint_every=0,
        progress="off",
        preset="none",
        policy={"hidden": [4]},
        run={"out": str(tmp_path), "name": name},
        **options,
    )


def test_reinforce_episode_batches_on_an_env_without_end_finish_at_the_default_cap(
    tmp_path, capsys
):
    run = _train_never_ending(tmp_path, "never", total_steps=10, batch_size=1)
    assert run.summary["episodes"] == 1
    assert run.summary["total_steps"] == DEFAULT_EPISODE_CAP
    assert run.summary["eval_return_mean"] == DEFAULT_EPISODE_CAP  # evaluation is capped too
    warnings = [line for line in capsys.readouterr().err.splitlines() if "time limit" in line]
    assert warnings == [
        "pglab: warning: env 'faulty_envs:NeverEnds' has no time limit; episodes are cut "
        "(truncated) at 10,000 steps (set env.max_episode_steps to change this)"
    ]
    recorded = load_toml(tmp_path / "faulty_envs-NeverEnds" / "never" / "config.toml")
    assert recorded["env"]["max_episode_steps"] == "auto"
    assert recorded["env"]["check"] is True


def test_the_cap_truncates_exactly_like_gymnasiums_time_limit():
    ours = make_vec_env("faulty_envs:NeverEnds", 2, max_episode_steps=4)
    theirs = SyncVectorEnv([lambda: gym.wrappers.TimeLimit(NeverEnds(), 4) for _ in range(2)])
    for a, b in zip(ours.reset(seed=0)[:1], theirs.reset(seed=0)[:1]):
        assert np.array_equal(a, b)
    for _ in range(11):
        got, want = ours.step(np.zeros(2, int)), theirs.step(np.zeros(2, int))
        for a, b in zip(got[:4], want[:4]):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_a_truncation_at_the_cap_is_bootstrapped_from_the_real_final_observation():
    envs = make_vec_env("faulty_envs:NeverEnds", 1, max_episode_steps=3)
    torch.manual_seed(0)
    actor = make_actor(1, envs.single_action_space, [4])
    batch = Collector(envs, actor, seed=0).collect_steps(5)
    column = lambda x: x[:, 0].tolist()  # noqa: E731
    # the cap at step 3, then the reset step; the last True is the end of the rollout
    assert column(batch.truncated) == [False, False, True, False, True]
    assert column(batch.terminated) == [False] * 5
    assert column(batch.valid) == [True, True, True, False, True]
    assert column(batch.obs[:, :, 0]) == [0.0, 1.0, 2.0, 3.0, 0.0]  # 3.0: the final obs


def test_an_explicit_cap_overrides_the_registered_time_limit_and_keeps_the_lean_cartpole():
    envs = make_vec_env("CartPole-v1", 3, max_episode_steps=5)
    assert type(envs) is cartpole.CartPoleVectorEnv  # unguarded: pglab's own vector env
    envs.reset(seed=0)
    truncated = [envs.step(np.zeros(3, int))[3].any() for _ in range(5)]
    assert truncated == [False, False, False, False, True]


def test_a_registered_env_without_time_limit_is_capped_and_one_with_one_is_left_alone(capfd):
    assert make_vec_env("CliffWalking-v1", 1).spec.max_episode_steps == DEFAULT_EPISODE_CAP
    assert make_vec_env("Pendulum-v1", 1).spec.max_episode_steps == 200
    err = capfd.readouterr().err
    assert "'CliffWalking-v1' has no time limit" in err and "Pendulum" not in err


def test_max_episode_steps_option_is_validated_in_one_line():
    assert build_config(overrides=["env.max_episode_steps=50"]).env.max_episode_steps == 50
    assert build_config(overrides=["env.max_episode_steps=AUTO"]).env.max_episode_steps == "auto"
    for bad in ("0", "-3", "2.5", "true", "'many'"):
        with pytest.raises(ConfigError) as error:
            build_config(overrides=[f"env.max_episode_steps={bad}"])
        message = str(error.value)
        assert message.startswith("env.max_episode_steps must be an integer >= 1 or 'auto'")
        assert "\n" not in message
    with pytest.raises(ConfigError, match="env.check must be true or false; got 'yes'"):
        build_config(overrides=["env.check=yes"])


def test_a_cap_that_contradicts_the_envs_keyword_argument_is_refused():
    with pytest.raises(ConfigError, match="env.kwargs sets max_episode_steps = 30"):
        make_vec_env("CartPole-v1", 1, {"max_episode_steps": 30}, max_episode_steps=50)


# ---------------------------------------------------------------- bad values at the source


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_bad_observation_or_reward_names_env_call_step_quantity_and_value(fault):
    quantity, value = FAULTS[fault]
    envs = make_vec_env(FAULTY, 2, {"fault": fault, "at": 3})
    with pytest.raises(EnvFaultError) as error:
        _step_until_error(envs)
    message = str(error.value)
    assert message.startswith(f"env '{FAULTY}': step() at env step 3, copy 0: {quantity} is ")
    shown = {None: "None", "1.0": "'1.0'"}.get(value, str(np.float32(value)))
    assert f"{quantity} is {shown}" in message
    assert "\n" not in message
    assert message in error.value.details


def test_large_but_sane_values_pass_the_guard():
    envs = make_vec_env(FAULTY, 4, {"fault": "large", "at": 3})
    envs.reset(seed=0)
    for _ in range(3):
        obs, reward, *_ = envs.step(np.zeros(4, int))
    assert (obs == np.float32(1e19)).all() and (reward == 1e19).all()


def test_a_bad_observation_at_reset_names_the_reset():
    envs = make_vec_env(FAULTY, 2, {"fault": "obs-nan", "at": 0}, check=False)
    with pytest.raises(EnvFaultError, match=r"reset\(\) at env step 0, copy 0: observation is nan"):
        envs.reset(seed=0)


def test_a_bad_observation_at_an_autoreset_says_so():
    # the first episode is healthy; its end (after 10 steps) resets into None
    options = {"fault": "obs-None", "at": 0, "from_episode": 1}
    envs = make_vec_env(FAULTY, 1, options, check=False)
    with pytest.raises(EnvFaultError) as error:
        _step_until_error(envs)
    assert str(error.value) == (
        f"env '{FAULTY}': step() at env step 11, copy 0: observation is None "
        "(its reset after an episode end)"
    )


@pytest.mark.parametrize(
    ("fault", "begins"),
    [("reward-nan", "reward is nan"), ("raise", "step() raised RuntimeError")],
)
def test_a_faulty_env_stops_training_and_leaves_its_story_in_the_run_folder(
    tmp_path, fault, begins
):
    """The env fault, not a loss error, names env, call and step; the run folder keeps
    its config and an ``error.txt`` with the line and the details."""
    with pytest.raises(EnvFaultError) as error:
        pglab.train(
            FAULTY,
            "ppo",
            kwargs={"fault": fault, "at": 3},
            total_steps=64,
            num_envs=2,
            batch_size=64,
            progress="off",
            preset="none",
            run={"out": str(tmp_path), "name": "broken"},
        )
    prefix = f"env '{FAULTY}': step() at env step 3, copy 0: "
    assert str(error.value).startswith(prefix + begins)
    (run_dir,) = tmp_path.glob("*/broken")
    story = (run_dir / "error.txt").read_text()
    assert story.startswith(str(error.value)) and error.value.details.strip() in story
    assert (run_dir / "config.toml").is_file()


# ---------------------------------------------------------------- broken calls


def test_an_env_that_raises_names_the_call_and_keeps_the_traceback():
    envs = make_vec_env(FAULTY, 2, {"fault": "raise", "at": 3})
    with pytest.raises(EnvFaultError) as error:
        _step_until_error(envs)
    assert str(error.value) == (
        f"env '{FAULTY}': step() at env step 3, copy 0: "
        "step() raised RuntimeError: the simulator diverged"
    )
    assert "Traceback (most recent call last)" in error.value.details
    assert 'raise RuntimeError("the simulator diverged")' in error.value.details
    copy = pickle.loads(pickle.dumps(error.value))  # crosses process boundaries whole
    assert str(copy) == str(error.value) and copy.details == error.value.details


@pytest.mark.parametrize(
    ("fault", "what"),
    [
        ("shape", "has shape (3,); the observation space {space} has shape (2,)"),
        ("dtype", "has dtype <U3; the observation space {space} holds numbers"),
    ],
)
def test_an_observation_of_the_wrong_shape_or_dtype_is_named(fault, what):
    envs = make_vec_env(FAULTY, 2, {"fault": fault, "at": 3})
    with pytest.raises(EnvFaultError) as error:
        _step_until_error(envs)
    space = "Box(-10.0, 10.0, (2,), float32)"
    assert str(error.value) == (
        f"env '{FAULTY}': step() at env step 3, copy 0: observation " + what.format(space=space)
    )


def test_an_env_on_the_old_four_tuple_api_is_told_what_to_return():
    envs = make_vec_env("faulty_envs:OldApiEnv", 2, check=False)
    with pytest.raises(EnvFaultError) as error:
        _step_until_error(envs)
    assert str(error.value) == (
        "env 'faulty_envs:OldApiEnv': step() at env step 1, copy 0: step() returned 4 values "
        "(obs, reward, done, info); the env uses the pre-Gymnasium-0.26 API and must return "
        "(obs, reward, terminated, truncated, info)"
    )
    with pytest.raises(EnvError, match="fails Gymnasium's env checker: step\\(\\) returned 4"):
        make_vec_env("faulty_envs:OldApiEnv", 2)  # the checker finds it before any run


@pytest.mark.parametrize(
    ("env_class", "expected"),
    [
        (
            "OldResetEnv",
            "reset() at env step 0, copy 0: reset() returned array([0., 0.], dtype=float32) "
            "(ndarray), not (obs, info); the env uses the pre-Gymnasium-0.26 API and must "
            "return (obs, info)",
        ),
        ("NoneFlagEnv", "step() at env step 1, copy 0: terminated is None; it must be a bool"),
    ],
)
def test_other_malformed_results_are_named(env_class, expected):
    envs = make_vec_env(f"faulty_envs:{env_class}", 1, check=False)
    with pytest.raises(EnvFaultError) as error:
        _step_until_error(envs)
    assert str(error.value) == f"env 'faulty_envs:{env_class}': {expected}"


def test_a_healthy_env_runs_through_the_guard_unchanged():
    envs = make_vec_env(FAULTY, 3, {"fault": "obs-nan", "at": 99})
    envs.reset(seed=1)
    ends = 0
    for _ in range(25):
        obs, reward, terminated, truncated, _ = envs.step(np.ones(3, int))
        ends += int(terminated.sum())
    assert obs.shape == (3, 2) and np.isfinite(obs).all() and reward.tolist() == [1.0] * 3
    assert ends == 6 and not truncated.any()  # every 10 steps, then a reset step


# ---------------------------------------------------------------- Gymnasium's env checker


def test_the_env_checker_rejects_a_broken_user_env_and_env_check_false_skips_it():
    with pytest.raises(EnvError) as error:
        make_vec_env("faulty_envs:UnseededEnv", 2)
    message = str(error.value)
    assert message.startswith("env 'faulty_envs:UnseededEnv' fails Gymnasium's env checker: ")
    assert "super().reset(seed=seed)" in message and "env.check=false" in message
    assert "\n" not in message
    envs = make_vec_env("faulty_envs:UnseededEnv", 2, check=False)
    envs.reset(seed=0)
    envs.step(np.zeros(2, int))
    assert build_config(overrides=["env.check=false"]).env.check is False


def test_the_env_checker_leaves_gymnasium_ids_alone(monkeypatch):
    import gymnasium.utils.env_checker as checker

    def refuse(*args, **kwargs):
        raise AssertionError("checked")

    monkeypatch.setattr(checker, "check_env", refuse)
    for env_id in ("Pendulum-v1", "pglab/LineWorld-v0", "pglab.envs.lineworld:LineWorldEnv"):
        make_vec_env(env_id, 1).close()
    with pytest.raises(EnvError, match="checked"):
        make_vec_env("faulty_envs:NeverEnds", 1)


# ---------------------------------------------------------------- the command line


def _cli(args, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "pglab.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_an_env_fault_is_one_line_and_exit_code_1(tmp_path):
    done = _cli(
        [
            "train",
            "--env",
            FAULTY,
            "--set",
            'env.kwargs={fault="obs-inf", at=3}',
            "--steps",
            "64",
            "--set",
            "progress=off",
            "--preset",
            "none",
        ],
        tmp_path,
    )
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith("pglab: warning:")]
    assert len(lines) == 1
    assert lines[0].startswith(
        f"pglab: error: env '{FAULTY}': step() at env step 3, copy 0: observation is inf at [1] "
        "(non-finite or |x| > 1e+20"
    )


def test_cli_a_failed_env_check_is_one_line_and_exit_code_2_and_leaves_no_run(tmp_path):
    done = _cli(["train", "--env", "faulty_envs:UnseededEnv", "--steps", "64"], tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(
        "pglab: error: env 'faulty_envs:UnseededEnv' fails Gymnasium's env checker: "
    )
    assert not (tmp_path / "runs").exists() and done.stdout == ""


def test_a_runs_own_cap_and_check_reach_its_envs(tmp_path):
    """``env.max_episode_steps`` and ``env.check`` set for a run are the ones its
    training and evaluation envs are made with."""
    run = _train_never_ending(
        tmp_path, "capped", total_steps=120, batch_size=2, max_episode_steps=30, check=False
    )
    assert run.summary["episodes"] == 4 and run.summary["total_steps"] == 120
    assert run.summary["eval_return_mean"] == 30
