"""Runs survive faults, have one writer at a time, and sweep bookkeeping cannot lie."""

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pglab.checkpoint import load_checkpoint, save_checkpoint
from pglab.cli import main
from pglab.config import Config, build_config
from pglab.logs import MetricsLogger
from pglab.population import train

COLUMNS = ["step", "value", "note"]
TINY = {
    "env.id": "CartPole-v1",
    "algo.name": "ppo",
    "run.preset": "none",
    "env.num_envs": 2,
    "algo.batch_size": 64,
    "algo.minibatches": 2,
    "algo.epochs": 2,
    "run.eval_episodes": 2,
    "run.progress": "off",
}
TINY_SET = "\n".join(f'"{k}" = {v!r}'.replace("'", '"') for k, v in TINY.items())


def write_metrics(run_dir: Path, rows: int) -> None:
    with open(run_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows([step, step * 0.5, "x" * 40] for step in range(1, rows + 1))


def metric_rows(run_dir: Path) -> int:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return sum(1 for row in csv.DictReader(handle) if None not in row.values())


def tiny_run(tmp_path: Path, name: str, **options) -> Path:
    """A finished run of one update, in ``tmp_path/runs/g/name``."""
    flags = {
        **TINY,
        "run.total_updates": 1,
        "run.out": str(tmp_path / "runs"),
        "run.group": "g",
        "run.name": name,
    }
    return train(build_config(None, {**flags, **options})).path


def resumable_run(tmp_path: Path, name: str = "r") -> Path:
    """A run that stopped after 1 of its 2 updates (as an interrupted run does)."""
    run_dir = tiny_run(tmp_path, name)
    state = load_checkpoint(run_dir)
    state["config"]["run"]["total_updates"] = 2
    save_checkpoint(run_dir / "checkpoints" / "last.pt", state)
    (run_dir / "config.toml").write_text(Config.from_dict(state["config"]).to_toml())
    return run_dir


def hold_flock(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock (``.lock``, flock, its PID inside)."""
    code = textwrap.dedent(
        f"""
        import fcntl, os, sys, time
        fd = os.open({str(folder / ".lock")!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0); os.write(fd, f"{{os.getpid()}}\\n".encode())
        print("held", flush=True)
        time.sleep(60)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def one_error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert err.startswith("pglab: error:") and "\n" not in err, err
    return err


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------- history survives faults


def test_a_crash_while_resume_trims_metrics_keeps_every_row(tmp_path, monkeypatch):
    write_metrics(tmp_path, 50)

    def crash(self, rows):  # the process dies half-way through writing the kept rows
        rows = list(rows)
        for row in rows[: len(rows) // 2]:
            self.writerow(row)
        raise KeyboardInterrupt

    monkeypatch.setattr(csv.DictWriter, "writerows", crash)
    with pytest.raises(KeyboardInterrupt):
        MetricsLogger(tmp_path, COLUMNS, resume_step=40)
    assert metric_rows(tmp_path) == 50  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temp file left
    monkeypatch.undo()
    MetricsLogger(tmp_path, COLUMNS, resume_step=40).close()
    assert metric_rows(tmp_path) == 40


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill_9_while_resume_trims_metrics_never_loses_checkpointed_rows(tmp_path):
    write_metrics(tmp_path, 60_000)
    size = (tmp_path / "metrics.csv").stat().st_size
    for trial in range(3):
        pid = os.fork()
        if pid == 0:  # the resuming process
            try:
                MetricsLogger(tmp_path, COLUMNS, resume_step=59_999 - trial)
            finally:
                os._exit(0)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # kill it as soon as its rewrite has begun
            temps = [p for p in tmp_path.iterdir() if p.name.startswith(".metrics.csv.")]
            if temps or (tmp_path / "metrics.csv").stat().st_size != size:
                break
            time.sleep(0.0005)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        rows = metric_rows(tmp_path)
        assert rows >= 59_999 - trial, f"trial {trial}: {rows} rows left"
        size = (tmp_path / "metrics.csv").stat().st_size
    MetricsLogger(tmp_path, COLUMNS, resume_step=59_990).close()  # the next resume cleans up
    assert metric_rows(tmp_path) == 59_990
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".metrics.csv.")]


def test_stale_checkpoint_temp_files_are_removed_on_the_next_save(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    stale = [checkpoints / ".last.pt.k3j_x9a1", checkpoints / ".step-64.pt.0abcdefg"]
    kept = [
        checkpoints / ".notes.txt",
        checkpoints / "last.pt.k3j_x9a1",
        tmp_path / ".x.pt.abcdefgh",
    ]
    for path in stale + kept:
        path.write_bytes(b"partial")
    save_checkpoint(checkpoints / "last.pt", {"counters": {}})
    assert [p for p in stale if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        [".notes.txt", "last.pt", "last.pt.k3j_x9a1"]
    )


# ---------------------------------------------------------------- one writer at a time


def test_a_second_writer_of_a_run_folder_is_refused_until_the_holder_dies(tmp_path, capsys):
    run_dir = resumable_run(tmp_path)
    rows = metric_rows(run_dir)
    holder = hold_flock(run_dir)
    try:
        err = one_error_line(capsys, ["train", "--resume", str(run_dir)])
        assert f"run folder {str(run_dir)!r} is in use by process {holder.pid}" in err
        assert metric_rows(run_dir) == rows  # nothing written by the refused writer
    finally:
        holder.kill()  # kill -9: the kernel releases its lock
        holder.wait()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert metric_rows(run_dir) == 2


def test_a_second_sweep_of_a_group_is_refused_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    out = tmp_path / "runs"
    spec.write_text(f'group = "g"\nout = "{out}"\n[set]\n{TINY_SET}\n"run.total_updates" = 1\n')
    (out / "g").mkdir(parents=True)
    holder = hold_flock(out / "g")
    before = listing(out)
    try:
        err = one_error_line(capsys, ["sweep", str(spec)])
    finally:
        holder.kill()
        holder.wait()
    assert f"sweep folder {str(out / 'g')!r} is in use by process {holder.pid}" in err
    assert listing(out) == before


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_killing_a_sweep_kills_its_workers(tmp_path):
    spec = tmp_path / "s.toml"
    out = tmp_path / "runs"
    spec.write_text(
        f'group = "g"\nout = "{out}"\n[set]\nenv = "CartPole-v1"\n'
        'algo = "reinforce"\nweights = "fr"\nbatch_size = 2\ntotal_steps = 100000000\n'
    )
    sweep = subprocess.Popen(
        [sys.executable, "-m", "pglab.cli", "sweep", str(spec), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("g/*/metrics.csv")):  # until the worker trains
            assert time.monotonic() < deadline and sweep.poll() is None
            time.sleep(0.1)
        workers = descendants(sweep.pid)
        assert workers
        sweep.kill()
        sweep.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and alive(workers):
            time.sleep(0.1)
        assert alive(workers) == set()
    finally:
        sweep.kill()
        for pid in alive(workers):
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> set[int]:
    children = {pid}
    for _ in range(3):
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) in children:
                children.add(int(stat.parent.name))
    return children - {pid}


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


# ---------------------------------------------------------------- sweep bookkeeping


def sweep_spec(tmp_path: Path, head: str = "", body: str = "", total_updates: int = 1) -> Path:
    spec = tmp_path / "spec.toml"
    head = head if "group" in head else 'group = "g"\n' + head
    if "out =" not in head:
        head += f'out = "{tmp_path / "runs"}"\n'
    spec.write_text(f'{head}[set]\n{TINY_SET}\n"run.total_updates" = {total_updates}\n{body}')
    return spec


@pytest.mark.parametrize("group", ["..", ".", "a/b", "", "x" * 101, "a\\nb"])
def test_a_group_that_is_not_one_folder_is_refused(tmp_path, capsys, group):
    err = one_error_line(
        capsys, ["sweep", str(sweep_spec(tmp_path, f'group = "{group}"\n')), "--dry-run"]
    )
    assert "group must be one folder name" in err
    assert not (tmp_path / "runs").exists()


def test_a_sweep_never_removes_a_folder_it_did_not_create(tmp_path, capsys):
    spec = sweep_spec(tmp_path)
    theirs = tmp_path / "runs" / "g" / "seed=0"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("someone's work")
    err = one_error_line(capsys, ["sweep", str(spec)])
    assert "was not created by a sweep of this group" in err and "seed=0" in err
    assert (theirs / "notes.txt").read_text() == "someone's work"
    assert sorted(p.name for p in theirs.parent.iterdir() if p.name != ".lock") == ["seed=0"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[grid]\n"run.seed" = [0, 1]\n', "seeds and base_seed"),
        ("[grid]\nseed = [0, 1]\n", "seeds and base_seed"),
        ('[grid]\n"run.name" = ["a", "b"]\n', "grid.run.name sets run.name"),
        ('[grid]\n"run.out" = ["/tmp/elsewhere"]\n', "the spec's out"),
        ('[random]\ngroup = { choice = ["a", "b"] }\n', "the spec's group"),
        ('[[variants]]\nname = "a"\nseed = 3\n', "seeds and base_seed"),
    ],
)
def test_options_the_sweep_sets_itself_are_refused(tmp_path, capsys, table, message):
    err = one_error_line(capsys, ["sweep", str(sweep_spec(tmp_path, body=table)), "--dry-run"])
    assert message in err


def test_values_with_slashes_map_to_one_folder_each(tmp_path):
    from pglab.experiments.sweep import load_spec

    body = '[grid]\nenv = ["pglab/LineWorld-v0", "CartPole-v1"]\n'
    spec = sweep_spec(tmp_path, body=body.replace("[set]", ""))
    spec.write_text(spec.read_text().replace('"env.id" = "CartPole-v1"\n', ""))
    sweep = load_spec(spec)
    names = [run.name for run in sweep.runs]
    assert names == ["env=pglab%2FLineWorld-v0,seed=0", "env=CartPole-v1,seed=0"]
    assert all((sweep.group_dir / name).parent == sweep.group_dir for name in names)


def test_repeated_seeds_are_refused(tmp_path, capsys):
    err = one_error_line(
        capsys, ["sweep", str(sweep_spec(tmp_path, "seeds = [0, 0, 1]\n")), "--dry-run"]
    )
    assert "seeds must be different" in err and "0 is given more than once" in err


@pytest.mark.parametrize(
    "table",
    [
        '[grid]\nlr = [0.1, 0.2]\n"algo.lr" = [0.3]\n',
        "[grid]\nlr = [0.1, 0.2]\nalgo.lr = [0.3]\n",  # a TOML dotted key
    ],
)
def test_two_names_of_one_option_are_refused(tmp_path, capsys, table):
    err = one_error_line(capsys, ["sweep", str(sweep_spec(tmp_path, body=table)), "--dry-run"])
    assert "names algo.lr twice" in err and "'lr'" in err and "'algo.lr'" in err


@pytest.mark.parametrize(
    "table",
    [
        "[grid]\nlr = [0.001, 1e-3]\n",
        '[[variants]]\nname = "a"\nlam = 0.9\n[[variants]]\nname = "b"\nlam = 0.9\n',
        '[grid]\nlr = [0.1, 0.2]\n[[variants]]\nname = "a"\nlr = 0.3\n',
    ],
)
def test_configurations_that_are_the_same_experiment_are_refused(tmp_path, capsys, table):
    err = one_error_line(capsys, ["sweep", str(sweep_spec(tmp_path, body=table)), "--dry-run"])
    assert "same experiment" in err or "which [grid] varies" in err


def test_a_runs_numbers_do_not_depend_on_workers(tmp_path):
    def numbers(workers: int) -> dict[str, list[dict]]:
        out = tmp_path / f"w{workers}"
        spec = sweep_spec(tmp_path, f'seeds = 2\nout = "{out}"\n', total_updates=2)
        assert main(["sweep", str(spec), "--workers", str(workers)]) == 0
        found = {}
        for metrics in sorted(out.glob("g/*/metrics.csv")):
            with open(metrics, newline="") as handle:
                rows = list(csv.DictReader(handle))
            for row in rows:
                del row["wall_seconds"], row["steps_per_second"]
            found[metrics.parent.name] = rows
        return found

    one = numbers(1)
    assert sorted(one) == ["seed=0", "seed=1"]
    assert numbers(2) == one


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ("set = 5\n", "set must be a table"),
        ("grid = 5\n", "grid must be a table"),
        ("random = 5\n", "random must be a table"),
        ("out = 5\n", "out must be a folder path"),
        ('group = "."\n', "group must be one folder name"),
        ("config = 5\n", "config must be the path"),
        ('sample_seed = "x"\n', "sample_seed must be an integer"),
        ("base_seed = true\n", "base_seed must be an integer"),
        ('random = { lr = { uniform = ["a", 1] } }\n', "two numbers"),
        ("random = { batch_size = { int_uniform = [1.5, 3] } }\n", "two integers"),
    ],
)
def test_malformed_spec_values_are_one_line(tmp_path, capsys, head, message):
    spec = sweep_spec(tmp_path, head)
    if head.startswith("set ="):
        spec.write_text(spec.read_text().split("[set]")[0])
    err = one_error_line(capsys, ["sweep", str(spec), "--dry-run"])
    assert message in err


def test_the_report_and_resume_use_the_options_the_run_trained_with(tmp_path, capsys):
    from pglab.experiments.report import report

    resumable_run(tmp_path, "a")
    edited = resumable_run(tmp_path, "b")
    text = (edited / "config.toml").read_text()
    assert "lr = 0.0003\n" in text
    (edited / "config.toml").write_text(text.replace("lr = 0.0003\n", "lr = 0.5\n"))
    out = report(tmp_path / "runs" / "g")
    assert "2 runs in 1 configurations" in (out / "report.md").read_text()
    assert "config.toml was edited" in capsys.readouterr().err
    assert main(["train", "--resume", str(edited)]) == 0
    err = capsys.readouterr().err
    assert "config.toml was edited" in err and "ignores it" in err
    assert load_checkpoint(edited)["config"]["algo"]["lr"] == 0.0003
