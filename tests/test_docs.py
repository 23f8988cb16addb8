"""The docs: the site builds strictly, and every Python example in the README and the
docs runs (with a small budget: the harness shortens each training, nothing else)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

#: Run before the examples: every training gets a few hundred steps and short
#: evaluations, so that the examples run as written in seconds.
HARNESS = """
import json, pathlib, pglab

_train, _resume = pglab.train, pglab.resume

def _small(kwargs, algo):
    kwargs["total_steps"] = min(kwargs.get("total_steps", 256), 256)
    kwargs.update(progress="off", eval_episodes=1, max_episode_steps=64)
    if algo != "reinforce":
        kwargs.update(batch_size=64, num_envs=1, epochs=1, minibatches=1)
    return kwargs

def train(*args, **kwargs):
    algo = args[1] if len(args) > 1 else kwargs.get("algo", "ppo")
    return _train(*args, **_small(kwargs, algo))

def resume(path, **kwargs):
    done = json.loads((pathlib.Path(path) / "summary.json").read_text())["total_steps"]
    kwargs["total_steps"] = done + 64
    return _resume(path, **kwargs)

pglab.train, pglab.resume = train, resume
"""


def examples(path: Path) -> str:
    """The Python blocks of a markdown file, in order, as one script."""
    return "\n".join(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_python_examples_run(page, tmp_path):
    pytest.importorskip("minigrid")
    script = HARNESS + examples(ROOT / page)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={  # the docstrings of this checkout's source, not of whichever pglab is installed
            "NO_MKDOCS_2_WARNING": "1",
            "PATH": "",
            "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT / "src"),
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    concepts = (tmp_path / "site" / "concepts" / "index.html").read_text()
    assert "arithmatex" in concepts and "pglab.returns.gae" in concepts  # formula, its code
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "--resume" in cli and "pglab export" in cli


#: Files the shell examples name, made small in the folder they run in.
SHELL_FILES = {
    "my_run.toml": '[env]\nid = "CartPole-v1"\n[algo]\nname = "reinforce"\nweights = "fr"\n',
    "experiments/my-sweep.toml": (
        'seeds = 1\n[set]\nenv = "CartPole-v1"\nalgo = "reinforce"\nweights = "fr"\n'
        "total_steps = 300\neval_episodes = 1\ncheckpoint_every = 0\n[grid]\nlr = [0.001, 0.01]\n"
    ),
}
SHELL_FILES["experiments/seed-grid.toml"] = SHELL_FILES["experiments/my-sweep.toml"]
#: Shell examples not run here, and why.
NOT_RUN = {
    "--backend ray": "starts a Ray instance (tests/test_sweep.py runs the Ray backend)",
    "pglab reproduce": "reruns the docs' experiments in the source checkout (test_reproduce.py)",
}
#: Runs an example needs that no earlier example trains: made first, by group folder.
PREREQUISITES = {
    "pglab-LineWorld-v0": ["train", "--env", "pglab/LineWorld-v0", "--algo", "reinforce"]
}
SMALL = ["--set", "run.progress=off", "--set", "run.eval_episodes=1",
         "--set", "run.checkpoint_every=100"]  # fmt: skip


def shell_examples(path: Path) -> list[str]:
    """The ``pglab ...`` lines of a markdown file's bash blocks (not the install lines),
    without their comments and optional ``[--...]`` parts."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        for line in block.splitlines():
            line = re.sub(r"\s\[--[^\]]*\]", "", line.split("  #")[0]).strip()
            lines += [
                part.strip() for part in line.split("&&") if part.strip().startswith("pglab ")
            ]
    return lines


def _latest(folder: Path) -> str:
    runs = [p for p in folder.iterdir() if p.is_dir() and (p / "summary.json").exists()]
    return str(max(runs, key=lambda p: p.stat().st_mtime))


def _prepare(line: str, cwd: Path) -> list[str] | None:
    """The example as arguments with a small budget, its run placeholders filled."""
    import json
    import shlex

    if any(marker in line for marker in NOT_RUN):
        return None
    args = shlex.split(line)[1:]
    for i, arg in enumerate(args):
        match = re.fullmatch(r"runs/([^/]+)/[^/]+", arg)
        if match and not (cwd / arg).exists():  # <run>, or a run named for the reader
            args[i] = _latest(cwd / "runs" / match.group(1))
    if args[0] == "train":
        args = [re.sub(r"run.total_steps=\d+", "run.total_steps=300", a) for a in args]
        if "--resume" in args:
            run = Path(args[args.index("--resume") + 1])
            done = json.loads((run / "summary.json").read_text())["total_steps"]
            if "--steps" in args:
                args[args.index("--steps") + 1] = str(done + 64)
            else:  # an interrupted run's resume; here the runs finished: extend it a little
                args += ["--steps", str(done + 64)]
        else:
            args += ["--steps", "300", *SMALL]
    return args


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_shell_examples_run(page, tmp_path, monkeypatch, capsys):
    from cli_run import run_cli

    monkeypatch.chdir(tmp_path)  # in this process: each example as `pglab.cli.main(args)`
    for name, text in SHELL_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    ran = 0
    for line in shell_examples(ROOT / page):
        for group, needed in PREREQUISITES.items():
            if f"runs/{group}/" in line and not (tmp_path / "runs" / group).exists():
                assert run_cli([*needed, "--steps", "300", *SMALL], capsys)[0] in (0, None)
        args = _prepare(line, tmp_path)
        if args is None:
            continue
        code, _, err = run_cli(args, capsys)
        assert code in (0, None), f"{line}\n{args}\n{err[-2000:]}"
        ran += 1
    assert ran >= (15 if page == "README.md" else 4)
