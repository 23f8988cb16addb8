"""Callbacks: called after each update and evaluation, able to stop a run cleanly,
never changing its numbers."""

import csv
import json

import pytest
import torch

import pglab
from pglab.errors import ConfigError

TINY = {
    "num_envs": 2,
    "batch_size": 64,
    "epochs": 1,
    "minibatches": 2,
    "total_steps": 640,
    "eval_every": 128,
    "eval_episodes": 2,
    "progress": "off",
    "checkpoint_every": 0,
    "stop_at_return": "none",
    "policy": {"hidden": [8], "value_hidden": [8]},
}


def rows(run):
    with open(run.path / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def numbers(run):
    skip = ("wall_seconds", "steps_per_second")
    return [{k: v for k, v in row.items() if k not in skip} for row in rows(run)]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The run without callbacks: its steps (a batch counts its valid samples) and its
    evaluation steps."""
    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path_factory.mktemp("plain")), **TINY)
    logged = rows(run)
    steps = [int(r["step"]) for r in logged]
    evaluations = [int(r["step"]) for r in logged if r["eval_return_mean"]]
    return run, steps, evaluations


def test_a_callback_that_stops_at_step_n_stops_there_with_checkpoint_and_summary(tmp_path, plain):
    def stop_at_256(event):
        if event.kind == "update" and event.step >= 256:
            event.stop("enough")

    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), callbacks=[stop_at_256], **TINY)
    first = next(step for step in plain[1] if step >= 256)
    assert run.summary["total_steps"] == first and run.summary["stopped"] == "callback: enough"
    assert json.loads((run.path / "summary.json").read_text())["total_steps"] == first
    assert (run.path / "checkpoints" / "last.pt").exists()
    assert int(rows(run)[-1]["step"]) == first


def test_events_carry_the_metrics_and_an_agent_that_acts(tmp_path, plain):
    seen = []

    class Recorder(pglab.Callback):
        def on_update(self, event):
            seen.append(("update", event.step, event.metrics["step"]))

        def on_evaluation(self, event):
            action = event.agent.act(torch.zeros(4).numpy())
            seen.append(("evaluation", event.step, event.metrics["eval_return_mean"], action))

    pglab.train("CartPole-v1", "ppo", out=str(tmp_path), callbacks=Recorder(), **TINY)
    updates = [s for s in seen if s[0] == "update"]
    assert [s[1] for s in updates] == plain[1]
    assert all(step == logged for _, step, logged in updates)
    assert [s[1] for s in seen if s[0] == "evaluation"] == plain[2]


def test_callbacks_never_change_a_runs_numbers(tmp_path, plain):
    def draws(event):
        torch.rand(100)  # a callback that uses torch's random stream

    hooked = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), callbacks=[draws], **TINY)
    assert numbers(plain[0]) == numbers(hooked)


def test_early_stopping_ends_after_patience_evaluations_without_improvement(tmp_path, plain):
    stopper = pglab.EarlyStopping(patience=2, min_delta=1e9)  # nothing counts as better
    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), callbacks=[stopper], **TINY)
    assert run.summary["total_steps"] == plain[2][2]  # the first (the best), then 2 more
    assert run.summary["stopped"].startswith("callback: no improvement")


def test_each_seed_of_a_population_gets_its_own_callbacks(tmp_path, plain):
    stopper = pglab.EarlyStopping(patience=2, min_delta=1e9)
    runs = pglab.train(
        "CartPole-v1", "ppo", out=str(tmp_path), seeds=[0, 1], callbacks=[stopper], **TINY
    )
    assert runs[0].summary["total_steps"] == plain[2][2]  # seed 0 is the plain run
    assert all(r.summary["stopped"].startswith("callback: no improvement") for r in runs)
    assert stopper.waited == 0  # the caller's object was copied, not shared


def test_checkpoint_every_and_evaluate_every_write_into_the_run_folder(tmp_path):
    callbacks = [pglab.CheckpointEvery(256), pglab.EvaluateEvery(320, episodes=2)]
    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), callbacks=callbacks, **TINY)
    steps = [int(r["step"]) for r in rows(run)]
    first_after = [next(s for s in steps if s >= mark) for mark in (256, 512)]
    kept = {p.name for p in (run.path / "checkpoints").glob("step-*.pt")}
    assert kept == {f"step-{step}.pt" for step in first_after}
    saved = pglab.load(run.path / "checkpoints" / f"step-{first_after[0]}.pt")
    assert saved.config.run.seed == 0
    with open(run.path / "evaluations.csv", newline="") as handle:
        evaluated = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in evaluated] == [next(s for s in steps if s >= 320), steps[-1]]


def test_bad_callbacks_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="callbacks are pglab.Callback objects"):
        pglab.train("CartPole-v1", "ppo", out=str(tmp_path), callbacks=[3], **TINY)
    with pytest.raises(ConfigError, match="patience"):
        pglab.EarlyStopping(patience=0)
    with pytest.raises(ConfigError, match="jobs must be 1 with callbacks"):
        pglab.train(
            "CartPole-v1", "ppo", out=str(tmp_path), seeds=[0, 1], jobs=2,
            callbacks=[print], **TINY,
        )  # fmt: skip
