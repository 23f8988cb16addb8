"""envpool as a backend (``env.backend = "envpool"``, the extra ``pglab[envpool]``).

envpool steps a batch of envs in C++ threads. Its Gymnasium interface is already a
vector env with NEXT_STEP autoreset (the step after an episode's end returns the next
episode's first observation, with reward 0 and neither flag set: pglab's collector marks
that step as not a transition), termination and truncation apart, and the final
observation of an episode returned by the step that ends it (which the collector
bootstraps a truncated episode from). One thing differs: envpool fixes its seeds when
the pool is made and ignores ``reset(seed=...)``. :class:`EnvPool` therefore makes the
pool anew at every seeded reset, with that seed, so a run's envs are seeded by the run's
seed as Gymnasium's are (envpool's own generators: the same seed gives the same episodes
on envpool, not the episodes Gymnasium's env gives).

Which ids it takes: those in ``envpool.list_all_envs()``, with no wrappers, frame
stacking or preprocessing of pglab's (envpool's Atari ids come with envpool's own
preprocessing, which is not pglab's; they are refused here rather than trained on a
different observation).
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np

from pglab.errors import EnvError


def _envpool() -> Any:
    try:
        import envpool
    except ImportError:
        raise EnvError(
            "env.backend = envpool needs envpool: pip install 'pglab[envpool]'"
        ) from None
    return envpool


def check_envpool_env(env_id: str, kwargs: dict[str, Any], plain: bool) -> None:
    """Raise :class:`EnvError` unless envpool can make ``env_id`` as pglab would
    (``plain``: no wrappers, frame stacking or preprocessing are asked for)."""
    envpool = _envpool()
    name = env_id.split(":", 1)[-1]
    if name not in envpool.list_all_envs():
        raise EnvError(
            f"env.backend = envpool: envpool has no env {name!r} (it has MuJoCo, classic "
            "control, Atari and others: envpool.list_all_envs()); use env.backend = gymnasium"
        )
    if "stack_num" in envpool.make_spec(name).config._fields:  # its Atari preprocessing
        raise EnvError(
            f"env.backend = envpool: {name!r} is an Atari game, which envpool preprocesses "
            "its own way (not pglab's); use env.backend = gymnasium"
        )
    if not plain:
        raise EnvError(
            f"env.backend = envpool takes {name!r} as envpool makes it: without env.wrappers, "
            "env.frame_stack or env.preprocess"
        )
    if kwargs:
        raise EnvError(
            f"env.backend = envpool: env.kwargs {kwargs} are Gymnasium's options; envpool "
            "takes its own (use env.backend = gymnasium)"
        )


class EnvPool(gym.vector.VectorEnv):
    """``num_envs`` copies of ``env_id`` in one envpool, made anew (with the seed) at
    every seeded reset (see the module text)."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, env_id: str, num_envs: int) -> None:
        self.env_id = env_id
        self.num_envs = num_envs
        self._pool = self._make(0)
        self.single_observation_space = self._pool.single_observation_space
        self.single_action_space = self._pool.single_action_space
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.spec = None

    def _make(self, seed: int) -> Any:
        threads = max(1, min(self.num_envs, os.cpu_count() or 1))
        return _envpool().make_gymnasium(
            self.env_id, num_envs=self.num_envs, seed=int(seed), num_threads=threads
        )

    def reset(self, *, seed: Any = None, options: dict | None = None) -> tuple[Any, dict]:
        if seed is not None:
            first = int(np.ravel(seed)[0])
            self._pool.close()
            self._pool = self._make(first)
        return self._pool.reset()

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict]:
        return self._pool.step(actions)

    def close(self, **kwargs: Any) -> None:
        self._pool.close()
