"""Population training: stacked members behave as independent runs."""

import csv

import pytest
import torch

import pglab
from pglab.config import build_config
from pglab.errors import ConfigError, PglabError
from pglab.population import (
    Population,
    check_population,
    deal,
    member_configs,
    parse_seeds,
    train_many,
)

FAST = {"run.progress": "off", "run.checkpoint_every": 0}


def configs(tmp_path, seeds, **flags):
    base = build_config(
        flags={
            "env.id": "CartPole-v1",
            "algo.name": "ppo",
            "run.out": str(tmp_path),
            **FAST,
            **flags,
        },
        flags_source="test",
    )
    return member_configs(base.resolve(475.0), seeds)


@pytest.mark.parametrize("gradients", ["auto", "autograd"])
def test_population_gradient_is_each_members_own(tmp_path, gradients):
    population = Population(configs(tmp_path, [0, 1, 2], **{"algo.gradients": gradients}))
    rule = population.rule
    batches = [t.collect() for t in population.trainers]
    datas = [rule.prepare(b, t.config.algo) for t, b in zip(population.trainers, batches)]
    hp = rule.hyperparameters(rule.config, 0.0)
    # autograd on each member's own modules
    expected = []
    for m, (trainer, data) in enumerate(zip(population.trainers, datas)):
        loss, _ = rule.loss(trainer.actor, trainer.critic, data, hp)
        expected.append(torch.autograd.grad(loss, rule.stack.members[m]))
    # the stacked call
    varying = {k: torch.tensor([hp[k]] * 3) for k in ("clip_range", "vf_coef", "entropy_coef")}
    fixed = {k: v for k, v in hp.items() if k not in varying and k != "lr"}
    data = {k: torch.stack([d[k] for d in datas]) for k in datas[0]}
    grads, _ = rule.gradients([0, 1, 2], data, {**fixed, **varying})
    grads = rule.stack.unflatten(grads)
    for m in range(3):
        for got, want in zip(grads, expected[m]):
            torch.testing.assert_close(got[m], want, rtol=1e-4, atol=1e-6)
    # some members only (the others have finished): rows in the order given
    some = {k: v[[2, 0]] for k, v in {**data, **varying}.items()}
    hp_some = {**fixed, **{k: some.pop(k) for k in varying}}
    grads, _ = rule.gradients([2, 0], some, hp_some)
    grads = rule.stack.unflatten(grads)
    for row, m in enumerate([2, 0]):
        for got, want in zip(grads, expected[m]):
            torch.testing.assert_close(got[row], want, rtol=1e-4, atol=1e-6)


def test_members_batches_are_scored_by_their_own_networks(tmp_path):
    """The lockstep collection scores every member's batch in one call over the stack:
    the log-probabilities and values are those of each member's own actor and critic."""
    population = Population(configs(tmp_path, [0, 1, 2]))
    batches = population.collect([2, 0])
    for m, batch in zip([2, 0], batches):
        collector = population.trainers[m].collector
        obs, actions = batch.obs.flatten(0, 1), batch.actions.flatten(0, 1)
        last = torch.from_numpy(collector.obs)
        log_probs, values, last_value = collector._score(obs, actions, last)
        torch.testing.assert_close(batch.log_probs.flatten(), log_probs)
        torch.testing.assert_close(batch.values.flatten(), values)
        torch.testing.assert_close(batch.next_values[-1], last_value)


def rows(run):
    with open(run.path / "metrics.csv", newline="") as handle:
        drop = ("wall_seconds", "steps_per_second")
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def test_a_repeated_member_gives_identical_results(tmp_path):
    twins = configs(tmp_path, [3, 4], **{"run.total_steps": 3000, "run.eval_every": 1000})
    twins[1] = twins[0]  # the same member twice
    first, second = Population(twins).train(progress="off")
    assert first.path != second.path
    assert rows(first) == rows(second)
    for a, b in zip(first.agent.actor.parameters(), second.agent.actor.parameters()):
        assert torch.equal(a, b)


def test_member_folders_are_runs_that_resume(tmp_path):
    population = Population(configs(tmp_path, [0, 1], **{"run.total_steps": 1000}))
    runs = population.train(progress="off")
    assert [r.summary["seed"] for r in runs] == [0, 1]
    state = torch.load(runs[1].path / "checkpoints" / "last.pt", weights_only=False)
    adam = state["algo"]["optimizer"]  # member 1's own row of the stacked optimizer
    assert adam["steps"] == population.rule.optimizer.steps[1] > 0
    assert torch.equal(adam["exp_avg"], population.rule.optimizer.state["exp_avg"][1])
    for name, weights in state["actor"].items():  # its own weights, not the whole stack
        assert weights.untyped_storage().nbytes() == weights.nbytes, name
        assert torch.equal(weights, dict(population.trainers[1].actor.named_parameters())[name])
    assert pglab.load(runs[1].path).config.run.seed == 1


def test_members_may_differ_in_learning_rate_not_in_shape(tmp_path):
    a, b = configs(tmp_path, [0, 1])
    check_population([a, build_config(flags={"algo.lr": 0.01}, flags_source="t", base=b)])
    wide = build_config(flags={"policy.hidden": [32]}, flags_source="t", base=b)
    with pytest.raises(ConfigError, match="policy.hidden"):
        check_population([a, wide])


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5,2") == [5, 2]
    assert parse_seeds("7") == [7]
    for bad in ("x", "3-1", "1,1", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_the_first_process_is_dealt_a_quarter_share_more_and_every_run_once():
    assert deal(16, 2) == [[0, 2, 4, 6, 8, 9, 11, 13, 15], [1, 3, 5, 7, 10, 12, 14]]
    assert deal(16, 2, head_start=0.0) == [list(range(0, 16, 2)), list(range(1, 16, 2))]
    for count, jobs in [(1, 2), (3, 2), (5, 3), (40, 4)]:
        shares = deal(count, jobs)
        assert len(shares) == min(count, jobs) and all(shares)
        assert sorted(i for share in shares for i in share) == list(range(count))


def test_runs_of_an_env_named_by_import_path_come_back_from_their_processes(tmp_path):
    """The user named the module in this process: its runs' agents load back from their
    folders without an allow list (a folder read later still needs one)."""
    runs = pglab.train(
        "faulty_envs:Countdown",
        algo="reinforce",
        seeds=[0, 1],
        jobs=2,
        total_steps=60,
        out=str(tmp_path),
        progress="off",
    )
    assert [r.summary["seed"] for r in runs] == [0, 1] and all(r.agent for r in runs)
    with pytest.raises(PglabError, match="allow-import faulty_envs"):
        pglab.load(runs[0].path)


def test_processes_and_sequential_fallback(tmp_path):
    runs = pglab.train(
        "CartPole-v1",
        algo="ppo",
        seeds=[0, 1, 2],
        jobs=2,
        total_steps=600,
        out=str(tmp_path),
        progress="off",
    )
    assert [r.summary["seed"] for r in runs] == [0, 1, 2]
    assert all(r.summary["total_steps"] >= 600 for r in runs)
    reinforce = pglab.train(
        "CartPole-v1",
        algo="reinforce",
        seeds=[0, 1],
        total_steps=300,
        out=str(tmp_path),
        progress="off",
    )
    assert [r.summary["seed"] for r in reinforce] == [0, 1]


@pytest.mark.slow
def test_population_solves_cartpole_like_single_runs(tmp_path):
    # The single-run test (test_learning) solves CartPole on seeds 0-4 within 100k steps.
    runs = train_many(configs(tmp_path, range(5), **{"run.total_steps": 100_000}), progress="off")
    solved = [r.summary["solved_at_step"] for r in runs]
    assert all(s is not None and s <= 100_000 for s in solved), solved
