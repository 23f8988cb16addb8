"""Environments: ids, entry points, the line world."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv as GymCartPoleVectorEnv

from pglab.envs import ObsEncoder, cartpole, make_vec_env, reward_threshold, validate_env_id
from pglab.envs.lineworld import LineWorldEnv
from pglab.errors import EnvError


def test_cartpole_uses_the_lean_vector_env():
    envs = make_vec_env("CartPole-v1", 4)
    assert isinstance(envs, cartpole.CartPoleVectorEnv)
    assert envs.spec is not None and envs.spec.max_episode_steps == 500
    envs.close()


@pytest.mark.parametrize(
    "options",
    [{}, {"sutton_barto_reward": True}, {"max_episode_steps": 30}],
)
def test_lean_cartpole_equals_gymnasium_bit_for_bit(options):
    """Random actions for thousands of steps, with many episode ends and resets."""
    ours = cartpole.CartPoleVectorEnv(num_envs=7, **options)
    theirs = GymCartPoleVectorEnv(num_envs=7, **options)
    first, _ = ours.reset(seed=3)
    expected, _ = theirs.reset(seed=3)
    assert np.array_equal(first, expected)
    actions = np.random.default_rng(0).integers(0, 2, size=(3000, 7))
    ends = 0
    for action in actions:
        got, want = ours.step(action), theirs.step(action)
        for a, b in zip(got[:4], want[:4]):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        ends += int((got[2] | got[3]).sum())
    assert ends > 100


def test_lean_cartpole_semi_implicit_integrator_matches_too():
    ours, theirs = cartpole.CartPoleVectorEnv(num_envs=3), GymCartPoleVectorEnv(num_envs=3)
    for env in (ours, theirs):
        env.kinematics_integrator = "semi-implicit euler"
        env.reset(seed=1)
    for action in np.random.default_rng(1).integers(0, 2, size=(500, 3)):
        assert all(
            np.array_equal(a, b) for a, b in zip(ours.step(action)[:4], theirs.step(action)[:4])
        )


@pytest.mark.parametrize("options", [{}, {"max_episode_steps": 30}])
def test_cartpoles_stepped_together_equal_each_stepped_alone(options):
    """Envs of different sizes and seeds, thousands of steps with many resets: every
    number equals what each env gives alone, and each draws resets from its own stream."""
    sizes, seeds = (3, 8, 1), (0, 5, 0)
    together = [cartpole.CartPoleVectorEnv(num_envs=n, **options) for n in sizes]
    alone = [cartpole.CartPoleVectorEnv(num_envs=n, **options) for n in sizes]
    for a, b, seed in zip(together, alone, seeds):
        assert np.array_equal(a.reset(seed=seed)[0], b.reset(seed=seed)[0])
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(2000):
        actions = [rng.integers(0, 2, size=n) for n in sizes]
        outcomes = cartpole.CartPoleVectorEnv.step_together(together, actions)
        for outcome, env, action in zip(outcomes, alone, actions):
            want = env.step(action)
            for a, b in zip(outcome[:4], want[:4]):
                assert a.dtype == b.dtype and np.array_equal(a, b)
        ends += int(sum((o[2] | o[3]).sum() for o in outcomes))
    assert ends > 100


def test_cartpoles_with_different_physics_are_not_stepped_together():
    envs = [cartpole.CartPoleVectorEnv(num_envs=2) for _ in range(2)]
    envs[1].gravity = 3.7
    for env in envs:
        env.reset(seed=0)
    with pytest.raises(ValueError, match="same physical constants"):
        cartpole.CartPoleVectorEnv.step_together(envs, [np.zeros(2, int)] * 2)


def test_unknown_env_lists_closest_ids():
    with pytest.raises(EnvError, match="closest registered ids: CartPole-v1"):
        validate_env_id("CartPol-v1")


def test_class_entry_point():
    envs = make_vec_env("pglab.envs.lineworld:LineWorldEnv", 2, {"grid_size": 5})
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 2) and obs.max() <= 4
    envs.close()


def test_bad_class_entry_point():
    with pytest.raises(EnvError, match="not a gymnasium.Env class"):
        make_vec_env("pglab.envs.lineworld:np", 1)
    with pytest.raises(EnvError, match="cannot import"):
        make_vec_env("no_such_module_xyz:Env", 1)


def test_bad_env_kwargs():
    with pytest.raises(EnvError, match="rejected its options"):
        make_vec_env("pglab/LineWorld-v0", 1, {"no_such_option": 1})


def test_reward_threshold():
    assert reward_threshold("CartPole-v1") == 475.0
    assert reward_threshold("pglab/LineWorld-v0") is None


def test_lineworld_rewards_and_success():
    env = LineWorldEnv(grid_size=5, episode_length=3)
    obs, _ = env.reset(seed=0)
    position, target = int(obs[0]), int(obs[1])
    toward = 2 if target > position else (0 if target < position else 1)
    total = 0.0
    for t in range(3):
        obs, reward, terminated, truncated, info = env.step(toward if obs[0] != obs[1] else 1)
        assert reward == -abs(obs[0] - obs[1]) / 4
        total += reward
        assert terminated == (t == 2) and not truncated
    assert info["success"] == (abs(position - target) <= 3)
    assert reward <= 0


def test_lineworld_in_two_dimensions():
    env = gym.make("pglab/LineWorld-v0", dimensions=2, grid_size=4)
    assert env.action_space.n == 9
    obs, _ = env.reset(seed=1)
    assert obs.shape == (4,)
    image = env.unwrapped.render()
    assert image.shape[2] == 3 and image.dtype == np.uint8


def test_lineworld_rejects_bad_sizes():
    with pytest.raises(ValueError, match="grid_size"):
        LineWorldEnv(grid_size=1)


def test_missing_extras_are_named():
    from gymnasium.error import DependencyNotInstalled

    from pglab.envs import missing_extra_message

    message = missing_extra_message(
        "LunarLander-v3", DependencyNotInstalled("Box2D is not installed")
    )
    assert "pip install 'pglab[box2d]'" in message
    assert "pglab[mujoco]" in missing_extra_message(
        "Hopper-v5", DependencyNotInstalled("no mujoco")
    )


def test_discrete_observations_are_one_hot():
    encode = ObsEncoder(gym.spaces.Discrete(4, start=1))
    assert encode.array(np.array([1, 4])).tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]
    assert encode(np.array([2])).dtype == torch.float32


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "pglab.envs.lineworld:LineWorldEnv"])
def test_the_async_backend_steps_each_copy_in_its_own_process_with_the_same_numbers(
    env_id, tmp_path
):
    import csv

    import pglab

    def rows(run):
        with open(run.path / "metrics.csv") as handle:
            skip = ("wall_seconds", "steps_per_second")
            return [{k: v for k, v in r.items() if k not in skip} for r in csv.DictReader(handle)]

    options = dict(num_envs=2, batch_size=128, total_steps=512, eval_every=256,
                   eval_episodes=2, progress="off", checkpoint_every=0, preset="none")  # fmt: skip
    plain = pglab.train(env_id, "ppo", seed=3, out=str(tmp_path / "plain"), **options)
    apart = pglab.train(env_id, "ppo", seed=3, out=str(tmp_path / "async"), backend="async",
                        **options)  # fmt: skip
    assert rows(apart) == rows(plain)
    envs = make_vec_env(env_id, 2, backend="async")
    try:
        assert isinstance(envs.unwrapped, gym.vector.AsyncVectorEnv)
    finally:
        envs.close()


def _episode_flags(envs, steps):
    """Each step's (terminated, truncated, reward is 0) of env 0 under zero actions."""
    envs.reset(seed=7)
    zero = np.zeros(envs.action_space.shape, dtype=envs.action_space.dtype)
    flags = []
    for _ in range(steps):
        _, reward, terminated, truncated, _ = envs.step(zero)
        flags.append((bool(terminated[0]), bool(truncated[0]), bool(reward[0] == 0.0)))
    return flags


def test_envpool_keeps_gymnasiums_episode_accounting_and_bootstraps_its_truncations():
    pytest.importorskip("envpool")
    from pglab.policies import make_actor, make_critic
    from pglab.rollout import Collector

    pool = make_vec_env("HalfCheetah-v5", 2, backend="envpool")
    plain = make_vec_env("HalfCheetah-v5", 2)
    try:
        assert pool.single_observation_space.shape == plain.single_observation_space.shape
        ours_a, theirs_a = pool.single_action_space, plain.single_action_space
        assert ours_a.shape == theirs_a.shape  # (envpool's are float64)
        assert np.array_equal(ours_a.low, theirs_a.low) and np.array_equal(
            ours_a.high, theirs_a.high
        )
        ours, theirs = _episode_flags(pool, 1002), _episode_flags(plain, 1002)
        # the 1000th step truncates, the next is the reset step: reward 0, no flag
        assert [f[:2] for f in ours] == [f[:2] for f in theirs]
        assert ours[999][:2] == (False, True) and ours[1000] == (False, False, True)
        first = pool.reset(seed=3)[0]
        again = pool.reset(seed=3)[0]
        assert np.array_equal(first, again)  # a seed gives the same episodes
        torch.manual_seed(0)
        actor = make_actor(17, pool.single_action_space, [8])
        critic = make_critic(17, [8])
        batch = Collector(pool, actor, critic, seed=1).collect_steps(1001)
        t = 999
        assert bool(batch.truncated[t, 0]) and not bool(batch.terminated[t, 0])
        assert not bool(batch.valid[t + 1, 0])  # the reset step is no transition
        # bootstrapped from the episode's final observation, the one the step returned
        assert torch.equal(batch.next_values[t], batch.values[t + 1])
        assert bool((batch.next_values[t] != 0).all())
    finally:
        pool.close()
        plain.close()


def test_envpool_plays_atari_as_pglabs_atari_pipeline_does():
    pytest.importorskip("envpool")
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    from pglab.envs.scores import SCORE_KEY

    made = [make_vec_env("ALE/Breakout-v5", 2, preprocess="atari", max_episode_steps=160, **b)
            for b in ({"backend": "envpool"}, {})]  # fmt: skip
    pool, plain = made
    try:
        assert pool.single_observation_space == plain.single_observation_space  # (4, 84, 84) uint8
        assert pool.single_action_space == plain.single_action_space  # Breakout's 4 actions
        first, again = pool.reset(seed=3)[0], plain.reset(seed=3)[0]
        assert np.array_equal(first, again)  # the still screen before the serve, repeated x4
        # a cap of 160 frames: 40 steps of 4 frames (Gymnasium's no-op frames count too);
        # the step that truncates is followed by the reset step, reward 0 and no flag
        for flags, cap in ((_episode_flags(pool, 42), 40), (_episode_flags(plain, 42), None)):
            ends = [t for t, f in enumerate(flags) if f[0] or f[1]]
            assert len(ends) == 1 and (ends[0] == cap - 1 if cap else 32 <= ends[0] < 40)
            assert flags[ends[0]][:2] == (False, True) and flags[ends[0] + 1] == (
                False,
                False,
                True,
            )
        pool.reset(seed=3)
        for _ in range(40):
            info = pool.step(np.zeros(2, dtype=np.int64))[-1]
        assert info[f"_{SCORE_KEY}"].all() and np.array_equal(info[SCORE_KEY], [0.0, 0.0])
    finally:
        for envs in made:
            envs.close()


def test_envpool_refuses_what_it_cannot_make_as_pglab_would():
    pytest.importorskip("envpool")
    with pytest.raises(EnvError, match="with env.preprocess = atari only"):
        make_vec_env("Pong-v5", 1, backend="envpool")
    with pytest.raises(EnvError, match="without env.wrappers"):
        make_vec_env("HalfCheetah-v5", 1, backend="envpool", frame_stack=2)
    with pytest.raises(EnvError, match="has no env"):
        make_vec_env("Taxi-v4", 1, backend="envpool")
