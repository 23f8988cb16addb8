"""The tuning schedulers compared on one env: what each finds within a wall-time budget,
then evaluated on fresh seeds beside the shipped preset and a published tuned setting.

Every scheduler searches the same space of PPO options over the env's preset
(``lr``, ``entropy_coef``, ``clip_range``, ``gamma``, ``lam``: the options a PBT member
may change), each trial or member training ``--steps`` steps:

- ``tpe``: Optuna's TPE with the median pruner, on this machine, until ``--budget`` seconds;
- ``asha``: Ray Tune's ASHA with Optuna's TPE as searcher, on a local Ray instance,
  until ``--budget`` seconds;
- ``pbt``: pglab's in-process PBT, ``--members`` members, a round every ``--every`` steps;
- ``ray-pbt``: Ray Tune's PBT on the same population.

PBT's budget is its members' steps, not a time: its wall time is reported beside the
others'. Each scheduler's best configuration (its ``best.toml``), the preset alone, and
``--reference`` (a published tuned setting, as ``key=value`` options over the preset)
then train on ``--eval-seeds`` (seeds no trial used) for ``--final-steps`` steps; the
table gives each one's median final evaluation over those seeds::

    python benchmarks/tuning_compare.py --env Pendulum-v1 --budget 900 --steps 50000 \\
        --final-steps 200000 --reference 'rl-baselines3-zoo' lr=1e-3 gamma=0.9 ...

The table goes to ``benchmarks/results/tuning-<env>.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import tomllib

import pglab
from machine import provenance
from pglab.config import build_config, parse_override
from pglab.errors import PglabError
from pglab.experiments.tune import run_tune
from pglab.population import parse_seeds

SPEC = """
group = "{group}"
out = "{out}"
scheduler = "{scheduler}"
seeds = 1
trials = 10000
timeout = {timeout}
objective = "auc"
pruner = "median"
members = {members}
perturb_every = {every}
sampler_seed = 0
[set]
env = "{env}"
algo = "ppo"
total_steps = {steps}
eval_every = {eval_every}
eval_episodes = 5
checkpoint_every = 0
stop_at_return = "none"
[search]
lr = {{ log_uniform = [3e-5, 3e-3] }}
entropy_coef = {{ uniform = [0.0, 0.02] }}
clip_range = {{ uniform = [0.1, 0.3] }}
gamma = {{ uniform = [0.9, 0.999] }}
lam = {{ uniform = [0.8, 1.0] }}
"""

SCHEDULERS = {"tpe": ("tpe", "local"), "asha": ("tpe", "ray"), "pbt": ("pbt", "local"),
              "ray-pbt": ("pbt", "ray")}  # fmt: skip


def tuned_options(best: Path) -> dict:
    """The searched options of a ``best.toml``."""
    algo = tomllib.loads(best.read_text())["algo"]
    return {f"algo.{k}": algo[k] for k in ("lr", "entropy_coef", "clip_range", "gamma", "lam")}


def final_evaluations(
    env: str, options: dict, seeds: list[int], steps: int, out: Path, jobs: int
) -> list:
    config = build_config(None, {"env": env, "algo": "ppo", **options}, flags_source="compare")
    runs = pglab.train(
        config=config, seeds=seeds, jobs=jobs, total_steps=steps, out=str(out), progress="off",
        stop_at_return="none", checkpoint_every=0,
    )  # fmt: skip
    return [run.summary["eval_return_mean"] for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--budget", type=float, default=900, help="wall seconds per search")
    parser.add_argument("--steps", type=int, default=50_000, help="steps per trial or member")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--final-steps", type=int, default=200_000)
    parser.add_argument("--eval-seeds", default="100-102")
    parser.add_argument("--jobs", type=int, default=2, help="processes for the fresh seeds")
    parser.add_argument("--schedulers", default="tpe,asha,pbt,ray-pbt")
    parser.add_argument("--reference", nargs="+", default=None,
                        help="NAME key=value ...: a published tuned setting")  # fmt: skip
    parser.add_argument("--preset-label", default="preset",
                        help="the preset's row name (say when the preset is a published setting)")  # fmt: skip
    parser.add_argument("--without-preset", action="store_true",
                        help="leave the preset's row out (a rerun of some schedulers)")  # fmt: skip
    parser.add_argument("--out")
    args = parser.parse_args()
    seeds = parse_seeds(args.eval_seeds)
    candidates: dict[str, dict] = {} if args.without_preset else {args.preset_label: {}}
    failures: dict[str, str] = {}
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.schedulers.split(","):
            scheduler, backend = SCHEDULERS[name]
            spec = Path(tmp) / f"{name}.toml"
            spec.write_text(
                SPEC.format(
                    group=name, out=tmp, scheduler=scheduler, timeout=args.budget,
                    members=args.members, every=args.every, env=args.env, steps=args.steps,
                    eval_every=args.every // 2,
                )
            )  # fmt: skip
            start = time.perf_counter()
            try:
                tune_dir = run_tune(spec, backend=backend, echo=print)
            except PglabError as error:  # the table says so; the other schedulers go on
                failures[name] = str(error)
                continue
            finally:
                walls[name] = time.perf_counter() - start
            if (tune_dir / "best.toml").is_file():
                candidates[name] = tuned_options(tune_dir / "best.toml")
            print(f"{name}: {walls[name]:.0f} s, {candidates.get(name)}")
        if args.reference:
            label, *pairs = args.reference
            candidates[label] = dict(parse_override(pair) for pair in pairs)
        results = {
            name: final_evaluations(
                args.env, options, seeds, args.final_steps, Path(tmp) / name, args.jobs
            )
            for name, options in candidates.items()
        }
    lines = [
        f"# Tuning PPO on {args.env}: the schedulers' findings on fresh seeds",
        "",
        *provenance(),
        "",
        f"Search: {args.steps:,} steps per trial or member, over the preset; TPE and ASHA "
        f"until {args.budget:.0f} s; PBT {args.members} members, a round every "
        f"{args.every:,} steps. Then each setting trains seeds {args.eval_seeds} for "
        f"{args.final_steps:,} steps (final evaluation: the run's last).",
        "",
        "| setting | search wall s | median final evaluation | per seed | options |",
        "|---|---:|---:|---|---|",
    ]
    for name, values in results.items():
        wall = f"{walls[name]:.0f}" if name in walls else ""
        options = ", ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else
                            f"{k.split('.')[-1]}={v}" for k, v in candidates[name].items())  # fmt: skip
        per_seed = ", ".join(f"{v:.1f}" for v in values)
        lines.append(
            f"| {name} | {wall} | {statistics.median(values):.1f} | {per_seed} | {options} |"
        )
    for name, reason in failures.items():
        lines.append(f"| {name} | {walls[name]:.0f} | failed | | {reason} |")
    out = args.out or str(Path(__file__).parent / "results" / f"tuning-{args.env}.md")
    Path(out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
