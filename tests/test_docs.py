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
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    concepts = (tmp_path / "site" / "concepts" / "index.html").read_text()
    assert "arithmatex" in concepts and "pglab.returns.gae" in concepts  # formula, its code
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "--resume" in cli and "pglab export" in cli
