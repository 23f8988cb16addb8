r"""``pglab tune SPEC.toml``: search for good settings with Optuna, pruning bad trials early.

A tuning spec sits beside the sweep spec (:mod:`pglab.experiments.sweep`) and reads the
same way::

    group = "tune-ppo-cartpole"  # trials go to <out>/<group>/trial-<n>/<seed>/
    out = "runs"                 # optional (default: runs)
    config = "base.toml"         # optional base config, relative to the spec
    seeds = 2                    # runs per trial (one population); the objective is their mean
    trials = 20                  # the budget: trials finished (complete or pruned) ...
    timeout = 0                  # ... and/or wall seconds of this invocation (0: none)
    objective = "final"          # final | best | auc: the evaluation mean to maximise
    pruner = "median"            # median | halving | none
    sampler_seed = 0             # TPE's seed

    [set]                        # options every trial gets
    env = "CartPole-v1"
    total_steps = 50_000
    eval_every = 5_000

    [search]                     # the search space, written as a sweep's [random]
    lr = { log_uniform = [1e-4, 1e-2] }
    entropy_coef = { uniform = [0.0, 0.02] }
    epochs = { choice = [4, 10] }

Each trial trains its seeds as one population with the sampled options. After every
periodic evaluation the trial reports the seeds' mean evaluation return to Optuna, whose
pruner may stop the trial there (its runs end cleanly, ``stopped = "callback: pruned"``).
The objective of a finished trial, over its seeds' ``summary.json``:

- ``final``: the mean of the last evaluation means;
- ``best``: the mean of the best evaluation means (``checkpoints/best.pt``'s);
- ``auc``: the mean over the periodic evaluations (the area under the evaluation curve,
  normalised by its length).

The study lives in ``<group>/tune/study.journal`` (Optuna's journal storage), so a tune
interrupted by Ctrl-C or kill -9 resumes where it stopped: finished trials are kept, a trial
that was running is marked failed and its budget spent again. ``<group>/tune/`` also gets
``trials.csv`` (every trial's number, state, value and options), ``best.toml`` (the best
trial's config, ready for ``pglab train --config``), ``history.png`` (each trial's value
and the best so far), ``importance.png`` (the options' importances, PED-ANOVA) and
``curves.png`` (the evaluation curves of the best trials). Optuna is the optional extra
``pglab[tune]``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pglab.config import build_config
from pglab.errors import ConfigError, PglabError
from pglab.experiments.sweep import (
    inside,
    read_spec,
    spec_config_file,
    spec_distribution,
    spec_options,
    spec_seeds,
    spec_table,
)
from pglab.paths import make_dirs, safe_name, write_atomic, write_text_atomic
from pglab.safety import hold_lock

TUNE_DIR = "tune"
OBJECTIVES = ("final", "best", "auc")
PRUNERS = ("median", "halving", "none")
SCHEDULERS = ("tpe", "pbt")
BACKENDS = ("local", "ray")
_KEYS = {"group", "out", "config", "seeds", "base_seed", "trials", "timeout", "objective",
         "pruner", "sampler_seed", "set", "search", "scheduler", "members", "perturb_every",
         "quantile", "resample_probability"}  # fmt: skip
_LABEL = "tune spec"


@dataclass
class TuneSpec:
    """A parsed tuning spec."""

    group_dir: Path
    config_file: Path | None
    fixed: dict[str, Any]
    search: dict[str, tuple[str, list]]
    seeds: list[int]
    trials: int
    timeout: float
    objective: str
    pruner: str
    sampler_seed: int
    scheduler: str = "tpe"
    members: int = 8
    perturb_every: int = 0
    quantile: float = 0.25
    resample_probability: float = 0.25

    def config_flags(self, params: dict[str, Any], trial: int) -> dict[str, Any]:
        """The options of trial ``trial`` (its sampled ``params``), as ``build_config`` flags."""
        return {
            **self.fixed,
            **params,
            "run.out": str(self.group_dir),
            "run.group": f"trial-{trial}",
            "run.progress": "off",
        }


def load_tune_spec(
    path: str | Path, out: str | Path | None = None, scheduler: str | None = None
) -> TuneSpec:
    """Parse and check a tuning spec (``out`` replaces its ``out``, ``scheduler`` its
    ``scheduler``); a bad one is one :class:`ConfigError` line, before anything is written."""
    path = Path(path)
    spec = read_spec(path, _KEYS, _LABEL)
    group = safe_name(spec.get("group", path.stem), "tune spec: group")
    out_value = str(out) if out is not None else spec.get("out", "runs")
    if not isinstance(out_value, str) or not out_value:
        raise ConfigError(f"{_LABEL}: out (or --out) must be a folder path; got {out_value!r}")
    config_file = spec_config_file(spec, path, _LABEL)
    fixed, _ = spec_options(spec.get("set", {}), "set", label=_LABEL)
    table = spec_table(spec.get("search", {}), "search", _LABEL)
    search, written = spec_options(table, "search", distributions=True, label=_LABEL)
    if not search:
        raise ConfigError(f"{_LABEL}: [search] must name at least one option to tune")
    search = {k: spec_distribution(written[k], v, _LABEL, "search") for k, v in search.items()}
    both = sorted(set(fixed) & set(search))
    if both:
        raise ConfigError(f"{_LABEL}: {both[0]} is given in both [set] and [search]; keep one")
    trials, timeout = spec.get("trials", 20), spec.get("timeout", 0)
    if not (isinstance(trials, int) and not isinstance(trials, bool) and trials >= 1):
        raise ConfigError(f"{_LABEL}: trials must be an integer >= 1; got {trials!r}")
    if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout >= 0):
        raise ConfigError(f"{_LABEL}: timeout must be seconds >= 0 (0: none); got {timeout!r}")
    choices = {"objective": OBJECTIVES, "pruner": PRUNERS, "scheduler": SCHEDULERS}
    named = {key: spec.get(key, allowed[0]) for key, allowed in choices.items()}
    if scheduler is not None:
        named["scheduler"] = scheduler
    for key, allowed in choices.items():
        if named[key] not in allowed:
            raise ConfigError(
                f"{_LABEL}: {key} must be one of {', '.join(allowed)}; got {named[key]!r}"
            )
    sampler_seed = spec.get("sampler_seed", 0)
    if not (isinstance(sampler_seed, int) and not isinstance(sampler_seed, bool)):
        raise ConfigError(f"{_LABEL}: sampler_seed must be an integer; got {sampler_seed!r}")
    tune = TuneSpec(
        group_dir=inside(Path(out_value).resolve(), group),
        config_file=config_file,
        fixed=fixed,
        search=search,
        seeds=spec_seeds(spec.get("seeds", 1), spec.get("base_seed", 0), _LABEL),
        trials=trials,
        timeout=float(timeout),
        objective=named["objective"],
        pruner=named["pruner"],
        sampler_seed=sampler_seed,
        scheduler=named["scheduler"],
    )
    corners = {key: args[0] for key, (_, args) in tune.search.items()}
    config = build_config(config_file, tune.config_flags(corners, 0), flags_source=_LABEL)
    if tune.scheduler == "pbt":
        _check_pbt(tune, spec, config)
    return tune


def _check_pbt(tune: TuneSpec, spec: dict[str, Any], config: Any) -> None:
    """The PBT keys of ``spec`` into ``tune``, checked against the trials' ``config``."""
    from pglab.algos import stacks
    from pglab.pbt import TUNABLE

    if not stacks(config.algo.name):
        raise ConfigError(
            f"{_LABEL}: scheduler pbt needs an algorithm whose members train as one "
            f"population (a2c, ppo, reinforce); got {config.algo.name}"
        )
    for key in tune.search:
        if key.removeprefix("algo.") not in TUNABLE or not key.startswith("algo."):
            allowed = ", ".join(f"algo.{k}" for k in TUNABLE)
            raise ConfigError(
                f"{_LABEL}: scheduler pbt changes only {allowed} during training; "
                f"[search] has {key}"
            )
    members, every = spec.get("members", 8), spec.get("perturb_every", 0)
    quantile = spec.get("quantile", 0.25)
    resample = spec.get("resample_probability", 0.25)
    if not (isinstance(members, int) and not isinstance(members, bool) and members >= 2):
        raise ConfigError(f"{_LABEL}: members must be an integer >= 2; got {members!r}")
    eval_every = config.run.eval_every
    if not (
        isinstance(every, int)
        and not isinstance(every, bool)
        and every > 0
        and eval_every
        and every % eval_every == 0
    ):
        raise ConfigError(
            f"{_LABEL}: perturb_every must be a positive multiple of run.eval_every "
            f"({eval_every}; members are ranked by their evaluation); got {every!r}"
        )
    if not (isinstance(quantile, (int, float)) and 0 < quantile <= 0.5):
        raise ConfigError(f"{_LABEL}: quantile must be in (0, 0.5]; got {quantile!r}")
    if not (isinstance(resample, (int, float)) and 0 <= resample <= 1):
        raise ConfigError(f"{_LABEL}: resample_probability must be in [0, 1]; got {resample!r}")
    tune.members, tune.perturb_every = members, every
    tune.quantile, tune.resample_probability = float(quantile), float(resample)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise PglabError("pglab tune needs Optuna: pip install 'pglab[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def suggest(trial: Any, search: dict[str, tuple[str, list]]) -> dict[str, Any]:
    """The trial's options, one per distribution of ``[search]``."""
    params = {}
    for key, (kind, args) in search.items():
        if kind == "choice":
            index = trial.suggest_categorical(key, list(range(len(args))))
            params[key] = args[index]  # by index: a choice may be a list (hidden sizes)
        elif kind == "int_uniform":
            params[key] = trial.suggest_int(key, args[0], args[1])
        else:
            params[key] = trial.suggest_float(key, args[0], args[1], log=kind == "log_uniform")
    return params


class _Reporter:
    """Reports the seeds' mean evaluation return to the trial after each evaluation and
    stops every seed once the pruner says so. One object serves all the seeds of a trial
    (a population copies callbacks per member; this one it must share)."""

    def __init__(self, trial: Any, members: int) -> None:
        self.trial, self.members = trial, members
        self.evaluations: dict[Path, int] = {}  # each seed's count so far
        self.values: dict[int, list[float]] = {}  # the k-th evaluation of every seed
        self.pruned = False

    def __deepcopy__(self, memo: dict) -> _Reporter:
        return self

    def __call__(self, event: Any) -> None:
        if self.pruned:
            event.stop("pruned")
            return
        if event.kind != "evaluation":
            return
        index = self.evaluations.get(event.run_dir, 0)
        self.evaluations[event.run_dir] = index + 1
        values = self.values.setdefault(index, [])
        values.append(float(event.metrics["eval_return_mean"]))
        if len(values) == self.members:
            self.trial.report(sum(values) / len(values), index)
            if self.trial.should_prune():
                self.pruned = True
                event.stop("pruned")


def objective_value(summaries: list[dict[str, Any]], curves: list[list[float]], kind: str) -> float:
    """The trial's value over its seeds (see the module docstring)."""
    if kind == "final":
        values = [s["eval_return_mean"] for s in summaries]
    elif kind == "best":
        values = [s["best_eval_return_mean"] for s in summaries]
    else:
        values = [sum(c) / len(c) for c in curves if c]
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else -math.inf


def eval_curve(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [
            float(r["eval_return_mean"]) for r in csv.DictReader(handle) if r["eval_return_mean"]
        ]


def run_tune(
    spec_path: str | Path,
    *,
    out: str | Path | None = None,
    scheduler: str | None = None,
    backend: str = "local",
    address: str | None = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Run the tuning spec's missing trials (or, with ``scheduler`` ``pbt``, its
    population: :mod:`pglab.experiments.pbt_study`), on this machine or, with
    ``backend="ray"``, on Ray Tune (:mod:`pglab.experiments.ray_tune`; ``address``: a
    running cluster's); returns ``<group>/tune``."""
    import pglab

    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    spec = load_tune_spec(spec_path, out, scheduler)
    make_dirs(spec.group_dir, spec.group_dir.parent)
    tune_dir = make_dirs(spec.group_dir / TUNE_DIR, spec.group_dir)
    if spec.scheduler == "pbt":
        from pglab.experiments.pbt_study import run_pbt

        return run_pbt(spec, tune_dir, echo, backend, address)
    optuna = _optuna()
    if backend == "ray":
        from pglab.experiments.ray_tune import run_ray_tune

        with hold_lock(spec.group_dir, "tune folder"):
            return run_ray_tune(spec, tune_dir, address, echo)
    with hold_lock(spec.group_dir, "tune folder"):
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tune_dir / "study.journal"))
        )
        pruner = {
            "median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            "halving": optuna.pruners.SuccessiveHalvingPruner(),
            "none": optuna.pruners.NopPruner(),
        }[spec.pruner]
        study = optuna.create_study(
            study_name=spec.group_dir.name,
            storage=storage,
            load_if_exists=True,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=spec.sampler_seed),
            pruner=pruner,
        )
        states = optuna.trial.TrialState
        for stale in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
            study.tell(stale.number, state=states.FAIL)  # its process was killed
        done = len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))
        left = max(0, spec.trials - done)
        echo(f"tune {spec.group_dir}: {done} trials finished, {left} to run")

        def objective(trial: Any) -> float:
            params = suggest(trial, spec.search)
            flags = spec.config_flags(params, trial.number)
            config = build_config(spec.config_file, flags, flags_source=f"trial {trial.number}")
            reporter = _Reporter(trial, len(spec.seeds))
            runs = pglab.train(config=config, seeds=spec.seeds, callbacks=[reporter])
            if reporter.pruned:
                echo(f"trial {trial.number}: pruned")
                raise optuna.TrialPruned()
            value = objective_value(
                [r.summary for r in runs], [eval_curve(r.path) for r in runs], spec.objective
            )
            echo(f"trial {trial.number}: {value:.4g} {params}")
            return value

        if left:
            study.optimize(
                objective, n_trials=left, timeout=spec.timeout or None, catch=(PglabError,)
            )
        write_study_outputs(study, spec, tune_dir)
    return tune_dir


def write_study_outputs(study: Any, spec: TuneSpec, tune_dir: Path) -> None:
    """``trials.csv``, ``best.toml`` and the plots of a study's trials (an Optuna study:
    the local one, or one built from Ray Tune's results)."""
    trials = study.get_trials(deepcopy=False)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    keys = list(spec.search)
    writer.writerow(["number", "state", "value", "seconds", *keys])
    for t in trials:
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else ""
        )
        options = _options_of(t.params, spec)
        writer.writerow(
            [folder_number(t), t.state.name, t.value, seconds, *(options.get(k) for k in keys)]
        )
    write_text_atomic(tune_dir / "trials.csv", table.getvalue(), tune_dir)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        return
    best = max(complete, key=lambda t: t.value)
    flags = {k: v for k, v in spec.config_flags(_options_of(best.params, spec), 0).items()
             if not k.startswith("run.") or k in spec.fixed}  # fmt: skip
    config = build_config(spec.config_file, flags, flags_source=f"trial {best.number}")
    header = f"# the best trial ({folder_number(best)}) of {spec.group_dir}: {spec.objective} {best.value:.6g}\n"
    write_text_atomic(tune_dir / "best.toml", header + config.to_toml(), tune_dir)
    write_atomic(tune_dir / "history.png", lambda p: _plot_history(p, trials), tune_dir)
    if len(complete) >= 2 and len(keys) >= 1:
        write_atomic(tune_dir / "importance.png", lambda p: _plot_importance(p, study), tune_dir)
    top = sorted(complete, key=lambda t: -t.value)[:3]
    write_atomic(tune_dir / "curves.png", lambda p: _plot_curves(p, top, spec), tune_dir)


def folder_number(trial: Any) -> int:
    """The ``n`` of a trial's folder ``trial-<n>`` (Ray's trials record theirs)."""
    return int(trial.user_attrs.get("folder", trial.number))


def _options_of(params: dict[str, Any], spec: TuneSpec) -> dict[str, Any]:
    """A trial's options from Optuna's params (a choice is stored as its index)."""
    return {
        key: spec.search[key][1][value] if spec.search[key][0] == "choice" else value
        for key, value in params.items()
    }


def figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_history(path: Path, trials: list[Any]) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    done = [(t.number, t.value) for t in trials if t.state.name == "COMPLETE"]
    if done:
        numbers, values = zip(*done)
        best = [max(values[: i + 1]) for i in range(len(values))]
        ax.scatter(numbers, values, s=14, label="trial")
        ax.step(numbers, best, where="post", color="C1", label="best so far")
    pruned = [t.number for t in trials if t.state.name == "PRUNED"]
    if pruned:
        ax.scatter(pruned, [min(v for _, v in done)] * len(pruned) if done else [0] * len(pruned),
                   marker="x", color="grey", label="pruned")  # fmt: skip
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _plot_importance(path: Path, study: Any) -> None:
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    importances = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    plt = figure()
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * max(1, len(importances))), dpi=110)
    ax.barh(list(importances)[::-1], list(importances.values())[::-1])
    ax.set_xlabel("importance (PED-ANOVA)")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _plot_curves(path: Path, top: list[Any], spec: TuneSpec) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for t in top:
        for run_dir in sorted((spec.group_dir / f"trial-{folder_number(t)}").glob("*/metrics.csv")):
            with open(run_dir, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if r["eval_return_mean"]]
            ax.plot([int(r["step"]) for r in rows], [float(r["eval_return_mean"]) for r in rows],
                    label=f"trial {folder_number(t)} ({run_dir.parent.name})", linewidth=1.2)  # fmt: skip
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
