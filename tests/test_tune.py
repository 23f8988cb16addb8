"""``pglab tune``: Optuna searches a spec's space, prunes poor trials, resumes, and writes
a best config that ``pglab train --config`` accepts."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import tomllib

from cli_run import assert_trains_from, run_cli
from pglab.experiments.tune import load_tune_spec, run_tune

pytest.importorskip("optuna")

SPEC = """
group = "tuned"
out = "{out}"
seeds = 2
trials = {trials}
objective = "final"
pruner = "{pruner}"
[set]
env = "CartPole-v1"
algo = "ppo"
total_steps = 1536
eval_every = 256
eval_episodes = 2
num_envs = 2
batch_size = 128
epochs = 2
minibatches = 2
checkpoint_every = 0
stop_at_return = "none"
"policy.hidden" = [16]
[search]
lr = {{ log_uniform = [1e-5, 3e-2] }}
"policy.activation" = {{ choice = ["tanh", "relu"] }}
"""


def write(tmp_path, trials=4, pruner="median"):
    path = tmp_path / "tune.toml"
    path.write_text(SPEC.format(out=tmp_path / "runs", trials=trials, pruner=pruner))
    return path


def rows(tune_dir):
    with open(tune_dir / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_study_runs_writes_its_outputs_and_a_best_config_that_trains(tmp_path, capsys):
    tune_dir = run_tune(write(tmp_path), echo=lambda _: None)
    table = rows(tune_dir)
    assert len(table) == 4 and all(r["state"] in ("COMPLETE", "PRUNED") for r in table)
    best = max((r for r in table if r["state"] == "COMPLETE"), key=lambda r: float(r["value"]))
    for name in ("history.png", "curves.png", "importance.png"):
        assert (tune_dir / name).read_bytes()[:4] == b"\x89PNG"
    assert_trains_from(tune_dir / "best.toml", tmp_path / "again", capsys)
    chosen = tomllib.loads((tune_dir / "best.toml").read_text())
    assert chosen["algo"]["lr"] == pytest.approx(float(best["algo.lr"]))
    assert chosen["policy"]["activation"] == best["policy.activation"]


def test_a_poor_trial_is_pruned_after_its_first_evaluations(tmp_path):
    spec = write(tmp_path, trials=6)
    run_tune(spec, echo=lambda _: None)
    table = rows(tmp_path / "runs" / "tuned" / "tune")
    assert any(r["state"] == "PRUNED" for r in table), table
    pruned = next(r for r in table if r["state"] == "PRUNED")
    folder = tmp_path / "runs" / "tuned" / f"trial-{pruned['number']}"
    summaries = [p.read_text() for p in folder.glob("*/summary.json")]
    assert summaries and all('"callback: pruned"' in s for s in summaries)


def test_an_interrupted_tune_resumes_without_losing_finished_trials(tmp_path):
    spec = write(tmp_path, trials=3, pruner="none")
    load_tune_spec(spec)  # a valid spec
    child = subprocess.Popen(
        [sys.executable, "-u", "-m", "pglab.cli", "tune", str(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    second = tmp_path / "runs" / "tuned" / "trial-1"
    for line in child.stdout:  # the first trial finished: kill the tune in the second
        if line.startswith("trial 0:"):
            deadline = time.monotonic() + 60
            while not any(second.glob("*/metrics.csv")) and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait()
    run_tune(spec, echo=lambda _: None)
    table = rows(tmp_path / "runs" / "tuned" / "tune")
    finished = [r for r in table if r["state"] == "COMPLETE"]
    assert len(finished) == 3 and table[0]["state"] == "COMPLETE"
    assert [r["state"] for r in table].count("FAIL") == 1  # the trial the kill cut short


def test_a_bad_spec_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[set]\nenv = "CartPole-v1"\n[search]\nlr = { normal = [0, 1] }\n')
    code, _, err = run_cli(["tune", str(path)], capsys)
    assert (
        code == 2
        and "tune spec: search.lr must be one of" in err
        and not (tmp_path / "runs").exists()
    )


@pytest.mark.xdist_group("ray")  # one worker, one Ray instance
def test_ray_tune_runs_the_same_spec_with_asha_into_the_same_layout(tmp_path, local_ray):
    tune_dir = run_tune(write(tmp_path, trials=2), backend="ray", echo=lambda _: None)
    table = rows(tune_dir)
    assert len(table) == 2 and {r["state"] for r in table} <= {"COMPLETE", "PRUNED"}, table
    assert any(r["state"] == "COMPLETE" for r in table)
    folders = sorted(p.name for p in (tmp_path / "runs" / "tuned").glob("trial-*"))
    assert folders == ["trial-0", "trial-1"]
    assert tomllib.loads((tune_dir / "best.toml").read_text())["algo"]["name"] == "ppo"
