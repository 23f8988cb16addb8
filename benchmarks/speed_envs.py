"""Speed where the environment and the network are the cost: MuJoCo, Atari, many seeds.

One invocation measures, each configuration in a fresh process (whole-process wall
time and peak memory are its own), the libraries interleaved seed by seed:

``cheetah``
    PPO on HalfCheetah-v5 with CleanRL's settings (one env, 2048-step batches, 10
    epochs of 32 minibatches, 64x64 tanh, lr 3e-4 annealed, value clip 0.2,
    normalised observations and rewards), ``--cheetah-steps`` steps without
    evaluation: training steps/s of pglab, of Stable-Baselines3 with the same settings,
    and of CleanRL's ``ppo_continuous_action.py`` when ``--cleanrl SCRIPT`` gives a copy
    (run by ``--cleanrl-python``, in an environment of its own).
``cheetah-seeds``
    8 seeds of the same to ``--seed-steps`` steps each, then 10 deterministic episodes:
    pglab's populations in 2 processes against SB3 running the seeds in 2 processes.
``atari``
    PPO on ALE/Breakout-v5 with CleanRL's Atari settings (the standard wrappers, 8
    envs x 128 steps, 4 epochs of 4 minibatches, Nature CNN, lr 2.5e-4 and clip 0.1
    annealed, one CNN for policy and value), ``--atari-steps`` steps: pglab on each of
    ``--atari-backends`` (Gymnasium's envs; envpool's, made to match them) and in each
    of ``--atari-precisions`` (float32; bfloat16, mixed precision) against SB3's
    ``CnnPolicy`` (float32), all on ``--atari-threads`` torch threads.
``cartpole-seeds``
    16 seeds of PPO on CartPole-v1 with PureJaxRL's (CleanRL's) settings (4 envs x 128
    steps, 4 epochs of 4 minibatches, lr 2.5e-4 annealed, entropy 0.01), 500k steps
    each: pglab's populations in 1 and 2 processes, where pglab's time goes
    (collection, update, the rest), and PureJaxRL when ``--purejaxrl DIR`` names a
    checkout of its repository and ``--jax-python`` a Python with JAX, Flax, Optax,
    Distrax and gymnax (see ``purejaxrl_cartpole.py``; neither is a dependency).

    python speed_envs.py --parts cheetah,cheetah-seeds,atari,cartpole-seeds \\
        [--cleanrl ppo_continuous_action.py --cleanrl-python PY] \\
        [--purejaxrl DIR --jax-python PY] [--out FILE]

The report goes to ``benchmarks/results/speed-envs.md`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pglab.bench import (
    ensure_sb3,
    linear,
    measure,
    median,
    median_range,
    one_thread,
    provenance,
    ratio,
    run_child,
    without_log_folder,
)

HERE = Path(__file__).resolve()
ENTRY = [sys.executable, str(HERE)]
PARTS = ("cheetah", "cheetah-seeds", "atari", "cartpole-seeds")
CHEETAH = "HalfCheetah-v5"
ATARI = "ALE/Breakout-v5"

#: Seconds a reference in its own environment (PureJaxRL) may take before its part
#: reports it as failed.
REFERENCE_TIMEOUT = 600

#: CleanRL's ``ppo_continuous_action.py`` settings as pglab options (the rest are the
#: PPO defaults: 64x64 tanh, orthogonal init, Adam eps 1e-5, clip 0.2, gamma 0.99,
#: lambda 0.95, value coefficient 0.5, gradient clip 0.5, observations clipped to 10).
CLEANRL_MUJOCO = {
    "run.preset": "none",
    "env.normalize_obs": True,
    "env.normalize_reward": True,
    "algo.lr_schedule": "linear",
    "algo.value_clip": 0.2,
}
#: CleanRL's ``ppo_atari.py`` settings as pglab options.
CLEANRL_ATARI = {
    "run.preset": "none",
    "env.preprocess": "atari",
    "env.num_envs": 8,
    "policy.body": "cnn",
    "policy.hidden": [512],
    "policy.shared": True,
    "algo.batch_size": 1024,
    "algo.minibatches": 4,
    "algo.epochs": 4,
    "algo.lr": 2.5e-4,
    "algo.lr_schedule": "linear",
    "algo.clip_range": 0.1,
    "algo.clip_schedule": "linear",
    "algo.entropy_coef": 0.01,
    "algo.value_clip": 0.1,
}
#: PureJaxRL's CartPole settings (its ``ppo.py`` defaults) as pglab options.
PUREJAXRL_CARTPOLE = {
    "run.preset": "none",
    "env.num_envs": 4,
    "algo.batch_size": 512,
    "algo.minibatches": 4,
    "algo.epochs": 4,
    "algo.lr": 2.5e-4,
    "algo.lr_schedule": "linear",
    "algo.entropy_coef": 0.01,
}


# ---------------------------------------------------------------- children
# Each runs in its own process (see pglab.bench.measure) and returns its figures.


def _pglab(env: str, options: dict, steps: int, threads: int = 1, **run: Any) -> Any:
    """pglab PPO in a temporary folder; each run keeps its metrics rows as ``.rows``."""
    import torch

    import pglab

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        runs = pglab.train(
            env, "ppo", total_steps=steps, out=out, progress="off", checkpoint_every=0,
            stop_at_return="none", threads=threads, **{**options, **run},
        )  # fmt: skip
        for r in runs if isinstance(runs, list) else [runs]:
            r.rows = _rows_of(r.path)
        return runs


def _rows_of(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def _training_rate(rows: list[dict[str, str]]) -> float:
    """Steps per second of the updates alone (collection and learning), without the
    evaluation that ends a run: each row's steps over its own ``steps_per_second``."""
    steps = [int(r["step"]) for r in rows]
    seconds = sum((b - a) / float(r["steps_per_second"])
                  for a, b, r in zip([0, *steps], steps, rows))  # fmt: skip
    return steps[-1] / seconds


def _last_training_return(rows: list[dict[str, str]]) -> float | None:
    values = [r["episode_return_mean"] for r in rows if r["episode_return_mean"]]
    return float(values[-1]) if values else None


def pglab_throughput(env: str, options: dict, steps: int, threads: int = 1) -> dict[str, Any]:
    """Training steps/s of one pglab run without evaluation."""
    run = _pglab(env, options, steps, threads, seed=0, eval_every=0, eval_episodes=1)
    return {"steps_per_second": _training_rate(run.rows), "paths": run.summary["paths"]}


def pglab_seeds(
    env: str, options: dict, steps: int, seeds: list[int], jobs: int, episodes: int
) -> dict[str, Any]:
    """Every seed to ``steps`` as populations in ``jobs`` processes; final returns."""
    start = time.perf_counter()
    runs = _pglab(env, options, steps, seeds=seeds, jobs=jobs, eval_every=0,
                  eval_episodes=episodes)  # fmt: skip
    return {
        "seconds": time.perf_counter() - start,
        "returns": [r.summary["eval_return_mean"] for r in runs],
        "train_returns": [_last_training_return(r.rows) for r in runs],
    }


def pglab_time_shares(env: str, options: dict, steps: int, seeds: list[int]) -> dict[str, Any]:
    """One population of ``seeds`` in this process, with the wall time of its collection
    and update phases (``Population.collect``, ``Population.update``) summed."""
    from pglab.population import Population

    spent = {"collect": 0.0, "update": 0.0}

    def timed(name: str, method: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        return wrapper

    for name in spent:
        setattr(Population, name, timed(name, getattr(Population, name)))
    start = time.perf_counter()
    _pglab(env, options, steps, seeds=seeds, eval_every=0, eval_episodes=1)
    return {"seconds": time.perf_counter() - start, **spent}


def _sb3_cheetah(seed: int, steps: int, episodes: int) -> dict[str, Any]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    envs = VecNormalize(make_vec_env(CHEETAH, n_envs=1, seed=seed), gamma=0.99)
    model = PPO(
        "MlpPolicy", envs, n_steps=2048, batch_size=64, n_epochs=10,
        learning_rate=linear(3e-4), gamma=0.99, gae_lambda=0.95, clip_range=0.2,
        clip_range_vf=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, seed=seed,
        device="cpu", verbose=0,
    )  # fmt: skip
    start = time.perf_counter()
    without_log_folder(model).learn(steps)
    seconds = time.perf_counter() - start
    figures: dict[str, Any] = {"steps_per_second": model.num_timesteps / seconds}
    if episodes:
        test = VecNormalize(make_vec_env(CHEETAH, n_envs=1, seed=seed + 10_000),
                            training=False, norm_reward=False)  # fmt: skip
        test.obs_rms = envs.obs_rms
        figures["return"] = float(
            evaluate_policy(model, test, n_eval_episodes=episodes, deterministic=True)[0]
        )
    return figures


def sb3_throughput(steps: int) -> dict[str, Any]:
    """Training steps/s of SB3 PPO on HalfCheetah with CleanRL's settings."""
    return _sb3_cheetah(0, steps, episodes=0)


def sb3_seeds(steps: int, seeds: list[int], jobs: int, episodes: int) -> dict[str, Any]:
    """Every seed of SB3 PPO on HalfCheetah, ``jobs`` processes at a time."""
    import multiprocessing

    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(jobs, initializer=one_thread) as pool:
        results = pool.starmap(_sb3_cheetah, [(seed, steps, episodes) for seed in seeds])
    return {"seconds": time.perf_counter() - start, "returns": [r["return"] for r in results]}


def sb3_atari(steps: int, threads: int) -> dict[str, Any]:
    """Training steps/s of SB3 PPO with ``CnnPolicy`` on Breakout, CleanRL's settings."""
    import ale_py
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    torch.set_num_threads(threads)
    gym.register_envs(ale_py)
    envs = make_atari_env(ATARI, n_envs=8, seed=0, env_kwargs={"frameskip": 1},
                          wrapper_kwargs={"terminal_on_life_loss": False})  # fmt: skip
    model = PPO(
        "CnnPolicy", VecFrameStack(envs, n_stack=4), n_steps=128, batch_size=256,
        n_epochs=4, learning_rate=linear(2.5e-4), clip_range=linear(0.1),
        clip_range_vf=linear(0.1), ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, seed=0,
        device="cpu", verbose=0,
    )  # fmt: skip
    start = time.perf_counter()
    without_log_folder(model).learn(steps)
    return {"steps_per_second": model.num_timesteps / (time.perf_counter() - start)}


def cleanrl_throughput(python: str, script: str, steps: int) -> dict[str, Any]:
    """CleanRL's script as it is (in its own environment): its last reported SPS."""
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(
            [python, str(Path(script).resolve()), "--env-id", "HalfCheetah-v4",
             "--total-timesteps", str(steps), "--seed", "0"],
            cwd=cwd, capture_output=True, text=True,
        )  # fmt: skip
    found = re.findall(r"SPS: (\d+)", done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"CleanRL's script failed:\n{done.stderr[-2000:]}")
    return {"steps_per_second": float(found[-1])}


def purejaxrl(python: str, repo: str, seeds: int, steps: int) -> dict[str, Any]:
    """PureJaxRL's PPO on ``seeds`` seeds, jit-compiled and vmapped, in its own environment."""
    driver = HERE.parent / "purejaxrl_cartpole.py"
    try:
        done = subprocess.run(
            [python, str(driver), "--purejaxrl", repo, "--seeds", str(seeds), "--steps",
             str(steps)],
            capture_output=True, text=True, timeout=REFERENCE_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"PureJaxRL did not finish in {REFERENCE_TIMEOUT} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"PureJaxRL failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "pglab_throughput": pglab_throughput,
    "pglab_seeds": pglab_seeds,
    "pglab_time_shares": pglab_time_shares,
    "sb3_throughput": sb3_throughput,
    "sb3_seeds": sb3_seeds,
    "sb3_atari": sb3_atari,
    "cleanrl_throughput": cleanrl_throughput,
    "purejaxrl": purejaxrl,
}


def child(name: str, **kwargs: Any) -> dict[str, Any]:
    return measure(name, entry=ENTRY, **kwargs)


# ---------------------------------------------------------------- parts


def _rows(header: str, rows: dict[str, list[dict]], columns: Sequence[tuple]) -> list[str]:
    """A table: one row per label, ``columns`` of (title, key, format)."""
    lines = [
        "| " + header + " | " + " | ".join(title for title, _, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for label, results in rows.items():
        cells = [median_range([r.get(key) for r in results], fmt) for _, key, fmt in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


THROUGHPUT_COLUMNS = (
    ("training steps/s", "steps_per_second", ",.0f"),
    ("process wall s", "process_seconds", ".1f"),
    ("peak MB", "peak_mb", ",.0f"),
)


def cheetah_part(args: argparse.Namespace, log: Callable[[str], None]) -> list[str]:
    rows: dict[str, list[dict]] = {"pglab": [], "SB3": []}
    if args.cleanrl:
        rows["CleanRL"] = []
    for repeat in range(args.repeats):
        rows["pglab"].append(child("pglab_throughput", env=CHEETAH, options=CLEANRL_MUJOCO,
                                   steps=args.cheetah_steps))  # fmt: skip
        rows["SB3"].append(child("sb3_throughput", steps=args.cheetah_steps))
        if args.cleanrl:
            rows["CleanRL"].append(child("cleanrl_throughput", python=args.cleanrl_python,
                                         script=args.cleanrl, steps=args.cheetah_steps))  # fmt: skip
        log(f"cheetah: repeat {repeat} done")
    speed = {k: median([r["steps_per_second"] for r in v]) for k, v in rows.items()}
    lines = [
        f"## PPO on {CHEETAH}, CleanRL's settings, {args.cheetah_steps:,} steps, no evaluation",
        "",
        f"median (min-max) over {args.repeats} runs each, interleaved; pglab's paths: "
        f"{rows['pglab'][0]['paths']}",
        "",
        *_rows("", rows, THROUGHPUT_COLUMNS),
        "",
        f"training steps/s, pglab / SB3: **{ratio(speed['pglab'], speed['SB3'])}**",
    ]
    if args.cleanrl:
        lines += [
            "",
            f"training steps/s, pglab / CleanRL: **{ratio(speed['pglab'], speed['CleanRL'])}** "
            "(CleanRL's script runs HalfCheetah-v4 under Gymnasium 0.29, in its own environment)",
        ]
    return lines


def cheetah_seeds_part(args: argparse.Namespace, log: Callable[[str], None]) -> list[str]:
    seeds, episodes = list(range(8)), 10
    ours = child("pglab_seeds", env=CHEETAH, options=CLEANRL_MUJOCO, steps=args.seed_steps,
                 seeds=seeds, jobs=2, episodes=episodes)  # fmt: skip
    log("cheetah-seeds: pglab done")
    theirs = child("sb3_seeds", steps=args.seed_steps, seeds=seeds, jobs=2, episodes=episodes)
    log("cheetah-seeds: SB3 done")
    lines = [
        f"## 8 seeds of PPO on {CHEETAH}, {args.seed_steps:,} steps each, CleanRL's settings",
        "",
        f"final return: {episodes} deterministic episodes after training, per seed",
        "",
        "| | wall s | median final return | per seed | peak MB (parent, largest child) |",
        "|---|---:|---:|---|---:|",
    ]
    for label, r in (("pglab, populations in 2 processes", ours), ("SB3, 2 processes", theirs)):
        lines.append(
            f"| {label} | {r['process_seconds']:.1f} | {statistics.median(r['returns']):.1f} | "
            f"{', '.join(f'{v:.0f}' for v in r['returns'])} | "
            f"{r['peak_mb']:,.0f}, {r['children_peak_mb']:,.0f} |"
        )
    figure = ratio(ours["process_seconds"], theirs["process_seconds"])
    return [*lines, "", f"wall time, pglab / SB3: **{figure}**"]


def atari_part(args: argparse.Namespace, log: Callable[[str], None]) -> list[str]:
    backends = [b.strip() for b in args.atari_backends.split(",") if b.strip()]
    precisions = [p.strip() for p in args.atari_precisions.split(",") if p.strip()]
    named = {"gymnasium": "pglab", "async": "pglab, async envs", "envpool": "pglab, envpool"}
    configs = {
        named[b] + ("" if p == "float32" else f", {p}"): (b, p)
        for p in precisions
        for b in backends
    }
    rows: dict[str, list[dict]] = {label: [] for label in configs}
    rows["SB3"] = []
    for repeat in range(args.repeats):
        for label, (backend, precision) in configs.items():
            # (episodes capped at 4,000 frames: the closing evaluation of an untrained
            # agent that never serves would otherwise play 108,000; training's rarely
            # reach it, and the rate excludes that evaluation anyway)
            options = {**CLEANRL_ATARI, "env.backend": backend, "env.max_episode_steps": 4000,
                       "policy.precision": precision}  # fmt: skip
            rows[label].append(child("pglab_throughput", env=ATARI, options=options,
                                     steps=args.atari_steps, threads=args.atari_threads))  # fmt: skip
        rows["SB3"].append(child("sb3_atari", steps=args.atari_steps, threads=args.atari_threads))
        log(f"atari: repeat {repeat} done")
    speed = {k: median([r["steps_per_second"] for r in v]) for k, v in rows.items()}
    return [
        f"## PPO on {ATARI}, CleanRL's Atari settings, {args.atari_steps:,} steps, "
        f"{args.atari_threads} torch thread(s)",
        "",
        f"median (min-max) over {args.repeats} runs each, interleaved",
        "",
        *_rows("", rows, THROUGHPUT_COLUMNS),
        "",
        *[
            f"training steps/s, {name} / SB3: **{ratio(speed[name], speed['SB3'])}**"
            for name in rows
            if name != "SB3"
        ],
    ]


def cartpole_seeds_part(args: argparse.Namespace, log: Callable[[str], None]) -> list[str]:
    seeds, steps = list(range(16)), args.cartpole_steps
    rows = {
        f"pglab, populations in {jobs} process(es)": child(
            "pglab_seeds",
            env="CartPole-v1",
            options=PUREJAXRL_CARTPOLE,
            steps=steps,
            seeds=seeds,
            jobs=jobs,
            episodes=10,
        )
        for jobs in (1, 2)
    }
    log("cartpole-seeds: pglab done")
    if args.purejaxrl:
        rows["PureJaxRL (compilation included)"] = child(
            "purejaxrl", python=args.jax_python, repo=args.purejaxrl, seeds=16, steps=steps
        )
        log("cartpole-seeds: PureJaxRL done")
    shares = child("pglab_time_shares", env="CartPole-v1", options=PUREJAXRL_CARTPOLE,
                   steps=steps, seeds=seeds)  # fmt: skip
    lines = [
        f"## 16 seeds of PPO on CartPole-v1, PureJaxRL's settings, {steps:,} steps each",
        "",
        "final return: the mean training-episode return of each seed's last update "
        "(what PureJaxRL reports)",
        "",
        "| | wall s | median final return | peak MB |",
        "|---|---:|---:|---:|",
    ]
    for label, r in rows.items():
        finals = [v for v in r["train_returns"] if v is not None]
        lines.append(
            f"| {label} | {r['process_seconds']:.1f} | {statistics.median(finals):.1f} | "
            f"{r['peak_mb']:,.0f} |"
        )
    best = min(r["process_seconds"] for k, r in rows.items() if k.startswith("pglab"))
    if args.purejaxrl:
        theirs = rows["PureJaxRL (compilation included)"]
        lines += [
            "",
            f"pglab's fastest wall / PureJaxRL's: **{ratio(best, theirs['process_seconds'])}** "
            f"(PureJaxRL compiled for {theirs['compile_seconds']:.1f} s)",
        ]
    rest = shares["seconds"] - shares["collect"] - shares["update"]
    lines += [
        "",
        f"Where pglab's time goes (one population of 16 in one process, "
        f"{shares['seconds']:.1f} s): collection {shares['collect']:.1f} s "
        f"({shares['collect'] / shares['seconds']:.0%}), updates {shares['update']:.1f} s "
        f"({shares['update'] / shares['seconds']:.0%}), the rest (start, evaluation, "
        f"logging) {rest:.1f} s.",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"of {', '.join(PARTS)}")
    parser.add_argument("--repeats", type=int, default=3, help="runs per throughput figure")
    parser.add_argument("--cheetah-steps", type=int, default=40_960)
    parser.add_argument("--seed-steps", type=int, default=200_000)
    parser.add_argument("--atari-steps", type=int, default=4_096)
    parser.add_argument("--atari-threads", type=int, default=2)
    parser.add_argument("--atari-backends", default="gymnasium,envpool",
                        help="pglab's env backends to measure (gymnasium, async, envpool)")  # fmt: skip
    parser.add_argument("--atari-precisions", default="float32,bfloat16",
                        help="policy.precision of pglab's CNN to measure (float32, bfloat16)")  # fmt: skip
    parser.add_argument("--cartpole-steps", type=int, default=500_000)
    parser.add_argument("--cleanrl", help="a copy of CleanRL's ppo_continuous_action.py")
    parser.add_argument("--cleanrl-python", default=sys.executable)
    parser.add_argument("--purejaxrl", help="a checkout of PureJaxRL's repository")
    parser.add_argument("--jax-python", default=sys.executable)
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "speed-envs.md")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(CHILDREN, args.child[0], json.loads(args.child[1]))
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        parser.error(f"--parts must name some of {', '.join(PARTS)}; got {args.parts!r}")
    ensure_sb3()
    one_thread()  # as the children run (the Atari ones set their own)

    def log(message: str) -> None:
        print(f"speed_envs: {message}", file=sys.stderr, flush=True)

    builders = {"cheetah": cheetah_part, "cheetah-seeds": cheetah_seeds_part,
                "atari": atari_part, "cartpole-seeds": cartpole_seeds_part}  # fmt: skip
    lines = ["# pglab speed where the env and the network are the cost", "", *provenance()]
    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for part in parts:  # the report so far is written after each part
        try:
            lines += ["", *builders[part](args, log)]
        except RuntimeError as error:  # a reference that failed (its own environment)
            lines += ["", f"## {part}: failed", "", str(error).splitlines()[0]]
        args.out.write_text("\n".join(lines) + "\n")
    lines += ["", f"benchmark wall time: {time.perf_counter() - start:.0f} s"]
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.write_text(report)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
