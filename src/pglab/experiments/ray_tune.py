r"""``pglab tune SPEC.toml --backend ray``: the same tuning spec on Ray Tune.

Ray Tune runs the trials, one per worker process (one CPU each, as many at once as the
Ray instance has CPUs), on a local Ray instance that pglab starts and stops, or on a
running cluster (``--address auto`` or ``HOST:PORT``). Its searcher is Optuna's TPE
(the local backend's sampler, seeded by ``sampler_seed``) and its scheduler ASHA
(asynchronous successive halving: after each evaluation, a trial whose mean
evaluation return is below the top 1/2 of those that reached the same evaluation
stops; at least one evaluation each). ``pruner = "none"`` runs every trial to the end.

The output layout is the local backend's: the runs in ``<group>/trial-<n>/``, and
``<group>/tune/`` with ``trials.csv``, ``best.toml`` and the plots (a stopped trial is
``PRUNED``). Ray's own records go to ``<group>/tune/ray/``; an interrupted tune resumes
from them (trials that were running start again). Ray is the optional extra
``pglab[ray]``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pglab.config import build_config
from pglab.errors import PglabError
from pglab.experiments.sweep import ray_session
from pglab.pbt import clamp

RAY_DIR = "ray"


def _tune_modules() -> tuple[Any, Any, Any]:
    try:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise PglabError(
            "pglab tune --backend ray needs Ray Tune and Optuna: pip install 'pglab[ray,tune]'"
        ) from None
    return tune, ASHAScheduler, OptunaSearch


class _Space:
    """Optuna's define-by-run space for Ray's searcher (a class: Ray pickles it)."""

    def __init__(self, search: dict[str, tuple[str, list]]) -> None:
        self.search = search

    def __call__(self, trial: Any) -> dict[str, Any]:
        from pglab.experiments.tune import suggest

        return {"options": suggest(trial, self.search), "number": trial.number}


def _trial(config: dict[str, Any], spec: Any = None) -> None:
    """One trial, in a Ray worker: its seeds as one population, reporting every
    evaluation's mean over the seeds, then the objective."""
    import torch
    from ray import tune

    import pglab
    from pglab.experiments.tune import eval_curve, objective_value

    torch.set_num_threads(1)
    number = int(config["number"])  # the searcher's count: the trial's folder
    flags = spec.config_flags(config["options"], number)
    built = build_config(spec.config_file, flags, flags_source=f"trial {number}")
    means: dict[int, list[float]] = {}
    counts: dict[Path, int] = {}

    def report(event: Any) -> None:
        if event.kind != "evaluation":
            return
        index = counts.get(event.run_dir, 0)
        counts[event.run_dir] = index + 1
        values = means.setdefault(index, [])
        values.append(float(event.metrics["eval_return_mean"]))
        if len(values) == len(spec.seeds):
            tune.report({"value": sum(values) / len(values), "evaluation": index + 1})

    report.__deepcopy__ = lambda memo: report  # type: ignore[attr-defined]  # one for all seeds
    runs = pglab.train(config=built, seeds=spec.seeds, callbacks=[report])
    value = objective_value(
        [r.summary for r in runs], [eval_curve(r.path) for r in runs], spec.objective
    )
    tune.report({"value": value, "objective": value, "evaluation": len(means) + 1})


def run_ray_tune(
    spec: Any, tune_dir: Path, address: str | None, echo: Callable[[str], None] = print
) -> Path:
    """Run (or resume) the spec's trials on Ray Tune; write ``tune_dir``'s outputs."""
    import optuna

    from pglab.experiments.tune import write_study_outputs

    tune, ASHAScheduler, OptunaSearch = _tune_modules()
    base = build_config(spec.config_file, spec.config_flags({}, 0), flags_source="tune spec")
    evaluations = max(1, base.run.total_steps // max(1, base.run.eval_every)) + 1
    storage = (tune_dir / RAY_DIR).resolve()
    with ray_session(address):
        trainable = tune.with_resources(tune.with_parameters(_trial, spec=spec), {"cpu": 1})
        path = storage / spec.group_dir.name
        if tune.Tuner.can_restore(str(path)):
            echo(f"tune {spec.group_dir} (ray): resuming from {path}")
            tuner = tune.Tuner.restore(str(path), trainable, restart_errored=True)
        else:
            searcher = OptunaSearch(
                space=_Space(spec.search),
                metric="value",
                mode="max",
                seed=spec.sampler_seed,
            )
            scheduler = None
            if spec.pruner != "none":
                scheduler = ASHAScheduler(
                    time_attr="evaluation", max_t=evaluations + 1, grace_period=1,
                    reduction_factor=2,
                )  # fmt: skip
            echo(f"tune {spec.group_dir} (ray): {spec.trials} trials")
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric="value",
                    mode="max",
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=spec.trials,
                    time_budget_s=spec.timeout or None,
                    max_concurrent_trials=os.cpu_count() if address is None else None,
                ),
                run_config=tune.RunConfig(
                    name=spec.group_dir.name, storage_path=str(storage), verbose=0
                ),
            )
        results = tuner.fit()
    study = optuna.create_study(direction="maximize")  # in memory: the tables and plots
    distributions = _distributions(spec.search)
    for result in results:
        if result.config is None:
            continue
        options = result.config.get("options", {})
        metrics = result.metrics or {}
        number = int(result.config.get("number", 0))
        if "objective" in metrics:
            state, value = optuna.trial.TrialState.COMPLETE, float(metrics["objective"])
        elif result.error is None:
            state, value = optuna.trial.TrialState.PRUNED, None
        else:
            state, value = optuna.trial.TrialState.FAIL, None
        study.add_trial(
            optuna.trial.create_trial(
                params=_params(options, spec.search),
                distributions=distributions,
                value=value,
                state=state,
                user_attrs={"folder": number},
            )
        )
    write_study_outputs(study, spec, tune_dir)
    return tune_dir


def _distributions(search: dict[str, tuple[str, list]]) -> dict[str, Any]:
    """The Optuna distributions :func:`~pglab.experiments.tune.suggest` draws from."""
    import optuna.distributions as d

    made: dict[str, Any] = {}
    for key, (kind, args) in search.items():
        if kind == "choice":
            made[key] = d.CategoricalDistribution(list(range(len(args))))
        elif kind == "int_uniform":
            made[key] = d.IntDistribution(args[0], args[1])
        else:
            made[key] = d.FloatDistribution(args[0], args[1], log=kind == "log_uniform")
    return made


def _params(options: dict[str, Any], search: dict[str, tuple[str, list]]) -> dict[str, Any]:
    """A trial's options as Optuna's params (a choice as its index)."""
    return {
        key: search[key][1].index(value) if search[key][0] == "choice" else value
        for key, value in options.items()
    }


PBT_GROUP = "ray-pbt"


def _domain(tune: Any, kind: str, args: list) -> Any:
    """A ``[search]`` distribution as Ray Tune's search space."""
    if kind == "choice":
        return tune.choice(args)
    if kind == "int_uniform":
        return tune.randint(args[0], args[1] + 1)
    if kind == "log_uniform":
        return tune.loguniform(args[0], args[1])
    return tune.uniform(args[0], args[1])


def _member(config: dict[str, Any], spec: Any = None) -> None:
    """One member under Ray's PBT, in a Ray worker: trains to the next multiple of
    ``perturb_every`` steps at a time, each time reporting its evaluation and its
    checkpoint; a member Ray restarts from another's checkpoint continues that run's
    state (weights, optimizer, normalisation, counters) with its new values, in its
    own run folder."""
    import tempfile

    import torch
    from ray import tune

    from pglab.checkpoint import CHECKPOINT_DIR, LAST, load_checkpoint
    from pglab.population import Population

    torch.set_num_threads(1)
    name = f"member-{tune.get_context().get_trial_id()}"
    run_dir = spec.group_dir / PBT_GROUP / name
    checkpoint = tune.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(Path(folder) / LAST)
    options = {f"algo.{k}": v for k, v in config.items()}
    flags = {**spec.config_flags(options, 0), "run.group": PBT_GROUP, "run.name": name,
             "run.stop_at_return": "none", "run.seed": spec.seeds[0]}  # fmt: skip
    base = build_config(spec.config_file, flags, flags_source=name)
    total = base.run.total_steps
    steps = 0 if state is None else int(state["counters"]["steps"])
    while steps < total:
        target = min(total, (steps // spec.perturb_every + 1) * spec.perturb_every)
        flags["run.total_steps"] = target
        config_now = build_config(spec.config_file, flags, flags_source=name).resolve(None)
        population = Population([config_now], None if state is None else [state])
        population.train(run_dirs=[run_dir] if run_dir.exists() else None)
        state = load_checkpoint(run_dir)
        steps = int(state["counters"]["steps"])
        last = state["counters"].get("last_eval") or {}
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / LAST).write_bytes((run_dir / CHECKPOINT_DIR / LAST).read_bytes())
            tune.report(
                {"value": float(last.get("mean", float("-inf"))), "step": steps},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )


def run_ray_pbt(
    spec: Any, tune_dir: Path, address: str | None, echo: Callable[[str], None] = print
) -> Path:
    """The spec's PBT population under Ray Tune's PopulationBasedTraining: the same
    members, interval, quantile, resampling and factors as the in-process PBT, each
    member a Ray trial that checkpoints at every round (see :func:`_member`)."""
    tune, _, _ = _tune_modules()
    from ray.tune.schedulers import PopulationBasedTraining

    space = {key.removeprefix("algo."): _domain(tune, *value) for key, value in spec.search.items()}
    storage = (tune_dir / RAY_DIR).resolve()
    with ray_session(address):
        trainable = tune.with_resources(tune.with_parameters(_member, spec=spec), {"cpu": 1})
        path = storage / PBT_GROUP
        if tune.Tuner.can_restore(str(path)):
            echo(f"pbt {spec.group_dir} (ray): resuming from {path}")
            tuner = tune.Tuner.restore(str(path), trainable, restart_errored=True)
        else:
            scheduler = PopulationBasedTraining(
                time_attr="step",
                perturbation_interval=spec.perturb_every,
                hyperparam_mutations=space,
                quantile_fraction=spec.quantile,
                resample_probability=spec.resample_probability,
                perturbation_factors=(1.2, 0.8),
                custom_explore_fn=functools.partial(_within_bounds, search=spec.search),
            )
            echo(f"pbt {spec.group_dir} (ray): {spec.members} members")
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric="value", mode="max", scheduler=scheduler, num_samples=spec.members
                ),
                run_config=tune.RunConfig(name=PBT_GROUP, storage_path=str(storage), verbose=0),
            )
        results = tuner.fit()
    rows, failed = [], []
    for result in results:
        metrics = result.metrics or {}
        rows.append({"trial": metrics.get("trial_id"), "value": metrics.get("value"),
                     "step": metrics.get("step"), **(result.config or {})})  # fmt: skip
        if result.error is not None:
            failed.append(result)
    from pglab.experiments.pbt_study import write_best, write_table

    write_table(tune_dir / "ray_members.csv", rows, tune_dir)
    scored = [r for r in rows if r["value"] is not None and r["step"] is not None]
    finished = [r for r in scored if r["step"] == max(r["step"] for r in scored)]
    if finished:
        best = max(finished, key=lambda r: r["value"])
        write_best(
            spec, tune_dir, {k: best[k.removeprefix("algo.")] for k in spec.search},
            f"the best Ray PBT member (trial {best['trial']}) of {spec.group_dir}: final "
            f"evaluation {best['value']:.6g}, with its final values",
        )  # fmt: skip
    if failed:
        reason = str(failed[0].error).strip().splitlines()[-1]
        raise PglabError(
            f"ray pbt: {len(failed)} of {len(rows)} members failed ({reason}); "
            f"details under {storage / PBT_GROUP}"
        )
    return tune_dir


def _within_bounds(config: dict[str, Any], search: dict[str, tuple[str, list]]) -> dict[str, Any]:
    """Ray PBT's perturbed values moved back into the search space's bounds (Ray
    multiplies them by its factors without looking at the bounds)."""
    for key, (kind, args) in search.items():
        name = key.removeprefix("algo.")
        if name in config:
            config[name] = clamp(kind, args, config[name])
    return config
