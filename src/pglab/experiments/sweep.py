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
seed (``lr=0.01,hidden=8,seed=2``; a named variant shows as ``variant=mc``); in values,
``%``, ``/``, ``\\``, ``,``, ``=``, ``:``, control characters and a leading ``.`` are
percent-encoded (``env=pglab%2FLineWorld-v0``), so that each value gives one folder of its
own. Running a sweep again skips the runs whose folder holds a finished ``summary.json``, so
an interrupted sweep (Ctrl-C, or kill -9) completes only what is missing; half-written
folders are cleared and run again. A run that fails leaves ``error.txt`` in its folder and
does not stop the others; the exit code says whether every run succeeded.

Refused, with one line, before anything is written: a ``group`` that is not one folder
name (empty, ``.``, ``..``, a ``/`` or ``\\``, control characters, over 100 characters);
the options the sweep sets itself (``run.seed``: use ``seeds``/``base_seed``;
``run.name``, ``run.out``, ``run.group``) anywhere in the spec; one option under two
names (``lr`` and ``algo.lr``), or given in more than one of ``[set]``, ``[grid]`` and
``[random]``, or changed by a variant while the grid or the draws vary it; repeated
seeds; two configurations that are the same experiment (every option equal), or
different ones that would share a folder name; a section, bound or path of the wrong type.

One sweep of a group runs at a time (a lock on ``<group>/.lock``; a second one stops with
the holder's process id, exit code 2). A sweep removes only unfinished run folders that
sweeps of its group created (listed in ``<group>/.sweep-started.json``); any other folder
in a run's place stops the sweep, untouched. Which runs train together as a population
depends on the spec alone, so a run's numbers do not depend on ``--workers``; the local
workers die with the sweep's process, even when it is killed with kill -9.

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
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pglab.config import SECTIONS, Config, build_config, qualify
from pglab.errors import ConfigError, PglabError
from pglab.logs import Progress
from pglab.paths import safe_name
from pglab.safety import atomic_write, die_with_parent, hold_lock

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUMMARY = "summary.json"
ERROR = "error.txt"
#: In the group folder: the run folders that sweeps of the group created, the only ones
#: a sweep ever removes (to run an unfinished run again).
STARTED = ".sweep-started.json"
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


def read_spec(path: Path, keys: set[str] | None, label: str = "sweep spec") -> dict[str, Any]:
    """The TOML table of a spec file, its top-level keys checked against ``keys`` (None:
    any); a missing file, bad TOML or an unknown key is one :class:`ConfigError` line."""
    if not path.is_file():
        raise ConfigError(f"{label} {str(path)!r} is not a file")
    try:
        spec = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{label} {str(path)!r} is not valid TOML: {error}") from None
    unknown = sorted(set(spec) - keys) if keys is not None else []
    if unknown:
        raise ConfigError(
            f"{label} {str(path)!r}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(keys))}"
        )
    return spec


def load_spec(path: str | Path, out: str | Path | None = None) -> Sweep:
    """Parse and check a sweep spec; every run's config is built once to catch bad options.
    ``out`` (``pglab sweep --out``) replaces the spec's ``out`` folder."""
    path = Path(path)
    spec = read_spec(path, _SPEC_KEYS)
    group = safe_name(spec.get("group", path.stem), "sweep spec: group")
    out_value = str(out) if out is not None else spec.get("out", "runs")
    if not isinstance(out_value, str) or not out_value or not out_value.isprintable():
        raise ConfigError(
            f"sweep spec: out must be a folder path (a string; or give --out); got {out_value!r}"
        )
    out = Path(out_value).resolve()  # workers may start elsewhere (Ray)
    config_file = spec_config_file(spec, path)
    seeds = spec_seeds(spec.get("seeds", 1), spec.get("base_seed", 0))
    sample_seed = spec.get("sample_seed", 0)
    if not _is_int(sample_seed):
        raise ConfigError(f"sweep spec: sample_seed must be an integer; got {sample_seed!r}")
    fixed, _ = spec_options(spec.get("set", {}), "set")
    grid, written = spec_options(spec.get("grid", {}), "grid")
    grid = {k: _values(written[k], v) for k, v in grid.items()}
    random = spec_table(spec.get("random", {}), "random")
    samples = random.pop("samples", 1 if random else 0)
    distributions, written = spec_options(random, "random", distributions=True)
    distributions = {k: spec_distribution(written[k], v) for k, v in distributions.items()}
    draws = _draws(distributions, samples, sample_seed)
    variants = _variants(spec.get("variants", []))
    _check_overlaps(
        {"set": fixed, "grid": grid, "random": distributions},
        [options for _, options in variants],
    )
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
    sweep = Sweep(inside(out, group), config_file, runs)
    _check_distinct(sweep)  # also builds every run's config: a bad option fails now
    return sweep


#: Options that the sweep sets itself, with what sets them in a spec.
_OWNED = {
    "run.seed": "the spec's seeds and base_seed",
    "run.name": "the sweep (each run's folder is named after its options and seed)",
    "run.out": "the spec's out",
    "run.group": "the spec's group",
}


def inside(root: Path, name: str) -> Path:
    """``root / name``, checked to be a folder directly inside ``root`` (``name`` one
    plain component): nothing a sweep builds from a name can land elsewhere."""
    path = root / name
    if path.parent != root or name in ("", ".", "..") or Path(name).name != name:
        raise ConfigError(f"sweep spec: {name!r} does not name a folder inside {str(root)!r}")
    return path


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def spec_table(value: Any, where: str, label: str = "sweep spec") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{label}: {where} must be a table of options; got {value!r}")
    return dict(value)


def spec_options(
    table: Any, where: str, distributions: bool = False, label: str = "sweep spec"
) -> tuple[dict[str, Any], dict[str, str]]:
    """The table's options by their full names (``lr`` -> ``algo.lr``; a TOML dotted key
    ``algo.lr = ...`` reads as a section table), and the name each was written with.
    Two names of one option, and the options the sweep sets itself, are refused."""
    given: dict[str, str] = {}
    options: dict[str, Any] = {}
    for key, value in spec_table(table, where, label).items():
        nested = key in SECTIONS and isinstance(value, dict)
        if nested and distributions:  # `algo.lr = { uniform = [...] }` vs `lr = {...}`
            nested = not set(value) & set(DISTRIBUTIONS)
        pairs = [(f"{key}.{k}", v) for k, v in value.items()] if nested else [(key, value)]
        for written, inner in pairs:
            option = _key(written)
            if option in _OWNED:
                raise ConfigError(
                    f"{label}: {where}.{written} sets {option}, which a sweep sets from "
                    f"{_OWNED[option]}"
                )
            if option in given:
                raise ConfigError(
                    f"{label}: {where} names {option} twice, as {given[option]!r} and "
                    f"{written!r}; keep one"
                )
            given[option] = written
            options[option] = inner
    return options, given


def _check_overlaps(sections: dict[str, dict[str, Any]], variants: list[dict[str, Any]]) -> None:
    """An option is given by at most one of set, grid and random, and a variant never
    changes an option that the grid or the random draws vary (their values would be
    lost)."""
    names = list(sections)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            both = sorted(set(sections[first]) & set(sections[second]))
            if both:
                raise ConfigError(
                    f"sweep spec: {both[0]} is given in both [{first}] and [{second}]; "
                    "give it in one"
                )
    for options in variants:
        for section in ("grid", "random"):
            both = sorted(set(options) & set(sections[section]))
            if both:
                raise ConfigError(
                    f"sweep spec: a variant sets {both[0]}, which [{section}] varies; "
                    "give it in one"
                )


def _check_distinct(sweep: Sweep) -> None:
    """Every configuration is a different experiment with its own folder name: two
    grid or variant points that resolve to the same options (every option but the
    seed equal), or two different ones that would share a folder name, are refused.
    Builds every run's config, so a bad option fails here."""
    seen: dict[str, str] = {}
    named: dict[str, str] = {}
    for run in sweep.runs:
        flat = sweep.config(run).to_dict()
        flat["run"].pop("name")
        experiment = json.dumps(flat, sort_keys=True, default=str)
        if experiment in seen:
            first, label = (
                name.rpartition("seed=")[0].rstrip(",") for name in (seen[experiment], run.name)
            )
            raise ConfigError(
                f"sweep spec: configurations {first or 'the only one'!r} and "
                f"{label or 'the only one'!r} are the same experiment (every option equal); "
                "remove one"
            )
        seen[experiment] = run.name
        if named.setdefault(run.name, experiment) != experiment:
            raise ConfigError(
                f"sweep spec: two different configurations would share the run folder "
                f"{run.name!r}; name the variants, or use values that differ in their "
                "first 4 significant digits"
            )
        if len(run.name.encode()) > 255:
            raise ConfigError(
                f"sweep spec: run folder name {run.name[:60]!r}... is longer than 255 bytes; "
                "name the variants to shorten it"
            )


def _key(key: str) -> str:
    return qualify(key, "sweep spec")


def spec_seeds(seeds: Any, base: Any, label: str = "sweep spec") -> list[int]:
    if _is_int(seeds) and seeds >= 1:
        if not _is_int(base) or base < 0:
            raise ConfigError(f"{label}: base_seed must be an integer >= 0; got {base!r}")
        return [base + i for i in range(seeds)]
    if isinstance(seeds, list) and seeds and all(_is_int(s) and s >= 0 for s in seeds):
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ConfigError(
                f"{label}: seeds must be different from each other; {repeated[0]} is "
                f"given more than once in {seeds!r}"
            )
        return list(seeds)
    raise ConfigError(f"{label}: seeds must be a count >= 1 or a list of seeds >= 0; got {seeds!r}")


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
        options, _ = spec_options({k: v for k, v in variant.items() if k != "name"}, "variants")
        name = variant.get("name")
        if name is None:
            label = _label(options)
        elif isinstance(name, str) and name and not set(name) & set(",=/"):
            label = f"variant={_escape(name)}"
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


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def spec_config_file(spec: dict[str, Any], path: Path, label: str = "sweep spec") -> Path | None:
    """A spec's base ``config`` file, relative to the spec at ``path`` (None when absent)."""
    config_file = spec.get("config")
    if config_file is None:
        return None
    if not isinstance(config_file, str) or not config_file:
        raise ConfigError(f"{label}: config must be the path of a TOML file; got {config_file!r}")
    return (path.parent / config_file).resolve()


def spec_distribution(
    key: str, value: Any, label: str = "sweep spec", section: str = "random"
) -> tuple[str, list]:
    """One search distribution ``{uniform|log_uniform|int_uniform|choice = [...]}``, checked."""
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
        raise ConfigError(
            f"{label}: {section}.{key} must be one of {{{', '.join(DISTRIBUTIONS)} = [...]}}; "
            f"got {value!r}"
        )
    kind, args = next(iter(value.items()))
    if kind == "choice":
        if not (isinstance(args, list) and args):
            raise ConfigError(
                f"{label}: {section}.{key}.choice needs a non-empty list; got {args!r}"
            )
        return kind, args
    kinds = "integers" if kind == "int_uniform" else "numbers"
    if not (
        isinstance(args, list)
        and len(args) == 2
        and all(_is_int(a) if kind == "int_uniform" else _number(a) for a in args)
        and args[0] <= args[1]
    ):
        raise ConfigError(
            f"{label}: {section}.{key}.{kind} needs [low, high], two {kinds} with "
            f"low <= high; got {args!r}"
        )
    if kind == "log_uniform" and args[0] <= 0:
        raise ConfigError(f"{label}: {section}.{key}.log_uniform needs low > 0; got {args!r}")
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
    return _escape(str(value))


#: Characters written as ``%XX`` in run folder names: separators of folders and of the
#: name's own ``key=value,`` parts, the escape itself, and control characters.
_ESCAPED = set("%/\\,=:") | {chr(c) for c in range(32)} | {chr(127)}


def _escape(text: str) -> str:
    """``text`` as part of one folder name: ``%``, ``/``, ``\\``, ``,``, ``=``, ``:`` and
    control characters percent-encoded (``pglab/LineWorld-v0`` -> ``pglab%2FLineWorld-v0``),
    so that different values give different names and every name is one folder."""
    escaped = "".join(f"%{ord(c):02X}" if c in _ESCAPED else c for c in text)
    return "%2E" + escaped[1:] if escaped.startswith(".") else escaped


# ---------------------------------------------------------------------- running


@dataclass
class Outcome:
    """What became of one run: ``done``, ``failed`` or ``interrupted``."""

    name: str
    state: str
    error: str = ""


def population_tasks(sweep: Sweep, runs: Sequence[SweepRun]) -> list[list[SweepRun]]:
    """Runs grouped into tasks: runs that can train as one population share a task,
    others are tasks of their own.

    Which runs share a population depends on the spec alone (groups of at most
    :data:`_MAX_MEMBERS`, split evenly, in the spec's order), never on the number of
    workers: a run's numbers do not depend on ``--workers``.
    """
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
        parts = math.ceil(len(members) / _MAX_MEMBERS)
        size = math.ceil(len(members) / parts)
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
    folder.mkdir(exist_ok=True)
    (folder / ERROR).write_text(error)
    return Outcome(run.name, "failed", error.strip().splitlines()[-1])


def _started(sweep: Sweep) -> set[str]:
    """The names of the run folders that this sweep group's sweeps have created (see
    :data:`STARTED`)."""
    try:
        names = json.loads((sweep.group_dir / STARTED).read_text())
    except (OSError, ValueError):
        return set()
    return {name for name in names if isinstance(name, str)} if isinstance(names, list) else set()


def _record_started(sweep: Sweep, names: set[str]) -> None:
    with atomic_write(sweep.group_dir / STARTED) as handle:
        json.dump(sorted(names), handle, indent=0)


def _clear(sweep: Sweep, run: SweepRun) -> None:
    """Remove the unfinished folder of ``run``, only if a sweep of this group created it:
    a real folder (not a link) directly in the group folder, named in :data:`STARTED`."""
    folder = inside(sweep.group_dir, run.name)
    if run.name not in _started(sweep) or folder.is_symlink() or not folder.is_dir():
        return
    shutil.rmtree(folder)


def _check_clearable(sweep: Sweep, pending: Sequence[SweepRun]) -> None:
    """Refuse (before anything is touched) to run into a folder that exists but that no
    sweep of this group created: it is someone else's, and is neither reused nor removed."""
    started = _started(sweep)
    for run in pending:
        folder = sweep.group_dir / run.name
        if (folder.exists() or folder.is_symlink()) and (
            run.name not in started or folder.is_symlink()
        ):
            raise PglabError(
                f"{str(folder)!r} exists but was not created by a sweep of this group and "
                "is not a finished run; move it away (pglab does not remove it), then run "
                "the sweep again"
            )


def _local(
    sweep: Sweep, tasks: list[list[SweepRun]], workers: int, report: Callable[[Outcome], None]
) -> list[Outcome]:
    import multiprocessing

    outcomes: list[Outcome] = []
    context = multiprocessing.get_context("spawn")  # fork can deadlock once torch has run
    pool = ProcessPoolExecutor(  # workers die with this process, even on kill -9
        workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
    )
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


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, connected to the cluster at ``address``, or to a local instance started
    here (and stopped on the way out; one this process had already started is used as it
    is); one line naming the extra when Ray is missing."""
    try:
        import ray
    except ImportError:
        raise PglabError(
            "--backend ray needs Ray: pip install 'pglab[ray]' (or pip install ray)"
        ) from None
    if address is None and ray.is_initialized():  # the caller's own session
        yield ray
        return
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
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def _ray(
    sweep: Sweep,
    tasks: list[list[SweepRun]],
    address: str | None,
    report: Callable[[Outcome], None],
) -> list[Outcome]:
    with ray_session(address) as ray:
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


def run_sweep(
    spec: str | Path,
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    out: str | Path | None = None,
    only: Collection[str] | None = None,
) -> bool:
    """Run the missing runs of the sweep in ``spec``; True when every run has succeeded.

    ``dry_run`` only lists the runs and whether each is done; ``out`` replaces the
    spec's ``out`` folder; ``only`` keeps the runs of these names (a subset to check).
    """
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend must be local or ray; got {backend!r}")
    sweep = load_spec(spec, out)
    if only is not None:
        sweep = replace(sweep, runs=[r for r in sweep.runs if r.name in only])
    status = {run.name: sweep.status(run) for run in sweep.runs}
    if dry_run:
        for run in sweep.runs:
            echo(f"{status[run.name]:>8}  {sweep.group_dir / run.name}")
        todo = sum(s != "done" for s in status.values())
        echo(f"{len(sweep.runs)} runs, {todo} to run")
        return True
    sweep.group_dir.mkdir(parents=True, exist_ok=True)
    with hold_lock(sweep.group_dir, "sweep folder"):  # one sweep of a group at a time
        return _run_locked(sweep, spec, backend, workers, address, echo)


def _run_locked(
    sweep: Sweep,
    spec: str | Path,
    backend: str,
    workers: int | None,
    address: str | None,
    echo: Callable[[str], None],
    progress_mode: str = "auto",
) -> bool:
    """:func:`run_sweep` once it holds the group folder's lock (``progress_mode``: the
    runs done, failed and the time left, as :class:`~pglab.logs.Progress` shows them)."""
    status = {run.name: sweep.status(run) for run in sweep.runs}
    pending = [run for run in sweep.runs if status[run.name] != "done"]
    _check_clearable(sweep, pending)
    _record_started(sweep, _started(sweep) | {run.name for run in pending})
    for run in pending:
        _clear(sweep, run)
    workers = workers or os.cpu_count() or 1
    skipped = len(sweep.runs) - len(pending)
    echo(
        f"sweep {sweep.group_dir}: {len(sweep.runs)} runs, {skipped} already done, "
        f"{len(pending)} to run ({backend})"
    )

    progress = Progress(progress_mode, len(pending), f"sweep {sweep.group_dir.name}", unit="runs")
    counts = {"finished": 0, "failed": 0}

    def report(outcome: Outcome) -> None:
        if outcome.state == "failed":
            echo(f"failed: {outcome.name}: {outcome.error}")
        if outcome.state in counts:
            counts[outcome.state] += 1
        done = counts["finished"] + counts["failed"]
        progress.update(done, {"failed": counts["failed"]}, force=done == len(pending))

    tasks = population_tasks(sweep, pending)
    try:
        if backend == "ray":
            outcomes = _ray(sweep, tasks, address, report)
        else:
            outcomes = _local(sweep, tasks, workers, report)
    finally:
        progress.close()
    if any(o.state == "interrupted" for o in outcomes):
        raise KeyboardInterrupt(f"sweep {spec}")
    failed = sum(o.state == "failed" for o in outcomes)
    echo(f"{len(outcomes) - failed} runs finished, {failed} failed, {skipped} skipped")
    return failed == 0
