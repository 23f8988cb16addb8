"""Sweeps: specs, resumable runs, failures, the Ray backend; and reports."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pglab.cli import main
from pglab.experiments.report import bootstrap_ci, iqm, report
from pglab.experiments.sweep import load_spec, run_sweep

SPEC = """
group = "grid"
out = "{out}"
seeds = 2
[set]
env = "CartPole-v1"
algo = "reinforce"
weights = "fr"
total_updates = {updates}
eval_episodes = 2
checkpoint_every = 0
[grid]
lr = [0.001, 0.01]
"policy.hidden" = [[4], [8]]
"""


def write_spec(tmp_path, updates=3, extra=""):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(out=tmp_path / "runs", updates=updates) + extra)
    return path


def summaries(group):
    return {p.parent.name: p.stat().st_mtime_ns for p in Path(group).glob("*/summary.json")}


def test_spec_expands_grid_times_seeds(tmp_path):
    sweep = load_spec(write_spec(tmp_path))
    names = [run.name for run in sweep.runs]
    assert len(names) == 8 and len(set(names)) == 8
    assert "lr=0.01,hidden=8,seed=1" in names
    config = sweep.config(sweep.runs[-1])
    assert (config.algo.lr, config.policy.hidden, config.run.seed) == (0.01, [8], 1)
    assert config.run.total_updates == 3


def test_random_draws_are_the_same_on_every_reading(tmp_path):
    extra = "[random]\nsamples = 3\nentropy_coef = { uniform = [0.0, 0.1] }\n"
    extra += "value_lr = { log_uniform = [1e-4, 1e-2] }\n"
    first = load_spec(write_spec(tmp_path, extra=extra))
    second = load_spec(write_spec(tmp_path, extra=extra))
    assert len(first.runs) == 8 * 3
    assert [r.options for r in first.runs] == [r.options for r in second.runs]
    assert all(0.0 <= r.options["algo.entropy_coef"] <= 0.1 for r in first.runs)


def test_variants_cross_the_grid_and_name_the_runs(tmp_path):
    extra = '[[variants]]\nname = "mc"\nlam = 1.0\n[[variants]]\n"algo.lam" = 0.9\ngamma = 0.9\n'
    sweep = load_spec(write_spec(tmp_path, extra=extra))
    names = [run.name for run in sweep.runs]
    assert len(names) == 16 and len(set(names)) == 16
    assert "variant=mc,lr=0.01,hidden=8,seed=1" in names
    assert "lam=0.9,gamma=0.9,lr=0.001,hidden=4,seed=0" in names
    config = sweep.config(sweep.runs[0])
    assert (config.algo.lam, config.algo.gamma) == (1.0, 0.99)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("bogus = 1\n", "unknown key 'bogus'"),
        ('[[variants]]\nname = "a,b"\nlam = 1.0\n', "a variant's name must be a word"),
        ("variants = [1]\n", "variants must be a list of tables"),
        ("[random]\ngamma = { normal = [0, 1] }\n", "random.gamma must be one of"),
        ('[grid]\n"policy.hiden" = [[2]]\n', "unknown option 'policy.hiden'"),
    ],
)
def test_a_bad_spec_is_one_line(tmp_path, capsys, extra, message):
    text = SPEC.format(out=tmp_path / "runs", updates=1)
    if extra.startswith("[grid]"):
        text = text.replace("[grid]", extra.strip() + "\n[unused]", 1).replace("[unused]", "")
    else:
        text = extra + text if not extra.startswith("[") else text + extra
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(tmp_path / "bad.toml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pglab: error:") and message in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_dry_run_lists_and_runs_nothing(tmp_path):
    lines = []
    assert run_sweep(write_spec(tmp_path), dry_run=True, echo=lines.append)
    assert lines[-1] == "8 runs, 8 to run"
    assert not (tmp_path / "runs").exists()


def test_a_finished_sweep_skips_everything(tmp_path):
    spec = write_spec(tmp_path, updates=1)
    assert run_sweep(spec, echo=lambda _: None)
    before = summaries(tmp_path / "runs" / "grid")
    assert len(before) == 8
    lines = []
    assert run_sweep(spec, echo=lines.append)
    assert lines[-1] == "0 runs finished, 0 failed, 8 skipped"
    assert summaries(tmp_path / "runs" / "grid") == before


def test_killed_sweep_completes_only_the_missing_runs(tmp_path):
    spec = write_spec(tmp_path, updates=25)
    group = tmp_path / "runs" / "grid"
    command = [sys.executable, "-m", "pglab.cli", "sweep", str(spec), "--workers", "1"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(summaries(group)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # kill -9 the sweep and its workers
    process.wait()
    done = summaries(group)
    assert 2 <= len(done) < 8, done
    lines = []
    assert run_sweep(spec, workers=1, echo=lines.append)
    assert lines[0].endswith(f"{len(done)} already done, {8 - len(done)} to run (local)")
    after = summaries(group)
    assert len(after) == 8
    assert all(after[name] == stamp for name, stamp in done.items())  # not run again


def test_a_failed_run_is_recorded_and_the_rest_finish(tmp_path, capsys):
    extra = '[grid]\n"env.kwargs" = [{}, { no_such_argument = 1 }]\n'
    text = SPEC.format(out=tmp_path / "runs", updates=1).split("[grid]")[0] + extra
    (tmp_path / "spec.toml").write_text(text)
    code = main(["sweep", str(tmp_path / "spec.toml")])
    assert code == 1
    group = tmp_path / "runs" / "grid"
    errors = list(group.glob("*/error.txt"))
    assert len(errors) == 2 and "no_such_argument" in errors[0].read_text()
    assert len(summaries(group)) == 2
    assert "failed:" in capsys.readouterr().out


def test_ppo_runs_of_a_sweep_train_as_populations(tmp_path):
    text = SPEC.format(out=tmp_path / "runs", updates=2).replace('"reinforce"', '"ppo"')
    text = text.replace('weights = "fr"\n', "").replace('"policy.hidden" = [[4], [8]]', "")
    (tmp_path / "spec.toml").write_text(text)
    sweep = load_spec(tmp_path / "spec.toml")
    from pglab.experiments.sweep import population_tasks

    assert [len(task) for task in population_tasks(sweep, sweep.runs)] == [4]
    assert run_sweep(tmp_path / "spec.toml", workers=1, echo=lambda _: None)
    assert len(summaries(tmp_path / "runs" / "grid")) == 4


def layout(group):
    return sorted(
        str(p.relative_to(group))
        if "events.out" not in p.name
        else str(p.parent.relative_to(group))
        for p in Path(group).rglob("*")
        if "report" not in p.parts
    )


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one worker, one Ray instance
def test_ray_backend_writes_the_same_folders(tmp_path, local_ray):
    local, distributed = tmp_path / "local", tmp_path / "ray"
    for folder, backend in ((local, "local"), (distributed, "ray")):
        folder.mkdir()
        spec = write_spec(folder, updates=1)
        assert run_sweep(spec, backend=backend, echo=lambda _: None)
    assert layout(local / "runs" / "grid") == layout(distributed / "runs" / "grid")
    assert len(summaries(distributed / "runs" / "grid")) == 8


def test_report_writes_table_and_plot(tmp_path):
    spec = write_spec(tmp_path, updates=2)
    assert run_sweep(spec, echo=lambda _: None)
    assert main(["report", str(tmp_path / "runs" / "grid")]) == 0
    out = tmp_path / "runs" / "grid" / "report"
    table = (out / "report.md").read_text()
    assert "| lr=0.01,hidden=8 | 2 |" in table and "95% CI" in table
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "† fewer than 4 runs" in table  # 2 seeds a configuration
    by_lr = report(tmp_path / "runs" / "grid", by=["lr"], smooth=3)
    by_lr_table = (by_lr / "report.md").read_text()
    assert "| lr=0.001 | 4 |" in by_lr_table and "†" not in by_lr_table


def test_smoothing_is_a_trailing_moving_average():
    from pglab.experiments.report import RunRecord, curve_on_grid

    steps, returns = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 4.0, 8.0, 0.0])
    record = RunRecord(Path("."), {}, {}, steps, returns)
    assert curve_on_grid(record, steps).tolist() == [0.0, 4.0, 8.0, 0.0]
    assert curve_on_grid(record, steps, smooth=2).tolist() == [0.0, 2.0, 6.0, 4.0]


def test_mixed_runs_are_named_by_the_fewest_options_that_tell_them_apart():
    from pglab.experiments.report import RunRecord, distinguishing_options, varying_options

    def record(env, lr, gamma):
        options = {"env.id": env, "algo.lr": lr, "algo.gamma": gamma}
        return RunRecord(Path("."), options, {}, np.zeros(0), np.zeros(0))

    records = [record("A", 0.1, 0.9), record("B", 0.2, 0.99), record("A", 0.1, 0.9)]
    keys = varying_options(records)
    assert len(keys) == 3 and distinguishing_options(records, keys) == ["env.id"]


def test_iqm_and_bootstrap():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(np.mean([3, 4, 5, 6]))
    assert iqm([1.0, 3.0]) == 2.0
    low, high = bootstrap_ci([5.0] * 6)
    assert low == high == 5.0
    values = np.random.default_rng(0).normal(10.0, 1.0, 200)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high and high - low < 0.5


def test_report_of_nothing_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path)])
    assert "no finished runs" in capsys.readouterr().err


def test_out_on_the_command_line_replaces_the_specs_folder(tmp_path, capsys):
    spec = write_spec(tmp_path, updates=1)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "elsewhere")]) == 0
    assert len(summaries(tmp_path / "elsewhere" / "grid")) == len(load_spec(spec).runs)
    assert not (tmp_path / "runs").exists()
