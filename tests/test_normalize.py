"""Running normalisation: its statistics, and the same actions after a checkpoint round trip."""

import numpy as np
import pytest
import torch

import pglab
from pglab.envs.normalize import Normalizer, RunningMeanStd


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1000, 3))
    stats = RunningMeanStd((3,))
    for chunk in np.array_split(data, 7):
        stats.update(chunk)
    assert np.allclose(stats.mean, data.mean(0), atol=1e-6)
    assert np.allclose(stats.var, data.var(0), atol=1e-6)


def test_reward_scaling_divides_by_the_return_std():
    norm = Normalizer(1, 2, obs=False, reward=True, clip_reward=0.0, gamma=0.5)
    valid = np.array([True, True])
    ended = np.array([False, False])
    for _ in range(50):
        norm.track_rewards(np.array([1.0, 3.0]), valid, ended)
    # returns converge to 2 and 6; the spread of all tracked returns sets the scale
    std = float(np.sqrt(norm.reward_stats.var + 1e-8))
    assert norm.rewards(torch.tensor([2.0])).item() == pytest.approx(2.0 / std)
    clipped = Normalizer(1, 2, obs=False, reward=True, clip_reward=0.1, gamma=0.5)
    clipped.track_rewards(np.array([1.0, 3.0]), valid, ended)
    assert clipped.rewards(torch.tensor([100.0])).item() == pytest.approx(0.1)


def test_observations_are_normalised_and_clipped():
    norm = Normalizer(2, 1, obs=True, reward=False, clip_obs=1.5)
    for x in ([0.0, 10.0], [2.0, 30.0]):
        norm.observe(np.array([x], dtype=np.float32), update=True)
    out = norm.obs(torch.tensor([[1.0, 20.0], [100.0, -100.0]]))
    assert torch.allclose(out[0], torch.zeros(2), atol=1e-4)
    assert out[1].tolist() == [1.5, -1.5]


def train_normalised(tmp_path, total_steps, **options):
    """A short PPO run on CartPole with the given normalisation options."""
    return pglab.train(
        "CartPole-v1",
        "ppo",
        total_steps=total_steps,
        out=str(tmp_path),
        progress="off",
        preset="none",
        **options,
    )


def test_normalisation_round_trips_through_a_checkpoint(tmp_path):
    run = train_normalised(tmp_path, 2048, normalize_obs=True, normalize_reward=True)
    loaded = pglab.load(run.path)
    trained, restored = run.agent.normalizer, loaded.normalizer
    assert restored is not None and restored.obs_stats.count == trained.obs_stats.count > 1
    assert np.array_equal(restored.obs_stats.mean, trained.obs_stats.mean)
    assert np.array_equal(restored.reward_stats.var, trained.reward_stats.var)
    obs = np.random.default_rng(0).normal(0, 0.5, size=(64, 4)).astype(np.float32)
    assert np.array_equal(run.agent.act(obs), loaded.act(obs))
    # the statistics are not the identity: the agent really applies them
    tensor = torch.from_numpy(obs)
    assert not torch.allclose(restored.obs(tensor), tensor, atol=1e-2)


def test_evaluate_applies_the_frozen_statistics(tmp_path, monkeypatch):
    run = train_normalised(tmp_path, 1024, normalize_obs=True)
    agent = pglab.load(run.path)
    seen = []
    original = agent.normalizer.obs
    monkeypatch.setattr(agent.normalizer, "obs", lambda obs: seen.append(1) or original(obs))
    count = agent.normalizer.obs_stats.count
    pglab.evaluate(agent, episodes=2)
    assert seen and agent.normalizer.obs_stats.count == count  # applied, never updated


def test_resume_restores_normaliser_and_optimizer(tmp_path):
    from pglab.checkpoint import load_checkpoint
    from pglab.config import Config
    from pglab.population import Population

    run = train_normalised(tmp_path, 1024, normalize_obs=True, normalize_reward=True)
    state = load_checkpoint(run.path)
    trainer = Population([Config.from_dict(state["config"])], [state]).trainers[0]
    restored = trainer.normalizer.state_dict()
    assert torch.equal(restored["obs"]["mean"], state["normalizer"]["obs"]["mean"])
    assert restored["return"]["var"] == state["normalizer"]["return"]["var"]
    assert trainer.algo.optimizer.steps[0] == 320  # one update: 10 epochs x 32 minibatches


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("reward", lambda r, stats: r / np.sqrt(stats.var + 1e-8)),
        ("standardize", lambda r, stats: (r - stats.mean) / np.sqrt(stats.var + 1e-8)),
    ],
)
def test_reward_methods_use_the_statistics_of_the_rewards(method, expected):
    norm = Normalizer(1, 2, obs=False, reward=True, reward_method=method, clip_reward=0.0)
    valid = np.array([True, False])  # the second env's rewards are not counted
    rewards = [1.0, 2.0, 6.0]
    for r in rewards:
        norm.track_rewards(np.array([r, 100.0]), valid, np.array([False, False]))
    assert norm.reward_stats.mean == pytest.approx(3.0)
    assert norm.reward_stats.var == pytest.approx(np.var(rewards), rel=1e-6)
    assert norm.rewards(torch.tensor([4.0])).item() == pytest.approx(
        expected(4.0, norm.reward_stats), rel=1e-5
    )


def test_standardised_constant_rewards_vanish(tmp_path):
    """CartPole's reward is 1 every step: standardising leaves nothing to learn from."""
    run = train_normalised(
        tmp_path, 512, normalize_reward=True, reward_norm="standardize", clip_reward=0.0
    )
    norm = run.agent.normalizer
    assert norm.reward_stats.mean == pytest.approx(1.0)
    assert abs(norm.rewards(torch.tensor([1.0])).item()) < 1e-3


def test_an_unknown_reward_method_is_one_clear_line():
    with pytest.raises(pglab.errors.ConfigError, match="reward_norm.*standardize.*'median'"):
        pglab.config.Config.from_dict({"env": {"reward_norm": "median"}})


def test_one_row_at_a_time_folds_in_exactly_as_numpys_reductions_would():
    import numpy as np

    from pglab.envs.normalize import RunningMeanStd

    rows = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 4))
    fast, reference = RunningMeanStd((4,)), RunningMeanStd((4,))
    for row in rows:
        fast.update(row[None])
        mean, var, n = row, np.zeros(4), 1  # numpy's mean and var of a single row
        delta, total = mean - reference.mean, reference.count + n
        m2 = reference.var * reference.count + var * n + delta**2 * reference.count * n / total
        reference.mean, reference.var = reference.mean + delta * n / total, m2 / total
        reference.count = total
    assert np.array_equal(fast.mean, reference.mean) and np.array_equal(fast.var, reference.var)
