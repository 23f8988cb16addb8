"""Every option of a run, as typed dataclasses validated on construction.

A run is configured by four sections: ``env``, ``policy``, ``algo`` and ``run``.
Values come, from lowest to highest precedence, from the defaults below, a TOML file
(``--config``), the command line's named flags, and ``--set key=value`` overrides.
A key is written ``section.name`` or, when the name is unique, just ``name``.

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
import math
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pglab.errors import ConfigError
from pglab.nets import ACTIVATIONS
from pglab.policies import HEADS
from pglab.returns import CRITIC_WEIGHTS, WEIGHT_KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The learning rules ``algo.name`` may name.
ALGOS: tuple[str, ...] = ("reinforce",)
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "rmsprop")
LR_SCHEDULES: tuple[str, ...] = ("constant", "linear")
BATCH_MODES: tuple[str, ...] = ("auto", "episodes", "steps")
PROGRESS: tuple[str, ...] = ("auto", "bar", "plain", "off")


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
    else:  # list[int]
        ok = isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        )
        value = list(value) if ok else value
    if not ok:
        raise ConfigError(f"{key} must be {_type_name(typ)}; got {value!r}")
    return value


def _validate(section: Any) -> None:
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        key = f"{section.SECTION}.{f.name}"
        typ = hints[f.name]
        value = getattr(section, f.name)
        if f.name == "stop_at_return":  # a number, or "auto" / "none"
            value = _stop_at_return(value, key)
        else:
            value = _coerce(value, typ, key)
        rule = f.metadata.get("rule")
        if isinstance(rule, Range) and not rule.ok(value):
            raise ConfigError(f"{key} must be {_type_name(typ)} {rule.describe()}; got {value!r}")
        if isinstance(rule, Choice) and value not in rule.values:
            raise ConfigError(f"{key} must be {rule.describe()}; got {value!r}")
        object.__setattr__(section, f.name, value)
    checker: Callable[[], None] | None = getattr(section, "check", None)
    if checker is not None:
        checker()


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
    eval_num_envs: int = opt(0, "parallel envs for evaluation; 0 = auto", NON_NEGATIVE)
    kwargs: dict = opt({}, "keyword arguments passed to the env constructor")

    def __post_init__(self) -> None:
        _validate(self)


@dataclass
class PolicyConfig:
    """The actor and critic networks."""

    SECTION: typing.ClassVar[str] = "policy"

    hidden: list[int] = opt([64, 64], "actor hidden layer sizes; [] = linear policy")
    activation: str = opt("tanh", "hidden activation", Choice(tuple(ACTIVATIONS)))
    dropout: float = opt(
        0.0, "dropout after each actor hidden layer (training only)", Range(0, 1, high_open=True)
    )
    head: str = opt("auto", "action distribution", Choice(HEADS))
    log_std_init: float = opt(0.0, "initial log std of the Gaussian head", Range())
    value_hidden: list[int] = opt([64, 64], "critic hidden layer sizes")

    def __post_init__(self) -> None:
        _validate(self)


@dataclass
class AlgoConfig:
    """The learning rule and its hyperparameters."""

    SECTION: typing.ClassVar[str] = "algo"

    name: str = opt("reinforce", "learning rule", Choice(ALGOS))
    weights: str = opt("gae", "policy-gradient weights Psi_t", Choice(WEIGHT_KINDS))
    lr: float = opt(0.003, "policy learning rate", POSITIVE)
    gamma: float = opt(0.99, "discount factor", UNIT)
    lam: float = opt(0.95, "GAE lambda", UNIT)
    batch_mode: str = opt(
        "auto",
        "fill batches with complete episodes or a fixed number of "
        "steps; auto = episodes for r/fr/dfr, steps for critic weights",
        Choice(BATCH_MODES),
    )
    batch_size: int = opt(0, "episodes (or steps, over all envs) per batch; 0 = auto", NON_NEGATIVE)
    normalize_weights: bool = opt(True, "standardise the weights over each batch")
    entropy_coef: float = opt(0.0, "entropy bonus coefficient", NON_NEGATIVE)
    max_grad_norm: float = opt(0.0, "clip the global gradient norm; 0 = no clipping", NON_NEGATIVE)
    weight_decay: float = opt(0.0, "L2 weight decay of the policy optimizer", NON_NEGATIVE)
    lr_schedule: str = opt(
        "constant", "learning-rate schedule (linear decays to 0)", Choice(LR_SCHEDULES)
    )
    optimizer: str = opt("adam", "optimizer of policy and critic", Choice(OPTIMIZERS))
    value_lr: float = opt(0.01, "critic learning rate", POSITIVE)
    value_epochs: int = opt(25, "critic gradient steps on each batch", Range(1, None))
    value_reset_optimizer: bool = opt(False, "re-create the critic optimizer every batch")

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def uses_critic(self) -> bool:
        return self.weights in CRITIC_WEIGHTS

    def resolve(self) -> AlgoConfig:
        mode = self.batch_mode
        if mode == "auto":
            mode = "steps" if self.uses_critic else "episodes"
        size = self.batch_size or (2048 if mode == "steps" else 20)
        return dataclasses.replace(self, batch_mode=mode, batch_size=size)


@dataclass
class RunConfig:
    """Seeds, budget, evaluation, output."""

    SECTION: typing.ClassVar[str] = "run"

    seed: int = opt(0, "random seed of the run", NON_NEGATIVE)
    total_steps: int = opt(200_000, "environment steps to train for", Range(1, None))
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
    threads: int = opt(1, "torch CPU threads", Range(1, None))
    progress: str = opt("auto", "progress display (auto: a bar on a terminal)", Choice(PROGRESS))

    def __post_init__(self) -> None:
        _validate(self)


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
            run = dataclasses.replace(run, group=self.env.id.replace("/", "-").replace(":", "-"))
        return dataclasses.replace(self, algo=self.algo.resolve(), run=run)

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())


def option_fields() -> Iterable[tuple[str, dataclasses.Field, Any]]:
    """``(section.name, field, type)`` for every option, in declaration order."""
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield f"{section}.{f.name}", f, hints[f.name]


def _all_keys() -> list[str]:
    return [key for key, _, _ in option_fields()]


def qualify(key: str, source: str) -> str:
    """``section.name`` for a key written in full or by its unique short name."""
    keys = _all_keys()
    if key in keys:
        return key
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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None


def build_config(
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> Config:
    """Defaults, then a TOML file, then named flags, then ``key=value`` overrides."""
    config = Config()
    if config_file is not None:
        config = Config.from_dict(load_toml(config_file), source=str(config_file))
    if flags:
        config = apply_values(config, {k: v for k, v in flags.items() if v is not None}, "flags")
    parsed = dict(parse_override(text) for text in overrides)
    return apply_values(config, parsed, "--set") if parsed else config
