"""Making vector environments from a Gymnasium id or a ``package.module:Class`` path,
with the wrappers a config names (:mod:`pglab.envs.wrappers`).

Environments are always vectorised (N >= 1) and autoreset in Gymnasium's NEXT_STEP
mode. Where Gymnasium has a fast vectorised implementation (``vector_entry_point``,
for example CartPole) it is used; for CartPole, the leaner step of
:mod:`pglab.envs.cartpole`, which gives identical numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

from pglab.envs import cartpole, guard
from pglab.envs.objects import EnvObject, describe_env
from pglab.envs.scores import GameScore
from pglab.envs.spaces import ActionAdapter, ObsEncoder, check_spaces
from pglab.envs.wrappers import WrapperEntry, resolve_wrappers
from pglab.errors import ConfigError, EnvError

__all__ = [
    "ActionAdapter",
    "EnvObject",
    "ObsEncoder",
    "check_env_import",
    "check_spaces",
    "describe_env",
    "env_module",
    "import_path",
    "make_vec_env",
    "reward_threshold",
    "validate_env_id",
]

LINEWORLD_ID = "pglab/LineWorld-v0"

if LINEWORLD_ID not in gym.registry:
    gym.register(id=LINEWORLD_ID, entry_point="pglab.envs.lineworld:LineWorldEnv")

#: Namespaces that come from an optional extra, with the module that registers them.
_EXTRA_NAMESPACES = {"ALE": ("ale_py", "atari")}


@contextlib.contextmanager
def import_path(named: bool = False) -> Iterator[None]:
    """``sys.path`` for the imports pglab makes while it works with an env.

    The current directory (``''`` or its path, which ``python -m``, ``-c`` and the
    interactive interpreter put first) is left out, so that a file in the folder pglab
    runs in (a shared run folder, say) never stands in for an installed package. For a
    module the user ``named`` (the module of an env id given with ``--env`` or allowed
    with ``--allow-import``) the current directory is searched too, last.
    """
    here = os.getcwd()
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if p not in ("", ".", here)] + ([here] if named else [])
    try:
        yield
    finally:
        added = [p for p in sys.path if p not in saved and p != here]
        sys.path[:] = saved + added


def _load_namespace(env_id: str) -> None:
    namespace = env_id.split("/", 1)[0] if "/" in env_id else None
    if namespace not in _EXTRA_NAMESPACES:
        return
    module, extra = _EXTRA_NAMESPACES[namespace]
    try:
        with import_path():
            gym.register_envs(importlib.import_module(module))
    except ImportError:
        raise EnvError(
            f"env {env_id!r} needs the optional extra {extra!r}: pip install 'pglab[{extra}]'"
        ) from None


def env_module(env_id: str) -> str | None:
    """The module that the env id ``package.module:Class`` (or Gymnasium's
    ``module:EnvId``) imports; None for a registry id, which imports nothing new."""
    if ":" not in env_id:
        return None
    module_name, _, attr = env_id.partition(":")
    parts = module_name.split(".")
    if not attr or not all(part.isidentifier() for part in parts):
        raise EnvError(
            f"env {env_id!r} must be a Gymnasium id or package.module:Class (a module path "
            "and a name after the colon)"
        )
    return module_name


def check_env_import(env_id: str, allowed: Iterable[str], source: str) -> None:
    """Refuse an env id read from a file (``source``: a checkpoint, a run folder) when
    making it would import a module the user did not allow.

    ``allowed`` holds module names the user gave (``--allow-import``, or
    ``allow_import=`` in Python); a package allows its submodules. Registry ids pass.
    """
    module = env_module(env_id)
    if module is None or any(module == m or module.startswith(f"{m}.") for m in allowed):
        return
    raise EnvError(
        f"{source!r} names env {env_id!r}, which would import module {module!r}; pglab imports "
        f"no module named only in a file: if you trust it, pass --allow-import {module} "
        f"(in Python: allow_import=[{module!r}])"
    )


def entry_class(env_id: str) -> type[gym.Env] | None:
    """The class named by ``package.module:Class``, or None when ``env_id`` is a registry id.

    The module is imported as one the user named (see :func:`import_path`); callers
    that read the id from a file check it first with :func:`check_env_import`.
    """
    module_name = env_module(env_id)
    if module_name is None:
        return None
    attr = env_id.partition(":")[2]
    try:
        with import_path(named=True):
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise EnvError(f"env {env_id!r}: cannot import module {module_name!r} ({error})") from None
    except Exception as error:  # the module itself fails: report it, not a traceback
        reason = str(error).splitlines()[0] if str(error) else ""
        raise EnvError(
            f"env {env_id!r}: importing module {module_name!r} failed: "
            f"{type(error).__name__}{': ' + reason if reason else ''}"
        ) from None
    target = getattr(module, attr, None)
    if isinstance(target, type) and issubclass(target, gym.Env):
        return target
    if target is None and attr in gym.registry:
        return None  # Gymnasium's own "module:EnvId" form: the import registered it
    raise EnvError(f"env {env_id!r}: {attr!r} in {module_name!r} is not a gymnasium.Env class")


def validate_env_id(env_id: str) -> None:
    """Raise :class:`EnvError` naming the closest registered ids when ``env_id`` is unknown."""
    if entry_class(env_id) is not None:
        return
    _load_namespace(env_id)
    name = env_id.split(":", 1)[1] if ":" in env_id else env_id
    if name in gym.registry:
        return
    close = difflib.get_close_matches(name, list(gym.registry), n=5, cutoff=0.5)
    hint = (
        f"closest registered ids: {', '.join(close)}"
        if close
        else "see gymnasium.pprint_registry()"
    )
    raise EnvError(f"unknown env {env_id!r}; {hint}")


def reward_threshold(env_id: str) -> float | None:
    """The env's registered reward threshold (the return that counts as solved), if any."""
    if ":" in env_id and entry_class(env_id) is not None:
        return None
    name = env_id.split(":", 1)[1] if ":" in env_id else env_id
    spec = gym.registry.get(name)
    return None if spec is None or spec.reward_threshold is None else float(spec.reward_threshold)


#: Gymnasium env packages that need an optional extra of pglab.
_EXTRA_ENTRY_POINTS = {"gymnasium.envs.box2d": "box2d", "gymnasium.envs.mujoco": "mujoco"}


def missing_extra_message(env_id: str, error: Exception) -> str:
    """The one line for an env whose package is missing: the pglab extra that installs it
    (``pip install 'pglab[box2d]'``) where one does, else the import error's first line."""
    spec = gym.registry.get(env_id.split(":", 1)[-1])
    entry = str(spec.entry_point) if spec is not None else ""
    for prefix, extra in _EXTRA_ENTRY_POINTS.items():
        if entry.startswith(prefix):
            return (
                f"env {env_id!r} needs the optional extra {extra!r}: pip install 'pglab[{extra}]'"
            )
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"env {env_id!r} needs a package that is not installed: {first_line}"


#: Evaluation runs one env per episode, up to this many at once: a vector step costs
#: about the same for 16 or 32 small envs, so 20 episodes in 20 envs take half the
#: steps of 20 episodes in 16.
MAX_EVAL_ENVS = 32


def eval_num_envs(episodes: int, num_envs: int = 0) -> int:
    """Parallel envs for evaluating ``episodes`` episodes: ``num_envs`` when given,
    else one per episode up to :data:`MAX_EVAL_ENVS`."""
    return num_envs or min(episodes, MAX_EVAL_ENVS)


def make_vec_env(
    env_id: str,
    num_envs: int,
    env_kwargs: dict[str, Any] | None = None,
    preprocess: str = "none",
    *,
    max_episode_steps: int | str = "auto",
    check: bool = True,
    wrappers: Sequence[WrapperEntry] = (),
    maker: Callable[[], gym.Env] | None = None,
    limited: bool = False,
    evaluation: bool = False,
    frame_stack: int = 1,
    backend: str = "gymnasium",
) -> VectorEnv:
    """``num_envs`` copies of ``env_id`` as one vector env (NEXT_STEP autoreset).

    Uses Gymnasium's ``vector_entry_point`` when the env has one, else a synchronous
    vector env; ``backend="async"`` steps each copy in a process of its own (Gymnasium's
    ``AsyncVectorEnv``, started as the platform starts processes: the same copies, the
    same numbers); ``backend="envpool"``: envpool's C++ threads (:mod:`pglab.envs.pool`). ``preprocess`` (``pong`` or ``atari``, see :mod:`pglab.envs.atari`)
    wraps each copy. Seeding happens at ``reset(seed=...)``. Raises
    :class:`EnvError` for unknown ids, bad keyword arguments and unsupported spaces.

    ``max_episode_steps`` and ``check`` are ``env.max_episode_steps`` and ``env.check``:
    the episode-length cap and Gymnasium's env checker for a user's own env;
    ``wrappers`` is ``env.wrappers`` (see :mod:`pglab.envs.wrappers`), applied to every
    copy after the preprocessing, then ``frame_stack`` > 1 stacks that many
    observations (``env.frame_stack``). ``maker`` makes each copy instead of ``env_id`` (an
    env given as an object, see :mod:`pglab.envs.objects`; ``env_id`` then only names
    it, and ``limited`` says its copies have a time limit of their own). Envs for
    ``evaluation`` report the game's own score (see :mod:`pglab.envs.scores`; ALE's
    vector env is made without its reward clipping). Every env
    but pglab's own vector env is guarded: a broken ``reset`` or ``step`` raises
    :class:`~pglab.errors.EnvFaultError` (see :mod:`pglab.envs.guard`).
    """
    kwargs = dict(env_kwargs or {})
    if maker is not None and kwargs:
        raise ConfigError(
            f"env.kwargs {kwargs} apply to an env made by id; env {env_id!r} is a Python "
            "object, made by its own code (give it its arguments there)"
        )
    if backend == "envpool":
        from pglab.envs.pool import ATARI_OPTIONS, EnvPool, check_envpool_env, envpool_name

        if maker is not None:
            raise ConfigError(
                f"env.backend = envpool makes envs by id; env {env_id!r} is a Python object"
            )
        plain = not wrappers and frame_stack == 1
        atari = check_envpool_env(env_id, kwargs, preprocess, plain)
        options = dict(ATARI_OPTIONS) if atari else {}
        if isinstance(max_episode_steps, int):  # an ALE id's steps are frames; envpool's, 4
            skip = options.get("frame_skip", 1)
            options["max_episode_steps"] = -(-max_episode_steps // skip)
        envs = EnvPool(envpool_name(env_id), num_envs, options, score=atari)
        check_vector_env(envs, env_id)
        return guard.GuardedVectorEnv(envs, env_id, copies_checked=False)
    if maker is None:
        validate_env_id(env_id)
    wrap: list[Callable[[gym.Env], gym.Env]] = []
    if preprocess != "none":
        from pglab.envs.atari import PREPROCESSORS

        wrapper, needed = PREPROCESSORS[preprocess]
        wrap, kwargs = [wrapper], {**needed, **kwargs}
    wrap += resolve_wrappers(wrappers)
    if frame_stack > 1:
        wrap.append(lambda env: gym.wrappers.FrameStackObservation(env, frame_stack))
    if wrap:  # rewards may change above this: keep the game's own score
        wrap.insert(0, GameScore)
    env_class: Callable[..., gym.Env] | None = maker or entry_class(env_id)
    spec = None if env_class is not None else gym.spec(env_id.split(":", 1)[-1])
    if evaluation and spec is not None and not wrap and _is_ale_vector(spec):
        kwargs = {**kwargs, "reward_clipping": False}
    if maker is not None and limited and max_episode_steps == "auto":
        cap = None
    else:
        cap = guard.episode_cap(env_id, spec, kwargs, max_episode_steps)
    try:
        with import_path():
            if check and (maker is not None or guard.is_user_env(env_id)):
                guard.check_user_env(
                    env_id, kwargs, lambda: _one(env_class, spec, kwargs, wrap), wrappers
                )
            envs, fast = _make(env_class, spec, num_envs, kwargs, wrap, cap, backend)
    except gym.error.DependencyNotInstalled as error:
        raise EnvError(missing_extra_message(env_id, error)) from None
    except ImportError as error:  # an entry point's module that is not installed
        raise EnvError(
            f"env {env_id!r} needs module {error.name or str(error)!r}, which is not installed; "
            "pglab does not import it from the current folder (import it yourself first)"
        ) from None
    except (TypeError, ValueError, gym.error.Error) as error:
        raise EnvError(f"env {env_id!r} rejected its options {kwargs}: {error}") from None
    check_vector_env(envs, env_id)
    if cap is not None and max_episode_steps == "auto":
        guard.warn_default_cap(env_id)
    if isinstance(envs, cartpole.CartPoleVectorEnv):  # pglab's own: known to be well formed
        return envs
    return guard.GuardedVectorEnv(envs, env_id, copies_checked=not fast)


def _is_ale_vector(spec: Any) -> bool:
    """Whether ``spec`` makes its vector env with ale-py's own (which clips rewards)."""
    return str(spec.vector_entry_point or "").startswith("ale_py")


def check_vector_env(envs: VectorEnv, env_id: str) -> None:
    """Raise :class:`EnvError` (closing ``envs``) unless it autoresets in NEXT_STEP mode
    and its spaces are supported."""
    autoreset = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if autoreset != AutoresetMode.NEXT_STEP:
        envs.close()
        raise EnvError(f"env {env_id!r} autoresets in {autoreset} mode; pglab needs NEXT_STEP")
    try:
        check_spaces(env_id, envs.single_observation_space, envs.single_action_space)
    except EnvError:
        envs.close()
        raise


def make_configured_env(
    env: Any, num_envs: int, given: EnvObject | None = None, evaluation: bool = False
) -> VectorEnv:
    """:func:`make_vec_env` with the options of an env config (``pglab.config.EnvConfig``:
    its id, kwargs, wrappers, preprocessing, episode cap and env check).

    An env given as an object (``env.object`` set) needs that object, ``given``: a
    vector env trains as it is (and is not closed by pglab); ``evaluation`` envs are
    always copies.
    """
    if env.object and given is None:
        raise EnvError(
            f"env {env.id!r} was given as a Python object ({env.object}); no file can make "
            "it: pass it again (pglab.resume(path, env=...), pglab.evaluate(agent, env))"
        )
    if given is not None and given.vector is not None and not evaluation:
        check_vector_env(given.vector, env.id)
        return guard.GuardedVectorEnv(Borrowed(given.vector), env.id, copies_checked=False)
    if given is not None and given.make is None:
        raise EnvError(
            f"{given.description} cannot be copied for evaluation (it has no registered "
            "spec): pass a zero-argument callable that makes one env instead (with "
            "num_envs=...), or a vector env made by gymnasium.make_vec"
        )
    return make_vec_env(
        env.id,
        num_envs,
        env.kwargs,
        env.preprocess,
        max_episode_steps=env.max_episode_steps,
        check=env.check,
        wrappers=env.wrappers,
        maker=None if given is None else given.make,
        limited=given is not None and given.limited,
        evaluation=evaluation,
        frame_stack=env.frame_stack,
        backend=env.backend,
    )


class Borrowed(gym.vector.VectorWrapper):
    """A user's vector env that pglab trains on but did not make: closing leaves it open."""

    def close(self, **kwargs: Any) -> None:
        pass


def _one(
    env_class: Callable[..., gym.Env] | None,
    spec: Any,
    kwargs: dict[str, Any],
    wrap: Sequence[Callable[[gym.Env], gym.Env]],
) -> gym.Env:
    """One copy of the env with its wrappers (for the env check)."""
    env = env_class(**kwargs) if env_class is not None else gym.make(spec, **kwargs)
    for wrapper in wrap:
        env = wrapper(env)
    return env


def _copy(
    env_class: Callable[..., gym.Env] | None,
    spec: Any,
    kwargs: dict[str, Any],
    wrappers: Sequence[Callable[[gym.Env], gym.Env]],
    cap: int | None,
    index: int,
) -> gym.Env:
    """Copy ``index`` of the env: made, guarded, capped at ``cap`` steps, wrapped."""
    if env_class is not None:
        env: gym.Env = guard.CheckedEnv(env_class(**kwargs), index)
        if cap is not None:
            env = gym.wrappers.TimeLimit(env, cap)
    else:
        if cap is not None:
            spec = dataclasses.replace(spec, max_episode_steps=cap)
        env = guard.CheckedEnv(gym.make(spec, **kwargs), index)
    for wrap in wrappers:
        env = wrap(env)
    return env


def _make(
    env_class: Callable[..., gym.Env] | None,
    spec: Any,
    num_envs: int,
    kwargs: dict[str, Any],
    wrappers: list,
    cap: int | None,
    backend: str = "gymnasium",
) -> tuple[VectorEnv, bool]:
    """The vector env itself (the class's copies, or Gymnasium's make_vec for a registry
    id), every copy guarded and capped at ``cap`` steps; and whether it is a vector
    entry point (whose copies the guard cannot wrap one by one). ``backend`` ``async``:
    each copy in a process of its own."""
    if backend == "async":
        makers = [
            functools.partial(_copy, env_class, spec, kwargs, wrappers, cap, i)
            for i in range(num_envs)
        ]
        return AsyncVectorEnv(makers), False
    copies = iter(range(num_envs))
    if env_class is not None:

        def make_one() -> gym.Env:
            return _copy(env_class, spec, kwargs, wrappers, cap, next(copies))

        return SyncVectorEnv([make_one for _ in range(num_envs)]), False
    if cap is not None:
        spec = dataclasses.replace(spec, max_episode_steps=cap)
    fast = spec.vector_entry_point is not None and not wrappers
    if not fast:
        wrappers = [lambda env: guard.CheckedEnv(env, next(copies)), *wrappers]
    if spec.vector_entry_point == cartpole.GYMNASIUM_ENTRY_POINT:
        spec = dataclasses.replace(spec, vector_entry_point=cartpole.ENTRY_POINT)
    envs = gym.make_vec(
        spec,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point" if fast else "sync",
        wrappers=wrappers or None,
        **kwargs,
    )
    return envs, fast
