"""The gradient-variance study."""

import csv

import pytest

import pglab
from pglab.cli import main
from pglab.experiments.variance import snapshots, study


@pytest.fixture(scope="module")
def gae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return pglab.train(
        "CartPole-v1",
        algo="reinforce",
        weights="gae",
        total_steps=4000,
        checkpoint_every=2000,
        keep_checkpoints=True,
        out=str(out),
        progress="off",
    )


def test_kept_checkpoints_are_snapshots(gae_run):
    steps = [step for step, _ in snapshots(gae_run.path)]
    assert len(steps) >= 2 and steps == sorted(steps)
    assert steps[-1] == gae_run.summary["total_steps"]


def test_every_kind_at_every_snapshot(gae_run, tmp_path):
    out = study(gae_run.path, batches=20, episodes=5, gamma=0.98, lam=0.96, out=tmp_path)
    with open(out / "variance.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    kinds = {r["weights"] for r in rows}
    assert kinds == {"r", "fr", "dfr", "dfrb", "td", "gae"}
    assert len(rows) == 6 * len(snapshots(gae_run.path))
    first = {r["weights"]: r for r in rows if r["step"] == rows[0]["step"]}
    # the whole return carries the rewards before t as well: more variance than reward-to-go
    assert float(first["r"]["trace_cov"]) > float(first["fr"]["trace_cov"]) > 0
    assert float(first["r"]["weight_var"]) > float(first["fr"]["weight_var"])
    assert (out / "variance.png").read_bytes()[:4] == b"\x89PNG"


def test_critic_kinds_need_a_critic(tmp_path, capsys):
    run = pglab.train(
        "CartPole-v1",
        algo="reinforce",
        weights="fr",
        total_steps=500,
        out=str(tmp_path),
        progress="off",
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["variance", str(run.path), "--weights", "fr,gae"])
    assert exit_info.value.code == 2
    assert "need a critic" in capsys.readouterr().err
    assert main(["variance", str(run.path), "--batches", "3", "--episodes", "2"]) == 0
    assert "| fr |" in capsys.readouterr().out


def test_no_checkpoints_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["variance", str(tmp_path)])
    assert "no checkpoints" in capsys.readouterr().err
