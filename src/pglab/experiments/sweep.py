"""``pglab sweep SPEC.toml``: many runs from one spec, resumable, on local processes or Ray.

A spec is a TOML file::

    group = "seed-grid"        # runs go to <out>/<group>/<run name>/
    out = "runs"               # optional (default: runs)
    config = "base.toml"       # optional base config, relative to the spec
    seeds = 3                  # runs per configuration: seed = base_seed + index
    base_seed = 0              # optional (default: 0)

    [set]                      # options every run gets (keys as for --set)
    env = "CartPole-v1"

    [grid]                     # every combination of these values
    lr = [0.001, 0.01, 0.1]

    [[variants]]               # alternatives, each a set of options changed together
    name = "mc"                # optional label (default: its options)
    lam = 1.0
    [[variants]]
    name = "gae"
    lam = 0.95

    [random]                   # `samples` draws of these distributions
    samples = 8
    entropy_coef = { uniform = [0.0, 0.01] }
    value_lr = { log_uniform = [1e-4, 1e-2] }
    batch_size = { int_uniform = [10, 50] }
    gamma = { choice = [0.98, 0.99] }

Every configuration (a grid point, crossed with each variant and each random draw)
runs once per seed. A run's folder is named after the options the spec varies and its
seed (``lr=0.01,hidden=8,seed=2``; a named variant shows as ``variant=mc``). Running
a sweep again skips the runs whose folder holds a finished ``summary.json``, so an
interrupted sweep (Ctrl-C, or kill -9) completes only what is missing; half-written folders are cleared and run again. A run
that fails leaves ``error.txt`` in its folder and does not stop the others; the exit
code says whether every run succeeded.

Backends: ``local`` runs a process pool sized to the cores (one torch thread each;
runs that differ only in seed or in per-member hyperparameters train as one
population, see :mod:`pglab.population`); ``ray`` sends the same tasks to a Ray
cluster (``--address``), or to a local Ray instance that pglab starts and stops.
Both write the same folders.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pglab.config import Config, build_config, qualify
from pglab.errors import ConfigError, PglabError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUMMARY = "summary.json"
ERROR = "error.txt"
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
_SPEC_KEYS = {
    "group",
    "out",
    "config",
    "seeds",
    "base_seed",
    "sample_seed",
    "set",
    "grid",
    "variants",
    "random",
}
#: Most members per population task: bigger groups are split so that workers share them.
_MAX_MEMBERS = 16


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its folder name, its options, its seed."""

    name: str
    options: dict[str, Any]
    seed: int


@dataclass
class Sweep:
    """A parsed spec: where its runs go and what each one is."""

    group_dir: Path
    config_file: Path | None
    runs: list[SweepRun]

    def config(self, run: SweepRun) -> Config:
        """The full config of ``run`` (presets, base file, the spec's options)."""
        flags = {
            **run.options,
            "run.seed": run.seed,
            "run.out": str(self.group_dir.parent),
            "run.group": self.group_dir.name,
            "run.name": run.name,
            "run.progress": "off",
        }
        return build_config(self.config_file, flags, flags_source=f"sweep run {run.name}")

    def status(self, run: SweepRun) -> str:
        """``done``, ``failed`` (an earlier attempt), ``partial`` or ``missing``."""
        folder = self.group_dir / run.name
        summary = folder / SUMMARY
        if summary.is_file():
            with contextlib.suppress(ValueError, OSError):
                if json.loads(summary.read_text()).get("stopped") != "interrupted":
                    return "done"
        if (folder / ERROR).is_file():
            return "failed"
        return "partial" if folder.exists() else "missing"


def load_spec(path: str | Path) -> Sweep:
    """Parse and check a sweep spec; every run's config is built once to catch bad options."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {str(path)!r} is not a file")
    try:
        spec = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"sweep spec {str(path)!r} is not valid TOML: {error}") from None
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(
            f"sweep spec {str(path)!r}: unknown key {unknown[0]!r}; "
            f"allowed: {', '.join(sorted(_SPEC_KEYS))}"
        )
    group = spec.get("group") or path.stem
    if not isinstance(group, str) or "/" in group:
        raise ConfigError(f"sweep spec: group must be a folder name; got {group!r}")
    out = Path(spec.get("out", "runs")).resolve()  # workers may start elsewhere (Ray)
    config_file = spec.get("config")
    if config_file is not None:
        config_file = (path.parent / config_file).resolve()
    seeds = _seeds(spec.get("seeds", 1), spec.get("base_seed", 0))
    fixed = {_key(k): v for k, v in spec.get("set", {}).items()}
    grid = {_key(k): _values(k, v) for k, v in spec.get("grid", {}).items()}
    random = dict(spec.get("random", {}))
    samples = random.pop("samples", 1 if random else 0)
    draws = _draws(
        {_key(k): _distribution(k, v) for k, v in random.items()},
        samples,
        spec.get("sample_seed", 0),
    )
    variants = _variants(spec.get("variants", []))
    varied = [*grid, *(draws[0] if draws else {})]
    runs = []
    for point in itertools.product(*grid.values()):
        combo = dict(zip(grid, point))
        for (variant_label, variant), draw in itertools.product(variants, draws or [{}]):
            options = {**fixed, **combo, **variant, **draw}
            label = ",".join(
                part for part in (variant_label, _label({k: options[k] for k in varied})) if part
            )
            for seed in seeds:
                name = f"{label},seed={seed}" if label else f"seed={seed}"
                runs.append(SweepRun(name, options, seed))
    sweep = Sweep(out / group, config_file, runs)
    for run in runs:
        sweep.config(run)  # a bad option fails now, before any run starts
    return sweep


def _key(key: str) -> str:
    return qualify(key, "sweep spec")


def _seeds(seeds: Any, base: Any) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        if not isinstance(base, int) or base < 0:
            raise ConfigError(f"sweep spec: base_seed must be an integer >= 0; got {base!r}")
        return [base + i for i in range(seeds)]
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds):
        return list(seeds)
    raise ConfigError(
        f"sweep spec: seeds must be a count >= 1 or a list of seeds >= 0; got {seeds!r}"
    )


def _variants(variants: Any) -> list[tuple[str, dict]]:
    """Each variant as (label, options); one unlabelled empty variant when there are none."""
    if not variants:
        return [("", {})]
    if not isinstance(variants, list) or not all(isinstance(v, dict) and v for v in variants):
        raise ConfigError(
            f"sweep spec: variants must be a list of tables of options; got {variants!r}"
        )
    labelled = []
    for variant in variants:
        options = {_key(k): v for k, v in variant.items() if k != "name"}
        name = variant.get("name")
        if name is None:
            label = _label(options)
        elif isinstance(name, str) and name and not set(name) & set(",=/"):
            label = f"variant={name}"
        else:
            raise ConfigError(
                f"sweep spec: a variant's name must be a word without ',', '=' or '/'; got {name!r}"
            )
        labelled.append((label, options))
    labels = [label for label, _ in labelled]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"sweep spec: two variants have the same label; got {labels}")
    return labelled


def _values(key: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"sweep spec: grid.{key} must be a non-empty list; got {values!r}")
    return values


def _distribution(key: str, value: Any) -> tuple[str, list]:
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
        raise ConfigError(
            f"sweep spec: random.{key} must be one of {{{', '.join(DISTRIBUTIONS)} = [...]}}; "
            f"got {value!r}"
        )
    kind, args = next(iter(value.items()))
    if kind != "choice" and not (isinstance(args, list) and len(args) == 2 and args[0] <= args[1]):
        raise ConfigError(f"sweep spec: random.{key}.{kind} needs [low, high]; got {args!r}")
    if kind == "log_uniform" and args[0] <= 0:
        raise ConfigError(f"sweep spec: random.{key}.log_uniform needs low > 0; got {args!r}")
    if kind == "choice" and not (isinstance(args, list) and args):
        raise ConfigError(f"sweep spec: random.{key}.choice needs a non-empty list; got {args!r}")
    return kind, args


def _draws(distributions: dict[str, tuple[str, list]], samples: Any, seed: int) -> list[dict]:
    """``samples`` draws of every distribution, the same on every reading of the spec."""
    if not distributions:
        return []
    if not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"sweep spec: random.samples must be an integer >= 1; got {samples!r}")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(samples):
        draw = {}
        for key, (kind, args) in distributions.items():
            if kind == "uniform":
                draw[key] = float(rng.uniform(*args))
            elif kind == "log_uniform":
                draw[key] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
            elif kind == "int_uniform":
                draw[key] = int(rng.integers(args[0], args[1] + 1))
            else:
                draw[key] = args[int(rng.integers(len(args)))]
        draws.append(draw)
    return draws


def _label(options: dict[str, Any]) -> str:
    """``lr=0.01,hidden=8``: the options as they appear in run names."""
    return ",".join(f"{_short(k)}={_format(v)}" for k, v in options.items())


def _short(key: str) -> str:
    """``algo`` and ``env`` for the main options, else the option's own name."""
    return {"algo.name": "algo", "env.id": "env"}.get(key, key.split(".")[-1])


def _format(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(_format(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------- running


@dataclass
class Outcome:
    """What became of one run: ``done``, ``failed`` or ``interrupted``."""

    name: str
    state: str
    error: str = ""


def _tasks(sweep: Sweep, runs: Sequence[SweepRun], workers: int) -> list[list[SweepRun]]:
    """Runs grouped into tasks: runs that can train as one population share a task
    (split so that every worker gets work), others are tasks of their own."""
    from pglab.population import VARYING, supports_population

    configs = {run.name: sweep.config(run) for run in runs}
    groups: dict[str, list[SweepRun]] = {}
    for run in runs:
        config = configs[run.name]
        if not supports_population(config):
            groups[run.name] = [run]
            continue
        flat = config.to_dict()
        shape = json.dumps(
            {
                f"{s}.{k}": v
                for s, values in flat.items()
                for k, v in values.items()
                if f"{s}.{k}" not in VARYING
            },
            sort_keys=True,
            default=str,
        )
        groups.setdefault(shape, []).append(run)
    tasks = []
    for members in groups.values():
        size = max(1, min(_MAX_MEMBERS, math.ceil(len(members) / workers)))
        tasks += [members[i : i + size] for i in range(0, len(members), size)]
    # Largest budgets first, so that the last tasks to start are short ones and no
    # worker is left alone with a long run at the end (the order of the spec otherwise).
    tasks.sort(key=lambda task: -sum(_budget(configs[run.name]) for run in task))
    return tasks


def _budget(config: Config) -> int:
    """A run's size for scheduling: updates x batch size when updates are capped, else steps."""
    if config.run.total_updates:
        return config.run.total_updates * config.algo.resolve().batch_size
    return config.run.total_steps


def run_task(sweep: Sweep, runs: list[SweepRun]) -> list[Outcome]:
    """Train ``runs`` (a population where possible); a failure is recorded in the run's
    folder. Interrupted runs are reported as such."""
    import torch

    from pglab.population import train_many

    torch.set_num_threads(1)
    configs = [sweep.config(run) for run in runs]
    try:
        train_many(configs, progress="off")
        return [Outcome(run.name, "done") for run in runs]
    except KeyboardInterrupt:
        return [Outcome(run.name, "interrupted") for run in runs]
    except Exception:
        if len(runs) == 1:
            return [_record_failure(sweep, runs[0])]
    outcomes = []  # the population failed: find which member did, alone
    for run, config in zip(runs, configs):
        _clear(sweep, run)
        try:
            train_many([config], progress="off")
            outcomes.append(Outcome(run.name, "done"))
        except KeyboardInterrupt:
            outcomes.append(Outcome(run.name, "interrupted"))
        except Exception:
            outcomes.append(_record_failure(sweep, run))
    return outcomes


def _record_failure(sweep: Sweep, run: SweepRun) -> Outcome:
    error = traceback.format_exc()
    folder = sweep.group_dir / run.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ERROR).write_text(error)
    return Outcome(run.name, "failed", error.strip().splitlines()[-1])


def _clear(sweep: Sweep, run: SweepRun) -> None:
    shutil.rmtree(sweep.group_dir / run.name, ignore_errors=True)


def _local(
    sweep: Sweep, tasks: list[list[SweepRun]], workers: int, report: Callable[[Outcome], None]
) -> list[Outcome]:
    import multiprocessing

    outcomes: list[Outcome] = []
    context = multiprocessing.get_context("spawn")  # fork can deadlock once torch has run
    pool = ProcessPoolExecutor(workers, mp_context=context)
    try:
        futures = [pool.submit(run_task, sweep, task) for task in tasks]
        for future in futures:
            for outcome in future.result():
                report(outcome)
                outcomes.append(outcome)
    except KeyboardInterrupt:  # the workers got the signal too: they checkpoint and stop
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return outcomes


def _ray(
    sweep: Sweep,
    tasks: list[list[SweepRun]],
    address: str | None,
    report: Callable[[Outcome], None],
) -> list[Outcome]:
    try:
        import ray
    except ImportError:
        raise PglabError(
            "--backend ray needs Ray: pip install 'pglab[ray]' (or pip install ray)"
        ) from None
    started_here = address is None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if started_here:  # Ray's workers run at nice 15 by default: a sweep is the main job here
        os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        address=address,
        include_dashboard=False if started_here else None,
        log_to_driver=False,
        configure_logging=False,
        num_cpus=os.cpu_count() if started_here else None,
    )
    try:
        remote = ray.remote(num_cpus=1)(run_task)
        pending = {remote.remote(sweep, task): task for task in tasks}
        outcomes: list[Outcome] = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pending.pop(ref)
                for outcome in ray.get(ref):
                    report(outcome)
                    outcomes.append(outcome)
        return outcomes
    finally:
        if started_here:
            ray.shutdown()


def run_sweep(
    spec: str | Path,
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
) -> bool:
    """Run the missing runs of the sweep in ``spec``; True when every run has succeeded.

    ``dry_run`` only lists the runs and whether each is done.
    """
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend must be local or ray; got {backend!r}")
    sweep = load_spec(spec)
    status = {run.name: sweep.status(run) for run in sweep.runs}
    if dry_run:
        for run in sweep.runs:
            echo(f"{status[run.name]:>8}  {sweep.group_dir / run.name}")
        todo = sum(s != "done" for s in status.values())
        echo(f"{len(sweep.runs)} runs, {todo} to run")
        return True
    pending = [run for run in sweep.runs if status[run.name] != "done"]
    for run in pending:
        _clear(sweep, run)
    workers = workers or os.cpu_count() or 1
    skipped = len(sweep.runs) - len(pending)
    echo(
        f"sweep {sweep.group_dir}: {len(sweep.runs)} runs, {skipped} already done, "
        f"{len(pending)} to run ({backend})"
    )
    sweep.group_dir.mkdir(parents=True, exist_ok=True)

    def report(outcome: Outcome) -> None:
        if outcome.state == "failed":
            echo(f"failed: {outcome.name}: {outcome.error}")

    tasks = _tasks(sweep, pending, workers)
    if backend == "ray":
        outcomes = _ray(sweep, tasks, address, report)
    else:
        outcomes = _local(sweep, tasks, workers, report)
    if any(o.state == "interrupted" for o in outcomes):
        raise KeyboardInterrupt(f"sweep {spec}")
    failed = sum(o.state == "failed" for o in outcomes)
    echo(f"{len(outcomes) - failed} runs finished, {failed} failed, {skipped} skipped")
    return failed == 0
