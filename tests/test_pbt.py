"""In-process population-based training: exploitation copies a donor exactly, exploration
stays within the search space, and a member's saved schedule replays its run."""

import csv
import math

import numpy as np
import pytest
import torch

import pglab
from cli_run import assert_trains_from, run_cli
from pglab.config import build_config
from pglab.experiments.tune import run_tune
from pglab.pbt import SCHEDULE_FILE, Explorer, donor_state, read_schedule
from pglab.population import Population

SPEC = """
group = "pbt"
out = "{out}"
scheduler = "pbt"
members = 4
perturb_every = 1024
[set]
env = "CartPole-v1"
algo = "ppo"
total_steps = 4096
eval_every = 512
eval_episodes = 2
num_envs = 2
batch_size = 256
epochs = 2
minibatches = 2
checkpoint_every = 0
normalize_obs = true
"policy.hidden" = [16]
"policy.value_hidden" = [16]
[search]
lr = {{ log_uniform = [1e-4, 1e-2] }}
entropy_coef = {{ uniform = [0.0, 0.02] }}
clip_range = {{ uniform = [0.1, 0.3] }}
"""


def _rows(path):
    with open(path / "metrics.csv", newline="") as handle:
        skip = ("wall_seconds", "steps_per_second")
        return [{k: v for k, v in r.items() if k not in skip} for r in csv.DictReader(handle)]


def test_exploiting_copies_the_donors_weights_optimizer_and_normalisation_exactly():
    flags = {"env": "CartPole-v1", "algo": "ppo", "num_envs": 2, "batch_size": 64,
             "epochs": 2, "minibatches": 2, "normalize_obs": True, "normalize_reward": True,
             "policy.hidden": [8],
             "policy.value_hidden": [8], "run.progress": "off"}  # fmt: skip
    configs = [build_config(None, {**flags, "seed": s, "lr": 1e-3 * (s + 1)}) for s in (0, 1)]
    population = Population([c.resolve(475.0) for c in configs])
    for _ in range(2):  # moments, step counts and statistics of their own
        population.update([0, 1], population.collect([0, 1]))
    donor, taker = population.trainers
    sampler = population.rule.generators[1].get_state()
    returns = taker.normalizer.state_dict()["returns"]
    taker.adopt(donor_state(donor))
    for mine, theirs in [(taker.actor, donor.actor), (taker.critic, donor.critic)]:
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()):
            assert torch.equal(a, b)
    assert torch.equal(population.rule.stack.flat[1], population.rule.stack.flat[0])
    optimizer = population.rule.optimizer
    mine, theirs = optimizer.member_state(1), optimizer.member_state(0)
    assert (
        mine.keys() == theirs.keys() and mine["steps"] == theirs["steps"] == 8
    )  # 2 updates x 2 epochs x 2
    for key in set(mine) - {"name", "steps"}:  # Adam's moments
        assert torch.equal(mine[key], theirs[key]), key
    theirs, mine = donor.normalizer.state_dict(), taker.normalizer.state_dict()
    for part in ("obs", "return"):  # the statistics; the envs' running returns stay its own
        assert all(np.array_equal(mine[part][k], theirs[part][k]) for k in ("mean", "var"))
        assert mine[part]["count"] == theirs[part]["count"]
    assert torch.equal(mine["returns"], returns)
    assert torch.equal(population.rule.generators[1].get_state(), sampler)  # its own sampler
    assert taker.config.algo.lr == pytest.approx(2e-3)  # the values are explore's to set
    taker.set_hyperparameters({"lr": 5e-4, "gamma": 0.95})
    assert population.rule.configs[1].lr == 5e-4 and taker.normalizer.gamma == 0.95


def test_exploring_perturbs_within_the_search_space():
    search = {
        "lr": ("log_uniform", [1e-4, 1e-2]),
        "entropy_coef": ("uniform", [0.0, 0.02]),
        "clip_range": ("choice", [0.1, 0.2, 0.3]),
    }
    rng = np.random.default_rng(0)
    perturb = Explorer(search, resample_probability=0.0)
    start = {"lr": 1e-3, "entropy_coef": 0.019, "clip_range": 0.2}
    for _ in range(50):
        new = perturb.explore(start, rng)
        assert any(math.isclose(new["lr"], 1e-3 * f) for f in (0.8, 1.2))
        assert new["entropy_coef"] in (pytest.approx(0.019 * 0.8), 0.02)  # 1.2 x is clipped
        assert new["clip_range"] in (0.1, 0.3)  # a neighbour
    resample = Explorer(search, resample_probability=1.0)
    for _ in range(50):
        new = resample.explore(start, rng)
        assert 1e-4 <= new["lr"] <= 1e-2 and 0.0 <= new["entropy_coef"] <= 0.02
        assert new["clip_range"] in search["clip_range"][1]


def test_a_pbt_population_trains_and_a_members_schedule_replays_its_run(tmp_path, capsys):
    spec = tmp_path / "pbt.toml"
    spec.write_text(SPEC.format(out=tmp_path / "runs"))
    tune_dir = run_tune(spec, echo=lambda _: None)
    for name in ("members.csv", "events.csv", "best.toml"):
        assert (tune_dir / name).is_file()
    for name in ("schedules.png", "curves.png"):
        assert (tune_dir / name).read_bytes()[:4] == b"\x89PNG"
    members = sorted((tmp_path / "runs" / "pbt" / "pbt").glob("member-*"))
    assert len(members) == 4
    exploited = [m for m in members if read_schedule(m / SCHEDULE_FILE).events]
    assert exploited, "a round changes the bottom quarter"
    member = exploited[0]
    schedule = read_schedule(member / SCHEDULE_FILE)
    assert all(e["from"] != member.name for e in schedule.events)
    replay = pglab.train(
        config=str(member / "config.toml"),
        schedule=str(member / SCHEDULE_FILE),
        out=str(tmp_path / "replay"),
        run={"name": "replay"},
        progress="off",
    )
    assert _rows(replay.path) == _rows(member)
    assert_trains_from(tune_dir / "best.toml", tmp_path / "again", capsys)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('"policy.activation" = { choice = ["tanh", "relu"] }', "changes only algo.lr"),
        ("", "perturb_every must be a positive multiple of run.eval_every"),
    ],
)
def test_a_pbt_spec_that_cannot_run_is_one_line(extra, message, tmp_path, capsys):
    text = SPEC.format(out=tmp_path / "runs") + extra + "\n"
    if not extra:
        text = text.replace("perturb_every = 1024", "perturb_every = 1000")
    spec = tmp_path / "pbt.toml"
    spec.write_text(text)
    code, _, err = run_cli(["tune", str(spec)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.xdist_group("ray")  # one worker, one Ray instance
def test_ray_tunes_pbt_trains_the_same_population_spec(tmp_path, local_ray):
    spec = tmp_path / "pbt.toml"
    text = SPEC.format(out=tmp_path / "runs").replace("members = 4", "members = 2")
    spec.write_text(text.replace("total_steps = 4096", "total_steps = 2048"))
    tune_dir = run_tune(spec, backend="ray", echo=lambda _: None)
    with open(tune_dir / "ray_members.csv", newline="") as handle:
        members = list(csv.DictReader(handle))
    assert len(members) == 2 and all(int(m["step"]) >= 2048 for m in members), members
    folders = list((tmp_path / "runs" / "pbt" / "ray-pbt").glob("member-*/metrics.csv"))
    assert len(folders) == 2
    best = build_config(tune_dir / "best.toml")  # the best member's values, a config file
    assert 1e-4 <= best.algo.lr <= 1e-2 and 0.1 <= best.algo.clip_range <= 0.3


def test_ray_pbt_perturbations_stay_within_the_search_space():
    from pglab.experiments.ray_tune import _within_bounds

    search = {"algo.lam": ("uniform", [0.8, 1.0]), "algo.lr": ("log_uniform", [1e-4, 1e-2]),
              "algo.epochs": ("int_uniform", [1, 8]), "algo.head": ("choice", ["a", "b"])}  # fmt: skip
    perturbed = {"lam": 1.0643, "lr": 5e-5, "epochs": 9.6, "head": "b"}  # Ray's x1.2 and x0.8
    assert _within_bounds(perturbed, search) == {"lam": 1.0, "lr": 1e-4, "epochs": 8, "head": "b"}


def test_a_pbt_population_stopped_within_its_first_round_resumes_to_its_budget(
    tmp_path, monkeypatch
):
    """A stop after the first round's events but before every member's round checkpoint
    (as a kill -9 can land) resumes: the member the round did not reach restarts from
    its starting checkpoint and its unsaved events are dropped."""
    from pglab.member import Trainer

    class Crash(Exception):
        pass

    spec = tmp_path / "pbt.toml"
    spec.write_text(SPEC.format(out=tmp_path / "runs"))
    folder = tmp_path / "runs" / "pbt" / "pbt"
    save, round_saves = Trainer.save, []

    def crash_in_the_first_round(self, run_dir):
        if self.steps > 0:  # a round's checkpoint, not a starting one
            round_saves.append(run_dir)
            if len(round_saves) == 2:  # one member has its round checkpoint, three do not
                raise Crash
        save(self, run_dir)

    monkeypatch.setattr(Trainer, "save", crash_in_the_first_round)
    with pytest.raises(Crash):
        run_tune(spec, echo=lambda _: None)
    monkeypatch.setattr(Trainer, "save", save)
    assert any(read_schedule(s).events for s in folder.glob(f"member-*/{SCHEDULE_FILE}"))
    run_tune(spec, echo=lambda _: None)
    for member in sorted(folder.glob("member-*")):
        steps = [int(r["step"]) for r in _rows(member)]
        assert steps == sorted(set(steps)) and steps[-1] >= 4096, member.name
        events = [int(e["step"]) for e in read_schedule(member / SCHEDULE_FILE).events]
        assert events == sorted(set(events)) and all(s in steps for s in events), member.name


def test_a_pbt_population_killed_after_a_round_resumes_to_its_budget(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = tmp_path / "pbt.toml"
    spec.write_text(SPEC.format(out=tmp_path / "runs").replace("4096", "6144"))
    folder = tmp_path / "runs" / "pbt" / "pbt"
    child = subprocess.Popen(
        [sys.executable, "-m", "pglab.cli", "tune", str(spec)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        schedules = list(folder.glob(f"member-*/{SCHEDULE_FILE}"))
        if len(schedules) == 4 and any(read_schedule(s).events for s in schedules):
            break  # the first round is written
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL  # killed mid-run, not after the end
    run_tune(spec, echo=lambda _: None)
    for member in sorted(folder.glob("member-*")):
        rows = _rows(member)
        steps = [int(r["step"]) for r in rows]
        assert steps == sorted(set(steps)) and steps[-1] >= 6144, member.name
        events = [int(e["step"]) for e in read_schedule(member / SCHEDULE_FILE).events]
        assert events == sorted(set(events)) and all(s in steps for s in events), member.name
