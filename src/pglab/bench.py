"""``pglab bench``: how fast pglab trains, side by side with references, in one invocation.

Every measured configuration runs in a fresh child process, so that its whole-process
wall time (interpreter start and imports included) and its peak memory are its own.
All on CartPole-v1, with one torch thread per process:

``solve``
    PPO until an evaluation of 20 deterministic episodes, run every 10k steps by each
    library's own evaluation facility, reaches 475 (evaluation time counts): pglab
    with its preset, pglab with the rl-baselines3-zoo settings, and Stable-Baselines3
    with the same zoo settings (8 envs x 32 steps, batch 256, 20 epochs, gamma 0.98,
    lambda 0.8, lr 1e-3 and clip 0.2 both decaying linearly over 100k steps).
``throughput``
    training steps/s over 100k steps with the zoo settings, no evaluation.
``reinforce``
    REINFORCE with reward-to-go weights, 20 complete episodes per batch, one hidden
    layer of 8 units, Adam lr 0.01: pglab against the tutorial-style loop (one env,
    one forward pass and one sample per step).
``population``
    16 seeds of PPO until every one is solved: pglab as one population in one
    process, and as two populations in two processes; SB3 running the same seeds in
    two processes.

Stable-Baselines3 is installed into this environment only when ``--with-sb3`` asks
for it; it is never a dependency of pglab.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ENV = "CartPole-v1"
TARGET = 475.0
BUDGET = 100_000
EVAL_EVERY = 10_000
EVAL_EPISODES = 20
POPULATION = 16
PARTS = ("solve", "throughput", "reinforce", "population")

#: The rl-baselines3-zoo PPO settings for CartPole-v1, as pglab options (with
#: ``--preset none`` the rest are SB3's defaults too: 64x64 tanh bodies, orthogonal
#: init, Adam eps 1e-5, value coef 0.5, gradient clip 0.5, advantages normalised).
ZOO = {
    "env.num_envs": 8,
    "algo.batch_size": 256,
    "algo.minibatches": 1,
    "algo.epochs": 20,
    "algo.gamma": 0.98,
    "algo.lam": 0.8,
    "algo.lr": 1e-3,
    "algo.lr_schedule": "linear",
    "algo.clip_range": 0.2,
    "algo.clip_schedule": "linear",
    "algo.entropy_coef": 0.0,
    "run.preset": "none",
}


def command_line() -> str:
    """The command that started this process, ready to paste into a shell."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def code_version() -> str:
    """The commit of the code that ran, with ``-dirty`` when pglab's own source (not a
    benchmark's results) had changes; the package version outside a git checkout."""
    from pglab import __version__

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=here, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=here, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return f"pglab {__version__}"
    if commit.returncode != 0 or not commit.stdout.strip():
        return f"pglab {__version__}"
    dirty = "-dirty" if changed.stdout.strip() else ""
    return f"commit {commit.stdout.strip()}{dirty}"


def machine() -> str:
    """CPU model, cores, torch threads and library versions, on one line."""
    import gymnasium as gym
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
        model = names[0] if names else model
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"gymnasium {gym.__version__}"
    )


def provenance() -> list[str]:
    """The lines every benchmark table opens with: its command, code and machine."""
    return [
        f"command: `{command_line()}`",
        "",
        f"code: {code_version()}",
        "",
        f"machine: {machine()}",
    ]


# ---------------------------------------------------------------------- children
# Each returns a dict of figures; it runs in its own process (see measure).


def _train_ppo(**options: Any) -> Any:
    """pglab PPO on CartPole-v1 for at most 100k steps, into a folder that is then removed."""
    import pglab

    with tempfile.TemporaryDirectory() as out:
        return pglab.train(
            ENV,
            "ppo",
            total_steps=BUDGET,
            eval_episodes=EVAL_EPISODES,
            out=out,
            progress="off",
            checkpoint_every=0,
            **options,
        )


def pglab_ppo(seed: int, zoo: bool, solve: bool) -> dict[str, Any]:
    """pglab PPO: to an evaluation >= 475 (``solve``), or 100k steps without evaluation."""

    options: dict[str, Any] = dict(ZOO) if zoo else {}
    every = EVAL_EVERY if solve else 0
    start = time.perf_counter()
    run = _train_ppo(
        seed=seed, stop_at_return=TARGET if solve else "none", eval_every=every, **options
    )
    seconds = time.perf_counter() - start
    s = run.summary
    return {
        "solved_at": s["solved_at_step"],
        "seconds": seconds,
        "steps": s["total_steps"],
        "steps_per_second": s["total_steps"] / s["wall_seconds"],
    }


def linear(value: float) -> Callable[[float], float]:
    return lambda remaining: remaining * value  # SB3 passes the fraction of training left


def without_log_folder(model: Any) -> Any:
    """``model`` (Stable-Baselines3's) with a logger that writes nothing: by default each
    ``learn`` leaves an empty ``SB3-<time>`` folder in the temporary directory."""
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(None, []))
    return model


def sb3_ppo(seed: int, solve: bool) -> dict[str, Any]:
    """Stable-Baselines3 PPO with the zoo settings, evaluated by its EvalCallback."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
    from stable_baselines3.common.env_util import make_vec_env

    start = time.perf_counter()
    envs = make_vec_env(ENV, n_envs=8, seed=seed)
    model = PPO(
        "MlpPolicy",
        envs,
        n_steps=32,
        batch_size=256,
        n_epochs=20,
        gamma=0.98,
        gae_lambda=0.8,
        learning_rate=linear(1e-3),
        clip_range=linear(0.2),
        ent_coef=0.0,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    callback = None
    if solve:
        stop = StopTrainingOnRewardThreshold(reward_threshold=TARGET, verbose=0)
        callback = EvalCallback(
            make_vec_env(ENV, n_envs=1, seed=seed + 1_000_000),
            callback_on_new_best=stop,
            n_eval_episodes=EVAL_EPISODES,
            eval_freq=EVAL_EVERY // 8,  # counted in vector steps of 8 envs
            deterministic=True,
            verbose=0,
        )
    learn = time.perf_counter()
    without_log_folder(model).learn(BUDGET, callback=callback)
    end = time.perf_counter()
    solved = solve and callback.best_mean_reward >= TARGET
    return {
        "solved_at": model.num_timesteps if solved else None,
        "seconds": end - start,
        "steps": model.num_timesteps,
        "steps_per_second": model.num_timesteps / (end - learn),
    }


def tutorial_reinforce(seed: int, total_steps: int) -> dict[str, Any]:
    """REINFORCE as it is usually first written: one env, one forward and one sample per step."""
    import gymnasium as gym
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(seed)
    env = gym.make(ENV)
    policy = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.01)
    steps, episode = 0, 0
    start = time.perf_counter()
    returns: list[float] = []
    while steps < total_steps:
        log_probs, weights, returns = [], [], []
        for _ in range(20):
            obs, _ = env.reset(seed=seed + episode)
            episode += 1
            rewards = []
            done = False
            while not done:
                logits = policy(torch.as_tensor(obs, dtype=torch.float32))
                dist = torch.distributions.Categorical(logits=logits)
                action = dist.sample()
                log_probs.append(dist.log_prob(action))
                obs, reward, terminated, truncated, _ = env.step(action.item())
                rewards.append(float(reward))
                done = terminated or truncated
            steps += len(rewards)
            weights += np.cumsum(rewards[::-1])[::-1].tolist()
            returns.append(sum(rewards))
        psi = torch.tensor(weights)
        psi = (psi - psi.mean()) / (psi.std() + 1e-8)
        loss = -(torch.stack(log_probs) * psi).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    return {"steps_per_second": steps / seconds, "final_return": float(np.mean(returns))}


def pglab_reinforce(seed: int, total_steps: int) -> dict[str, Any]:
    """pglab's REINFORCE with the tutorial's settings (its logging and checkpoint on)."""
    import pglab

    with tempfile.TemporaryDirectory() as out:
        run = pglab.train(
            ENV,
            algo="reinforce",
            weights="fr",
            lr=0.01,
            batch_size=20,
            policy={"hidden": [8]},
            seed=seed,
            total_steps=total_steps,
            out=out,
            stop_at_return="none",
            eval_every=0,
            eval_episodes=1,
            progress="off",
        )
    s = run.summary
    return {
        "steps_per_second": s["total_steps"] / s["wall_seconds"],
        "final_return": s["eval_return_mean"],
    }


def pglab_seeds(seeds: Sequence[int], jobs: int) -> dict[str, Any]:
    """Every seed of pglab PPO (preset) to solved: a population per process."""

    start = time.perf_counter()
    runs = _train_ppo(seeds=seeds, jobs=jobs, stop_at_return=TARGET, eval_every=EVAL_EVERY)
    seconds = time.perf_counter() - start
    solved = [r.summary["solved_at_step"] for r in runs]
    return {"seconds": seconds, "solved": sum(s is not None for s in solved), "runs": len(runs)}


def sb3_seeds(seeds: Sequence[int], jobs: int) -> dict[str, Any]:
    """Every seed of SB3 PPO (zoo settings) to solved, ``jobs`` processes at a time."""
    import multiprocessing

    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(jobs, initializer=one_thread) as pool:
        results = pool.starmap(sb3_ppo, [(seed, True) for seed in seeds])
    seconds = time.perf_counter() - start
    solved = sum(r["solved_at"] is not None for r in results)
    return {"seconds": seconds, "solved": solved, "runs": len(results)}


def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "pglab_ppo": pglab_ppo,
    "sb3_ppo": sb3_ppo,
    "tutorial_reinforce": tutorial_reinforce,
    "pglab_reinforce": pglab_reinforce,
    "pglab_seeds": pglab_seeds,
    "sb3_seeds": sb3_seeds,
}


def run_child(children: dict[str, Callable[..., dict[str, Any]]], name: str, kwargs: dict) -> None:
    """In a child process: run ``children[name](**kwargs)`` on one torch thread (unless
    it sets its own) and print its figures as the last line, in JSON, with
    ``children_peak_mb``: the peak resident memory of the largest process it started."""
    import resource

    one_thread()
    figures = children[name](**kwargs)
    figures["children_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(figures), flush=True)


def measure(name: str, *, entry: Sequence[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run child ``name`` in a fresh interpreter; its figures plus ``process_seconds``
    (whole-process wall time) and ``peak_mb`` (its peak resident memory).

    ``entry`` is the command that runs a benchmark's children (a script that calls
    :func:`run_child` on ``--child NAME JSON``); by default, this module's."""
    head = list(entry) if entry else [sys.executable, "-m", "pglab.bench"]
    command = [*head, "--child", name, json.dumps(kwargs)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"benchmark child {name} {kwargs} failed (exit {process.returncode})")
    figures = json.loads(output.strip().splitlines()[-1])
    figures["process_seconds"] = time.perf_counter() - start
    figures["peak_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    return figures


# ---------------------------------------------------------------------- report


def median_range(values: Sequence[float | None], fmt: str = ",.0f") -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "never"
    text = f"{statistics.median(known):{fmt}} ({min(known):{fmt}}-{max(known):{fmt}})"
    return text if len(known) == len(values) else f"{text}, {len(known)}/{len(values)}"


def median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) and known else None


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def solve_part(seeds: Sequence[int], with_sb3: bool, log: Callable[[str], None]) -> list[str]:
    rows: dict[str, list[dict]] = {"pglab (preset)": [], "pglab (zoo settings)": []}
    if with_sb3:
        rows["SB3 (zoo settings)"] = []
    for seed in seeds:
        rows["pglab (preset)"].append(measure("pglab_ppo", seed=seed, zoo=False, solve=True))
        rows["pglab (zoo settings)"].append(measure("pglab_ppo", seed=seed, zoo=True, solve=True))
        if with_sb3:
            rows["SB3 (zoo settings)"].append(measure("sb3_ppo", seed=seed, solve=True))
        log(f"solve: seed {seed} done")
    lines = [
        f"## PPO on {ENV} to an evaluation >= {TARGET:g} (evaluation included)",
        "",
        f"median (min-max) over seeds {list(seeds)}; solved runs only where not all solved",
        "",
        "| | steps to solve | seconds to solve | training steps/s | process wall s | peak MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, results in rows.items():
        solved = [r["solved_at"] for r in results]
        seconds = [r["seconds"] if r["solved_at"] is not None else None for r in results]
        lines.append(
            f"| {label} | {median_range(solved)} | {median_range(seconds, '.1f')} | "
            f"{median_range([r['steps_per_second'] for r in results])} | "
            f"{median_range([r['process_seconds'] for r in results], '.1f')} | "
            f"{median_range([r['peak_mb'] for r in results])} |"
        )
    if with_sb3:
        ours = median([r["seconds"] if r["solved_at"] else None for r in rows["pglab (preset)"]])
        theirs = median(
            [r["seconds"] if r["solved_at"] else None for r in rows["SB3 (zoo settings)"]]
        )
        lines += ["", f"time to solve, pglab (preset) / SB3: **{ratio(ours, theirs)}**"]
    return lines


def throughput_part(seeds: Sequence[int], with_sb3: bool, log: Callable[[str], None]) -> list[str]:
    ours, theirs = [], []
    for seed in seeds:
        ours.append(measure("pglab_ppo", seed=seed, zoo=True, solve=False))
        if with_sb3:
            theirs.append(measure("sb3_ppo", seed=seed, solve=False))
        log(f"throughput: seed {seed} done")
    lines = [
        f"## Training throughput, {BUDGET:,} steps with the zoo settings, no evaluation",
        "",
        "| | training steps/s | process wall s | peak MB |",
        "|---|---:|---:|---:|",
    ]
    for label, results in (("pglab", ours), ("SB3", theirs)):
        if results:
            lines.append(
                f"| {label} | {median_range([r['steps_per_second'] for r in results])} | "
                f"{median_range([r['process_seconds'] for r in results], '.1f')} | "
                f"{median_range([r['peak_mb'] for r in results])} |"
            )
    if theirs:
        figure = ratio(
            median([r["steps_per_second"] for r in ours]),
            median([r["steps_per_second"] for r in theirs]),
        )
        lines += ["", f"training steps/s, pglab / SB3: **{figure}**"]
    return lines


def reinforce_part(seeds: Sequence[int], steps: int, log: Callable[[str], None]) -> list[str]:
    ours, theirs = [], []
    for seed in seeds:
        ours.append(measure("pglab_reinforce", seed=seed, total_steps=steps))
        theirs.append(measure("tutorial_reinforce", seed=seed, total_steps=steps))
        log(f"reinforce: seed {seed} done")
    figure = ratio(
        median([r["steps_per_second"] for r in ours]),
        median([r["steps_per_second"] for r in theirs]),
    )
    return [
        f"## REINFORCE, 20 episodes per batch, {steps:,} steps from scratch",
        "",
        "| | steps/s | final return | peak MB |",
        "|---|---:|---:|---:|",
        f"| pglab | {median_range([r['steps_per_second'] for r in ours])} | "
        f"{median_range([r['final_return'] for r in ours], '.1f')} (deterministic eval) | "
        f"{median_range([r['peak_mb'] for r in ours])} |",
        f"| tutorial loop | {median_range([r['steps_per_second'] for r in theirs])} | "
        f"{median_range([r['final_return'] for r in theirs], '.1f')} (last batch) | "
        f"{median_range([r['peak_mb'] for r in theirs])} |",
        "",
        f"steps/s, pglab / tutorial loop: **{figure}**",
    ]


def population_part(with_sb3: bool, log: Callable[[str], None]) -> list[str]:
    seeds = list(range(POPULATION))
    rows = {
        "pglab, one population in 1 process": measure("pglab_seeds", seeds=seeds, jobs=1),
        "pglab, populations in 2 processes": measure("pglab_seeds", seeds=seeds, jobs=2),
    }
    log("population: pglab done")
    if with_sb3:
        rows["SB3, 2 processes"] = measure("sb3_seeds", seeds=seeds, jobs=2)
        log("population: SB3 done")
    lines = [
        f"## {POPULATION} seeds of PPO on {ENV}, every one to an evaluation >= {TARGET:g}",
        "",
        "| | wall s | solved | peak MB (parent process) |",
        "|---|---:|---:|---:|",
    ]
    for label, r in rows.items():
        lines.append(
            f"| {label} | {r['process_seconds']:.1f} | {r['solved']}/{r['runs']} | "
            f"{r['peak_mb']:,.0f} |"
        )
    if with_sb3:
        best = min(rows[k]["process_seconds"] for k in rows if k.startswith("pglab"))
        speedup = ratio(rows["SB3, 2 processes"]["process_seconds"], best)
        lines += ["", f"SB3 wall / pglab's fastest wall: **{speedup}**"]
    return lines


def ensure_sb3() -> None:
    """Install Stable-Baselines3 into this environment (keeping the installed torch)."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        import torch

        print("installing stable-baselines3 for the comparison ...", file=sys.stderr)
        pin = f"torch=={torch.__version__.split('+')[0]}"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "stable-baselines3", pin], check=True
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``pglab bench``; returns the exit code."""
    from pglab.errors import ConfigError
    from pglab.population import parse_seeds

    parser = argparse.ArgumentParser(
        prog="pglab bench", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    parser.add_argument("--seeds", default="0-4", help="seeds per figure (default: 0-4)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}"
    )
    parser.add_argument("--with-sb3", action="store_true", help="compare with Stable-Baselines3")
    parser.add_argument("--reinforce-steps", type=int, default=100_000, metavar="N")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(CHILDREN, args.child[0], json.loads(args.child[1]))
        return 0
    seeds = parse_seeds(args.seeds)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ConfigError(f"--parts must name some of {', '.join(PARTS)}; got {args.parts!r}")
    if args.with_sb3:
        ensure_sb3()

    def log(message: str) -> None:
        print(f"pglab bench: {message}", file=sys.stderr, flush=True)

    import torch

    torch.set_num_threads(1)
    lines = ["# pglab speed benchmark", "", *provenance()]
    start = time.perf_counter()
    if "solve" in parts:
        lines += ["", *solve_part(seeds, args.with_sb3, log)]
    if "throughput" in parts:
        lines += ["", *throughput_part(seeds, args.with_sb3, log)]
    if "reinforce" in parts:
        lines += ["", *reinforce_part(seeds, args.reinforce_steps, log)]
    if "population" in parts:
        lines += ["", *population_part(args.with_sb3, log)]
    lines += ["", f"benchmark wall time: {time.perf_counter() - start:.0f} s"]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
