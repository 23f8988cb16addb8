"""Wrappers named in a config (``env.wrappers``), applied in order to every copy of the env.

An entry is a wrapper class by its import path, ``package.module.Name`` or
``package.module:Name``, or a table ``{name = "...", kwargs = {...}}`` for one that
takes arguments::

    [env]
    id = "MiniGrid-Empty-5x5-v0"
    wrappers = ["minigrid.wrappers:ImgObsWrapper",
                {name = "gymnasium.wrappers.FrameStackObservation", kwargs = {stack_size = 2}}]

Wrappers from Gymnasium and pglab import freely; a wrapper from any other module, when
read from a file (a checkpoint, a run folder), is refused unless the user allows that
module (``--allow-import``), as for a ``package.module:Class`` env id.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import gymnasium as gym

from pglab.errors import ConfigError, EnvError

#: Packages whose wrappers are imported without being allowed: pglab has imported them.
TRUSTED_PACKAGES = ("gymnasium", "pglab")

#: One wrapper of ``env.wrappers`` once checked: its import path and keyword arguments.
WrapperEntry = dict[str, Any]


def parse_wrappers(value: Any, key: str = "env.wrappers") -> list[WrapperEntry]:
    """``value`` as ``env.wrappers``: a list of import paths or ``{name, kwargs}`` tables,
    each returned as ``{"name": path, "kwargs": {...}}``; anything else is a
    :class:`~pglab.errors.ConfigError` naming ``key``."""
    expected = (
        f"{key} must be a list of wrapper import paths (package.module.Name) or tables "
        '{name = "package.module.Name", kwargs = {...}}'
    )
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{expected}; got {value!r}")
    entries = []
    for item in value:
        if isinstance(item, str):
            name, kwargs = item, {}
        elif isinstance(item, dict) and set(item) <= {"name", "kwargs"} and "name" in item:
            name, kwargs = item["name"], item.get("kwargs", {})
        else:
            raise ConfigError(f"{expected}; got {item!r}")
        if not isinstance(name, str) or wrapper_module(name) is None:
            raise ConfigError(f"{expected}; got name {name!r}")
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ConfigError(f"{key}: the kwargs of {name!r} must be a table; got {kwargs!r}")
        entries.append({"name": name, "kwargs": dict(kwargs)})
    return entries


def wrapper_module(name: str) -> str | None:
    """The module an import path names (``a.b:C`` and ``a.b.C`` both give ``a.b``);
    None when ``name`` is not an import path."""
    module, colon, attr = name.partition(":")
    if not colon:
        module, _, attr = name.rpartition(".")
    parts = module.split(".")
    if not module or not attr.isidentifier() or not all(p.isidentifier() for p in parts):
        return None
    return module


def check_import(
    name: str, what: str, allowed: Iterable[str], source: str, error: type = EnvError
) -> None:
    """Refuse the import path ``name`` (a wrapper, a network class: ``what``) read from
    a file (``source``) when its module is neither trusted (:data:`TRUSTED_PACKAGES`) nor
    in ``allowed`` (a package allows its submodules)."""
    module = wrapper_module(name) or ""
    if any(module == m or module.startswith(f"{m}.") for m in (*TRUSTED_PACKAGES, *allowed)):
        return
    raise error(
        f"{source!r} names {what} {name!r}, which would import module {module!r}; pglab "
        f"imports no module named only in a file: if you trust it, pass --allow-import "
        f"{module} (in Python: allow_import=[{module!r}])"
    )


def check_wrapper_imports(
    wrappers: Iterable[WrapperEntry], allowed: Iterable[str], source: str
) -> None:
    """Refuse wrappers read from a file (``source``) whose module is neither trusted
    (:data:`TRUSTED_PACKAGES`) nor in ``allowed`` (a package allows its submodules)."""
    for entry in wrappers:
        check_import(entry["name"], "wrapper", allowed, source)


def import_named(name: str, what: str, error: type = EnvError) -> Any:
    """The object the import path ``name`` names (``what`` it is, for messages); a
    module that cannot be imported or a missing name is one ``error`` line."""
    from pglab.envs import import_path

    module_name = wrapper_module(name) or ""
    attr = name.rpartition(":")[2] if ":" in name else name.rpartition(".")[2]
    try:
        with import_path(named=True):
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{what} {name!r}: cannot import module {module_name!r} ({exc})") from None
    target = getattr(module, attr, None)
    if target is None:
        raise error(f"{what} {name!r}: module {module_name!r} has no {attr!r}")
    return target


def resolve_wrappers(
    wrappers: Iterable[WrapperEntry],
) -> list[Callable[[gym.Env], gym.Env]]:
    """The wrappers as functions from an env to the wrapped env, in order; a wrapper
    that cannot be imported, or is not a ``gymnasium.Wrapper`` class, is an
    :class:`~pglab.errors.EnvError` naming it."""
    resolved = []
    for entry in wrappers:
        name, kwargs = entry["name"], entry["kwargs"]
        target = import_named(name, "wrapper")
        if not (isinstance(target, type) and issubclass(target, gym.Wrapper)):
            raise EnvError(f"wrapper {name!r} is not a gymnasium.Wrapper class")
        resolved.append(_bind(target, kwargs, name))
    return resolved


def _bind(wrapper: type[gym.Wrapper], kwargs: dict[str, Any], name: str) -> Callable:
    def wrap(env: gym.Env) -> gym.Env:
        try:
            return wrapper(env, **kwargs)
        except (TypeError, ValueError, gym.error.Error) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise EnvError(f"wrapper {name!r} with kwargs {kwargs} failed: {reason}") from None

    return wrap
