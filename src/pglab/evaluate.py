"""Evaluating an agent over complete episodes on its own vector env."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pglab.agent import Agent
from pglab.envs import describe_env, eval_num_envs, make_configured_env
from pglab.errors import EnvError
from pglab.rollout import Collector, EpisodeStats


@dataclass
class EvalResult:
    """Statistics of complete evaluation episodes.

    ``returns`` (and their ``mean`` and ``std``) are the env's own episodic returns,
    the game scores, even where the run's wrappers change the rewards (Atari's clipping);
    then ``reward_returns`` are the returns of the rewards as trained on (else None).
    """

    mean: float
    std: float
    returns: list[float]
    lengths: list[int]
    success_rate: float | None
    reward_returns: list[float] | None = None

    @property
    def reward_mean(self) -> float | None:
        """The mean return of the rewards as trained on, where they differ from the score."""
        return None if self.reward_returns is None else float(np.mean(self.reward_returns))

    @classmethod
    def from_stats(cls, stats: EpisodeStats) -> EvalResult:
        success = float(np.mean(stats.successes)) if stats.successes else None
        scored = len(stats.scores) == len(stats.returns)
        returns = stats.scores if scored else stats.returns
        array = np.asarray(returns, dtype=np.float64)
        return cls(
            float(array.mean()),
            float(array.std()),
            returns,
            stats.lengths,
            success,
            stats.returns if scored and stats.scores != stats.returns else None,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    agent: Agent,
    env: Any = None,
    episodes: int = 10,
    *,
    deterministic: bool = True,
    seed: int = 0,
    num_envs: int | None = None,
) -> EvalResult:
    """Play ``episodes`` complete episodes and report their returns.

    ``env`` defaults to the env the agent was trained on (with its options); it may be
    any form :func:`pglab.train` takes (an id, an env made by ``gymnasium.make``, an
    env object, a callable, a vector env). Another env id keeps the run's wrappers and
    preprocessing but not its keyword arguments. The run's frozen normalisation
    statistics apply as in training. The episodes run in ``num_envs`` parallel copies
    (default: one per episode, up to 32; a vector env: its own), env i seeded with
    ``seed + i``; the most likely action is taken unless ``deterministic=False``.
    """
    own = agent.config.env
    given = None
    if env is None or env == own.id:
        env_config = own
    else:
        values, given = describe_env(env)
        env_config = dataclasses.replace(
            own,
            id=values["env.id"],
            kwargs=values.get("env.kwargs", {}),
            wrappers=values.get("env.wrappers", own.wrappers),
            max_episode_steps=values.get("env.max_episode_steps", "auto"),
            object=values.get("env.object", ""),
        )
    borrowed = given is not None and given.vector is not None
    envs = make_configured_env(
        env_config, eval_num_envs(episodes, num_envs), given, evaluation=not borrowed
    )
    try:
        space = envs.single_observation_space
        expected = agent.observation_space
        if type(space) is not type(expected) or space.shape != expected.shape:
            raise EnvError(
                f"env {env_config.id!r} has observation space {space}; the agent was trained "
                f"on {expected}"
            )
        collector = Collector(
            envs, agent.actor, seed=seed, normalizer=agent.normalizer, update_normalizer=False
        )
        return EvalResult.from_stats(collector.run_episodes(episodes, deterministic))
    finally:
        envs.close()
