"""The command line and the Python API: runs, evaluation, bad input, interruption, resume."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pglab
from cli_run import run_cli
from pglab.cli import main

QUICK = ["--set", "progress=off", "--set", "eval_every=2000", "--set", "eval_episodes=3"]


def test_train_writes_a_complete_run_folder(tmp_path, capsys):
    code, out, _ = run_cli(
        [
            "train",
            "--algo",
            "reinforce",
            "--weights",
            "fr",
            "--steps",
            "3000",
            "--out",
            str(tmp_path),
            "--name",
            "r1",
            "--set",
            "policy.hidden=[8]",
            *QUICK,
        ],
        capsys,
    )
    assert code == 0, out
    run = tmp_path / "CartPole-v1" / "r1"
    assert {"config.toml", "metrics.csv", "summary.json", "checkpoints"} <= set(os.listdir(run))
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run))
    summary = json.loads((run / "summary.json").read_text())
    for key in (
        "env",
        "algo",
        "weights",
        "seed",
        "total_steps",
        "wall_seconds",
        "eval_return_mean",
        "eval_return_std",
        "solved_at_step",
    ):
        assert key in summary
    assert summary["weights"] == "fr" and summary["total_steps"] >= 3000
    config = (run / "config.toml").read_text()
    assert "hidden = [\n    8,\n]" in config and 'batch_mode = "episodes"' in config
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert rows and {
        "policy_loss",
        "entropy",
        "grad_norm",
        "weights_mean",
        "weights_var",
        "steps_per_second",
    } <= set(rows[0])
    assert "eval return" in out


def test_eval_command(tmp_path, capsys):
    run_cli(["train", "--steps", "1000", "--out", str(tmp_path), "--name", "r", *QUICK], capsys)
    run = tmp_path / "CartPole-v1" / "r"
    code, out, _ = run_cli(["eval", str(run), "--episodes", "4", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and len(result["returns"]) == 4 and result["deterministic"] is True
    code, out, _ = run_cli(
        ["eval", str(run / "checkpoints" / "last.pt"), "--episodes", "2", "--stochastic"], capsys
    )
    assert code == 0 and "stochastic" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--set", "lr=-1"], "algo.lr must be a number > 0; got -1.0"),
        (["--set", "gamma=2"], "algo.gamma must be a number in [0, 1]; got 2.0"),
        (["--set", "lam=1.01"], "algo.lam must be a number in [0, 1]; got 1.01"),
        (["--algo", "sarsa"], "algo.name must be one of"),
        (
            ["--weights", "q"],
            "algo.weights must be one of r, fr, dfr, dfrb, td, gae or a function's import path "
            "(package.module:name); got 'q'",
        ),
        (["--env", "CartPol-v1"], "closest registered ids: CartPole-v1"),
        (["--seed", "x"], "run.seed must be an integer; got 'x'"),
        (["--set", "nonsense=1"], "unknown option 'nonsense'"),
        (["--set", "hidden"], "--set expects key=value"),
        (["--stop-at-return", "high"], "run.stop_at_return must be a number"),
        (["--env", "pglab/LineWorld-v0", "--set", "head=bernoulli"], "bernoulli head needs"),
        (["--env", "pglab/LineWorld-v0", "--set", "kwargs={size=3}"], "rejected its options"),
    ],
)
def test_bad_input_one_line_exit_2_no_folder(args, words, tmp_path, capsys):
    code, _, err = run_cli(["train", "--out", str(tmp_path), *args], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("pglab: error:") and words in err
    assert not any(tmp_path.iterdir())


def test_bad_toml_file(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[algo]\nlr = 'fast'\n")
    code, _, err = run_cli(["train", "--config", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "algo.lr must be a number; got 'fast'" in err
    assert not (tmp_path / "o").exists()


def test_eval_bad_inputs(tmp_path, capsys):
    bogus = tmp_path / "x.pt"
    bogus.write_text("not a checkpoint")
    code, _, err = run_cli(["eval", str(bogus)], capsys)
    assert code == 2 and "not a readable checkpoint" in err and err.count("\n") == 1
    code, _, err = run_cli(["eval", str(tmp_path), "--episodes", "0"], capsys)
    assert code == 2 and "--episodes must be an integer >= 1; got 0" in err
    code, _, err = run_cli(["eval", str(tmp_path), "--episodes", "many"], capsys)
    assert code == 2 and err.count("\n") == 1


def test_help_documents_every_option_with_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key, default in [
        ("algo.lr", "0.003"),
        ("policy.hidden", "[64, 64]"),
        ("run.total_steps", "200000"),
        ("algo.value_reset_optimizer", "false"),
    ]:
        line = next(line for line in out.splitlines() if line.strip().startswith(key))
        assert f"(default: {default})" in line


def test_python_api(tmp_path):
    run = pglab.train(
        "CartPole-v1",
        algo="reinforce",
        weights="fr",
        lr=0.01,
        policy={"hidden": [8]},
        seed=1,
        total_steps=2000,
        out=str(tmp_path),
        progress="off",
    )
    assert run.path.exists() and run.summary["seed"] == 1
    obs = np.zeros(4, dtype=np.float32)
    action = run.agent.act(obs)
    assert isinstance(action, int) and action in (0, 1)
    assert run.agent.act(np.zeros((5, 4), dtype=np.float32)).shape == (5,)
    agent = pglab.load(run.path)
    assert agent.act(obs) == action
    for a, b in zip(agent.actor.parameters(), run.agent.actor.parameters()):
        assert torch.equal(a, b)
    result = pglab.evaluate(agent, "CartPole-v1", episodes=3)
    assert len(result.returns) == 3 and result.mean > 0
    with pytest.raises(pglab.ConfigError, match="algo.gamma"):
        pglab.train("CartPole-v1", gamma=3, out=str(tmp_path))


def _spawn(args, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pglab.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _steps(run: Path):
    return [int(row["step"]) for row in csv.DictReader(open(run / "metrics.csv"))]


LONG = [
    "train",
    "--algo",
    "reinforce",
    "--weights",
    "fr",
    "--stop-at-return",
    "none",
    "--out",
    "o",
    "--name",
    "r",
    "--set",
    "checkpoint_every=1000",
    "--set",
    "progress=plain",
    "--set",
    "eval_every=0",
]


@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_interrupted_run_resumes_into_the_same_folder(how, tmp_path):
    run = tmp_path / "o" / "CartPole-v1" / "r"
    process = _spawn([*LONG, "--steps", "400000"], tmp_path)
    _wait_for(run / "checkpoints" / "last.pt")
    time.sleep(0.3)
    if how == "ctrl-c":
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130
        assert f"pglab train --resume {Path('o/CartPole-v1/r')}" in err
        assert json.loads((run / "summary.json").read_text())["stopped"] == "interrupted"
    else:
        process.kill()
        process.communicate(timeout=60)
    stopped_at = pglab.checkpoint.load_checkpoint(run)["counters"]["steps"]
    assert 0 < stopped_at < 400_000
    # finish quickly: the resumed run keeps its options, so shorten its budget in place
    state = pglab.checkpoint.load_checkpoint(run)
    state["config"]["run"]["total_steps"] = stopped_at + 3000
    pglab.checkpoint.save_checkpoint(
        run / "checkpoints" / "last.pt",
        {k: v for k, v in state.items() if k not in ("format", "version")},
    )
    resumed = subprocess.run(
        [sys.executable, "-m", "pglab.cli", "train", "--resume", str(run)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    steps = _steps(run)
    assert steps == sorted(set(steps)), "metrics rows must continue, not repeat"
    assert steps[-1] >= stopped_at + 3000
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "budget" and summary["total_steps"] >= stopped_at + 3000


def test_an_interrupted_population_names_every_run_to_resume(tmp_path):
    """Ctrl-C during ``--seeds`` checkpoints every member and prints one ``--resume``
    command per run folder, each a folder that ``--resume`` takes."""
    process = _spawn([*LONG, "--steps", "400000", "--seeds", "0-1"], tmp_path)
    group = tmp_path / "o" / "CartPole-v1"
    for seed in (0, 1):
        _wait_for(group / f"r-seed{seed}" / "checkpoints" / "last.pt")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    (line,) = [line for line in err.splitlines() if "--resume" in line]
    named = re.findall(r"pglab train --resume (\S+)", line.replace(";", " "))
    assert sorted(Path(p).name for p in named) == ["r-seed0", "r-seed1"]
    for path in named:
        run = tmp_path / path
        assert (run / "checkpoints" / "last.pt").is_file()
        assert json.loads((run / "summary.json").read_text())["stopped"] == "interrupted"


def test_ctrl_c_in_the_middle_of_a_long_batch_stops_at_once(tmp_path):
    """A batch of never-ending (capped) episodes takes minutes; Ctrl-C during it drops
    the batch and stops at the last completed update, with its checkpoint."""
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "pglab.cli", *LONG, "--env", "faulty_envs:SlowNeverEnds",
         "--preset", "none", "--set", "check=false", "--set", "batch_size=4"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run = tmp_path / "o" / "faulty_envs-SlowNeverEnds" / "r"
    _wait_for(run / "config.toml")
    time.sleep(1.0)  # well inside the first batch
    process.send_signal(signal.SIGINT)
    # the first batch (4 episodes of 10,000 steps of 5 ms) would take over 3 minutes
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "interrupted" and summary["updates"] == 0
    assert (run / "checkpoints" / "last.pt").is_file()


def test_resume_refuses_a_finished_run_and_new_options(tmp_path, capsys):
    run_cli(["train", "--steps", "500", "--out", str(tmp_path), "--name", "r", *QUICK], capsys)
    run = tmp_path / "CartPole-v1" / "r"
    code, _, err = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and "already finished" in err
    code, _, err = run_cli(["train", "--resume", str(run), "--seed", "3"], capsys)
    assert code == 2 and "--seed" in err
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "missing")], capsys)
    assert code == 2 and "not a folder" in err


def test_existing_run_name_is_refused(tmp_path, capsys):
    args = ["train", "--steps", "500", "--out", str(tmp_path), "--name", "same", *QUICK]
    assert run_cli(args, capsys)[0] == 0
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already exists" in err
