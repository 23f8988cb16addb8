"""REINFORCE's own options: the loss summed over the batch, weights of the user's own, a
critic redrawn before every fit, and the critic's loss on samples it was not fitted to."""

import copy
import csv
import math

import gymnasium as gym
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


@pytest.mark.parametrize("orthogonal", [False, True])
def test_a_redrawn_critic_has_a_fresh_draw_of_the_initialisation_it_was_built_with(orthogonal):
    from pglab.policies import init_layer, orthogonal_init, redraw_critic

    critic = make_critic(4, [64, 64])
    if orthogonal:
        orthogonal_init(make_actor(4, gym.spaces.Discrete(2), [8]), critic)
    before = [p.detach().clone() for p in critic.parameters()]
    torch.manual_seed(0)
    global_stream = torch.get_rng_state()
    redraw_critic(critic, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), global_stream)  # the member's stream alone
    layers = [critic.body[0], critic.body[2], critic.value]
    for layer, weight in zip(layers, before[::2]):
        assert not torch.equal(layer.weight, weight)
        if orthogonal:  # orthogonal rows (or columns) scaled by the gain, zero biases
            gain = 1.0 if layer is critic.value else math.sqrt(2)
            w = layer.weight.detach()
            product = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.testing.assert_close(
                product, gain**2 * torch.eye(min(w.shape)), atol=1e-5, rtol=0
            )
            assert not layer.bias.any()
        else:  # torch's own: U(-k, k) with k = 1 / sqrt(fan_in), for weights and biases
            bound = 1 / math.sqrt(layer.in_features)
            for p in (layer.weight, layer.bias):
                assert p.abs().max() <= bound
            if layer.weight.numel() > 1000:
                assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    if not orthogonal:  # exactly torch's reset_parameters, drawn from the generator
        mine, theirs = torch.nn.Linear(64, 8), torch.nn.Linear(64, 8)
        init_layer(mine, None, torch.Generator().manual_seed(5))
        torch.manual_seed(5)
        theirs.reset_parameters()
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)


def test_value_reinit_redraws_each_critic_into_its_stack_before_its_fit(monkeypatch):
    import pglab.algos.reinforce as reinforce

    rule, collector = _rule("gae", 2, **{"algo.value_reinit": True, "algo.value_epochs": 3})
    drawn = []

    def redraw_and_look(critic, generator):
        before = [p.detach().clone() for p in critic.parameters()]
        real_redraw(critic, generator)
        drawn.append((before, [p.detach().clone() for p in critic.parameters()]))

    real_redraw = reinforce.redraw_critic
    monkeypatch.setattr(reinforce, "redraw_critic", redraw_and_look)
    for update in range(2):
        rule.update(collector.collect_steps(64), progress=0.0)
        before, after = drawn[update]
        assert all(not torch.equal(a, b) for a, b in zip(before, after))
        assert rule.value_optimizer.steps[0] == 3  # a new optimizer each batch
    first_draw, second_draw = drawn[0][1], drawn[1][1]
    assert all(not torch.equal(a, b) for a, b in zip(first_draw, second_draw))
    rule.value_stack.check()  # the critic's parameters are still the stack's rows
    own = torch.cat([p.detach().flatten() for p in rule.critic.parameters()])
    assert torch.equal(rule.value_stack.flat[0], own)


def test_the_critics_draws_continue_from_a_checkpoint_as_if_never_stopped():
    options = {"algo.value_reinit": True, "algo.value_holdout": 0.3, "algo.value_epochs": 2}
    rule, collector = _rule("gae", 2, **options)
    rule.update(collector.collect_steps(32), progress=0.0)
    saved = {
        "actor": copy.deepcopy(rule.actor.state_dict()),
        "critic": copy.deepcopy(rule.critic.state_dict()),
        "algo": copy.deepcopy(rule.state_dict(0)),
    }
    batch = collector.collect_steps(32)
    expected = rule.update(batch, progress=0.5)
    again, _ = _rule("gae", 2, **options)  # another rule, another generator state
    for generators in again.value_samplers.values():
        generators[0].manual_seed(99)
    again.actor.load_state_dict(saved["actor"])
    again.critic.load_state_dict(saved["critic"])
    again.load_state_dict(saved["algo"], 0)
    assert again.update(batch, progress=0.5) == expected
    for a, b in zip(again.critic.parameters(), rule.critic.parameters()):
        assert torch.equal(a, b)


def test_a_member_with_its_critic_redrawn_and_held_out_trains_as_its_seed_alone(tmp_path):
    options = {
        **TINY, "weights": "gae", "value_reinit": True, "value_holdout": 0.25,
        "batch_size": 128, "num_envs": 2, "total_steps": 640,
    }  # fmt: skip
    runs = pglab.train("CartPole-v1", "reinforce", out=str(tmp_path / "p"), seeds=[0, 1], **options)
    alone = pglab.train("CartPole-v1", "reinforce", out=str(tmp_path / "a"), seed=1, **options)
    rows = _metrics(alone)
    assert len(rows) > 3 and rows == _metrics(runs[1]) and rows != _metrics(runs[0])
    assert all(math.isfinite(float(row["value_loss_heldout"])) for row in rows)


def test_a_critic_over_trained_on_a_tiny_batch_loses_more_on_the_samples_it_never_saw():
    """Experiment 2 of the REINFORCE notes: many value steps at a high learning rate on a
    small batch fit its noise; the samples held out of the fit show it."""
    options = {"algo.value_holdout": 0.5, "algo.value_epochs": 500, "algo.value_lr": 0.1}
    rule, collector = _rule("gae", 2, **options)
    metrics = rule.update(collector.collect_steps(16), progress=0.0)
    assert math.isfinite(metrics["value_loss_heldout"])
    assert metrics["value_loss_heldout"] > 2 * metrics["value_loss"]
    plain, collector = _rule("gae", 2)
    assert "value_loss_heldout" not in plain.update(collector.collect_steps(16), progress=0.0)


def test_the_critics_options_are_one_line_where_they_cannot_apply(tmp_path):
    from custom_nets import TwoTowerCritic

    for flags, says in [
        (["algo=ppo", "value_reinit=true"], "algo.value_reinit must be false for ppo"),
        (["algo=a2c", "value_holdout=0.1"], "algo.value_holdout must be 0.0 for a2c"),
        (["algo=reinforce", "value_holdout=1"], r"algo.value_holdout must be a number in \[0, 1\)"),
    ]:
        with pytest.raises(ConfigError, match=says):
            build_config(overrides=flags)
    for weights, option in [("fr", "value_reinit=true"), ("r", "value_holdout=0.2")]:
        config = build_config(overrides=["algo=reinforce", f"weights={weights}", option])
        with pytest.raises(ConfigError, match=f"needs a critic, which weights {weights} do not"):
            config.resolve(None)
    with pytest.raises(ConfigError, match="a critic or body of your own"):
        pglab.train(
            "CartPole-v1", "reinforce", weights="gae", value_reinit=True, out=str(tmp_path),
            policy={"critic": TwoTowerCritic}, **TINY,
        )  # fmt: skip
