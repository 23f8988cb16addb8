"""Learning rules, one per file; :func:`make_algo` picks one by ``algo.name``.

Rules built on :class:`~pglab.algos.base.StackedRule` (REINFORCE, A2C, PPO) stack: one
rule object trains M >= 1 members at once (:func:`stacks`); TRPO trains one member each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pglab.algos.a2c import A2C
from pglab.algos.base import StackedRule
from pglab.algos.ppo import PPO
from pglab.algos.reinforce import Reinforce, weights_need_critic
from pglab.algos.trpo import TRPO
from pglab.policies import Actor, Critic

if TYPE_CHECKING:  # the config layer sits above; only its type is named here
    from pglab.config import AlgoConfig

Algorithm = Reinforce | A2C | PPO | TRPO

#: Every learning rule by its ``algo.name``: the one list the options, the command
#: line and the training loop read. A rule's traits are its class attributes:
#: ``CHOOSES_WEIGHTS`` (takes ``algo.weights``; otherwise its weights are GAE
#: advantages), ``CRITIC_APART`` (its critic is fitted apart from the policy, so the two
#: cannot share a body), ``OWN_OPTIONS`` (``algo`` options that only it takes: every
#: other rule refuses a value other than the default, see :func:`takes_option`), and
#: whether it stacks (:func:`stacks`).
ALGORITHMS: dict[str, type[Algorithm]] = {
    "reinforce": Reinforce,
    "a2c": A2C,
    "ppo": PPO,
    "trpo": TRPO,
}


def stacks(name: str) -> bool:
    """Whether the rule named ``name`` trains many members as one stacked rule."""
    return issubclass(ALGORITHMS[name], StackedRule)


def chooses_weights(name: str) -> bool:
    """Whether the rule named ``name`` takes ``algo.weights`` (else GAE advantages)."""
    return ALGORITHMS[name].CHOOSES_WEIGHTS


def critic_apart(name: str) -> bool:
    """Whether the rule named ``name`` fits its critic apart from its policy."""
    return ALGORITHMS[name].CRITIC_APART


def uses_critic(name: str, weights: str) -> bool:
    """Whether the rule named ``name`` fits a critic with ``algo.weights`` ``weights``:
    always where its weights are GAE advantages; for REINFORCE, as its weights need
    (a function of the user's is imported to read its signature)."""
    return not chooses_weights(name) or weights_need_critic(weights)


def own_options() -> tuple[str, ...]:
    """The ``algo`` options that only some rules take (their ``OWN_OPTIONS``), in order."""
    found: dict[str, None] = {}
    for rule in ALGORITHMS.values():
        found.update(dict.fromkeys(getattr(rule, "OWN_OPTIONS", ())))
    return tuple(found)


def takes_option(name: str, option: str) -> bool:
    """Whether the rule named ``name`` takes ``algo.<option>``, one of :func:`own_options`
    (any other rule leaves it at its default)."""
    return option in getattr(ALGORITHMS[name], "OWN_OPTIONS", ())


def make_algo(config: AlgoConfig, actor: Actor, critic: Critic | None, seed: int = 0) -> Algorithm:
    """The learning rule named by ``config.name`` for one run, owning its optimizers
    (``seed`` seeds a stacking rule's minibatch sampler)."""
    rule = ALGORITHMS[config.name]
    if issubclass(rule, StackedRule):
        return rule.single(actor, critic, config, seed)
    return rule(actor, critic, config)


def make_stacked(
    configs: Sequence[AlgoConfig],
    actors: Sequence[Actor],
    critics: Sequence[Critic],
    seeds: Sequence[int],
) -> StackedRule:
    """One stacking rule (see :func:`stacks`) training every member: member m has
    ``actors[m]``, ``critics[m]``, ``configs[m]`` and its sampler seeded by ``seeds[m]``."""
    rule = ALGORITHMS[configs[0].name]
    if not issubclass(rule, StackedRule):
        raise ValueError(f"algorithm {configs[0].name!r} does not stack")
    return rule(actors, critics, configs, seeds)
