"""Files are data: a run folder or checkpoint runs no code it names, pglab writes only
inside the folder it was given and never through a link, and a user's mistake or a
broken file ends in one line, not a traceback."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pglab
from pglab.checkpoint import load_checkpoint, save_checkpoint
from pglab.cli import main

SRC = str(Path(pglab.__file__).resolve().parents[1])
TINY = {"algo": "reinforce", "total_steps": 64, "batch_size": 2, "eval_episodes": 1}
TINY_FLAGS = [
    "--algo", "reinforce", "--steps", "64", "--preset", "none",
    "--set", "batch_size=2", "--set", "eval_episodes=1", "--set", "progress=off",
]  # fmt: skip

PLANTED = """\
import pathlib
pathlib.Path({marker!r}).write_text("planted code ran")
from pglab.envs.lineworld import LineWorldEnv as Env
"""


def run_cli(args, capsys):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single ``pglab: error:`` line of ``err`` (no traceback, nothing else)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pglab: error: "), err
    return lines[0]


def python(args, cwd):
    """Run ``python ARGS`` in ``cwd`` as a user would (the current folder on sys.path)."""
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def lineworld_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return pglab.train("pglab/LineWorld-v0", out=str(out), progress="off", **TINY).path


def restored(run_dir: Path, target: Path, **config_changes) -> Path:
    """A copy of ``run_dir``'s checkpoint at ``target`` with config sections changed."""
    state = load_checkpoint(run_dir)
    state = {k: v for k, v in state.items() if k not in ("format", "version")}
    for section, values in config_changes.items():
        if values is None:
            state.pop(section)
        elif section == "config" and not isinstance(values, dict):
            state["config"] = values
        else:
            state["config"] = copy.deepcopy(state["config"])
            state["config"][section].update(values)
    return save_checkpoint(target, state)


@pytest.fixture
def hostile_folder(lineworld_run, tmp_path, monkeypatch):
    """A shared group folder: a run whose checkpoint names ``helpers:Env``, a
    ``helpers.py`` beside it that leaves a marker when imported, and links planted
    where pglab writes, pointing at a file and a folder outside."""
    group = tmp_path / "shared"
    run = group / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.toml", "metrics.csv", "summary.json"):
        (run / name).write_bytes((lineworld_run / name).read_bytes())
    restored(lineworld_run, run / "checkpoints" / "last.pt", env={"id": "helpers:Env"})
    marker = tmp_path / "marker"
    (run / "helpers.py").write_text(PLANTED.format(marker=str(marker)))
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (group / "report").mkdir()
    (group / "report" / "report.md").symlink_to(target)
    (run / "variance").symlink_to(elsewhere, target_is_directory=True)
    monkeypatch.delitem(sys.modules, "helpers", raising=False)  # each test plants its own
    return {"group": group, "run": run, "marker": marker, "target": target, "out": elsewhere}


def test_stored_module_env_is_imported_only_when_the_user_allows_it(
    hostile_folder, monkeypatch, capsys
):
    run, marker = hostile_folder["run"], hostile_folder["marker"]
    monkeypatch.chdir(run)
    monkeypatch.syspath_prepend(str(run))  # as `python -m` does: the run folder first
    for args in (
        ["eval", "."],
        ["record", ".", "--out", str(hostile_folder["out"] / "a.gif")],
        ["variance", ".", "--batches", "2", "--episodes", "1", "--snapshots", "last"],
        ["train", "--resume", "."],
    ):
        code, _, err = run_cli(args, capsys)
        line = one_error_line(err)
        assert code == 2
        assert "'helpers:Env', which would import module 'helpers'" in line
        assert "--allow-import helpers" in line
    with pytest.raises(pglab.EnvError, match=r"allow_import=\['helpers'\]"):
        pglab.load(".")
    with pytest.raises(pglab.EnvError, match="--allow-import helpers"):
        pglab.resume(".")
    assert not marker.exists()
    agent = pglab.load(".", allow_import=["helpers"])  # allowed; loading makes no env
    assert not marker.exists() and agent.config.env.id == "helpers:Env"
    pglab.evaluate(agent, episodes=1)  # making the env imports the module the user named
    assert marker.exists()


def test_hostile_run_folder_runs_no_code_and_writes_through_no_link(
    hostile_folder, capsys, monkeypatch
):
    run, marker, target = hostile_folder["run"], hostile_folder["marker"], hostile_folder["target"]
    evaluated = python(["-m", "pglab.cli", "eval", "."], cwd=run)
    loaded = python(["-c", "import pglab; pglab.load('.')"], cwd=run)
    assert "--allow-import helpers" in one_error_line(evaluated.stderr)
    assert evaluated.returncode == 2
    assert loaded.returncode == 1 and "EnvError" in loaded.stderr
    assert not marker.exists()
    monkeypatch.chdir(run)  # helpers.py is found here once the user names it
    code, _, err = run_cli(["variance", run, "--allow-import", "helpers", "--batches", "2",
                            "--episodes", "1", "--snapshots", "last"], capsys)  # fmt: skip
    assert code == 2 and "is a symbolic link" in one_error_line(err)
    assert not any(hostile_folder["out"].iterdir())
    code, _, err = run_cli(["report", hostile_folder["group"]], capsys)
    assert code == 0, err
    report_md = hostile_folder["group"] / "report" / "report.md"
    assert not report_md.is_symlink() and report_md.read_text().startswith("# Report")
    assert target.read_text() == "keep me"
    assert not marker.exists()  # variance refused the link before making the env


def test_current_folder_never_stands_in_for_an_installed_package(
    lineworld_run, tmp_path, monkeypatch
):
    """A stored ``ALE/...`` id makes pglab import ale_py: never a planted ./ale_py.py,
    though ``python -m`` (and ``-c``, and the interpreter) put the current folder first."""
    run = tmp_path / "run"
    restored(lineworld_run, run / "checkpoints" / "last.pt", env={"id": "ALE/Pong-v5"})
    marker = tmp_path / "marker"
    for name in ("ale_py", "numpy"):  # one pglab imports for the id, one it always imports
        (run / f"{name}.py").write_text(PLANTED.format(marker=str(marker)) + "raise ImportError\n")
    result = python(["-m", "pglab.cli", "eval", "."], cwd=run)
    assert not marker.exists(), result.stderr
    assert "Traceback" not in result.stderr
    from importlib.machinery import PathFinder

    import gymnasium as gym

    from pglab.envs import import_path, make_vec_env

    monkeypatch.chdir(run)
    monkeypatch.syspath_prepend("")
    assert PathFinder.find_spec("ale_py", sys.path).origin == str(run / "ale_py.py")
    with import_path():  # what pglab searches while it makes an env
        found = PathFinder.find_spec("ale_py", sys.path)
        assert found is None or found.origin != str(run / "ale_py.py")
    gym.register("pglab-test/Planted-v0", entry_point="planted_envs:Env")
    (run / "planted_envs.py").write_text(PLANTED.format(marker=str(marker)))
    try:  # an entry point of the registry is not looked for here either
        with pytest.raises(pglab.EnvError, match="needs module 'planted_envs'"):
            make_vec_env("pglab-test/Planted-v0", 1)
    finally:
        gym.registry.pop("pglab-test/Planted-v0")
    assert not marker.exists()
    with import_path(named=True):  # a module the user named may come from here, last
        assert sys.path[-1] == str(run) and "" not in sys.path
    assert sys.path[0] == ""  # restored


def test_written_files_replace_planted_links_and_linked_folders_are_refused(
    lineworld_run, tmp_path, capsys
):
    group = tmp_path / "group"
    (group / "report").mkdir(parents=True)
    (group / "run").symlink_to(lineworld_run, target_is_directory=True)  # reading is fine
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    for name in ("report.md", "report.csv", "learning_curves.png"):
        (group / "report" / name).symlink_to(target)
    code, _, err = run_cli(["report", group], capsys)
    assert code == 0, err
    assert target.read_text() == "keep me"
    assert not any(p.is_symlink() for p in (group / "report").iterdir())
    assert (group / "report" / "report.md").read_text().startswith("# Report")

    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "run").symlink_to(lineworld_run, target_is_directory=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (linked / "report").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = run_cli(["report", linked], capsys)
    assert code == 2 and "is a symbolic link; pglab does not write through links" in err
    assert not any(elsewhere.iterdir())

    gif = tmp_path / "agent.gif"
    gif.symlink_to(target)
    code, _, err = run_cli(["record", lineworld_run, "--out", gif], capsys)
    assert code == 0, err
    assert target.read_text() == "keep me"
    assert not gif.is_symlink() and gif.read_bytes()[:3] == b"GIF"


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--name", "../../x"], "--name must be one folder name"),
        (["--name", "/tmp/absolute"], "holds a path separator"),
        (["--name", "a\nb"], "holds a control character"),
        (["--name", "x" * 300], "it has 300 characters"),
        (["--name", ""], "it is empty"),
        (["--name", ".."], "'..' is not a folder name"),
        (["--set", "run.group=../../.."], "run.group must be one folder name"),
        (["--set", "run.name=a/b"], "run.name must be one folder name"),
        (["--out", ""], "run.out must be a folder path; got ''"),
    ],
)
def test_names_that_would_leave_the_output_folder_are_refused(flags, words, tmp_path, capsys):
    work = tmp_path / "work"
    out = work / "out" / "runs"
    out.mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run_cli(["train", *TINY_FLAGS, "--out", out, *flags], capsys)
    assert code == 2 and words in one_error_line(err)
    assert sorted(tmp_path.rglob("*")) == before


def test_a_linked_group_folder_is_not_written_through(tmp_path, capsys):
    out, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "CartPole-v1").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = run_cli(["train", *TINY_FLAGS, "--out", out], capsys)
    assert code == 2 and "CartPole-v1' is a symbolic link" in one_error_line(err)
    assert not any(elsewhere.iterdir())


def test_resume_replaces_a_planted_summary_link(lineworld_run, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    restored(lineworld_run, run / "checkpoints" / "last.pt", run={"total_steps": 128})
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (run / "summary.json").symlink_to(target)
    code, _, err = run_cli(["train", "--resume", run], capsys)
    assert code == 0, err
    assert target.read_text() == "keep me" and not (run / "summary.json").is_symlink()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--seed", "18446744073709551616"], "run.seed must be an integer in [0, 4294967295]"),
        (["--set", "threads=100000"], "run.threads must be an integer in [1, "),
        (["--config", "."], "is a folder, not a TOML file"),
        (["--env", ":Foo"], "env ':Foo' must be a Gymnasium id or package.module:Class"),
        (["--set", "lr=0.01\nseed = 5"], "--set takes one key=value on one line"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", *TINY_FLAGS, "--out", tmp_path / "runs", *args], capsys)
    assert code == 2 and words in one_error_line(err)
    assert not (tmp_path / "runs").exists()


def test_record_refuses_a_bad_fps(lineworld_run, tmp_path, capsys):
    code, _, err = run_cli(
        ["record", lineworld_run, "--out", tmp_path / "a.gif", "--fps", "-5"], capsys
    )
    assert code == 2 and "--fps must be an integer in [1, 1000]; got -5" in one_error_line(err)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "source, words",
    [
        ('raise RuntimeError("broken on import")', "RuntimeError: broken on import"),
        ("def (", "SyntaxError: invalid syntax"),
    ],
)
def test_env_module_that_fails_on_import_is_one_line(source, words, tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_envs.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = run_cli(["train", *TINY_FLAGS, "--out", tmp_path / "runs",
                            "--env", "broken_envs:Env"], capsys)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "importing module 'broken_envs' failed" in line and words in line


@pytest.mark.parametrize(
    "change, words",
    [
        ({"config": None}, "holds no run config"),
        ({"config": "not a table"}, "holds no run config"),
        ({"policy": {"hidden": [8]}}, "the actor weights do not fit the networks"),
        ({"policy": {"hidden": [100000, 100000]}}, "pglab builds at most 100,000,000"),
        ({"env": {"id": "this:X"}}, "would import module 'this'"),
    ],
)
def test_broken_checkpoint_is_one_line_naming_the_file(
    change, words, lineworld_run, tmp_path, capsys
):
    file = restored(lineworld_run, tmp_path / "broken.pt", **change)
    code, _, err = run_cli(["eval", file], capsys)
    line = one_error_line(err)
    assert code == 2 and words in line and str(file) in line


def test_resume_of_a_misfit_checkpoint_is_one_line_naming_it(lineworld_run, tmp_path, capsys):
    run = tmp_path / "run"
    file = restored(lineworld_run, run / "checkpoints" / "last.pt", policy={"hidden": [8]})
    code, _, err = run_cli(["train", "--resume", run], capsys)
    line = one_error_line(err)
    assert code == 2 and "the actor weights do not fit" in line and str(file) in line


@pytest.mark.parametrize(
    "name, text",
    [
        ("summary.json", "{"),
        ("metrics.csv", "step,episode_return_mean\nnot-a-number,1\n"),
        ("config.toml", "x = ["),
    ],
)
def test_report_skips_a_malformed_run_file_with_a_warning(
    name, text, lineworld_run, tmp_path, capsys
):
    group = tmp_path / "group"
    for run in ("good", "bad"):
        (group / run).mkdir(parents=True)
        for file in ("config.toml", "metrics.csv", "summary.json"):
            (group / run / file).write_bytes((lineworld_run / file).read_bytes())
    (group / "bad" / name).write_text(text)
    code, _, err = run_cli(["report", group], capsys)
    assert code == 0
    warning = f"pglab: warning: skipping run {str(group / 'bad' / name)!r}: "
    assert err.startswith(warning) and len(err.strip().splitlines()) == 1
    assert "1 runs in 1 configurations" in (group / "report" / "report.md").read_text()
    (group / "good" / name).write_text(text)
    code, _, err = run_cli(["report", group], capsys)
    assert code == 2 and "no finished runs (readable folders" in err.splitlines()[-1]


def test_act_names_expected_and_given_shapes(lineworld_run):
    agent = pglab.load(lineworld_run)
    dim = agent.observation_space.shape[0]
    assert agent.act(np.zeros(dim)) in (0, 1, 2)
    assert agent.act(np.zeros((3, dim))).shape == (3,)
    with pytest.raises(
        ValueError, match=rf"shape \({dim},\) or a batch .*got shape \({dim + 1},\)"
    ):
        agent.act(np.zeros(dim + 1))
    with pytest.raises(ValueError, match=r"got shape \(2, 7\)"):
        agent.act(np.zeros((2, 7)))


def test_unwritable_output_is_one_line_naming_it_exit_1(lineworld_run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a path under a file cannot be created, even by root
    code, _, err = run_cli(["train", *TINY_FLAGS, "--out", blocker / "runs"], capsys)
    line = one_error_line(err)
    assert code == 1 and str(blocker / "runs") in line and "Not a directory" in line
    group = tmp_path / "group"
    group.mkdir()
    (group / "run").symlink_to(lineworld_run, target_is_directory=True)
    (group / "report").write_text("")  # a file where the report folder goes
    code, _, err = run_cli(["report", group], capsys)
    line = one_error_line(err)
    assert code == 1 and str(group / "report") in line


def test_a_full_disk_during_training_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    import errno

    from pglab.logs import MetricsLogger

    def full(self, row):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "metrics.csv"))

    monkeypatch.setattr(MetricsLogger, "log", full)
    code, _, err = run_cli(["train", *TINY_FLAGS, "--out", tmp_path / "runs"], capsys)
    line = one_error_line(err)
    assert code == 1 and "metrics.csv" in line and "No space left on device" in line


def test_path_helpers_keep_writes_inside_their_root(tmp_path):
    from pglab.errors import ConfigError, PglabError
    from pglab.paths import inside, safe_name, write_text_atomic

    assert safe_name("ppo-seed0", "run.name") == "ppo-seed0"
    for bad in ("", ".", "..", "a/b", "a\\b", "a\tb", "x" * 101):
        with pytest.raises(ConfigError, match="run.name must be one folder name"):
            safe_name(bad, "run.name")
    assert inside(tmp_path, tmp_path / "a" / "b") == (tmp_path / "a" / "b").resolve()
    with pytest.raises(PglabError, match="lies outside"):
        inside(tmp_path / "a", tmp_path / "a" / ".." / "b")
    with pytest.raises(PglabError, match="lies outside"):
        write_text_atomic(tmp_path / "root" / ".." / "escaped.txt", "x", tmp_path / "root")
    assert not (tmp_path / "escaped.txt").exists()
    written = write_text_atomic(tmp_path / "root" / "sub" / "f.txt", "hello", tmp_path / "root")
    assert written.read_text() == "hello"
    assert sorted(p.name for p in written.parent.iterdir()) == ["f.txt"]  # no temp file left
