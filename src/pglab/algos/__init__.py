"""Learning rules, one per file; :func:`make_algo` picks one by ``algo.name``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pglab.algos.reinforce import Reinforce
from pglab.policies import Actor, Critic

if TYPE_CHECKING:  # the config layer sits above; only its type is named here
    from pglab.config import AlgoConfig

ALGORITHMS = {"reinforce": Reinforce}


def make_algo(config: AlgoConfig, actor: Actor, critic: Critic | None) -> Reinforce:
    """The learning rule named by ``config.name``, owning its optimizers."""
    return ALGORITHMS[config.name](actor, critic, config)
