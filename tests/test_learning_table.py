"""benchmarks/learning.py: a seed's row is the same trained alone or with the others."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def table(tmp_path: Path, name: str, *extra: str) -> list[str]:
    out = tmp_path / f"{name}.md"
    command = [sys.executable, "learning.py", "--algo", "ppo", "--steps", "1024"]
    command += ["--seeds", "0-2", "--episodes", "2", "--jobs", "2", "--out", str(out), *extra]
    command += ["--set", "run.eval_every=512", "--set", "run.loggers=[]"]
    subprocess.run(command, cwd=BENCHMARKS, check=True, capture_output=True)
    return [line for line in out.read_text().splitlines() if line.startswith("| ")]


def results(rows: list[str]) -> list[str]:
    """Each row but its last column (the wall seconds, which no two runs share)."""
    return [row.rsplit("|", 2)[0] for row in rows]


def test_seeds_trained_together_give_the_rows_they_give_apart(tmp_path):
    apart = table(tmp_path, "apart")
    together = table(tmp_path, "together", "--together")
    assert len(apart) == 1 + 3 + 2  # the header, a row per seed, the curve's two rows
    assert results(together) == results(apart)


def test_a_stochastic_final_evaluation_is_named_and_never_mixed_with_deterministic_rows(tmp_path):
    out = tmp_path / "table.md"
    command = [sys.executable, "learning.py", "--algo", "ppo", "--steps", "1024", "--seeds", "0"]
    command += ["--episodes", "2", "--out", str(out), "--set", "run.eval_every=512"]
    command += ["--set", "run.loggers=[]"]
    stochastic = subprocess.run(
        [*command, "--stochastic"], cwd=BENCHMARKS, check=True, capture_output=True, text=True
    )
    assert "final evaluation: stochastic" in out.read_text()
    assert "kept from" not in stochastic.stdout
    deterministic = subprocess.run(
        command, cwd=BENCHMARKS, check=True, capture_output=True, text=True
    )
    assert "final evaluation: deterministic" in out.read_text()
    assert "kept from" not in deterministic.stdout  # a row evaluated otherwise is not reused
    again = subprocess.run(command, cwd=BENCHMARKS, check=True, capture_output=True, text=True)
    assert "kept from" in again.stdout
