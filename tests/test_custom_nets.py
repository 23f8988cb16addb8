"""Networks of the user's own: a body class by import path (config) or as a class (API),
stored by name in the checkpoint and rebuilt on load, with the same trust rule as a
custom env."""

import subprocess
import sys
from pathlib import Path

import pytest

import pglab
from custom_nets import GatedBody
from pglab.errors import CheckpointError, ConfigError, PglabError

TINY = {
    "num_envs": 2,
    "batch_size": 64,
    "epochs": 2,
    "minibatches": 2,
    "total_steps": 256,
    "eval_episodes": 2,
    "progress": "off",
    "checkpoint_every": 0,
    "stop_at_return": "none",
}


@pytest.mark.parametrize("algo", ["ppo", "a2c", "trpo", "reinforce"])
def test_a_body_class_trains_and_acts_through_the_plain_path(algo, tmp_path):
    policy = {"body": "custom_nets:GatedBody", "body_kwargs": {"width": 12}}
    run = pglab.train("CartPole-v1", algo, out=str(tmp_path), policy=policy, **TINY)
    assert isinstance(run.agent.actor.body, GatedBody)
    assert run.agent.actor.body.value.out_features == 12
    assert run.summary["paths"]["acting"] == "torch"
    assert run.summary["paths"].get("gradient", "autograd") == "autograd"


def test_a_body_class_saves_loads_and_evaluates_in_a_fresh_process(tmp_path):
    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), policy={"body": GatedBody}, **TINY)
    assert run.agent.actor.body.value.out_features == 16
    tests = str(Path(__file__).parent)
    script = f"""
import sys
sys.path.insert(0, {tests!r})
import pglab
agent = pglab.load({str(run.path)!r}, allow_import=["custom_nets"])
assert type(agent.actor.body).__name__ == "GatedBody"
print(pglab.evaluate(agent, episodes=2, seed=5).mean)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) == pglab.evaluate(run.agent, episodes=2, seed=5).mean


def test_a_body_named_in_a_file_is_imported_only_when_allowed(tmp_path):
    run = pglab.train(
        "CartPole-v1", "ppo", out=str(tmp_path), policy={"body": "custom_nets:GatedBody"}, **TINY
    )
    with pytest.raises(CheckpointError, match="--allow-import custom_nets"):
        pglab.load(run.path)


def test_bad_bodies_are_one_line_errors(tmp_path):
    class Local(GatedBody):
        pass

    with pytest.raises(ConfigError, match="top of a module"):
        pglab.train("CartPole-v1", "ppo", out=str(tmp_path), policy={"body": Local}, **TINY)
    with pytest.raises(ConfigError, match="policy.body must be one of"):
        pglab.train("CartPole-v1", "ppo", out=str(tmp_path), policy={"body": "gated"}, **TINY)
    with pytest.raises(PglabError, match="has no 'Missing'"):
        pglab.train(
            "CartPole-v1", "ppo", out=str(tmp_path), policy={"body": "custom_nets:Missing"},
            **TINY,
        )  # fmt: skip
    with pytest.raises(PglabError, match="body_kwargs"):
        pglab.train(
            "CartPole-v1", "ppo", out=str(tmp_path),
            policy={"body": GatedBody, "body_kwargs": {"depth": 3}}, **TINY,
        )  # fmt: skip


def test_a_member_with_a_body_class_trains_as_the_same_seed_alone(tmp_path):
    import csv

    def numbers(run):
        with open(run.path / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [{k: v for k, v in r.items() if "second" not in k} for r in rows]

    policy = {"body": "custom_nets:GatedBody"}
    runs = pglab.train(
        "CartPole-v1", "ppo", out=str(tmp_path / "p"), seeds=[0, 1], policy=policy, **TINY
    )
    alone = pglab.train(
        "CartPole-v1", "ppo", out=str(tmp_path / "a"), seed=1, policy=policy, **TINY
    )
    assert numbers(runs[1]) == numbers(alone)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "trpo", "reinforce"])
def test_a_whole_actor_and_critic_of_ones_own_train_save_and_load(algo, tmp_path):
    from custom_nets import TwoTowerCritic, WideActor

    policy = {"actor": WideActor, "actor_kwargs": {"width": 20}, "critic": TwoTowerCritic}
    options = {**TINY, "weights": "gae"} if algo == "reinforce" else TINY
    run = pglab.train("CartPole-v1", algo, out=str(tmp_path), policy=policy, **options)
    assert type(run.agent.actor) is WideActor and run.agent.config.policy.actor.endswith(
        "custom_nets:WideActor"
    )
    agent = pglab.load(run.path, allow_import=["custom_nets"])
    assert agent.actor.body[0].out_features == 20
    assert (
        pglab.evaluate(agent, episodes=2, seed=3).mean
        == pglab.evaluate(run.agent, episodes=2, seed=3).mean
    )


def test_an_actor_class_that_makes_something_else_is_one_line(tmp_path):
    for wrong, says in [
        ("NotAnActor", "must make a pglab.policies.Actor"),
        ("GatedBody", "Discrete"),
    ]:
        with pytest.raises(PglabError, match=says):
            pglab.train(
                "CartPole-v1", "ppo", out=str(tmp_path), policy={"actor": f"custom_nets:{wrong}"},
                **TINY,
            )  # fmt: skip


def test_a_schedule_of_ones_own_sets_the_learning_rate_and_is_checked_on_load(tmp_path):
    import csv

    from custom_nets import warm_up

    options = {**TINY, "total_steps": 512, "lr": 0.01}
    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), lr_schedule=warm_up, **options)
    assert run.agent.config.algo.lr_schedule.endswith("custom_nets:warm_up")
    with open(run.path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    before = [0] + [int(row["step"]) for row in rows[:-1]]  # the steps before each update
    rates = [float(row["lr"]) for row in rows]
    assert rates == pytest.approx([0.01 * warm_up(b / 512) for b in before], rel=1e-4)
    with pytest.raises(CheckpointError, match="--allow-import custom_nets"):
        pglab.load(run.path)
    with pytest.raises(ConfigError, match="top of a module"):
        pglab.train("CartPole-v1", "ppo", out=str(tmp_path), lr_schedule=lambda p: 1.0, **TINY)


def test_torch_dropout_in_a_users_body_is_warned_about(tmp_path, capsys):
    """Its masks are not keyed: the update scores actions under masks they were not
    drawn with. pglab's own dropout is keyed and draws no warning."""
    from custom_nets import DroppingBody

    pglab.train("CartPole-v1", "ppo", out=str(tmp_path), policy={"body": DroppingBody}, **TINY)
    assert "holds torch's own dropout" in capsys.readouterr().err
    pglab.train("CartPole-v1", "ppo", out=str(tmp_path), policy={"dropout": 0.3}, **TINY)
    assert "dropout" not in capsys.readouterr().err
