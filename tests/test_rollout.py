"""The collector on a tiny deterministic env whose returns are known by hand."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import SyncVectorEnv

import pglab.policies as pglab_policies
from faulty_envs import Countdown
from pglab.envs import make_vec_env
from pglab.lockstep import collect_steps_together, run_episodes_together
from pglab.policies import make_actor, make_critic
from pglab.returns import discounted_reward_to_go, gae
from pglab.rollout import Collector


class ObsCritic(torch.nn.Module):
    """V(s) = 10 * s: the bootstrap value names the observation it came from."""

    def forward(self, obs):
        return 10.0 * obs[..., 0]


def collector(length=3, truncate=False, n=1, critic=None):
    envs = SyncVectorEnv([lambda: Countdown(length, truncate) for _ in range(n)])
    torch.manual_seed(0)
    actor = make_actor(1, envs.single_action_space, [4])
    return Collector(envs, actor, critic, seed=0)


def test_termination_and_reset_step():
    batch = collector(length=3).collect_steps(8)
    column = lambda x: x[:, 0].tolist()  # noqa: E731
    # steps: 3 transitions, reset step, 3 transitions, reset step
    assert column(batch.valid) == [True, True, True, False, True, True, True, False]
    assert column(batch.terminated) == [False, False, True, False, False, False, True, False]
    assert column(batch.rewards) == [1, 1, 1, 0, 1, 1, 1, 0]
    # the reset step holds the final observation of the episode that ended
    assert column(batch.obs[..., 0]) == [0, 1, 2, 3, 0, 1, 2, 3]
    returns = discounted_reward_to_go(batch.rewards, batch.episode_ends, 0.5, valid=batch.valid)
    assert column(returns) == [1.75, 1.5, 1.0, 0.0, 1.75, 1.5, 1.0, 0.0]
    assert batch.episodes.returns == [3.0, 3.0] and batch.episodes.lengths == [3, 3]
    assert batch.num_steps == 6


def test_truncation_bootstraps_from_real_final_observation():
    batch = collector(length=2, truncate=True, critic=ObsCritic()).collect_steps(3)
    assert batch.truncated[1, 0] and not batch.terminated[1, 0]
    # V of the real final observation (2), not of the reset observation (0)
    assert batch.next_values[1, 0].item() == 20.0
    advantages = gae(
        batch.rewards,
        batch.values,
        batch.next_values,
        batch.terminated,
        batch.episode_ends,
        1.0,
        1.0,
        valid=batch.valid,
    )
    # G_0 = 1 + 1 + V(s_2) = 22, minus V(s_0) = 0
    assert advantages[0, 0].item() == 22.0


def test_rollout_end_is_marked_truncated_and_bootstrapped():
    c = collector(length=10, critic=ObsCritic())
    batch = c.collect_steps(4)
    assert batch.truncated[-1, 0] and not batch.terminated[-1, 0]
    assert batch.next_values[-1, 0].item() == 40.0
    # the next batch continues the episode where this one stopped
    assert c.collect_steps(1).obs[0, 0, 0].item() == 4.0


def test_episode_batches_are_complete_and_fresh():
    c = collector(length=3, n=2)
    c.collect_steps(2)  # leave episodes half-done
    batch = c.collect_episodes(5)
    assert batch.episodes.lengths == [3] * 5
    assert batch.num_steps == 15
    # env 0 does 3 episodes, env 1 does 2: its third episode is not in the batch
    assert batch.valid[:, 0].sum() == 9 and batch.valid[:, 1].sum() == 6
    assert batch.obs[0, :, 0].tolist() == [0.0, 0.0]


def test_log_probs_are_those_of_the_collecting_policy():
    c = collector(length=3)
    batch = c.collect_steps(5)
    log_probs, _ = c.actor.log_prob_entropy(batch.obs.flatten(0, 1), batch.actions.flatten(0, 1))
    assert torch.allclose(batch.log_probs.flatten(), log_probs)


def test_success_is_recorded_from_info():
    envs = gym.make_vec("pglab/LineWorld-v0", num_envs=2, vectorization_mode="sync")
    actor = make_actor(2, envs.single_action_space, [])
    stats = Collector(envs, actor, seed=0).run_episodes(4)
    assert len(stats.successes) == 4 and stats.lengths == [20] * 4


@pytest.mark.parametrize("n", [1, 3])
def test_env_step_count_includes_every_step(n):
    c = collector(length=3, n=n)
    c.collect_steps(5)
    assert c.env_steps == 5 * n


def _cartpole_collectors(seeds, hidden=(16,), num_envs=4, critic=True):
    collectors = []
    for seed in seeds:
        torch.manual_seed(seed)
        envs = make_vec_env("CartPole-v1", num_envs)
        actor = make_actor(4, envs.single_action_space, list(hidden))
        value = make_critic(4, list(hidden)) if critic else None
        collectors.append(Collector(envs, actor, value, seed=seed))
    return collectors


@pytest.mark.parametrize("hidden", [(16,), (16, 8)])
def test_collectors_in_lockstep_draw_what_each_draws_alone(hidden):
    """Members with their own seeds (one repeated): every tensor of every batch, over
    batches that cross episode ends, equals the member's own collection."""
    seeds = (3, 7, 3)
    together, alone = _cartpole_collectors(seeds, hidden), _cartpole_collectors(seeds, hidden)
    ends = 0
    for _ in range(6):
        got = collect_steps_together(together, 40)
        for batch, c in zip(got, alone):
            want = c.collect_steps(40)
            for name in (
                "obs",
                "actions",
                "log_probs",
                "rewards",
                "terminated",
                "truncated",
                "valid",
                "values",
                "next_values",
            ):
                assert torch.equal(getattr(batch, name), getattr(want, name)), name
            assert batch.episodes.returns == want.episodes.returns
            ends += len(want.episodes.returns)
    assert ends > 10
    assert [c.env_steps for c in together] == [c.env_steps for c in alone]


def test_lockstep_needs_numpy_actors_of_one_structure():
    """A torch actor samples from the global torch stream, which lockstep would
    interleave between members; actors of different shapes cannot be stacked."""
    mirrorless = _cartpole_collectors((1, 2), critic=False)
    mirrorless[0].mirror = None
    assert not mirrorless[0].acts_in_numpy
    mixed = _cartpole_collectors((1,), (16,), critic=False)
    mixed += _cartpole_collectors((2,), (8,), critic=False)
    other_activation = _cartpole_collectors((1, 2), critic=False)
    other_activation[1].mirror._layers[1] = ("act", np.sin)
    for collectors in (mirrorless, mixed, other_activation):
        with pytest.raises(ValueError, match="numpy actors of one structure"):
            collect_steps_together(collectors, 3)


@pytest.mark.parametrize("deterministic", [True, False])
def test_evaluations_in_lockstep_play_what_each_plays_alone(deterministic):
    """Members whose episodes end at different times (untrained, different seeds): each
    plays exactly its own episodes, and keeps its envs where they would be alone."""
    seeds = (0, 4, 9)
    together, alone = (
        _cartpole_collectors(seeds, critic=False),
        _cartpole_collectors(seeds, critic=False),
    )
    for _ in range(2):
        got = run_episodes_together(together, 7, deterministic)
        for stats, c in zip(got, alone):
            want = c.run_episodes(7, deterministic)
            assert (stats.returns, stats.lengths) == (want.returns, want.lengths)
    assert len({tuple(s.lengths) for s in got}) > 1


class LeaningActor(pglab_policies.Actor):
    """A user's actor: its own forward leans hard towards action 0."""

    def forward(self, obs):
        logits = super().forward(obs)
        return logits + torch.tensor([8.0, 0.0])


class LeaningHead(pglab_policies.CategoricalHead):
    """A user's head: the same lean, in the head."""

    def forward(self, features):
        return super().forward(features) + torch.tensor([8.0, 0.0])


@pytest.mark.parametrize("kind", ["actor", "head"])
def test_a_users_actor_or_head_acts_itself_and_ppo_starts_on_policy(kind):
    """The numpy mirror would bypass a subclass's own code: such actors act in torch,
    and PPO's first pass sees exactly the log-probabilities stored at collection."""
    from pglab.algos import make_algo
    from pglab.config import build_config

    torch.manual_seed(0)
    envs = make_vec_env("CartPole-v1", 4)
    built = make_actor(4, envs.single_action_space, hidden=(16,))
    if kind == "actor":
        actor = LeaningActor(built.body, built.head)
    else:
        head = LeaningHead(16, 2)
        head.load_state_dict(built.head.state_dict())
        actor = pglab_policies.Actor(built.body, head)
    critic = make_critic(4, hidden=(16,))
    collector = Collector(envs, actor, critic, seed=0)
    assert not collector.acts_in_numpy
    batch = collector.collect_steps(64)
    assert (batch.actions[batch.valid] == 0).float().mean() > 0.98  # the lean was used
    config = build_config(flags={"algo.name": "ppo"}).algo
    rule = make_algo(config, actor, critic)
    assert rule.dense is None  # the written-out gradient would bypass it too
    data = rule.prepare(batch, config)
    log_probs, _ = actor.log_prob_entropy(data["obs"], data["actions"])
    torch.testing.assert_close(log_probs, data["log_probs"], rtol=0, atol=1e-6)
    metrics = rule.update(batch, 0.0)
    assert metrics["epochs"] > 0


@pytest.mark.parametrize("algo", ["reinforce", "ppo", "a2c", "trpo"])
def test_an_actor_with_dropout_is_updated_under_the_masks_it_acted_with(algo):
    """The policy gradient differentiates the log-probability of the network that drew
    the action, masks included: the batch stores each step's dropout key, the update
    recomputes under the same masks (a first pass at a ratio of exactly 1), and
    evaluation acts without dropout, drawing nothing from torch's stream."""
    from pglab.algos import make_algo
    from pglab.config import build_config
    from pglab.nets import under_masks

    torch.manual_seed(0)
    envs = make_vec_env("CartPole-v1", 2)
    actor = make_actor(4, envs.single_action_space, hidden=(32,), dropout=0.5)
    config = build_config(
        flags={"algo.name": algo, "algo.epochs": 1, "algo.minibatches": 1}
    ).algo.resolve()
    critic = make_critic(4, hidden=(16,)) if config.uses_critic else None
    collector = Collector(envs, actor, critic, seed=0)
    assert not collector.acts_in_numpy
    batch = collector.collect_steps(50)
    assert batch.dropout_keys is not None and batch.dropout_keys.shape == (50, 2)
    obs, actions = batch.obs.flatten(0, 1), batch.actions.flatten(0, 1)
    assert not actor.training
    with under_masks(actor, batch.dropout_keys.flatten()):
        keyed, _ = actor.log_prob_entropy(obs, actions)
    assert not actor.training  # its mode is restored
    torch.testing.assert_close(keyed, batch.log_probs.flatten(), rtol=0, atol=1e-6)
    actor.train()
    fresh, _ = actor.log_prob_entropy(obs, actions)  # other masks: another policy
    assert (fresh - keyed).abs().max() > 1e-3
    rule = make_algo(config, actor, critic)
    metrics = rule.update(batch, 0.0)
    if algo in ("reinforce", "ppo"):  # measured before the step: 0 under the same masks
        assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    state = torch.get_rng_state()
    collector.run_episodes(2)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("shape", [(7, 7, 3), (4, 40, 40)])  # a grid world; channels last
def test_image_observations_kept_as_bytes_give_the_batch_of_float_observations(shape):
    from pglab.envs.spaces import ObsEncoder
    from space_envs import SpacesEnv

    space = gym.spaces.Box(0, 255, shape, np.uint8)
    images = ObsEncoder(space).images
    torch.manual_seed(0)
    actor = make_actor(images[0].size, gym.spaces.Discrete(3), [32], images=images)
    critic = make_critic(images[0].size, [32], images=images)
    batches = []
    for keep_bytes in (True, False):
        envs = SyncVectorEnv([lambda: SpacesEnv(space, gym.spaces.Discrete(3))] * 2)
        collector = Collector(envs, actor, critic, seed=5)
        assert collector.image_bytes  # decided for exactly pglab's CNN bodies
        collector.image_bytes = keep_bytes  # False: the plain float32 path
        torch.manual_seed(1)
        batches.append(collector.collect_steps(16))
    fast, plain = batches
    assert fast.obs.dtype == torch.uint8 and plain.obs.dtype == torch.float32
    assert torch.equal(fast.obs.float(), plain.obs)
    for name in ("actions", "log_probs", "values", "next_values", "rewards"):
        assert torch.equal(getattr(fast, name), getattr(plain, name)), name


def test_only_pglabs_own_image_networks_read_the_bytes():
    from pglab.envs.spaces import ObsEncoder
    from pglab.rollout import reads_image_bytes

    encode = ObsEncoder(gym.spaces.Box(0, 255, (7, 7, 3), np.uint8))
    actor = make_actor(encode.dim, gym.spaces.Discrete(3), [32], images=encode.images)
    assert reads_image_bytes(encode, actor, None)
    mlp_on_pixels = make_actor(encode.dim, gym.spaces.Discrete(3), [32])
    subclass = type("MyActor", (pglab_policies.Actor,), {})(actor.body, actor.head)
    for users in (mlp_on_pixels, subclass):
        assert not reads_image_bytes(encode, users, None)
    vectors = ObsEncoder(gym.spaces.Box(0, 255, (3,), np.uint8))  # not an image
    assert not reads_image_bytes(vectors, make_actor(3, gym.spaces.Discrete(3), [8]), None)
