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

Which ids it takes: those in ``envpool.list_all_envs()`` (an ALE id such as
``ALE/Breakout-v5`` by its envpool name, ``Breakout-v5``), with no wrappers or frame
stacking of pglab's. envpool's Atari games come with preprocessing of their own, so
they are taken only with ``env.preprocess = "atari"``, configured to do what pglab's
Gymnasium pipeline does (:data:`ATARI_OPTIONS`; see :mod:`pglab.envs.atari`): the same
observation (4 stacked 84x84 gray frames, the first of an episode repeated), actions,
sticky actions, frame skip with max-pooling, no-op starts, reward clipping and episode
cap (``env.max_episode_steps`` counts an ALE id's own steps, emulator frames, as
Gymnasium's time limit does; envpool counts steps of 4 frames, so a cap of N frames
becomes N/4 of its steps, where Gymnasium's pipeline also spends the no-op frames). Their game score (the unclipped rewards' sum) reaches ``info["game_score"]`` at an
episode's end, as :class:`~pglab.envs.scores.GameScore` puts it there.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np

from pglab.envs.scores import SCORE_KEY
from pglab.errors import EnvError

#: envpool's options for an Atari game, as pglab's ``atari`` preprocessing on an ALE v5
#: id: no-op starts up to 30, 4 frames per step max-pooled over the last two, 84x84
#: gray, 4 frames stacked, rewards clipped to their sign, sticky actions (v5's 0.25),
#: no fire at reset, no episode end at a lost life, at most 27,000 steps (108k frames).
ATARI_OPTIONS: dict[str, Any] = {
    "noop_max": 30,
    "frame_skip": 4,
    "img_height": 84,
    "img_width": 84,
    "gray_scale": True,
    "stack_num": 4,
    "reward_clip": True,
    "repeat_action_probability": 0.25,
    "use_fire_reset": False,
    "episodic_life": False,
    "full_action_space": False,
    "max_episode_steps": 27_000,
}


def _envpool() -> Any:
    try:
        import envpool
    except ImportError:
        raise EnvError(
            "env.backend = envpool needs envpool: pip install 'pglab[envpool]'"
        ) from None
    return envpool


def envpool_name(env_id: str) -> str:
    """envpool's name of an env id (``ALE/Breakout-v5`` -> ``Breakout-v5``)."""
    return env_id.split(":", 1)[-1].removeprefix("ALE/")


def check_envpool_env(env_id: str, kwargs: dict[str, Any], preprocess: str, plain: bool) -> bool:
    """Raise :class:`EnvError` unless envpool can make ``env_id`` as pglab would
    (``plain``: no wrappers or frame stacking are asked for); return whether it is an
    Atari game (made with :data:`ATARI_OPTIONS`)."""
    envpool = _envpool()
    name = envpool_name(env_id)
    if name not in envpool.list_all_envs():
        raise EnvError(
            f"env.backend = envpool: envpool has no env {name!r} (it has MuJoCo, classic "
            "control, Atari and others: envpool.list_all_envs()); use env.backend = gymnasium"
        )
    atari = "stack_num" in envpool.make_spec(name).config._fields
    if atari and preprocess != "atari":
        raise EnvError(
            f"env.backend = envpool: {name!r} is an Atari game, which envpool makes with "
            f"env.preprocess = atari only (pglab's Atari pipeline); got {preprocess!r}"
        )
    if not plain or (preprocess != "none" and not atari):
        raise EnvError(
            f"env.backend = envpool takes {name!r} as envpool makes it: without env.wrappers, "
            "env.frame_stack or env.preprocess (atari for an Atari game)"
        )
    if kwargs:
        raise EnvError(
            f"env.kwargs {kwargs} are Gymnasium's options; env.backend = envpool takes "
            "none (use env.backend = gymnasium)"
        )
    return atari


class EnvPool(gym.vector.VectorEnv):
    """``num_envs`` copies of ``env_id`` (envpool's name) in one envpool made with
    ``options``, anew (with the seed) at every seeded reset (see the module text);
    ``score``: report each ended episode's game score (its info's unclipped rewards)."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(
        self, env_id: str, num_envs: int, options: dict[str, Any] | None = None, score: bool = False
    ) -> None:
        self.env_id = env_id
        self.num_envs = num_envs
        self.options = dict(options or {})
        self._pool = self._make(0)
        self.single_observation_space = self._pool.single_observation_space
        self.single_action_space = self._pool.single_action_space
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.spec = None
        self._scores = np.zeros(num_envs) if score else None

    def _make(self, seed: int) -> Any:
        threads = max(1, min(self.num_envs, os.cpu_count() or 1))
        return _envpool().make_gymnasium(
            self.env_id, num_envs=self.num_envs, seed=int(seed), num_threads=threads,
            **self.options,
        )  # fmt: skip

    def reset(self, *, seed: Any = None, options: dict | None = None) -> tuple[Any, dict]:
        if seed is not None:
            first = int(np.ravel(seed)[0])
            self._pool.close()
            self._pool = self._make(first)
        if self._scores is not None:
            self._scores[:] = 0.0
        return self._pool.reset()

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict]:
        obs, rewards, terminated, truncated, info = self._pool.step(actions)
        if self._scores is not None:
            self._scores += info["reward"]
            ended = terminated | truncated
            if ended.any():
                info = {**info, SCORE_KEY: self._scores.copy(), f"_{SCORE_KEY}": ended}
                self._scores[ended] = 0.0
        return obs, rewards, terminated, truncated, info

    def close(self, **kwargs: Any) -> None:
        self._pool.close()
