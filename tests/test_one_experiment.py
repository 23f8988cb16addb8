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
    # narrow networks, 2 envs and minibatches of 16 rows: the products a BLAS rounds
    # differently in a batch (see dense.SMALL_BATCH)
    "ppo-small-matrices": (
        "CartPole-v1",
        {
            "algo.name": "ppo",
            "env.num_envs": 2,
            "env.normalize_obs": True,
            "algo.batch_size": 64,
            "algo.minibatches": 4,
            "policy.hidden": [16],
            "policy.value_hidden": [16],
            "run.total_steps": 1000,
        },
    ),
    "a2c": ("CartPole-v1", {"algo.name": "a2c", "run.total_steps": 2000}),
    # the masks acted with come from the member's own stream, the update's from the keys
    "ppo-dropout": (
        "CartPole-v1",
        {
            "algo.name": "ppo",
            "algo.minibatches": 4,
            "policy.dropout": 0.5,
            "run.total_steps": 1000,
        },
    ),
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
    "reinforce-redrawn-critic-with-held-out-samples": (
        "CartPole-v1",
        {
            "algo.name": "reinforce",
            "algo.weights": "gae",
            "algo.batch_size": 256,
            "algo.value_reinit": True,
            "algo.value_holdout": 0.2,
            "algo.value_epochs": 5,
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
    """Seed 1 trained alone, among 1, 4 and 16 members, and in one of two ``--jobs``
    processes: every metric of every row is the same."""
    env_id, flags = CASES[case]
    alone = train(member_configs(_base(tmp_path, env_id, flags, "alone"), [1])[0])
    expected = _metrics(alone.path)
    assert len(expected) > 2
    for seeds in ([1], [3, 1, 0, 2], [*range(9, 16), 1, *range(2, 9), 0]):
        runs = Population(
            member_configs(_base(tmp_path, env_id, flags, f"m{len(seeds)}"), seeds)
        ).train()
        assert _metrics(runs[seeds.index(1)].path) == expected, f"seed 1 among {len(seeds)}"
    jobs = train_many(member_configs(_base(tmp_path, env_id, flags, "jobs"), [2, 1]), jobs=2)
    assert _metrics(jobs[1].path) == expected, "seed 1 in the second of two processes"
