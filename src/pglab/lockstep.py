"""Collecting for several collectors in lockstep (a population's members).

A sibling of :mod:`pglab.rollout` for speed: per-call costs, not arithmetic, bound
small actors and cheap envs, so the members' actors act in one call
(:class:`~pglab.mirror.NumpyActorGroup`) and envs whose class declares a joint step
take it in one call. Each collector keeps its own envs, random streams and episode
bookkeeping, so each batch is drawn as its collector would draw it alone: pinned by
``tests/test_rollout.py`` (batches and evaluations equal to collecting alone, bit for
bit) and ``tests/test_envs.py`` (CartPole's joint step equal to separate steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pglab.mirror import NumpyActorGroup
from pglab.rollout import Batch, Collector, EpisodeStats, Quota, Scorer


def collect_steps_together(
    collectors: Sequence[Collector], steps_per_env: int, scorer: Scorer | None = None
) -> list[Batch]:
    """``[c.collect_steps(steps_per_env) for c in collectors]``, with the collectors
    stepped in lockstep (a population's members: one env, one network shape each).

    Per-call costs, not arithmetic, bound small actors and envs; in lockstep the
    actors act in one call (:class:`~pglab.mirror.NumpyActorGroup`) and CartPole
    envs step in one call (:meth:`~pglab.envs.cartpole.CartPoleVectorEnv.step_together`).
    Each collector keeps its own envs, random streams and episode bookkeeping, so
    each batch is drawn as its collector would draw it alone. Needs actors that act
    through numpy mirrors (:attr:`Collector.acts_in_numpy`) of one structure: a torch
    actor samples from the global torch stream, which lockstep would interleave.

    ``scorer`` takes the members' flat observations ``[M, T*N, ...]``, actions
    ``[M, T*N, ...]`` and last observations ``[M, N, ...]`` and gives their
    log-probabilities ``[M, T*N]``, values ``[M, T*N]`` and last values ``[M, N]`` in
    one call; without it each collector scores its own batch.
    """
    actors = _actor_group(collectors)
    starts = [c.start_batch(steps_per_env) for c in collectors]  # syncs the mirrors
    actors.stack()
    everyone = np.ones(collectors[0].num_envs, dtype=bool)
    for t in range(steps_per_env):
        collectors[0].check_stop()
        actions = actors.act(np.stack([c.obs for c in collectors]))
        outcomes = _step_envs(collectors, actions)
        for c, (buffers, stats), a, outcome in zip(collectors, starts, actions, outcomes):
            c.observe(t, buffers, a, outcome, everyone, stats)
    buffers, stats = zip(*starts)
    return Collector.finish_batches(collectors, buffers, steps_per_env, stats, scorer)


def run_episodes_together(
    collectors: Sequence[Collector], num_episodes: int, deterministic: bool = True
) -> list[EpisodeStats]:
    """``[c.run_episodes(num_episodes, deterministic) for c in collectors]`` in lockstep
    (see :func:`collect_steps_together`, whose needs it shares). A collector whose
    episodes are all in stops stepping, so each plays exactly what it would play alone."""
    actors = _actor_group(collectors)  # before any reset: can they act together?
    for c in collectors:
        c.reset()  # syncs the mirrors
    actors.stack()
    quotas = [Quota(c.num_envs, num_episodes) for c in collectors]
    stats = [EpisodeStats() for _ in collectors]
    t, playing = 0, list(range(len(collectors)))
    while still := [i for i, quota in enumerate(quotas) if quota.open()]:
        if still != playing:  # some have all their episodes: the rest act on
            playing = still
            actors = NumpyActorGroup([collectors[i].mirror for i in playing])
            actors.stack()
        group = [collectors[i] for i in playing]
        actions = actors.act(np.stack([c.obs for c in group]), deterministic)
        for i, c, a, outcome in zip(playing, group, actions, _step_envs(group, actions)):
            quotas[i].close(c.observe(t, None, a, outcome, quotas[i].counted, stats[i]))
        t += 1
    return stats


def _actor_group(collectors: Sequence[Collector]) -> NumpyActorGroup:
    """The collectors' numpy actors as one group (call its ``stack`` once they are synced)."""
    actors = NumpyActorGroup.build([c.mirror for c in collectors])
    if actors is None:
        raise ValueError("collecting in lockstep needs numpy actors of one structure")
    return actors


def _step_envs(collectors: Sequence[Collector], actions: list[np.ndarray]) -> list[tuple]:
    """Each collector's env step on its ``actions``: in one call where the envs are of
    one class that declares a joint step (a class method ``step_together(envs,
    actions)`` returning each env's step, as :class:`~pglab.envs.cartpole.CartPoleVectorEnv`
    does), else one env after another."""
    env_actions = [c.to_env(a) for c, a in zip(collectors, actions)]
    envs = [c.envs for c in collectors]
    kind = type(envs[0])
    step_together = getattr(kind, "step_together", None)
    if step_together is not None and all(type(e) is kind for e in envs):
        return step_together(envs, env_actions)
    return [e.step(a) for e, a in zip(envs, env_actions)]
