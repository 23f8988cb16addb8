r"""``pglab tune SPEC.toml --scheduler pbt``: population-based training in one process.

The spec is a tuning spec (:mod:`pglab.experiments.tune`) whose ``[search]`` names only
options that members of one population may differ in (``algo.lr``,
``algo.entropy_coef``, ``algo.vf_coef``, ``algo.gamma``, ``algo.lam``,
``algo.clip_range``), with these keys besides::

    scheduler = "pbt"
    members = 8                  # the population (seeds base_seed, base_seed + 1, ...)
    perturb_every = 20_000       # steps between rounds; a multiple of run.eval_every
    quantile = 0.25              # the bottom quantile copies the top one
    resample_probability = 0.25  # else each value is multiplied by 0.8 or 1.2
    sampler_seed = 0             # the draws of starting values, donors and new values

Every member starts from values drawn from ``[search]`` and trains in one population
(one process, one stacked update); the rounds are :class:`pglab.pbt.PBT`'s. Members
never stop early (``stop_at_return`` is off): a round needs them all.

The members' runs go to ``<group>/pbt/member-<i>/``, each with its
``pbt_schedule.json`` (replay it with ``pglab train --config MEMBER/config.toml --set
run.schedule=MEMBER/pbt_schedule.json``). ``<group>/tune/`` gets ``members.csv`` (each
member's final and best evaluation and final values), ``events.csv`` (every exploit
and explore), ``best.toml`` (the best member's final values, ready for ``pglab train
--config``; its header names the schedule that got there), ``schedules.png`` (each
value over the steps, per member) and ``curves.png`` (the members' evaluation curves).

Interrupted (Ctrl-C, kill -9), the same command resumes every member from its last
checkpoint (each round checkpoints them all).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pglab.checkpoint import CHECKPOINT_DIR, LAST, load_checkpoint
from pglab.config import build_config
from pglab.envs import reward_threshold
from pglab.errors import ConfigError
from pglab.paths import write_atomic, write_text_atomic
from pglab.pbt import PBT, SCHEDULE_FILE, Explorer, read_schedule
from pglab.safety import hold_lock

PBT_GROUP = "pbt"


def run_pbt(
    spec: Any,
    tune_dir: Path,
    echo: Callable[[str], None] = print,
    backend: str = "local",
    address: str | None = None,
) -> Path:
    """Train (or resume) the spec's PBT population; write its outputs to ``tune_dir``.
    ``backend="ray"``: the same members under Ray Tune's PBT (:func:`run_ray_pbt`)."""
    if backend == "ray":
        from pglab.experiments.ray_tune import run_ray_pbt

        return run_ray_pbt(spec, tune_dir, address, echo)
    from pglab.agent import Agent
    from pglab.population import Population

    search = {key.removeprefix("algo."): value for key, value in spec.search.items()}
    explorer = Explorer(search, spec.resample_probability)
    scheduler = PBT(explorer, spec.perturb_every, spec.quantile, spec.sampler_seed)
    folder = spec.group_dir / PBT_GROUP
    names = [f"member-{i}" for i in range(spec.members)]
    with hold_lock(spec.group_dir, "tune folder"):
        if folder.exists():
            missing = [n for n in names if not (folder / n / CHECKPOINT_DIR / LAST).is_file()]
            if missing:
                raise ConfigError(
                    f"{folder} holds a population stopped before its first checkpoint "
                    f"({missing[0]} has none); remove the folder to start again"
                )
            states = [load_checkpoint(folder / n) for n in names]
            configs = [
                Agent.from_checkpoint(state, f"{folder / n}/{CHECKPOINT_DIR}/{LAST}").config
                for state, n in zip(states, names)
            ]
            population = Population(configs, states, scheduler=scheduler)
            if all(t.finished() for t in population.trainers):
                echo(f"pbt {folder}: every member has finished")
            else:
                echo(f"pbt {folder}: resuming {spec.members} members")
                population.train(progress="auto", run_dirs=[folder / n for n in names])
        else:
            configs = []
            for i, name in enumerate(names):
                start = explorer.sample(np.random.default_rng([spec.sampler_seed, i]))
                flags = {
                    **spec.config_flags({f"algo.{k}": v for k, v in start.items()}, 0),
                    "run.group": PBT_GROUP,
                    "run.name": name,
                    "run.seed": spec.seeds[0] + i,
                    "run.stop_at_return": "none",
                }
                configs.append(build_config(spec.config_file, flags, flags_source=name))
            configs = [c.resolve(reward_threshold(c.env.id)) for c in configs]
            echo(
                f"pbt {folder}: {spec.members} members, a round every {spec.perturb_every:,} steps"
            )
            Population(configs, scheduler=scheduler).train(progress="auto")
        _write_outputs(spec, folder, names, tune_dir)
    return tune_dir


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_outputs(spec: Any, folder: Path, names: list[str], tune_dir: Path) -> None:
    keys = [k.removeprefix("algo.") for k in spec.search]
    members, events, schedules = [], [], {}
    for name in names:
        run_dir = folder / name
        schedule = read_schedule(run_dir / SCHEDULE_FILE)
        schedules[name] = schedule
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        final = dict(schedule.start)
        for event in schedule.events:
            final.update(event["hyperparameters"])
            events.append({"step": event["step"], "member": name, "from": event["from"],
                           **{k: event["hyperparameters"].get(k) for k in keys}})  # fmt: skip
        members.append({
            "member": name,
            "eval_return_mean": summary.get("eval_return_mean"),
            "best_eval_return_mean": summary.get("best_eval_return_mean"),
            "events": len(schedule.events),
            **{k: final.get(k) for k in keys},
        })  # fmt: skip
    write_table(tune_dir / "members.csv", members, tune_dir)
    events.sort(key=lambda e: (e["step"], e["member"]))
    header = ["step", "member", "from", *keys]
    write_table(tune_dir / "events.csv", events, tune_dir, header)
    scored = [m for m in members if m["eval_return_mean"] is not None]
    if scored:
        best = max(scored, key=lambda m: m["eval_return_mean"])
        write_best(
            spec, tune_dir, {f"algo.{k}": best[k] for k in keys},
            f"the best PBT member ({best['member']}) of {spec.group_dir}: final evaluation "
            f"{best['eval_return_mean']:.6g}, with its final values; its schedule (replay: "
            f"--set run.schedule=...): {folder / best['member'] / SCHEDULE_FILE}",
        )  # fmt: skip
    write_atomic(
        tune_dir / "schedules.png", lambda p: _plot_schedules(p, schedules, keys, folder), tune_dir
    )
    write_atomic(tune_dir / "curves.png", lambda p: _plot_curves(p, folder, names), tune_dir)


def write_best(spec: Any, tune_dir: Path, values: dict[str, Any], note: str) -> None:
    """``tune_dir/best.toml``: the spec's base config with its fixed options and the
    best member's searched ``values``, ready for ``pglab train --config``; ``note``
    (one line) heads it."""
    flags = {**spec.fixed, **values}
    config = build_config(spec.config_file, flags, flags_source="best.toml")
    write_text_atomic(tune_dir / "best.toml", f"# {note}\n" + config.to_toml(), tune_dir)


def write_table(
    path: Path, rows: list[dict[str, Any]], folder: Path, header: list[str] | None = None
) -> None:
    """``rows`` as a CSV file in ``folder``, written atomically (``header``: its columns)."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, header or list(rows[0]) if rows or header else [])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, table.getvalue(), folder)


def _plot_schedules(path: Path, schedules: dict[str, Any], keys: list[str], folder: Path) -> None:
    from pglab.experiments.tune import figure

    plt = figure()
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), dpi=110, squeeze=False)
    for name, schedule in schedules.items():
        metrics = folder / name / "metrics.csv"
        end = int(_read_csv(metrics)[-1]["step"]) if metrics.is_file() else 0
        for ax, key in zip(axes[:, 0], keys):
            steps, values = [0], [schedule.start[key]]
            for event in schedule.events:
                steps.append(int(event["step"]))
                values.append(event["hyperparameters"][key])
            steps.append(max(end, steps[-1]))
            values.append(values[-1])
            ax.step(steps, values, where="post", linewidth=1.0, label=name)
    for ax, key in zip(axes[:, 0], keys):
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("environment steps")
    axes[0, 0].legend(fontsize=6, ncol=4)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _plot_curves(path: Path, folder: Path, names: list[str]) -> None:
    from pglab.experiments.tune import figure

    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name in names:
        metrics = folder / name / "metrics.csv"
        if not metrics.is_file():
            continue
        rows = [r for r in _read_csv(metrics) if r["eval_return_mean"]]
        ax.plot([int(r["step"]) for r in rows], [float(r["eval_return_mean"]) for r in rows],
                label=name, linewidth=1.1)  # fmt: skip
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
