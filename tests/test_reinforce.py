"""REINFORCE's own options: the loss summed over the batch, weights of the user's own, a
critic redrawn before every fit, and the critic's loss on samples it was not fitted to."""

import csv
import math

import pytest
import torch

import pglab
from pglab.algos import make_algo
from pglab.config import build_config
from pglab.envs import make_vec_env
from pglab.errors import CheckpointError, ConfigError, TrainingError
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


TINY = {
    "total_steps": 1500,
    "eval_every": 1000,
    "eval_episodes": 2,
    "checkpoint_every": 0,
    "progress": "off",
    "stop_at_return": "none",
    "preset": "none",
}

#: Columns that time the run; every other column must match exactly.
TIMING = ("wall_seconds", "steps_per_second")


def _metrics(run) -> list[dict[str, str]]:
    with open(run.path / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(handle)]


def test_a_weight_function_equal_to_reward_to_go_trains_as_fr_and_is_stored_by_name(tmp_path):
    from weight_functions import reward_to_go

    mine = pglab.train("CartPole-v1", "reinforce", weights=reward_to_go, out=str(tmp_path), **TINY)
    fr = pglab.train("CartPole-v1", "reinforce", weights="fr", out=str(tmp_path / "fr"), **TINY)
    assert mine.agent.config.algo.weights == "weight_functions:reward_to_go"
    assert mine.agent.config.algo.batch_mode == "episodes"  # no critic: whole episodes
    assert mine.path.name.startswith("reinforce-reward_to_go-seed0-")
    rows = _metrics(mine)
    assert len(rows) > 2 and rows == _metrics(fr)


def test_a_weight_function_that_names_the_values_gets_a_critic(tmp_path):
    from pglab.algos.reinforce import weights_need_critic

    assert weights_need_critic("weight_functions:one_step_advantage")
    assert not weights_need_critic("weight_functions:every_argument")  # **kwargs names none
    config = build_config(
        overrides=["algo=reinforce", "weights=weight_functions:one_step_advantage"]
    ).resolve(None)
    assert config.algo.uses_critic and config.algo.batch_mode == "steps"
    options = {**TINY, "batch_size": 256, "total_steps": 512}
    run = pglab.train(
        "CartPole-v1", "reinforce", weights="weight_functions:one_step_advantage",
        out=str(tmp_path), **options,
    )  # fmt: skip
    assert all(math.isfinite(float(row["value_loss"])) for row in _metrics(run))
    rule, collector = _rule("weight_functions:every_argument", num_envs=2)
    batch = collector.collect_episodes(2)
    data = rule.prepare(batch, rule.config)  # the function's rewards, 0 off the samples
    torch.testing.assert_close(data["psi"], (batch.rewards * batch.valid).flatten())


def test_a_run_whose_weights_are_a_function_is_loaded_only_when_its_module_is_allowed(tmp_path):
    run = pglab.train(
        "CartPole-v1", "reinforce", weights="weight_functions:reward_to_go",
        out=str(tmp_path), **{**TINY, "total_steps": 300},
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="--allow-import weight_functions"):
        pglab.load(run.path)
    agent = pglab.load(run.path, allow_import=["weight_functions"])
    assert agent.config.algo.weights == "weight_functions:reward_to_go"


@pytest.mark.parametrize(
    ("weights", "error", "says"),
    [
        ("weight_functions:a_number", TrainingError, "must return Psi as a float tensor.*a float"),
        ("weight_functions:one_per_env", TrainingError, r"shape \(\d+, \d+\).*shape \(\d+,\)"),
        ("weight_functions:needs_a_discount_table", ConfigError, "takes 'discounts'"),
        ("weight_functions:missing", ConfigError, "has no 'missing'"),
        ("no.such_module:psi", ConfigError, "cannot import module 'no.such_module'"),
        (lambda rewards: rewards, ConfigError, "top of a module"),
        ("psi", ConfigError, "r, fr, dfr, dfrb, td, gae or a function's import path"),
    ],
)
def test_a_bad_weight_function_is_one_line(tmp_path, weights, error, says):
    with pytest.raises(error, match=says) as raised:
        pglab.train("CartPole-v1", "reinforce", weights=weights, out=str(tmp_path), **TINY)
    assert "\n" not in str(raised.value)


def test_only_reinforce_takes_a_weight_function():
    with pytest.raises(ConfigError, match="algo.weights must be gae for ppo"):
        build_config(overrides=["algo=ppo", "weights=weight_functions:reward_to_go"])
