"""In-process PBT against Ray Tune's PBT: one population spec, both schedulers, one invocation.

Both train the same members (PPO, the env's preset, the same search space, interval,
quantile, resampling and factors) to the same budget on this machine: pglab's PBT as
one population in one process (``pglab tune --scheduler pbt``), Ray Tune's as one trial
per member on a local Ray instance with every CPU (``--backend ray``; its start-up is
part of its wall time, and is also given apart). Printed and written as markdown:
each one's wall time, the members' final evaluations, and the ratio::

    python benchmarks/pbt_wall.py --env CartPole-v1 --members 8 --steps 100000 --every 20000

The table goes to ``benchmarks/results/pbt-wall.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from machine import provenance
from pglab.experiments.tune import run_tune

SPEC = """
group = "{group}"
out = "{out}"
scheduler = "pbt"
members = {members}
perturb_every = {every}
sampler_seed = 0
[set]
env = "{env}"
algo = "ppo"
total_steps = {steps}
eval_every = {eval_every}
eval_episodes = {episodes}
checkpoint_every = 0
[search]
lr = {{ log_uniform = [1e-4, 3e-3] }}
entropy_coef = {{ uniform = [0.0, 0.02] }}
clip_range = {{ uniform = [0.1, 0.3] }}
"""


def finals(path: Path, column: str) -> list[float]:
    with open(path, newline="") as handle:
        return [float(r[column]) for r in csv.DictReader(handle) if r[column] not in ("", None)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100_000, help="each member's budget")
    parser.add_argument("--every", type=int, default=20_000, help="steps between rounds")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per evaluation")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pbt-wall.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("local", "ray"):
            spec = Path(tmp) / f"{backend}.toml"
            spec.write_text(
                SPEC.format(
                    group=f"pbt-{backend}", out=tmp, members=args.members, every=args.every,
                    env=args.env, steps=args.steps, eval_every=args.every // 2,
                    episodes=args.episodes,
                )
            )  # fmt: skip
            start = time.perf_counter()
            tune_dir = run_tune(spec, backend=backend, echo=print)
            wall = time.perf_counter() - start
            if backend == "local":
                values = finals(tune_dir / "members.csv", "eval_return_mean")
                events = len(finals(tune_dir / "events.csv", "step"))
            else:
                values = finals(tune_dir / "ray_members.csv", "value")
                events = None
            rows.append((backend, wall, values, events))
            print(
                f"{backend}: {wall:.1f} s, median final evaluation {statistics.median(values):.1f}"
            )
    local, ray = rows
    lines = [
        f"# In-process PBT against Ray Tune's PBT: {args.members} members, PPO on {args.env}",
        "",
        *provenance(),
        "",
        f"Each member trains {args.steps:,} steps; a round every {args.every:,} steps, ranked by "
        f"an evaluation of {args.episodes} episodes every {args.every // 2:,} steps. The "
        "in-process population runs in this one process; Ray Tune runs one trial per member "
        "on a local Ray instance with every CPU (its start-up included).",
        "",
        "| scheduler | wall s | median final evaluation | best final evaluation | exploits |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (_, wall, values, events) in zip(("pglab in-process PBT", "Ray Tune PBT"), rows):
        exploits = "" if events is None else str(events)
        lines.append(
            f"| {name} | {wall:.1f} | {statistics.median(values):.1f} | {max(values):.1f} "
            f"| {exploits} |"
        )
    lines += ["", f"**Ray Tune's wall time / in-process: {ray[1] / local[1]:.2f}**", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
