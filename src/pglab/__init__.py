"""pglab: policy-gradient reinforcement learning you can read, trust and run fast.

>>> import gymnasium, pglab
>>> run = pglab.train("CartPole-v1", algo="reinforce", weights="gae", total_steps=100_000)
>>> obs, _ = gymnasium.make("CartPole-v1").reset(seed=0)
>>> action = run.agent.act(obs, deterministic=True)
>>> pglab.evaluate(run.agent, "CartPole-v1", episodes=100).mean
"""
# ruff: noqa: E402  (the sys.path fix below runs before pglab's other imports)

from __future__ import annotations

import os as _os
import sys as _sys
from itertools import pairwise as _pairwise


def _run_as_module() -> bool:
    """Whether this process is ``python -m pglab...`` (``sys.argv[0]`` is ``-m`` while
    Python imports the package of the module it was asked to run)."""
    argv = getattr(_sys, "orig_argv", [])
    if _sys.argv[:1] != ["-m"]:
        return False
    names = [b for a, b in _pairwise(argv) if a == "-m"]
    names += [a[2:] for a in argv if a.startswith("-m") and len(a) > 2]
    return any(name == "pglab" or name.startswith("pglab.") for name in names)


# ``python -m pglab.cli`` puts the current directory first on sys.path, where a file in
# a shared run folder (numpy.py, ale_py.py) would stand in for an installed package:
# drop it, as ``python -P`` does. A module the user names (--env package.module:Class)
# is still looked for there (pglab.envs.import_path).
if _run_as_module() and _sys.path and _sys.path[0] in ("", _os.getcwd()):
    del _sys.path[0]

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pglab.agent import Agent, load
from pglab.callbacks import (
    Callback,
    CallbackLike,
    CheckpointEvery,
    EarlyStopping,
    EvaluateEvery,
    Event,
    check_callbacks,
)
from pglab.config import Config, build_config
from pglab.envs import describe_env
from pglab.errors import CheckpointError, ConfigError, EnvError, PglabError, TrainingError
from pglab.evaluate import EvalResult, evaluate
from pglab.export import export
from pglab.member import Run
from pglab.population import member_configs, train_many
from pglab.population import resume as _resume
from pglab.population import train as _train

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Callback",
    "CheckpointError",
    "CheckpointEvery",
    "Config",
    "ConfigError",
    "EarlyStopping",
    "EnvError",
    "EvalResult",
    "EvaluateEvery",
    "Event",
    "PglabError",
    "Run",
    "TrainingError",
    "evaluate",
    "export",
    "load",
    "resume",
    "train",
]


def train(
    env: Any = None,
    algo: str | None = None,
    *,
    config: str | Path | Config | None = None,
    seeds: Iterable[int] | None = None,
    jobs: int = 1,
    callbacks: Sequence[CallbackLike] | None = None,
    **options: Any,
) -> Run | list[Run]:
    """Train an agent and return the :class:`Run` (``.agent``, ``.summary``, ``.path``).

    Options are the keys of ``pglab train --help``, written ``name=value`` when the
    name is unique (``lr=0.01``, ``weights="fr"``, ``seed=3``, ``total_steps=50_000``)
    or passed per section as a dict (``policy={"hidden": [8]}``). ``config`` is a
    TOML file, or a :class:`Config` to start from (then no preset is applied). The
    tuned preset for the env and algorithm applies unless ``preset="none"``.

    ``env`` is an id (``CartPole-v1``, ``package.module:Class``), an env made by
    ``gymnasium.make`` (its id, keyword arguments and wrappers become the run's
    config), or an env object, a zero-argument callable that makes one, or a
    ``gymnasium.vector.VectorEnv`` (see :mod:`pglab.envs.objects`: resuming such a run
    needs the object again). ``wrappers=[...]`` wraps every copy, in order.

    ``seeds`` trains one run per seed and returns the list of runs, as one population
    in this process (see :mod:`pglab.population`; TRPO's members update one after
    another); ``jobs`` > 1 spreads them over that many processes.

    ``callbacks`` are :class:`Callback` objects or functions of an :class:`Event`,
    called after each update and each evaluation; ``event.stop("why")`` ends the run
    cleanly (see :mod:`pglab.callbacks`; built-ins :class:`EarlyStopping`,
    :class:`CheckpointEvery`, :class:`EvaluateEvery`).

    Example::

        run = pglab.train("CartPole-v1", algo="reinforce", weights="fr", lr=0.01,
                          policy={"hidden": [8]}, seed=0)
        run = pglab.train(gymnasium.make("LunarLander-v3", continuous=True), "ppo")
    """
    hooks = check_callbacks(callbacks)
    values: dict[str, Any] = {}
    given = None
    if env is not None:
        described, given = describe_env(env)
        values.update(described)
    if algo is not None:
        values["algo.name"] = algo
    for key, value in options.items():
        if isinstance(value, Mapping) and key in ("policy", "algo", "run"):
            values.update({f"{key}.{name}": inner for name, inner in value.items()})
        else:
            values[key] = value
    source = "pglab.train()"
    if isinstance(config, Config):
        built = build_config(flags=values, flags_source=source, base=config)
    else:
        built = build_config(config, values, flags_source=source)
    vector = None if given is None else given.vector
    if vector is not None and built.env.num_envs != vector.num_envs:
        raise ConfigError(
            f"num_envs is {built.env.num_envs} but the vector env given has "
            f"{given.vector.num_envs} envs; leave num_envs out"
        )
    if seeds is None:
        return _train(built, given, hooks)
    if jobs < 1:
        raise ConfigError(f"jobs must be an integer >= 1; got {jobs!r}")
    return train_many(member_configs(built, list(seeds)), jobs, given=given, callbacks=hooks)


def resume(
    run_dir: str | Path,
    *,
    allow_import: Iterable[str] = (),
    env: Any = None,
    total_steps: int | None = None,
    callbacks: Sequence[CallbackLike] | None = None,
) -> Run:
    """Continue a run from its last checkpoint, in the same folder: an interrupted
    one, or, with ``total_steps`` (a larger budget), a finished one.

    ``allow_import`` names the modules the run's env id or wrappers may import
    (``package.module:Class`` ids), as for :func:`load`; without it such an id is
    refused. ``env`` is the env object a run was given (when its config's
    ``env.object`` is set), passed again. ``callbacks`` as for :func:`train`.
    """
    hooks = check_callbacks(callbacks)
    given = None
    if env is not None:
        _, given = describe_env(env)
    return _resume(run_dir, allow_import, given=given, callbacks=hooks, total_steps=total_steps)
