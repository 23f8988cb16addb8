"""Pong from pixels with REINFORCE (the shipped preset), for a fixed wall-clock time.

Trains ``pglab train --env ALE/Pong-v5 --algo reinforce`` in a child process, stops it
with Ctrl-C (SIGINT) after ``--minutes`` (pglab writes a checkpoint and exits), then
reads the run's ``metrics.csv`` and reports the running mean return over the last 100
episodes as training went on.

    python benchmarks/pong.py --minutes 60 [--seed 0] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

from machine import provenance

RESULTS = Path(__file__).parent / "results"


def running_means(metrics: Path, window: int = 100) -> list[tuple[int, int, float]]:
    """``(step, episodes, mean return of the last `window` episodes)`` after each batch."""
    returns: list[float] = []
    points = []
    with open(metrics, newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("episode_return_mean"):
                continue
            done = int(row["episodes"]) - len(returns)
            returns += [float(row["episode_return_mean"])] * done  # the batch's mean per episode
            recent = returns[-window:]
            points.append((int(row["step"]), len(returns), sum(recent) / len(recent)))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs", help="folder for the run")
    parser.add_argument("--out", type=Path, default=RESULTS / "pong-reinforce.md")
    parser.add_argument(
        "--report", type=Path, default=None, metavar="RUN_DIR", help="only report on a past run"
    )
    args = parser.parse_args()
    if args.report is not None:
        write_report(args, args.report, None, [])
        return
    name = f"pong-reinforce-seed{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    train = [
        sys.executable, "-m", "pglab.cli", "train", "--env", "ALE/Pong-v5", "--algo",
        "reinforce", "--seed", str(args.seed), "--out", args.runs, "--name", name,
        "--set", "run.progress=plain",
    ]  # fmt: skip
    start = time.monotonic()
    child = subprocess.Popen(train)
    try:
        child.wait(timeout=args.minutes * 60)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGINT)  # pglab checkpoints and exits with code 130
        child.wait()
    wall = time.monotonic() - start
    write_report(args, Path(args.runs) / "ALE-Pong-v5" / name, wall, train[1:])


def write_report(
    args: argparse.Namespace, run_dir: Path, wall: float | None, train: list[str]
) -> None:
    """The running-mean table of the run in ``run_dir``, printed and written to ``args.out``."""
    if wall is None:  # a past run: its own clock
        with open(run_dir / "metrics.csv", newline="") as handle:
            wall = float(list(csv.DictReader(handle))[-1]["wall_seconds"])
    points = running_means(run_dir / "metrics.csv")
    if not points:
        raise SystemExit(f"no finished batches in {run_dir}")
    first, last = points[0], points[-1]
    best = max(points, key=lambda p: p[2])
    every = max(1, len(points) // 20)
    shown = points[::every] if points[::every][-1] == last else [*points[::every], last]
    lines = [
        "# REINFORCE on Pong from pixels (preset reinforce/ALE/Pong-v5)",
        "",
        *provenance(),
        "",
        f"run: `{' '.join(train) or run_dir}`, stopped after {wall / 60:.1f} min "
        f"({last[0]:,} steps, {last[1]:,} episodes)",
        "",
        "| step | episodes | running mean return (last 100 episodes) |",
        "|---:|---:|---:|",
        *[f"| {s:,} | {e:,} | {m:.2f} |" for s, e, m in shown],
        "",
        f"**first batch: {first[2]:.2f}; after {wall / 60:.0f} min: {last[2]:.2f}; "
        f"best: {best[2]:.2f} at step {best[0]:,}** (a random policy scores about -20.5; "
        "the return runs from -21, every point lost, to +21)",
    ]
    report = "\n".join(lines) + "\n"
    # The runs folder is this machine's own: the report names it RUNS.
    report = report.replace(str(args.runs), "RUNS")
    report = report.replace("\nmachine:", "\nRUNS: the folder given to --runs.\n\nmachine:", 1)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
