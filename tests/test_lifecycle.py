"""A run's life after its budget: the best evaluation's checkpoint, extending a finished
run, and loading either checkpoint."""

import csv
import importlib

import pytest
import tomllib

import pglab
from pglab.checkpoint import load_checkpoint
from pglab.cli import main
from pglab.errors import ConfigError

TINY = {
    "num_envs": 2,
    "batch_size": 64,
    "epochs": 1,
    "minibatches": 2,
    "total_steps": 512,
    "eval_every": 64,
    "eval_episodes": 2,
    "progress": "off",
    "checkpoint_every": 0,
    "stop_at_return": "none",
    "policy": {"hidden": [8], "value_hidden": [8]},
}


def evaluations(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [
            (int(r["step"]), float(r["eval_return_mean"]))
            for r in csv.DictReader(handle)
            if r["eval_return_mean"]
        ]


def test_best_pt_holds_the_best_evaluation_and_the_summary_records_best_and_final(tmp_path):
    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), lr=3e-3, **TINY)
    scored = evaluations(run.path)
    best_step, best_mean = max(scored, key=lambda e: (e[1], -e[0]))  # the first of the best
    assert run.summary["best_eval_return_mean"] == best_mean
    assert run.summary["best_eval_step"] == best_step
    assert run.summary["eval_return_mean"] == scored[-1][1]
    kept = load_checkpoint(run.path / "checkpoints" / "best.pt")["counters"]
    assert kept["steps"] == best_step and kept["last_eval"]["mean"] == best_mean
    agent = pglab.load(run.path, checkpoint="best")
    assert agent.config.run.seed == 0


def test_resume_with_more_steps_extends_a_finished_run_and_its_metrics_continue(tmp_path):
    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), **TINY)
    before = evaluations(run.path)
    longer = pglab.resume(run.path, total_steps=1024)
    after = evaluations(run.path)
    assert after[: len(before)] == before and after[-1][0] >= 1024 > before[-1][0]
    assert longer.summary["total_steps"] >= 1024 and longer.summary["budget_steps"] == 1024
    config = tomllib.loads((run.path / "config.toml").read_text())
    assert config["run"]["total_steps"] == 1024
    with pytest.raises(pglab.PglabError, match="already finished"):
        pglab.resume(run.path)
    with pytest.raises(ConfigError, match="--steps must exceed"):
        pglab.resume(run.path, total_steps=100)


def test_a_solved_run_extended_trains_on_past_its_target(tmp_path):
    options = {**TINY, "stop_at_return": 5.0}
    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), **options)
    assert run.summary["stopped"] == "solved" and run.summary["total_steps"] < 512
    longer = pglab.resume(run.path, total_steps=512)
    assert longer.summary["total_steps"] >= 512 and longer.summary["stopped"] == "budget"


def test_the_cli_extends_a_run_and_evaluates_its_best_checkpoint(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["train", "--steps", "256", "--out", str(out), "--name", "r", "--set", "eval_every=64"]
    args += ["--set", "batch_size=64", "--set", "num_envs=2", "--set", "run.progress=off"]
    assert main([*args, "--stop-at-return", "none"]) == 0
    run_dir = out / "CartPole-v1" / "r"
    assert main(["train", "--resume", str(run_dir), "--steps", "384"]) == 0
    assert evaluations(run_dir)[-1][0] >= 384
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--checkpoint", "best", "--episodes", "1"]) == 0
    assert "return" in capsys.readouterr().out
    for wrong, says in [
        (["train", "--resume", str(run_dir), "--steps", "100"], "--steps must exceed"),
        (["eval", str(run_dir / "checkpoints" / "last.pt"), "--checkpoint", "best"], "run folder"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(wrong)
        assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_pglab_train_is_the_function_and_no_module_hides_behind_it():
    assert callable(pglab.train) and pglab.train.__module__ == "pglab"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pglab.train")
