"""Learning benchmark: one algorithm on one env over several seeds, as a markdown table.

Each seed trains from scratch for the whole budget (no early stop) with the shipped
preset (plus any ``--set``), evaluating every ``run.eval_every`` steps. The table
gives, per seed and over seeds, the final deterministic (or ``--stochastic``) evaluation over
``--episodes`` episodes (fresh env seeds), the first step at which a periodic
evaluation reached the threshold, and the wall time.

    python benchmarks/learning.py --algo ppo --env CartPole-v1 --steps 100000 --seeds 0-4
    python benchmarks/learning.py --algo reinforce --weights gae --env CartPole-v1 \\
        --steps 200000 --seeds 0-4 --jobs 2
    python benchmarks/learning.py --algo ppo --env HalfCheetah-v5 --steps 1000000 \\
        --seeds 0-2 --jobs 2 --together

``--together`` trains the seeds as populations (``pglab train --seeds``, the fastest
mode), which gives every seed the numbers it has alone.

The table goes to ``benchmarks/results/learning/<algo>-<env>-<steps>.md`` (or ``--out``).
Each finished seed is also kept as ``<table>.seeds/seed-<N>.json``; a later call with
the same options and unchanged preset files reuses those rows and trains only the missing seeds, so a long
benchmark can be finished over several sittings (``--fresh`` retrains them all).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

import pglab
from machine import provenance
from pglab.envs import reward_threshold
from pglab.population import parse_seeds

RESULTS = Path(__file__).parent / "results" / "learning"


def first_step_at(metrics: Path, threshold: float | None) -> int | None:
    """The first step whose periodic evaluation reached ``threshold``."""
    if threshold is None:
        return None
    with open(metrics, newline="") as handle:
        for row in csv.DictReader(handle):
            value = row.get("eval_return_mean")
            if value and float(value) >= threshold:
                return int(row["step"])
    return None


def num(value: float) -> str:
    """A return for the table: one decimal, three for returns below 10 (success rates)."""
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def eval_curve(metrics: Path) -> list[tuple[int, float]]:
    """The periodic evaluations of a run: ``(step, mean return)`` pairs."""
    with open(metrics, newline="") as handle:
        return [
            (int(row["step"]), float(row["eval_return_mean"]))
            for row in csv.DictReader(handle)
            if row.get("eval_return_mean")
        ]


def curve_lines(rows: list[dict]) -> list[str]:
    """The median learning curve over seeds: the k-th periodic evaluation of every seed
    (seeds count steps a little differently, so each column gives their median step)."""
    curves = [row.get("curve", []) for row in rows]
    length = min(map(len, curves), default=0)
    if length == 0:
        return []
    columns = [[curve[k] for curve in curves] for k in range(length)]
    return [
        "",
        "learning curve (periodic evaluations, median over seeds):",
        "",
        "| step | "
        + " | ".join(f"{statistics.median(s for s, _ in c):,.0f}" for c in columns)
        + " |",
        "|---" * (length + 1) + "|",
        "| return | " + " | ".join(num(statistics.median(r for _, r in c)) for c in columns) + " |",
    ]


def train(args: argparse.Namespace, out: str, **seeds: object) -> object:
    """``pglab.train`` for the whole budget with the benchmark's options; ``seeds`` is
    ``seed=N`` (one run) or ``seeds=[...], jobs=J`` (populations, a list of runs)."""
    options = dict(pglab.config.parse_override(text) for text in args.set)
    if args.weights:
        options["algo.weights"] = args.weights
    return pglab.train(
        args.env,
        args.algo,
        total_steps=args.steps,
        stop_at_return="none",
        out=out,
        progress="off",
        checkpoint_every=0,
        **seeds,
        **options,
    )


def row_of(args: argparse.Namespace, run: object, threshold: float | None, wall: float) -> dict:
    """A trained run's row: its final evaluation, first step at the threshold, curve."""
    summary = run.summary
    seed = summary["seed"]
    result = pglab.evaluate(
        run.agent, episodes=args.episodes, seed=100_000 + seed, deterministic=not args.stochastic
    )
    return {
        "seed": seed,
        "final_mean": result.mean,
        "final_std": result.std,
        "solved_at": first_step_at(run.path / "metrics.csv", threshold),
        "steps": summary["total_steps"],
        "wall": wall,
        "preset": summary["preset"],
        "curve": eval_curve(run.path / "metrics.csv"),
    }


def one_seed(args: argparse.Namespace, seed: int, threshold: float | None) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run = train(args, out, seed=seed)
        return row_of(args, run, threshold, time.perf_counter() - start)


def seeds_together(args: argparse.Namespace, seeds: list[int], threshold: float | None) -> list:
    """Every seed trained at once, as populations over ``--jobs`` processes (a seed's
    numbers are those it has alone); each row's wall time is the whole group's."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        runs = train(args, out, seeds=seeds, jobs=args.jobs)
        wall = time.perf_counter() - start
        return [row_of(args, run, threshold, wall) for run in runs]


def env_kwargs(options: list[str]) -> dict:
    """The ``env.kwargs`` among ``--set`` options (the preset is matched on them)."""
    pairs = dict(pglab.config.parse_override(text) for text in options)
    return dict(pairs.get("env.kwargs", {}))


def preset_digest(algo: str, env_id: str, kwargs: dict) -> str:
    """A digest of the preset files a run starts from, so that kept rows go stale with them."""
    from pglab.config import PRESETS_DIR, matching_preset, preset_path

    files = [PRESETS_DIR / f"{algo}.toml", preset_path(matching_preset(algo, env_id, kwargs))]
    text = "".join(f.read_text() for f in files if f is not None and f.is_file())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seed_file(folder: Path, seed: int) -> Path:
    return folder / f"seed-{seed}.json"


def cached_row(folder: Path, seed: int, key: dict) -> dict | None:
    """A finished seed's row, if it was trained with the same options (``key``)."""
    path = seed_file(folder, seed)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["row"] if saved.get("key") == key else None


def save_row(folder: Path, row: dict, key: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = seed_file(folder, row["seed"])
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"key": key, "row": row}, indent=1) + "\n")
    partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--weights", default=None, help="REINFORCE's weights")
    parser.add_argument("--steps", type=int, required=True, help="budget per seed")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--episodes", type=int, default=100, help="final evaluation episodes")
    parser.add_argument(
        "--stochastic",
        action="store_true",
        help="final evaluation samples actions (as a published figure evaluated that way did)",
    )
    parser.add_argument("--threshold", type=float, default=None, help="default: the env's")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--fresh", action="store_true", help="ignore seeds kept from before")
    parser.add_argument(
        "--together",
        action="store_true",
        help="train the seeds as populations over --jobs processes (pglab train --seeds): "
        "the same numbers as alone, faster; a row's wall time is then the whole group's",
    )
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="TEXT",
        help="a published figure to print beside the table (repeatable), e.g. "
        "'CleanRL ppo_continuous_action, Walker2d-v4, 1M steps: 2287.95 ± 571.78'",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in every worker
    seeds = parse_seeds(args.seeds)
    threshold = args.threshold if args.threshold is not None else reward_threshold(args.env)

    kwargs = env_kwargs(args.set)
    preset = pglab.config.matching_preset(args.algo, args.env, kwargs)
    # an env with kwargs is named after its preset (LunarLander-v3-continuous), else its values
    env_name = (
        preset.partition("/")[2]
        if preset != "none"
        else "-".join([args.env, *(f"{k}={v}" for k, v in sorted(kwargs.items()))])
    )
    name = f"{args.algo}{'-' + args.weights if args.weights else ''}-{env_name.replace('/', '-').replace(':', '-')}"
    out = args.out or RESULTS / f"{name}-{args.steps}.md"
    kept = out.with_suffix(".seeds")
    key = {
        "set": sorted(args.set),
        "episodes": args.episodes,
        "threshold": threshold,
        "presets": preset_digest(args.algo, args.env, kwargs),
        **({"stochastic": True} if args.stochastic else {}),  # (older rows: deterministic)
    }
    rows = {}
    if not args.fresh:
        for seed in seeds:
            row = cached_row(kept, seed, key)
            if row is not None:
                rows[seed] = row
                print(f"seed {seed}: kept from {seed_file(kept, seed)}", flush=True)
    missing = [seed for seed in seeds if seed not in rows]
    trained = set()
    with ProcessPoolExecutor(args.jobs) as pool:  # (started only where seeds train apart)
        if args.together and missing:
            finished = iter(seeds_together(args, missing, threshold))
        else:
            futures = [pool.submit(one_seed, args, seed, threshold) for seed in missing]
            finished = (future.result() for future in futures)
        for row in finished:
            rows[row["seed"]] = row
            trained.add(row["seed"])
            save_row(kept, row, key)
            print(
                f"seed {row['seed']}: final {num(row['final_mean'])} ± {num(row['final_std'])}, "
                f"threshold reached at {row['solved_at']}, {row['wall']:.0f}s",
                flush=True,
            )
    kept_seeds = [seed for seed in seeds if seed not in trained]
    rows = [rows[seed] for seed in seeds]

    finals = [r["final_mean"] for r in rows]
    solved = [r["solved_at"] for r in rows if r["solved_at"] is not None]
    label = f"{args.algo}" + (f" ({args.weights})" if args.weights else "")
    median_solved = f"{statistics.median(solved):,.0f}" if solved else "never"
    lines = [
        f"# {label} on {args.env}{f' {kwargs}' if kwargs else ''}, {args.steps:,} steps, "
        f"{len(seeds)} seeds",
        "",
        *provenance(),
        "",
        f"preset: {rows[0]['preset']}; extra options: {' '.join(args.set) or 'none'}",
        "",
        f"final evaluation: {'stochastic' if args.stochastic else 'deterministic'}, "
        f"{args.episodes} episodes per seed after the whole "
        f"budget; threshold: {threshold if threshold is not None else 'none'} (first periodic "
        "evaluation to reach it)",
        "",
        *(
            [
                f"seeds {', '.join(map(str, kept_seeds))}: rows kept from earlier invocations of "
                f"this command (`{kept.name}/`; wall times are each run's own, under the load "
                "of its time)",
                "",
            ]
            if kept_seeds
            else []
        ),
        *(
            [
                f"seeds {', '.join(map(str, sorted(trained)))} trained together, as populations "
                f"over {args.jobs} process(es) (`--together`): each wall time is the group's",
                "",
            ]
            if args.together and trained
            else []
        ),
        *(
            [
                "published figures to compare with:",
                "",
                *(f"- {text}" for text in args.reference),
                "",
            ]
            if args.reference
            else []
        ),
        "| seed | final return (mean ± std) | steps to threshold | wall s |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        reached = "never" if r["solved_at"] is None else f"{r['solved_at']:,}"
        lines.append(
            f"| {r['seed']} | {num(r['final_mean'])} ± {num(r['final_std'])} | {reached} | "
            f"{r['wall']:.0f} |"
        )
    lines += [
        "",
        f"**median final return over seeds: {num(statistics.median(finals))}** "
        f"(mean {num(float(np.mean(finals)))}, std {num(float(np.std(finals)))}); "
        f"median steps to threshold: {median_solved} ({len(solved)}/{len(rows)} seeds reached it); "
        f"median wall time {statistics.median(r['wall'] for r in rows):.0f} s",
        *curve_lines(rows),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
