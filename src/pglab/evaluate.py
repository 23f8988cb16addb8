"""Evaluating an agent over complete episodes on its own vector env."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pglab.agent import Agent
from pglab.envs import eval_num_envs, make_vec_env
from pglab.rollout import Collector, EpisodeStats


@dataclass
class EvalResult:
    """Statistics of complete evaluation episodes."""

    mean: float
    std: float
    returns: list[float]
    lengths: list[int]
    success_rate: float | None

    @classmethod
    def from_stats(cls, stats: EpisodeStats) -> EvalResult:
        returns = np.asarray(stats.returns, dtype=np.float64)
        success = float(np.mean(stats.successes)) if stats.successes else None
        return cls(
            float(returns.mean()), float(returns.std()), stats.returns, stats.lengths, success
        )

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    agent: Agent,
    env: str | None = None,
    episodes: int = 10,
    *,
    deterministic: bool = True,
    seed: int = 0,
    num_envs: int | None = None,
) -> EvalResult:
    """Play ``episodes`` complete episodes and report their returns.

    ``env`` defaults to the env the agent was trained on (with its options). The
    run's preprocessing and frozen normalisation statistics apply as in training. The
    episodes run in ``num_envs`` parallel copies (default: one per episode, up to 32), env i seeded
    with ``seed + i``; the most likely action is taken unless ``deterministic=False``.
    """
    config = agent.config.env
    env_id = env or config.id
    own = env_id == config.id
    envs = make_vec_env(
        env_id,
        eval_num_envs(episodes, num_envs),
        config.kwargs if own else {},
        config.preprocess,
        max_episode_steps=config.max_episode_steps if own else "auto",
        check=config.check,
    )
    try:
        collector = Collector(
            envs, agent.actor, seed=seed, normalizer=agent.normalizer, update_normalizer=False
        )
        return EvalResult.from_stats(collector.run_episodes(episodes, deterministic))
    finally:
        envs.close()
