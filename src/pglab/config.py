"""Every option of a run, as typed dataclasses validated on construction.

A run is configured by four sections: ``env``, ``policy``, ``algo`` and ``run``.
Values come, from lowest to highest precedence, from the defaults below, the
algorithm's defaults (``presets/<algo>.toml``), the tuned preset for the env and
algorithm (``presets/<algo>/<env>.toml``, unless ``run.preset = "none"``), a TOML
file (``--config``), the command line's named flags, and ``--set key=value``
overrides. A key is written ``section.name`` or, when the name is unique, just ``name``.

A bad value raises :class:`~pglab.errors.ConfigError` with one line naming the
option, what is allowed and what was given. Options whose default is ``auto`` (or 0
meaning auto) are resolved by :meth:`Config.resolve`; the resolved values are what a
run writes to its ``config.toml``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import importlib.util
import inspect
import math
import os
import re
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pglab.algos import (
    ALGORITHMS,
    chooses_weights,
    critic_apart,
    own_options,
    takes_option,
    uses_critic,
)
from pglab.envs.guard import DEFAULT_EPISODE_CAP, parse_max_episode_steps
from pglab.envs.normalize import REWARD_METHODS
from pglab.envs.wrappers import parse_wrappers, wrapper_module
from pglab.errors import ConfigError
from pglab.losses import REDUCTIONS
from pglab.nets import ACTIVATIONS, PRECISIONS
from pglab.paths import check_text, safe_name
from pglab.policies import HEADS
from pglab.returns import WEIGHT_KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The learning rules ``algo.name`` may name.
ALGOS: tuple[str, ...] = tuple(ALGORITHMS)
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "rmsprop")
#: Where metrics may go besides metrics.csv (``run.loggers``), and the extras they need.
LOGGERS: tuple[str, ...] = ("tensorboard", "wandb", "mlflow")
EXTRAS: dict[str, str] = {"wandb": "wandb", "mlflow": "mlflow"}
LR_SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine", "step")
GRADIENTS: tuple[str, ...] = ("auto", "autograd")
BATCH_MODES: tuple[str, ...] = ("auto", "episodes", "steps")
PROGRESS: tuple[str, ...] = ("auto", "bar", "plain", "off")
PREPROCESS: tuple[str, ...] = ("none", "pong", "atari")
BODIES: tuple[str, ...] = ("auto", "mlp", "cnn")
PRESETS_DIR = Path(__file__).parent / "presets"
#: Seeds are unsigned 32-bit integers, as NumPy's and Gymnasium's seeding take them.
MAX_SEED = 2**32 - 1
#: More torch threads than this only oversubscribes the cores (and far more crashes torch).
MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))


# ---------------------------------------------------------------- validation rules


@dataclass(frozen=True)
class Range:
    """A number in an interval; ``None`` bounds are open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def ok(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (
            self.high is not None and (value > self.high or (self.high_open and value == self.high))
        )

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "finite"


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    values: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.values)


def _shown(value: Any) -> str:
    """An option's value as a config file writes it (``true``, ``0.2``, ``sum``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def opt(default: Any, help: str, rule: Range | Choice | None = None) -> Any:
    """A config field with its help text and validation rule."""
    metadata = {"help": help, "rule": rule}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


POSITIVE = Range(0, None, low_open=True)
NON_NEGATIVE = Range(0, None)
UNIT = Range(0, 1)


def _type_name(typ: Any) -> str:
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        dict: "a table of keyword arguments",
    }.get(typ, "a list of positive integers")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check ``value`` against the annotated type; ints become floats where floats go."""
    ok = True
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typ is str:
        ok = isinstance(value, str)
    elif typ is dict:
        ok = isinstance(value, dict)
    elif typ == list[str]:
        if isinstance(value, str):  # one name: --set loggers=wandb
            value = [value]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:  # list[int]
        ok = isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        )
        value = list(value) if ok else value
    if not ok:
        raise ConfigError(f"{key} must be {_type_name(typ)}; got {value!r}")
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved type annotations of a config section (resolving them is slow)."""
    return typing.get_type_hints(cls)


def _validate(section: Any) -> None:
    hints = _hints(type(section))
    for f in dataclasses.fields(section):
        key = f"{section.SECTION}.{f.name}"
        typ = hints[f.name]
        value = getattr(section, f.name)
        if f.name == "stop_at_return":  # a number, or "auto" / "none"
            value = _stop_at_return(value, key)
        elif f.name == "max_episode_steps":  # an integer, or "auto"
            value = parse_max_episode_steps(value, key)
        elif f.name == "wrappers":  # import paths, or {name, kwargs} tables
            value = parse_wrappers(value, key)
        elif f.name == "body":  # a built-in body, or a class of the user's (its import path)
            value = _class_path(value, key, BODIES)
        elif f.name in ("actor", "critic"):  # empty (built), or a class of the user's
            value = _class_path(value, key, ("",))
        elif f.name in ("lr_schedule", "clip_schedule"):  # built in, or a user's function
            value = _class_path(value, key, LR_SCHEDULES, "function")
        elif f.name == "weights":  # built in, or a user's function
            value = _class_path(value, key, WEIGHT_KINDS, "function")
        elif f.name == "optimizer":  # pglab's own, or one of torch.optim's by name
            value = _optimizer(value, key)
        else:
            value = _coerce(value, typ, key)
        rule = f.metadata.get("rule")
        if isinstance(rule, Range) and not rule.ok(value):
            raise ConfigError(f"{key} must be {_type_name(typ)} {rule.describe()}; got {value!r}")
        if isinstance(rule, Choice) and value not in rule.values:
            raise ConfigError(f"{key} must be {rule.describe()}; got {value!r}")
        object.__setattr__(section, f.name, value)
    checker: Callable[[], None] | None = getattr(section, "check", None)
    if callable(checker):  # (env.check is an option, not a method)
        checker()


def _class_path(value: Any, key: str, builtins: tuple[str, ...], kind: str = "class") -> str:
    """A class (or function: ``kind``) of the user's as its import path (one given in
    Python is stored by name), or one of ``builtins``; anything else is one
    :class:`ConfigError` line."""
    if isinstance(value, type) or inspect.isfunction(
        value
    ):  # a class given in Python: stored by its import path
        if value.__module__ == "__main__" or "<" in value.__qualname__:  # <locals>, <lambda>
            raise ConfigError(
                f"{key}: {value.__qualname__} must be defined by name (def, class) at the top "
                "of a module other than __main__ (runs store it by name and rebuild it on load)"
            )
        value = f"{value.__module__}:{value.__qualname__}"
    if isinstance(value, str) and (value in builtins or wrapper_module(value) is not None):
        return value
    named = ", ".join(b or repr(b) for b in builtins)
    path = "package.module:Class" if kind == "class" else "package.module:name"
    raise ConfigError(
        f"{key} must be one of {named} or a {kind}'s import path ({path}); got {value!r}"
    )


def _optimizer(value: Any, key: str) -> str:
    from pglab.optim import torch_optimizer

    if isinstance(value, str) and value in OPTIMIZERS:
        return value
    cls = torch_optimizer(value) if isinstance(value, str) else None
    if cls is None:
        raise ConfigError(
            f"{key} must be one of {', '.join(OPTIMIZERS)} or a torch.optim optimizer "
            f"(torch.optim.NAdam, nadam); got {value!r}"
        )
    return f"torch.optim.{cls.__name__}"


def _stop_at_return(value: Any, key: str) -> float | str:
    if isinstance(value, str) and value.lower() in ("auto", "none"):
        return value.lower()
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ConfigError(
        f"{key} must be a number, 'auto' (the env's threshold) or 'none'; got {value!r}"
    )


# ---------------------------------------------------------------- the sections


@dataclass
class EnvConfig:
    """Which environment, how many copies."""

    SECTION: typing.ClassVar[str] = "env"

    id: str = opt("CartPole-v1", "Gymnasium id (e.g. Acrobot-v1) or package.module:Class")
    num_envs: int = opt(0, "parallel envs for training; 0 = auto", NON_NEGATIVE)
    eval_num_envs: int = opt(
        0, "parallel envs for evaluation; 0 = auto (one per episode, at most 32)", NON_NEGATIVE
    )
    kwargs: dict = opt({}, "keyword arguments passed to the env constructor")
    wrappers: list = opt(
        [],
        "wrappers for every env copy, in order: import paths (gymnasium.wrappers.FlattenObservation) "
        'or tables {name = "...", kwargs = {...}}',
    )
    preprocess: str = opt(
        "none",
        "observation pipeline: pong = 80x80 difference frames and UP/DOWN actions, "
        "atari = the standard Atari wrappers (84x84 gray, 4 stacked frames)",
        Choice(PREPROCESS),
    )
    action_mask: str = opt(
        "auto",
        "legal actions (Discrete or MultiDiscrete): auto = the Dict observation's "
        "'action_mask' key when it has one; info = info['action_mask'] at every step; "
        "none = every action legal",
        Choice(("auto", "info", "none")),
    )
    frame_stack: int = opt(
        1, "stack the last k observations (images: on the channel axis); 1 = off", Range(1, 64)
    )
    backend: str = opt(
        "gymnasium",
        "how the copies step: gymnasium = in this process (the env's own vector version "
        "where it has one, else one copy after another); async = each copy in a process of "
        "its own (Gymnasium's AsyncVectorEnv), for envs whose step is the cost; envpool = "
        "envpool's C++ threads (pip install 'pglab[envpool]'; its MuJoCo and classic ids, "
        "without wrappers)",
        Choice(("gymnasium", "async", "envpool")),
    )
    normalize_obs: bool = opt(False, "normalise observations by running mean and std")
    normalize_reward: bool = opt(False, "normalise rewards (how: env.reward_norm)")
    reward_norm: str = opt(
        "return",
        "with normalize_reward: return = divide by the running std of the discounted return; "
        "reward = divide by the running std of the rewards; standardize = subtract the running "
        "mean reward, then divide",
        Choice(REWARD_METHODS),
    )
    clip_obs: float = opt(10.0, "clip normalised observations to +-this; 0 = no clip", NON_NEGATIVE)
    clip_reward: float = opt(10.0, "clip scaled rewards to +-this; 0 = no clip", NON_NEGATIVE)
    max_episode_steps: int | str = opt(
        "auto",
        "cut (truncate) episodes after this many steps; auto = the env's own time limit, "
        f"else {DEFAULT_EPISODE_CAP} with a warning",
    )
    check: bool = opt(True, "run Gymnasium's env checker once on a package.module:Class (user) env")
    object: str = opt(
        "",
        "set by pglab.train() for an env given as a Python object that no config describes "
        "(what it was); resuming or evaluating the run needs the object passed again",
    )

    def __post_init__(self) -> None:
        _validate(self)


@dataclass
class PolicyConfig:
    """The actor and critic networks."""

    SECTION: typing.ClassVar[str] = "policy"

    hidden: list[int] = opt([64, 64], "actor hidden layer sizes; [] = linear policy")
    activation: str = opt("tanh", "hidden activation", Choice(tuple(ACTIVATIONS)))
    dropout: float = opt(
        0.0,
        "dropout after each actor hidden layer: a training batch acts with a mask per "
        "step and the update recomputes under the same masks; evaluation acts without",
        Range(0, 1, high_open=True),
    )
    head: str = opt("auto", "action distribution", Choice(HEADS))
    log_std_init: float = opt(
        0.0, "initial log std of the Gaussian head (of the gsde head's noise weights)", Range()
    )
    sde_sample_freq: int = opt(
        -1,
        "gsde head: redraw the exploration noise every this many steps; -1 or 0 = once per batch",
        Range(-1),
    )
    value_hidden: list[int] = opt([64, 64], "critic hidden layer sizes (unless shared)")
    shared: bool = opt(False, "actor and critic share one body (hidden), two output layers")
    ortho_init: bool = opt(
        False, "orthogonal init: gains sqrt 2 (hidden), 0.01 (policy out), 1 (value out)"
    )
    body: str = opt(
        "auto",
        "network body: auto (cnn for image observations), mlp, cnn, or your own class "
        "package.module:Class, made as Class(obs_dim, **body_kwargs) (a torch module from "
        "[N, obs_dim] to [N, features]; from a file it is imported only with --allow-import)",
    )
    body_kwargs: dict = opt({}, "keyword arguments of a body class of your own")
    precision: str = opt(
        "float32",
        "arithmetic of the image (CNN) bodies: float32, or bfloat16 = mixed precision "
        "(layers under torch.autocast; parameters, heads, losses and optimizer stay "
        "float32); fast on CPUs with AMX and on GPUs, rounds differently",
        Choice(tuple(PRECISIONS)),
    )
    actor: str = opt(
        "",
        "your own actor class package.module:Class, made as Class(obs_dim, action_space, "
        "**actor_kwargs): a pglab.policies.Actor (a subclass); empty = built from the "
        "options above",
    )
    actor_kwargs: dict = opt({}, "keyword arguments of an actor class of your own")
    critic: str = opt(
        "",
        "your own critic class, made as Class(obs_dim, **critic_kwargs): a torch module "
        "from [N, obs_dim] to values [N]; empty = built from value_hidden",
    )
    critic_kwargs: dict = opt({}, "keyword arguments of a critic class of your own")

    def __post_init__(self) -> None:
        _validate(self)


@dataclass
class AlgoConfig:
    """The learning rule and its hyperparameters."""

    SECTION: typing.ClassVar[str] = "algo"

    name: str = opt("ppo", "learning rule", Choice(ALGOS))
    weights: str = opt(
        "gae",
        "policy-gradient weights Psi_t: " + ", ".join(WEIGHT_KINDS) + ", or your own function "
        "package.module:name of keyword arguments among rewards, terminated, truncated, gamma, "
        "lam, values, next_values, valid ([T, N] tensors) giving Psi [T, N]; one that takes "
        "values or next_values gets a critic (from a file it is imported only with "
        "--allow-import; a2c, ppo, trpo: gae only)",
    )
    lr: float = opt(0.003, "policy learning rate", POSITIVE)
    gamma: float = opt(0.99, "discount factor", UNIT)
    lam: float = opt(0.95, "GAE lambda", UNIT)
    batch_mode: str = opt(
        "auto",
        "fill batches with complete episodes or a fixed number of "
        "steps; auto = episodes for weights without a critic (r/fr/dfr), steps for those "
        "with one",
        Choice(BATCH_MODES),
    )
    batch_size: int = opt(0, "episodes (or steps, over all envs) per batch; 0 = auto", NON_NEGATIVE)
    normalize_weights: bool = opt(
        True, "standardise the weights (advantages) over each batch (ppo: each minibatch)"
    )
    entropy_coef: float = opt(0.0, "entropy bonus coefficient", NON_NEGATIVE)
    loss_reduction: str = opt(
        "mean",
        "reinforce: reduce the policy loss over a batch's valid samples by their mean, or "
        "their sum (-sum log pi Psi - entropy_coef sum H, as the PyTorch tutorial sums over "
        "its episode: the same direction, a gradient as many times larger as there are samples)",
        Choice(REDUCTIONS),
    )
    max_grad_norm: float = opt(0.0, "clip the global gradient norm; 0 = no clipping", NON_NEGATIVE)
    weight_decay: float = opt(
        0.0, "weight decay of the policy optimizer (L2; adamw: decoupled)", NON_NEGATIVE
    )
    lr_schedule: str = opt(
        "constant",
        "learning-rate schedule over the budget: linear and cosine decay to 0, step "
        "multiplies by schedule_gamma every schedule_every of it; or your own function "
        "package.module:name of the progress in [0, 1], giving the factor of lr",
    )
    schedule_every: float = opt(
        0.25,
        "step schedules: the fraction of the budget between steps",
        Range(0.0, 1.0, low_open=True),
    )
    schedule_gamma: float = opt(0.5, "step schedules: the factor at each step", Range(0.0, 1.0))
    optimizer: str = opt(
        "adam",
        "optimizer of policy and critic: " + ", ".join(OPTIMIZERS) + " (pglab's, stacked), "
        "or any torch.optim optimizer by name (torch.optim.NAdam, nadam)",
    )
    optimizer_kwargs: dict = opt({}, "a torch.optim optimizer's other arguments")
    eps: float = opt(1e-8, "epsilon of adam / rmsprop", POSITIVE)
    value_lr: float = opt(0.01, "critic learning rate", POSITIVE)
    value_epochs: int = opt(25, "critic gradient steps on each batch", Range(1, None))
    value_reset_optimizer: bool = opt(False, "re-create the critic optimizer every batch")
    value_reinit: bool = opt(
        False,
        "reinforce: before every batch's critic fit, redraw the critic's weights from the "
        "initialisation it was built with (and re-create its optimizer): a critic fitted "
        "afresh to each batch",
    )
    value_holdout: float = opt(
        0.0,
        "reinforce: the fraction of each batch's samples kept out of the critic's fit; "
        "value_loss_heldout, the fitted critic's MSE on them, beside value_loss shows a "
        "critic that fits its batch's noise; 0 = off",
        Range(0, 1, high_open=True),
    )
    reset_return_at_reward: bool = opt(
        False, "restart the return after every non-zero reward (a point scored in Pong)"
    )
    vf_coef: float = opt(0.5, "a2c, ppo: weight of the value loss", NON_NEGATIVE)
    epochs: int = opt(
        1, "ppo, reinforce: passes over each batch (ppo's defaults: 10)", Range(1, None)
    )
    minibatches: int = opt(
        1,
        "ppo, reinforce: minibatches per pass (ppo's defaults: 32); trpo: of its critic",
        Range(1, None),
    )
    clip_range: float = opt(0.2, "ppo: clip range epsilon of the ratio", POSITIVE)
    clip_schedule: str = opt("constant", "ppo: clip-range schedule (as lr_schedule)")
    value_clip: float = opt(0.0, "ppo: clip the value change to +-this; 0 = off", NON_NEGATIVE)
    target_kl: float = opt(
        0.0, "ppo, reinforce: stop the epochs once approx KL exceeds this; 0 = off", NON_NEGATIVE
    )
    gradients: str = opt(
        "auto",
        "ppo, a2c: auto = the loss's gradient written out where the networks allow it (MLP "
        "bodies with tanh or relu, categorical or gaussian head, separate critic); "
        "autograd = always by torch.autograd",
        Choice(GRADIENTS),
    )
    max_kl: float = opt(0.01, "trpo: trust-region size (max mean KL per update)", POSITIVE)
    cg_iters: int = opt(10, "trpo: conjugate-gradient iterations", Range(1, None))
    cg_damping: float = opt(0.1, "trpo: damping added to the Fisher matrix", NON_NEGATIVE)
    line_search_steps: int = opt(10, "trpo: backtracking line-search steps", Range(1, None))
    line_search_decay: float = opt(
        0.8, "trpo: step shrink factor of the line search", Range(0, 1, True, True)
    )

    def __post_init__(self) -> None:
        _validate(self)

    def check(self) -> None:
        if not chooses_weights(self.name) and self.weights != "gae":
            raise ConfigError(
                f"algo.weights must be gae for {self.name} (its advantages are GAE(lambda); "
                f"set lam=1 for Monte Carlo returns, lam=0 for TD; the other weights are "
                f"REINFORCE's: --algo reinforce); got {self.weights!r}"
            )
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for option in own_options():
            value, default = getattr(self, option), defaults[option]
            if value != default and not takes_option(self.name, option):
                takers = " and ".join(n for n in ALGOS if takes_option(n, option))
                raise ConfigError(
                    f"algo.{option} must be {_shown(default)} for {self.name} (only {takers} "
                    f"takes another value); got {_shown(value)}"
                )

    @property
    def uses_critic(self) -> bool:
        """Whether the run fits a critic (REINFORCE with a function of the user's as its
        weights: imports it, to read its signature)."""
        return uses_critic(self.name, self.weights)

    def resolve(self) -> AlgoConfig:
        for option in ("value_reinit", "value_holdout"):  # what REINFORCE does to its critic
            value = getattr(self, option)
            if value and not self.uses_critic:
                raise ConfigError(
                    f"algo.{option} needs a critic, which weights {self.weights} do not fit "
                    f"(dfrb, td, gae and functions that take values do); got {_shown(value)}"
                )
        mode = self.batch_mode
        if mode == "auto":
            mode = "steps" if self.uses_critic else "episodes"
        size = self.batch_size or (2048 if mode == "steps" else 20)
        return dataclasses.replace(self, batch_mode=mode, batch_size=size)


@dataclass
class RunConfig:
    """Seeds, budget, evaluation, output."""

    SECTION: typing.ClassVar[str] = "run"

    seed: int = opt(0, "random seed of the run", Range(0, MAX_SEED))
    total_steps: int = opt(200_000, "environment steps to train for", Range(1, None))
    total_updates: int = opt(
        0, "also stop after this many updates (batches); 0 = no limit", NON_NEGATIVE
    )
    out: str = opt("runs", "folder that holds run groups")
    group: str = opt("", "group folder under out; empty = the env id")
    name: str = opt("", "run folder name; empty = algo-weights-seed-time")
    eval_every: int = opt(10_000, "steps between evaluations; 0 = only at the end", NON_NEGATIVE)
    eval_episodes: int = opt(10, "episodes per evaluation", Range(1, None))
    eval_deterministic: bool = opt(True, "evaluate the most likely action")
    stop_at_return: str = opt(
        "auto",
        "stop once an evaluation reaches this mean return; "
        "auto = the env's reward threshold, none = never",
    )
    checkpoint_every: int = opt(
        20_000, "steps between checkpoints; 0 = only at the end", NON_NEGATIVE
    )
    keep_checkpoints: bool = opt(
        False, "also keep every periodic checkpoint as checkpoints/step-N.pt (policy snapshots)"
    )
    threads: int = opt(1, "torch CPU threads", Range(1, MAX_THREADS))
    device: str = opt(
        "cpu", "where networks and updates run: cpu, cuda or cuda:N (envs stay on the CPU)"
    )
    progress: str = opt("auto", "progress display (auto: a bar on a terminal)", Choice(PROGRESS))
    schedule: str = opt(
        "",
        "a hyperparameter schedule to follow (a PBT member's pbt_schedule.json): its "
        "starting values, then at each event's step the donor's weights and the new values; "
        "replays that member's run",
    )
    loggers: list[str] = opt(
        ["tensorboard"],
        "where the metrics go besides metrics.csv: any of " + ", ".join(LOGGERS),
    )
    wandb_project: str = opt("pglab", "wandb: the project")
    wandb_mode: str = opt(
        "offline",
        "wandb: offline (files in the run folder only), online or disabled",
        Choice(("offline", "online", "disabled")),
    )
    mlflow_uri: str = opt(
        "", "mlflow: the tracking URI; empty = a file store in the run folder (mlruns/)"
    )
    preset: str = opt(
        "auto", "tuned settings for the env and algo: auto = use them if shipped, none = don't"
    )

    def __post_init__(self) -> None:
        _validate(self)

    def check(self) -> None:
        if not self.out:
            raise ConfigError("run.out must be a folder path; got ''")
        check_text(self.out, "run.out")
        if self.name:  # empty: named from the algorithm, seed and time
            safe_name(self.name, "run.name")
        if self.group:  # empty: named from the env id
            safe_name(self.group, "run.group")
        for name in self.loggers:
            if name not in LOGGERS:
                raise ConfigError(f"run.loggers must be some of {', '.join(LOGGERS)}; got {name!r}")
            if name in EXTRAS and importlib.util.find_spec(name) is None:
                raise ConfigError(
                    f"run.loggers {name} needs the package {name}: pip install "
                    f"'pglab[{EXTRAS[name]}]'"
                )
        if self.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise ConfigError(f"run.device must be cpu, cuda or cuda:N; got {self.device!r}")
        if self.preset not in ("auto", "none") and preset_path(self.preset) is None:
            raise ConfigError(
                f"run.preset must be auto, none or one of {', '.join(available_presets())}; "
                f"got {self.preset!r}"
            )


def _preset_file_name(env_id: str) -> str:
    return env_id.replace("/", "-").replace(":", "-")


def preset_path(name: str) -> Path | None:
    """The file of the preset ``<algo>/<env id>``, or None when it is not shipped."""
    algo, _, env_id = name.partition("/")
    path = PRESETS_DIR / algo / f"{_preset_file_name(env_id)}.toml"
    return path if env_id and path.is_file() else None


def available_presets() -> list[str]:
    """Every shipped preset, as ``<algo>/<env id>`` (with the file's suffix where an env
    has several, one per set of env kwargs: ``ppo/LunarLander-v3-continuous``)."""
    names = []
    for path in sorted(PRESETS_DIR.glob("*/*.toml")):
        env_id = load_toml(path).get("env", {}).get("id", path.stem)
        suffix = path.stem[len(_preset_file_name(env_id)) :]
        names.append(f"{path.parent.name}/{env_id}{suffix}")
    return names


SECTIONS: dict[str, type] = {
    "env": EnvConfig,
    "policy": PolicyConfig,
    "algo": AlgoConfig,
    "run": RunConfig,
}


@dataclass
class Config:
    """All options of a run."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.policy.shared and critic_apart(self.algo.name):
            raise ConfigError(
                f"policy.shared must be false for {self.algo.name} (its critic is trained "
                "apart from the policy); got true"
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (TOML- and checkpoint-safe)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> Config:
        """Build from a nested dict, rejecting unknown sections and keys."""
        return apply_values(cls(), _flatten(data, source), source)

    def resolve(self, reward_threshold: float | None) -> Config:
        """Replace ``auto`` values with concrete ones (given the env's reward threshold)."""
        run = self.run
        if run.stop_at_return == "auto":
            stop = "none" if reward_threshold is None else reward_threshold
            run = dataclasses.replace(run, stop_at_return=stop)
        if not run.group:
            group = safe_name(self.env.id.replace("/", "-").replace(":", "-"), "run.group")
            run = dataclasses.replace(run, group=group)
        return dataclasses.replace(self, algo=self.algo.resolve(), run=run)

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())


def option_fields() -> Iterable[tuple[str, dataclasses.Field, Any]]:
    """``(section.name, field, type)`` for every option, in declaration order."""
    for section, cls in SECTIONS.items():
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            yield f"{section}.{f.name}", f, hints[f.name]


def _all_keys() -> list[str]:
    return [key for key, _, _ in option_fields()]


#: Short names that name a section's main option, as the command line's flags do.
_ALIASES = {"algo": "algo.name", "env": "env.id", "steps": "run.total_steps"}


def qualify(key: str, source: str) -> str:
    """``section.name`` for a key written in full or by its unique short name."""
    keys = _all_keys()
    if key in keys:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    matches = [k for k in keys if k.split(".", 1)[1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(
            f"option {key!r} in {source} is ambiguous; write one of {', '.join(matches)}"
        )
    short = [k.split(".", 1)[1] for k in keys]
    close = difflib.get_close_matches(key, keys + short, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "see 'pglab train --help'"
    raise ConfigError(f"unknown option {key!r} in {source}; {hint}")


def _flatten(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, Mapping):
            for name, inner in value.items():
                flat[qualify(f"{key}.{name}", source)] = inner
        else:
            flat[qualify(key, source)] = value
    return flat


def apply_values(config: Config, values: Mapping[str, Any], source: str) -> Config:
    """A new config with ``{"section.name": value}`` applied and validated."""
    sections = {name: dataclasses.asdict(getattr(config, name)) for name in SECTIONS}
    for key, value in values.items():
        section, name = qualify(key, source).split(".", 1)
        sections[section][name] = value
    return Config(**{name: SECTIONS[name](**fields) for name, fields in sections.items()})


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value``; the value is read as TOML (``[8]``, ``0.01``, ``true``), else a string."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. --set lr=0.01); got {text!r}")
    if any(c in text for c in "\n\r"):
        raise ConfigError(f"--set takes one key=value on one line (no newline); got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return qualify(key, "--set"), value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; a missing or malformed file is a :class:`ConfigError`."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a folder, not a TOML file") from None
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None


def _preset_layers(config: Config) -> tuple[list[tuple[dict[str, Any], str]], str]:
    """The algorithm's defaults, then the env's tuned preset (when one is chosen).

    Also returns the preset's name (``none`` when there is none).
    """
    # the chosen algo and env first, so that every layer validates against them
    layers = [({"algo.name": config.algo.name, "env.id": config.env.id}, "flags")]
    algo_defaults = PRESETS_DIR / f"{config.algo.name}.toml"
    if algo_defaults.is_file():
        layers.append((_flatten(load_toml(algo_defaults), algo_defaults.name), algo_defaults.name))
    name = config.run.preset
    if name == "auto":
        name = matching_preset(config.algo.name, config.env.id, config.env.kwargs)
    path = preset_path(name) if name != "none" else None
    if path is not None:
        values = _flatten(load_toml(path), f"preset {name}")
        if values.pop("env.id", config.env.id) != config.env.id:  # borrowed by another env
            values.pop("env.kwargs", None)
        layers.append((values, f"preset {name}"))
        return layers, name
    return layers, "none"


def matching_preset(algo: str, env_id: str, kwargs: Mapping[str, Any]) -> str:
    """The shipped preset of ``algo`` tuned for ``env_id`` with exactly these env
    ``kwargs`` (a preset's ``[env] kwargs``, none when it has none), or ``none``.

    Where presets exist for the id but none for its kwargs (``LunarLander-v3`` with
    ``continuous = true`` and only the discrete one's preset), one warning line on
    stderr says that none applies.
    """
    tuned = []
    for path in sorted((PRESETS_DIR / algo).glob("*.toml")):
        env = load_toml(path).get("env", {})
        if env.get("id", path.stem) == env_id:
            if dict(env.get("kwargs", {})) == dict(kwargs):
                return f"{algo}/{env_id}{path.stem[len(_preset_file_name(env_id)) :]}"
            tuned.append(dict(env.get("kwargs", {})))
    if tuned and (algo, env_id, repr(kwargs)) not in _UNMATCHED:
        _UNMATCHED.add((algo, env_id, repr(kwargs)))
        print(
            f"pglab: warning: the {algo} presets for {env_id} are tuned for env.kwargs "
            f"{' or '.join(map(str, tuned))}, not {dict(kwargs)}; none is applied "
            "(run.preset names one to apply it anyway)",
            file=sys.stderr,
            flush=True,
        )
    return "none"


#: (algo, env id, kwargs) already warned about in this process: no preset matched.
_UNMATCHED: set[tuple[str, str, str]] = set()


def build_config(
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
    *,
    flags_source: str = "flags",
    base: Config | None = None,
) -> Config:
    """Defaults, presets, then a TOML file, then named flags, then ``key=value`` overrides.

    The env and algorithm (which pick the presets) are read from the user's layers
    first. With a ``base`` config the presets are not applied: ``base`` already
    holds a value for every option.
    """
    user: list[tuple[dict[str, Any], str]] = []
    if config_file is not None:
        user.append((_flatten(load_toml(config_file), str(config_file)), str(config_file)))
    if flags:
        given = {k: v for k, v in flags.items() if v is not None}
        user.append(({qualify(k, flags_source): v for k, v in given.items()}, flags_source))
    user.append((dict(parse_override(text) for text in overrides), "--set"))

    def apply(config: Config, layers: list[tuple[dict[str, Any], str]]) -> Config:
        for values, source in layers:
            if values:
                config = apply_values(config, values, source)
        return config

    if base is not None:
        return apply(base, user)
    chosen = apply(Config(), user)  # validates the user's values, names env and algo
    presets, name = _preset_layers(chosen)
    config = apply(Config(), [*presets, *user])
    return dataclasses.replace(config, run=dataclasses.replace(config.run, preset=name))


def resolve_device(name: str) -> Any:
    """The torch device for ``run.device``; a CUDA device that is not there is a ConfigError."""
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"run.device is {name!r} but PyTorch sees no CUDA device "
                f"(torch {torch.__version__}); use run.device=cpu"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"run.device is {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return torch.device(name)
