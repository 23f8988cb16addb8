"""Learning rules, one per file; :func:`make_algo` picks one by ``algo.name``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pglab.algos.a2c import A2C
from pglab.algos.ppo import PPO
from pglab.algos.reinforce import Reinforce
from pglab.algos.trpo import TRPO
from pglab.policies import Actor, Critic

if TYPE_CHECKING:  # the config layer sits above; only its type is named here
    from pglab.config import AlgoConfig

Algorithm = Reinforce | A2C | PPO | TRPO

ALGORITHMS: dict[str, type[Algorithm]] = {
    "reinforce": Reinforce,
    "a2c": A2C,
    "ppo": PPO,
    "trpo": TRPO,
}


def make_algo(config: AlgoConfig, actor: Actor, critic: Critic | None) -> Algorithm:
    """The learning rule named by ``config.name``, owning its optimizers."""
    return ALGORITHMS[config.name](actor, critic, config)
