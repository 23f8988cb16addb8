"""Envs given to the Python API as objects rather than by id.

:func:`pglab.train` (and :func:`~pglab.resume`, :func:`~pglab.evaluate`) take an env
in any of the forms Gymnasium users hold one:

* an id, ``package.module:Class`` or ``module:EnvId`` string (the config's ``env.id``);
* an env made by ``gymnasium.make``: its spec says everything (id, keyword arguments,
  wrappers that record their arguments, time limit), so :func:`describe_env` turns it
  into config values and the run is an ordinary one that resumes, loads and
  evaluates from its folder alone (the object itself is neither used nor closed);
* a ``gymnasium.Env`` class, by its import path when it has one;
* anything else (an env built without ``gymnasium.make``, a zero-argument callable
  that makes one, a ``gymnasium.vector.VectorEnv``) stays an object of this process
  (:class:`EnvObject`): copies come from calling the callable (for an env,
  ``copy.deepcopy``; for a vector env, its spec, for evaluation), the config's
  ``env.object`` says what it was, and resuming or evaluating the run needs the
  object passed again.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import gymnasium as gym
from gymnasium.vector import VectorEnv

from pglab.errors import ConfigError, EnvError

#: What :func:`pglab.train` accepts as an env, in words (for messages).
ENV_FORMS = (
    "a Gymnasium id or package.module:Class string, a gymnasium.Env, a gymnasium.Env "
    "class, a zero-argument callable that returns a gymnasium.Env, or a "
    "gymnasium.vector.VectorEnv"
)


@dataclasses.dataclass
class EnvObject:
    """An env that only a Python object describes.

    ``make`` returns a new copy (None for a vector env that cannot be copied);
    ``vector`` is a vector env to train on as it is; ``limited`` says whether a copy
    already ends its episodes by a time limit of its own.
    """

    description: str
    make: Callable[[], gym.Env] | None
    vector: VectorEnv | None = None
    limited: bool = False


def describe_env(env: Any) -> tuple[dict[str, Any], EnvObject | None]:
    """Config values (``env.id`` and whatever else describes ``env``) and, when no config
    can describe it, the :class:`EnvObject` the run needs; see the module docstring."""
    if isinstance(env, str):
        return {"env.id": env}, None
    if isinstance(env, VectorEnv):
        return _vector(env)
    if isinstance(env, gym.Env):
        values = spec_values(env.spec)
        if values is not None:
            return values, None
        return _instance(env)
    if isinstance(env, type) and issubclass(env, gym.Env):
        module = getattr(env, "__module__", "")
        if module and module != "__main__" and "<" not in env.__qualname__:
            return {"env.id": f"{module}:{env.__qualname__}"}, None
    if callable(env):
        return _callable(env)
    raise ConfigError(f"env must be {ENV_FORMS}; got {type(env).__name__} {env!r:.80}")


def spec_values(spec: gym.envs.registration.EnvSpec | None) -> dict[str, Any] | None:
    """The config values that make an env like the one ``spec`` describes (its id, the
    keyword arguments that differ from its registration, its wrappers, its time limit);
    None when the spec cannot say it (no registered id, a wrapper that does not record
    its arguments, arguments a config file cannot hold)."""
    import tomli_w

    if spec is None or spec.id not in gym.registry:
        return None
    registered = gym.registry[spec.id]
    kwargs = {
        key: value
        for key, value in spec.kwargs.items()
        if key != "render_mode" and registered.kwargs.get(key, _MISSING) != value
    }
    wrappers = []
    for wrapper in spec.additional_wrappers:
        if wrapper.kwargs is None or not isinstance(wrapper.entry_point, str):
            return None
        wrappers.append({"name": wrapper.entry_point, "kwargs": dict(wrapper.kwargs)})
    try:
        tomli_w.dumps({"kwargs": kwargs, "wrappers": wrappers})
    except (TypeError, ValueError):
        return None
    values: dict[str, Any] = {"env.id": spec.id}
    if kwargs:
        values["env.kwargs"] = kwargs
    if wrappers:
        values["env.wrappers"] = wrappers
    if (
        spec.max_episode_steps is not None
        and spec.max_episode_steps != registered.max_episode_steps
    ):
        values["env.max_episode_steps"] = spec.max_episode_steps
    return values


_MISSING = object()
#: What ``gymnasium.make_vec`` records in a vector env's spec beside the env's own kwargs.
_VECTOR_ONLY = {"num_envs", "vectorization_mode", "vector_kwargs", "wrappers", "render_mode"}


def _name(obj: Any) -> str:
    kind = (
        obj
        if isinstance(obj, type) or (callable(obj) and not isinstance(obj, gym.Env))
        else type(obj)
    )
    module = getattr(kind, "__module__", None) or "?"
    return f"{module}.{getattr(kind, '__qualname__', type(kind).__name__)}"


def _label(env: gym.Env | VectorEnv | None, fallback: str) -> str:
    """The run's ``env.id`` for an object: its registered id when it has one (presets
    and the solved threshold then apply), else the name of its class."""
    spec = getattr(env, "spec", None)
    if spec is not None and spec.id in gym.registry:
        return spec.id
    return fallback


def _has_time_limit(env: gym.Env) -> bool:
    spec = env.spec
    if spec is not None and spec.max_episode_steps is not None:
        return True
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return True
        env = env.env
    return False


def _instance(env: gym.Env) -> tuple[dict[str, Any], EnvObject]:
    try:
        copy.deepcopy(env)
    except Exception as error:
        raise EnvError(
            f"env object {_name(env)} cannot be copied (copy.deepcopy: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); pglab makes one copy per "
            "parallel env and for evaluation: pass a zero-argument callable that makes one "
            "(lambda: MyEnv(...))"
        ) from None
    name = _name(env)
    obj = EnvObject(f"env {name}", lambda: copy.deepcopy(env), limited=_has_time_limit(env))
    return {"env.id": _label(env, type(env).__name__), "env.object": obj.description}, obj


def _callable(make: Callable[[], Any]) -> tuple[dict[str, Any], EnvObject]:
    name = _name(make)
    try:
        probe = make()
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else ""
        raise EnvError(
            f"env callable {name} failed when called with no arguments: "
            f"{type(error).__name__}{': ' + reason if reason else ''}"
        ) from None
    if not isinstance(probe, gym.Env):
        raise EnvError(
            f"env callable {name} must return a gymnasium.Env; it returned {type(probe).__name__}"
        )
    label = _label(probe, type(probe.unwrapped).__name__)
    obj = EnvObject(f"callable {name}", make, limited=_has_time_limit(probe))
    probe.close()
    return {"env.id": label, "env.object": obj.description}, obj


def _vector(envs: VectorEnv) -> tuple[dict[str, Any], EnvObject]:
    spec = envs.spec
    make, limited = None, False
    if spec is not None and spec.id in gym.registry:
        kwargs = {k: v for k, v in spec.kwargs.items() if k not in _VECTOR_ONLY}
        make = lambda: gym.make(spec.id, **kwargs)  # noqa: E731 (copies for evaluation)
        limited = gym.registry[spec.id].max_episode_steps is not None
    name = f"vector env {_name(envs)} of {envs.num_envs}"
    obj = EnvObject(name, make, vector=envs, limited=limited)
    label = _label(envs, type(envs).__name__)
    return {"env.id": label, "env.object": name, "env.num_envs": envs.num_envs}, obj
