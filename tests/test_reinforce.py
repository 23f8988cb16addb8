"""REINFORCE's own options: the loss summed over the batch, weights of the user's own, a
critic redrawn before every fit, and the critic's loss on samples it was not fitted to."""

import pytest
import torch

from pglab.algos import make_algo
from pglab.config import build_config
from pglab.envs import make_vec_env
from pglab.errors import ConfigError
from pglab.policies import make_actor, make_critic
from pglab.rollout import Collector


def _rule(weights: str = "fr", num_envs: int = 1, **options):
    """A REINFORCE rule with small networks on CartPole, and its collector."""
    flags = {"algo.name": "reinforce", "algo.weights": weights, "run.preset": "none"}
    config = build_config(flags={**flags, **options}).algo.resolve()
    torch.manual_seed(0)
    envs = make_vec_env("CartPole-v1", num_envs)
    actor = make_actor(4, envs.single_action_space, [16])
    critic = make_critic(4, [16]) if config.uses_critic else None
    return make_algo(config, actor, critic), Collector(envs, actor, critic, seed=0)


def _policy_gradient(rule, data, **hp):
    loss, _ = rule.loss(rule.actor, None, data, {**rule.hyperparameters(rule.config, 0.0), **hp})
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, rule.params)])


def test_the_summed_loss_is_the_mean_loss_times_the_episodes_length():
    """One episode per batch: the gradient of -sum log pi Psi - c_H sum H is that of the
    mean loss times the number of valid samples (the episode's steps)."""
    rule, collector = _rule(**{"algo.entropy_coef": 0.1})
    data = rule.prepare(collector.collect_episodes(1), rule.config)
    samples = int(data["valid"].sum())
    assert samples > 5
    mean = _policy_gradient(rule, data, loss_reduction="mean")
    summed = _policy_gradient(rule, data, loss_reduction="sum")
    torch.testing.assert_close(summed, mean * samples, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(summed, mean)


def test_a_run_with_the_summed_loss_takes_larger_steps():
    rule, collector = _rule(**{"algo.loss_reduction": "sum"})
    metrics = rule.update(collector.collect_episodes(1), progress=0.0)
    mean_rule, collector = _rule()
    mean_metrics = mean_rule.update(collector.collect_episodes(1), progress=0.0)
    assert metrics["grad_norm"] > 5 * mean_metrics["grad_norm"]


@pytest.mark.parametrize("algo", ["a2c", "ppo", "trpo"])
def test_only_reinforce_sums_its_loss(algo):
    with pytest.raises(ConfigError) as error:
        build_config(overrides=[f"algo={algo}", "loss_reduction=sum"])
    message = str(error.value)
    assert "\n" not in message
    for words in ("algo.loss_reduction", f"must be mean for {algo}", "reinforce", "got sum"):
        assert words in message
    with pytest.raises(
        ConfigError, match="algo.loss_reduction must be one of mean, sum; got 'max'"
    ):
        build_config(overrides=["algo=reinforce", "loss_reduction=max"])
