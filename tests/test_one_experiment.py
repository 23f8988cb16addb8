"""One seed, one experiment: a run trains bit for bit the same alone, in a population
of any size, and in ``--jobs`` processes."""

import csv

import pytest

from pglab.config import build_config
from pglab.population import Population, member_configs, train, train_many

#: Columns that time the run; every other column must match exactly.
TIMING = ("wall_seconds", "steps_per_second")

CASES = {
    "ppo-4-minibatches": (
        "CartPole-v1",
        {"algo.name": "ppo", "algo.minibatches": 4, "run.total_steps": 3000},
    ),
    "ppo-target-kl": (
        "CartPole-v1",
        {
            "algo.name": "ppo",
            "algo.minibatches": 4,
            "algo.target_kl": 0.003,
            "algo.lr": 0.02,
            "run.total_steps": 3000,
        },
    ),
    "ppo-autograd": (
        "CartPole-v1",
        {
            "algo.name": "ppo",
            "algo.minibatches": 2,
            "algo.gradients": "autograd",
            "run.total_steps": 2000,
        },
    ),
    "a2c": ("CartPole-v1", {"algo.name": "a2c", "run.total_steps": 2000}),
    "ppo-gaussian": (
        "Pendulum-v1",
        {
            "algo.name": "ppo",
            "algo.batch_size": 512,
            "algo.minibatches": 4,
            "run.total_steps": 1536,
        },
    ),
    "a2c-gaussian": ("Pendulum-v1", {"algo.name": "a2c", "run.total_steps": 1000}),
    "reinforce-episodes": (
        "CartPole-v1",
        {"algo.name": "reinforce", "algo.weights": "fr", "run.total_steps": 3000},
    ),
    "reinforce-multi-epoch": (
        "CartPole-v1",
        {
            "algo.name": "reinforce",
            "algo.weights": "fr",
            "algo.epochs": 4,
            "algo.minibatches": 4,
            "algo.target_kl": 0.02,
            "algo.lr": 0.01,
            "run.total_steps": 3000,
        },
    ),
    "reinforce-multi-epoch-gae": (
        "Pendulum-v1",
        {
            "algo.name": "reinforce",
            "algo.weights": "gae",
            "algo.epochs": 3,
            "algo.minibatches": 2,
            "algo.batch_size": 256,
            "algo.value_reset_optimizer": True,
            "run.total_steps": 1024,
        },
    ),
    "reinforce-gae-steps": (
        "CartPole-v1",
        {
            "algo.name": "reinforce",
            "algo.weights": "gae",
            "algo.batch_size": 512,
            "run.total_steps": 2048,
        },
    ),
}


def _base(tmp_path, env_id, flags, name):
    flags = {
        "env.id": env_id,
        "run.out": str(tmp_path / name),
        "run.progress": "off",
        "run.eval_every": 1000,
        "run.eval_episodes": 2,
        "run.checkpoint_every": 0,
        **flags,
    }
    return build_config(flags=flags, flags_source="test").resolve(None)


def _metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.mark.parametrize("case", list(CASES))
def test_a_member_trains_as_its_seed_alone(tmp_path, case):
    env_id, flags = CASES[case]
    alone = train(member_configs(_base(tmp_path, env_id, flags, "alone"), [1])[0])
    expected = _metrics(alone.path)
    assert len(expected) > 2
    for size in (1, 4):
        seeds = [1, 3, 0, 2][:size] if size == 1 else [3, 1, 0, 2][:size]
        runs = Population(member_configs(_base(tmp_path, env_id, flags, f"m{size}"), seeds)).train()
        assert _metrics(runs[seeds.index(1)].path) == expected, f"seed 1 among {size}"


@pytest.mark.slow
def test_sixteen_members_and_two_processes_train_as_alone(tmp_path):
    env_id, flags = CASES["ppo-4-minibatches"]
    base = _base(tmp_path, env_id, flags, "alone")
    alone = train(member_configs(base, [5])[0])
    expected = _metrics(alone.path)
    sixteen = Population(member_configs(_base(tmp_path, env_id, flags, "m16"), range(16))).train()
    assert _metrics(sixteen[5].path) == expected
    jobs = train_many(member_configs(_base(tmp_path, env_id, flags, "jobs"), [4, 5, 6]), jobs=2)
    assert _metrics(jobs[1].path) == expected
