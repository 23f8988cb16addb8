"""Guards around environments that pglab did not write: broken envs become one-line errors.

Three defences, all applied by :func:`pglab.envs.make_vec_env`:

* **An episode-length cap** (``env.max_episode_steps``). An env with no time limit of
  its own may never end an episode, and a batch of complete episodes would then grow
  without bound. ``auto`` keeps the env's own limit (a registered ``TimeLimit``, ALE's
  frame limit, or a ``max_episode_steps`` keyword argument) and otherwise cuts episodes
  at :data:`DEFAULT_EPISODE_CAP` steps, with one warning line. The cut is Gymnasium's own
  :class:`~gymnasium.wrappers.TimeLimit`: a truncation, from whose final observation
  the estimators bootstrap.
* **A check of every call** (:class:`CheckedEnv` around each copy of the env,
  :class:`GuardedVectorEnv` around the vector env). A ``reset`` or ``step`` that
  raises, returns the pre-Gymnasium-0.26 4-tuple, an observation of the wrong shape
  or dtype, ``None``, a non-numeric, non-finite or absurd (``|x| > 1e20``) reward or
  observation raises :class:`~pglab.errors.EnvFaultError`: one line naming the env,
  the call, the env step, the quantity and the offending value, and the original
  traceback (or the full values) in its ``details``.
* **Gymnasium's env checker** (``env.check``), run once per process on one instance of
  a user's own env (a ``module:Class`` or ``module:EnvId`` id outside Gymnasium, ALE
  and pglab); a failure is an :class:`~pglab.errors.EnvError` (the user's env to fix).

The per-step cost is a few type checks per copy in Python and one numpy call per vector
step (the observations' sum of squares, finite and small unless a value is not). pglab's
own vector env (:class:`~pglab.envs.cartpole.CartPoleVectorEnv`) is known to be well
formed and runs unguarded, at full speed.
"""

from __future__ import annotations

import contextlib
import math
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import VectorEnv, VectorWrapper

from pglab.envs.spaces import check_spaces
from pglab.errors import ConfigError, EnvError, EnvFaultError

__all__ = [
    "ABSURD",
    "DEFAULT_EPISODE_CAP",
    "CheckedEnv",
    "GuardedVectorEnv",
    "check_user_env",
    "episode_cap",
    "is_user_env",
    "parse_max_episode_steps",
    "warn_default_cap",
]

#: Observations and rewards beyond this magnitude are treated as broken, like NaN.
ABSURD = 1e20
#: The episode-length cap of ``env.max_episode_steps = "auto"`` for envs without a limit.
DEFAULT_EPISODE_CAP = 10_000
#: Packages whose envs are not checked by Gymnasium's env checker (known, or costly).
_KNOWN_PACKAGES = ("gymnasium", "ale_py", "pglab")
#: Types a reward may have without a closer look (the common ones).
_PLAIN_NUMBERS = frozenset({float, int, np.float64, np.float32, np.int64, np.int32})
_FLAGS = ("terminated", "truncated")
_PRE_026 = "the env uses the pre-Gymnasium-0.26 API and must return"

_warned_caps: set[str] = set()
_checked: set[str] = set()


# ---------------------------------------------------------------- the episode cap


def parse_max_episode_steps(value: Any, key: str = "env.max_episode_steps") -> int | str:
    """``value`` as ``env.max_episode_steps``: an integer >= 1, or ``auto``; anything
    else is a :class:`~pglab.errors.ConfigError` naming ``key``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(
        f"{key} must be an integer >= 1 or 'auto' (the env's own time limit, else "
        f"{DEFAULT_EPISODE_CAP} steps); got {value!r}"
    )


def episode_cap(
    env_id: str, spec: EnvSpec | None, kwargs: dict[str, Any], max_episode_steps: int | str
) -> int | None:
    """The episode-length cap to apply to ``env_id``; None keeps the env's own limit.

    ``max_episode_steps`` is ``env.max_episode_steps``: an int is the cap (it must agree
    with a ``max_episode_steps`` keyword argument, if one is given), ``auto`` keeps the
    env's own limit and caps envs without one at :data:`DEFAULT_EPISODE_CAP` (say so
    with :func:`warn_default_cap`). ``spec`` is the env's registration (None for a
    ``module:Class`` id).
    """
    given = kwargs.get("max_episode_steps")
    max_episode_steps = parse_max_episode_steps(max_episode_steps)
    if max_episode_steps != "auto":
        if given is not None and given != max_episode_steps:
            raise ConfigError(
                f"env.max_episode_steps is {max_episode_steps} but env.kwargs sets "
                f"max_episode_steps = {given!r}; give one of them"
            )
        return int(max_episode_steps)
    if given is not None or _has_own_limit(env_id, spec):
        return None
    return DEFAULT_EPISODE_CAP


def warn_default_cap(env_id: str) -> None:
    """Say, in one warning line on stderr (once per env id and process), that ``env_id``
    has no time limit and :data:`DEFAULT_EPISODE_CAP` applies."""
    if env_id in _warned_caps:
        return
    _warned_caps.add(env_id)
    print(
        f"pglab: warning: env {env_id!r} has no time limit; episodes are cut (truncated) "
        f"at {DEFAULT_EPISODE_CAP:,} steps (set env.max_episode_steps to change this)",
        file=sys.stderr,
        flush=True,
    )


def _has_own_limit(env_id: str, spec: EnvSpec | None) -> bool:
    """A registered TimeLimit, ALE's frame limit, or one of pglab's own envs (which end)."""
    if spec is None:
        return env_id.split(":", 1)[0].split(".", 1)[0] == "pglab"
    return (
        spec.max_episode_steps is not None
        or "max_num_frames_per_episode" in spec.kwargs
        or str(spec.entry_point).startswith("pglab.")
    )


# ---------------------------------------------------------------- Gymnasium's env checker


def is_user_env(env_id: str) -> bool:
    """Whether ``env_id`` names a user's own env: ``module:Class`` or ``module:EnvId``
    with a module outside Gymnasium, ALE and pglab."""
    module, sep, _ = env_id.partition(":")
    return bool(sep) and module.split(".", 1)[0] not in _KNOWN_PACKAGES


def check_user_env(
    env_id: str,
    kwargs: dict[str, Any],
    make_instance: Callable[[], gym.Env],
    wrappers: Sequence[Any] = (),
) -> None:
    """Run :func:`gymnasium.utils.env_checker.check_env` on ``make_instance()``, once per
    process for each env id, keyword arguments and ``wrappers`` (``env.wrappers``);
    a failure is an :class:`EnvError`.

    ``make_instance`` makes the env as pglab will see it, wrappers applied: its spaces
    are checked and it is stepped once; Gymnasium's checker looks at the env beneath
    them (``unwrapped``). The instance is made outside the check: a constructor that
    rejects its keyword arguments raises as it does when the vector env is made.
    """
    from gymnasium.utils.env_checker import check_env

    key = f"{env_id} {kwargs!r} {list(wrappers)!r}"
    if key in _checked:
        return
    env = make_instance()
    try:
        check_spaces(env_id, env.observation_space, env.action_space)
    except EnvError:
        env.close()
        raise
    try:
        probe = CheckedEnv(env)  # first pglab's own check: its messages are the more direct
        probe.reset(seed=0)
        probe.step(probe.action_space.sample())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the checker's advice is not an error
            check_env(env.unwrapped, skip_render_check=True, skip_close_check=True)
    except Exception as error:
        problem = error.problem if isinstance(error, _CopyFault) else _describe(error)
        raise EnvError(
            f"env {env_id!r} fails Gymnasium's env checker: {problem} "
            "(--set env.check=false skips the check)"
        ) from None
    finally:
        with contextlib.suppress(Exception):  # a failing close is not what the check reports
            env.close()
    _checked.add(key)


# ---------------------------------------------------------------- checking every call


class _CopyFault(Exception):
    """What one copy of the env did wrong; :class:`GuardedVectorEnv` adds where."""

    def __init__(self, copy: int, call: str, problem: str, details: str) -> None:
        super().__init__(problem)
        self.copy, self.call, self.problem, self.details = copy, call, problem, details


class CheckedEnv(gym.Wrapper):
    """Checks each ``reset`` and ``step`` of copy ``copy`` of an env: what it raises,
    the arity of its result, the type, shape and dtype of the observation, the type and
    size of the reward, the types of the flags and the info.

    Common well-formed results pass through a few type comparisons; anything else gets
    a closer look, and a problem raises an internal fault that :class:`GuardedVectorEnv`
    turns into an :class:`~pglab.errors.EnvFaultError`. Values that are merely
    non-finite in an observation are left to :class:`GuardedVectorEnv`, which checks
    all copies' observations at once.
    """

    def __init__(self, env: gym.Env, copy: int = 0) -> None:
        super().__init__(env)
        self.copy = copy
        space = env.observation_space
        self._shape = tuple(space.shape or ())
        self._dtype = np.dtype(space.dtype) if space.dtype is not None else None
        self._good_dtypes: set[np.dtype] = set()
        self._good_scalars: set[type] = set()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        try:
            result = self.env.reset(seed=seed, options=options)
        except Exception as error:
            raise self._raised("reset", error) from None
        if type(result) is not tuple or len(result) != 2 or type(result[1]) is not dict:
            self._check_reset_result(result)
        self._check_obs("reset", result[0])
        return result

    def step(self, action: Any) -> Any:
        try:
            result = self.env.step(action)
        except Exception as error:
            raise self._raised("step", error) from None
        if type(result) is not tuple or len(result) != 5:
            self._check_step_result(result)
        obs, reward, terminated, truncated, info = result
        self._check_obs("step", obs)
        if not (type(reward) in _PLAIN_NUMBERS and -ABSURD <= reward <= ABSURD):
            self._check_reward(reward)
        for name, flag in zip(_FLAGS, (terminated, truncated)):
            if type(flag) is not bool and type(flag) is not np.bool_:
                self._check_flag(name, flag)
        if type(info) is not dict and not isinstance(info, dict):
            self._fault("step", f"info is {_short(info)}; it must be a dict")
        return result

    # -- the closer looks (off the common path)

    def _fault(self, call: str, problem: str, details: str = "") -> None:
        raise _CopyFault(self.copy, call, problem, details or problem)

    def _raised(self, call: str, error: Exception) -> Exception:
        if isinstance(error, (_CopyFault, EnvFaultError)):
            return error
        return _CopyFault(
            self.copy, call, f"{call}() raised {_describe(error)}", traceback.format_exc()
        )

    def _check_reset_result(self, result: Any) -> None:
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            self._fault(
                "reset",
                f"reset() returned {_short(result)}, not (obs, info); {_PRE_026} (obs, info)"
                if not isinstance(result, (tuple, list))
                else f"reset() returned {len(result)} values; it must return (obs, info)",
            )
        if not isinstance(result[1], dict):
            self._fault("reset", f"reset() returned info {_short(result[1])}; it must be a dict")

    def _check_step_result(self, result: Any) -> None:
        if not isinstance(result, (tuple, list)):
            self._fault("step", f"step() returned {_short(result)}, not a tuple")
        if len(result) == 4:
            self._fault(
                "step",
                "step() returned 4 values (obs, reward, done, info); "
                f"{_PRE_026} (obs, reward, terminated, truncated, info)",
            )
        if len(result) != 5:
            self._fault(
                "step",
                f"step() returned {len(result)} values; it must return "
                "(obs, reward, terminated, truncated, info)",
            )

    def _check_obs(self, call: str, obs: Any) -> None:
        if isinstance(self.observation_space, (gym.spaces.Dict, gym.spaces.Tuple)):
            problem = _composite_problem(self.observation_space, obs, "observation")
            if problem is not None:
                self._fault(call, problem, f"{problem}\nobservation: {obs!r}")
            return
        if type(obs) is np.ndarray:
            if obs.shape == self._shape and obs.dtype in self._good_dtypes:
                return
        elif type(obs) in self._good_scalars:
            return
        problem = self._obs_problem(obs)
        if problem is not None:
            self._fault(call, problem, f"{problem}\nobservation: {obs!r}")

    def _obs_problem(self, obs: Any) -> str | None:
        """What is wrong with ``obs`` for the observation space, or None (then remembered)."""
        if obs is None:
            return "observation is None"
        try:
            array = np.asarray(obs)
        except Exception:
            return f"observation is not an array: {_short(obs)}"
        space = f"the observation space {self.observation_space}"
        if array.dtype.kind not in "biuf":
            given = "" if type(obs) is np.ndarray else f" ({_short(obs)})"
            return f"observation has dtype {array.dtype}{given}; {space} holds numbers"
        if array.shape != self._shape:
            return f"observation has shape {array.shape}; {space} has shape {self._shape}"
        if self._dtype is not None and not np.can_cast(array.dtype, self._dtype, "same_kind"):
            return f"observation has dtype {array.dtype}; {space} holds {self._dtype}"
        if type(obs) is np.ndarray:
            self._good_dtypes.add(obs.dtype)
        elif array.ndim == 0:
            self._good_scalars.add(type(obs))
        return None

    def _check_reward(self, reward: Any) -> None:
        if not isinstance(reward, (int, float, np.integer, np.floating)):
            self._fault("step", f"reward is {_short(reward)}; it must be a number")
        if not abs(float(reward)) <= ABSURD:
            self._fault("step", f"reward is {reward} ({_NOT_FINITE})")

    def _check_flag(self, name: str, flag: Any) -> None:
        try:
            ok = flag in (0, 1) and np.ndim(flag) == 0
        except Exception:
            ok = False
        if not ok:
            self._fault("step", f"{name} is {_short(flag)}; it must be a bool")


def _composite_problem(space: gym.Space, obs: Any, where: str) -> str | None:
    """What is wrong with the structure of a Dict or Tuple observation ``obs`` (a missing
    key, a wrong length, a leaf of the wrong shape or not numbers), or None."""
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(obs, dict) or set(obs) != set(space.spaces):
            return f"{where} is {_short(obs)}; the space {space} has keys {list(space.spaces)}"
        for key, sub in space.spaces.items():
            problem = _composite_problem(sub, obs[key], f"{where}[{key!r}]")
            if problem is not None:
                return problem
        return None
    if isinstance(space, gym.spaces.Tuple):
        if not isinstance(obs, (tuple, list)) or len(obs) != len(space.spaces):
            return f"{where} is {_short(obs)}; the space {space} has {len(space.spaces)} parts"
        for i, (sub, value) in enumerate(zip(space.spaces, obs)):
            problem = _composite_problem(sub, value, f"{where}[{i}]")
            if problem is not None:
                return problem
        return None
    if not isinstance(space, _NUMERIC_SPACES):  # text (a wrapper may drop or encode it)
        return None if space.contains(obs) else f"{where} is {_short(obs)}, outside {space}"
    try:
        array = np.asarray(obs)
    except Exception:
        return f"{where} is not an array: {_short(obs)}"
    if array.dtype.kind not in "biuf":
        return f"{where} has dtype {array.dtype}; the space {space} holds numbers"
    if array.shape != tuple(space.shape or ()):
        return f"{where} has shape {array.shape}; the space {space} has shape {space.shape}"
    return None


#: Spaces of numbers; a Dict or Tuple may also hold others (a Text, MiniGrid's mission).
_NUMERIC_SPACES = (
    gym.spaces.Box,
    gym.spaces.Discrete,
    gym.spaces.MultiDiscrete,
    gym.spaces.MultiBinary,
)

_NOT_FINITE = f"non-finite or |x| > {ABSURD:g}"
_ABSURD_SQUARED = ABSURD * ABSURD


class GuardedVectorEnv(VectorWrapper):
    """A vector env whose ``reset`` and ``step`` turn every fault into one
    :class:`~pglab.errors.EnvFaultError`: an exception (or a :class:`CheckedEnv` fault)
    inside, and non-finite or absurd observations (and rewards, where the copies are
    not :class:`CheckedEnv`-wrapped). Messages name the env id, the call, the env step
    (vector steps since the env was made) and the copy.
    """

    def __init__(self, env: VectorEnv, env_id: str, copies_checked: bool) -> None:
        super().__init__(env)
        self.env_id = env_id
        #: Vector steps taken so far.
        self.steps = 0
        self._copies_checked = copies_checked
        space = env.single_observation_space
        self._float_obs = (
            space.dtype is not None
            and np.issubdtype(space.dtype, np.floating)
            and math.prod(space.shape or ()) > 0
        )

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None) -> Any:
        try:
            result = self.env.reset(seed=seed, options=options)
        except Exception as error:
            raise self._error("reset", error) from None
        if not self._copies_checked and (type(result) is not tuple or len(result) != 2):
            raise self._fault("reset", None, f"reset() returned {_short(result)}, not (obs, info)")
        self._check_values("reset", result[0], None)
        return result

    def step(self, actions: Any) -> Any:
        self.steps += 1
        try:
            result = self.env.step(actions)
        except Exception as error:
            raise self._error("step", error) from None
        if self._copies_checked:
            self._check_values("step", result[0], None)
            return result
        if type(result) is not tuple or len(result) != 5:
            raise self._fault(
                "step",
                None,
                f"step() returned {_short(result)}; it must return "
                "(obs, reward, terminated, truncated, info)",
            )
        self._check_values("step", result[0], result[1])
        return result

    def _check_values(self, call: str, obs: Any, rewards: Any) -> None:
        # One numpy call per quantity: the sum of squares is NaN, inf or above ABSURD**2
        # whenever a value is NaN, infinite or absurd (and, rarely, when many large but
        # sane values add up: then the exact look below finds nothing and lets them pass).
        if self._float_obs:
            if type(obs) is not np.ndarray:
                obs = np.asarray(obs)
            if not float(np.vdot(obs, obs)) <= _ABSURD_SQUARED:
                self._bad_values(call, "observation", obs)
        if rewards is not None:
            rewards = np.asarray(rewards)
            if rewards.dtype.kind not in "biuf":
                raise self._fault(
                    call, None, f"rewards are {_short(rewards)}; they must be numbers"
                )
            if (
                rewards.dtype.kind == "f"
                and not float(np.vdot(rewards, rewards)) <= _ABSURD_SQUARED
            ):
                self._bad_values(call, "reward", rewards)

    def _bad_values(self, call: str, quantity: str, values: np.ndarray) -> None:
        """Raise naming the copy and the values that are non-finite or absurd, if any."""
        bad = np.argwhere(~(np.abs(values) <= ABSURD))
        if not len(bad):
            return
        copy = int(bad[0][0])
        shown = [
            str(values[tuple(index)])
            + (f" at [{', '.join(str(int(i)) for i in index[1:])}]" if len(index) > 1 else "")
            for index in bad[:3]
            if int(index[0]) == copy
        ]
        more = f"; {len(bad) - len(shown)} more such values" if len(bad) > len(shown) else ""
        problem = f"{quantity} is {', '.join(shown)} ({_NOT_FINITE}{more})"
        with np.printoptions(threshold=10_000):
            details = f"{problem}\n{quantity} of every copy:\n{values!r}"
        raise self._fault(call, copy, problem, details)

    def _error(self, call: str, error: Exception) -> Exception:
        if isinstance(error, EnvFaultError):
            return error
        if isinstance(error, _CopyFault):
            during = " (its reset after an episode end)" if error.call != call else ""
            return self._fault(call, error.copy, error.problem + during, error.details)
        return self._fault(
            call, None, f"{call}() raised {_describe(error)}", traceback.format_exc()
        )

    def _fault(self, call: str, copy: int | None, problem: str, details: str = "") -> EnvFaultError:
        where = f"{call}() at env step {self.steps}" + ("" if copy is None else f", copy {copy}")
        message = f"env {self.env_id!r}: {where}: {problem}"
        return EnvFaultError(message, f"{message}\n\n{details or problem}\n")


# ---------------------------------------------------------------- one-line descriptions


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: BaseException) -> str:
    """``Type: message`` on one line (an assertion's message alone)."""
    text = _one_line(str(error))
    if isinstance(error, AssertionError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _short(value: Any) -> str:
    """A value's repr on one line, shortened, with its type when that is not obvious."""
    text = _one_line(repr(value), 80)
    if value is None or isinstance(value, (bool, int, float, str)):
        return text
    return f"{text} ({type(value).__name__})"
