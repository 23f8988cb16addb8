"""Collecting experience from a vector env into a time-major :class:`Batch`.

Two ways to fill a batch:

* :meth:`Collector.collect_steps` runs every env for T steps. Episodes continue
  across batches; the last step of the batch is marked ``truncated`` so that
  estimators bootstrap from the value of the observation that follows it.
* :meth:`Collector.collect_episodes` resets the envs and runs them until K complete
  episodes are in, each env contributing a fixed quota (``K // N``, the first
  ``K % N`` envs one more). Fixing the quota in advance keeps short episodes from
  being over-represented, and no partial episode of an older policy enters.

:mod:`pglab.lockstep` does the same for several collectors in lockstep (a population's
members), each drawing what it would draw alone, through the collector's public steps
(:meth:`Collector.start_batch`, :meth:`Collector.observe`, :meth:`Collector.finish_batches`).

Gymnasium's NEXT_STEP autoreset: the step after an episode ends is a reset step (its
action is ignored, its reward is 0). It is recorded with ``valid = False`` and every
estimator, loss and statistic ignores it. The observation stored at a reset step is
the final observation of the episode that just ended, so ``values[t + 1]`` is the
bootstrap value of a truncated step ``t``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv
from torch import Tensor

from pglab.envs.normalize import Normalizer
from pglab.envs.scores import SCORE_KEY
from pglab.envs.spaces import ActionAdapter, ObsEncoder
from pglab.mirror import NumpyActor
from pglab.nets import ImageCNN, draw_dropout_keys, has_keyed_dropout, under_masks
from pglab.policies import Actor, Critic, TanhGaussianHead, evaluate_actions


@dataclass
class EpisodeStats:
    """Returns, lengths and (where the env reports it) success of finished episodes."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    #: The env's own episodic returns (game scores) where wrappers change the rewards
    #: (:mod:`pglab.envs.scores`); ``returns`` are those of the rewards trained on.
    scores: list[float] = field(default_factory=list)


@dataclass
class Batch:
    """Time-major experience: every tensor is ``[T, N]`` (``[T, N, ...]`` for obs, actions).

    ``log_probs`` are under the policy that collected the data; ``values`` and
    ``next_values`` (V of the observation after each step, the bootstrap values)
    are filled when the collector has a critic.
    """

    obs: Tensor
    actions: Tensor
    log_probs: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    valid: Tensor
    values: Tensor | None
    next_values: Tensor | None
    episodes: EpisodeStats
    #: The key of each step's dropout masks (:class:`~pglab.nets.KeyedDropout`), for
    #: an actor with dropout; None otherwise.
    dropout_keys: Tensor | None = None

    @property
    def episode_ends(self) -> Tensor:
        """``terminated | truncated``: where an episode (or the rollout) stopped."""
        return self.terminated | self.truncated

    @functools.cached_property
    def num_steps(self) -> int:
        """Number of real transitions (valid samples) in the batch (counted once: the
        trainer counts it, and logs the steps per second)."""
        return int(self.valid.sum())


class CollectionStopped(Exception):
    """A stop was requested while a training batch was being collected: the batch is
    dropped, and the run stops at its last completed update."""


class _Buffers:
    """Preallocated numpy arrays ``[capacity, N, ...]`` that double when full."""

    def __init__(
        self,
        capacity: int,
        n: int,
        obs_dim: int,
        action_shape: tuple,
        action_dtype: Any,
        obs_dtype: Any = np.float32,
        keyed: bool = False,
    ) -> None:
        self.capacity = capacity
        self.arrays = {
            "obs": np.empty((capacity, n, obs_dim), dtype=obs_dtype),
            "actions": np.empty((capacity, n, *action_shape), dtype=action_dtype),
            "rewards": np.empty((capacity, n), dtype=np.float32),
            "terminated": np.empty((capacity, n), dtype=bool),
            "truncated": np.empty((capacity, n), dtype=bool),
            "valid": np.empty((capacity, n), dtype=bool),
        }
        if keyed:  # last, so that the rows put takes in order come first
            self.arrays["dropout_keys"] = np.zeros((capacity, n), dtype=np.int64)
        self._rows = list(self.arrays.values())

    def put(self, t: int, *values: np.ndarray) -> None:
        """Store row ``t``: obs, actions, rewards, terminated, truncated, valid (in that
        order; an actor's dropout keys are stored apart, after the step)."""
        if t == self.capacity:
            self.arrays = {k: np.concatenate([a, np.empty_like(a)]) for k, a in self.arrays.items()}
            self._rows = list(self.arrays.values())
            self.capacity *= 2
        for rows, value in zip(self._rows, values):
            rows[t] = value

    def tensors(self, length: int) -> dict[str, Tensor]:
        return {k: torch.from_numpy(a[:length]) for k, a in self.arrays.items()}


#: Scores a population's batches in one call (see :func:`collect_steps_together`).
Scorer = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


class Quota:
    """Which episodes of a fixed number count, decided when they start (the first
    ``num_episodes`` started, over all envs), never by when they end, so that long
    episodes are not under-represented. An env whose next episode would not count
    idles (its steps are invalid) until the others finish."""

    def __init__(self, num_envs: int, num_episodes: int) -> None:
        self.num_episodes = num_episodes
        self.counted = np.arange(num_envs) < num_episodes  # does the current episode count?
        self.started = int(self.counted.sum())

    def open(self) -> bool:
        """Whether a counted episode is still running."""
        return bool(self.counted.any())

    def close(self, ended: np.ndarray) -> None:
        """Start the next episode of every env where a counted one ``ended``."""
        for i in np.flatnonzero(ended):
            self.counted[i] = self.started < self.num_episodes
            self.started += int(self.counted[i])


def reads_image_bytes(encode: ObsEncoder, actor: Actor, critic: Critic | None) -> bool:
    """Whether a collector may keep the observations as the env's uint8 bytes rather
    than float32 (a quarter of the memory to write, gather and read: an Atari batch is
    29 MB, not 115): the encoding is one image, and the only networks that read it are
    exactly pglab's :class:`~pglab.nets.ImageCNN` bodies under exactly :class:`Actor`
    and :class:`Critic`, whose first step converts the bytes to the same float32 values
    (a network of the user's own gets floats, as always)."""
    if not encode.one_image or type(actor) is not Actor:
        return False
    if critic is not None and type(critic) is not Critic:  # (a critic of one's own)
        return False
    bodies = [actor.body] if critic is None else [actor.body, critic.body]
    return all(type(body) is ImageCNN for body in bodies)


class Collector:
    """Runs an actor in a vector env and returns :class:`Batch` objects.

    Args:
        envs: a NEXT_STEP-autoreset vector env.
        actor: the policy that acts.
        critic: a value function; when given, batches carry values and bootstrap values.
        seed: seeds the envs at their first reset (env i gets ``seed + i``).
        normalizer: observation normalisation and reward scaling; stored
            observations are the normalised ones, stored rewards the scaled ones
            (episode statistics stay in the env's own units).
        update_normalizer: fold what is seen into the normaliser's statistics
            (training); False applies them frozen (evaluation).

    Batches are returned on the actor's device; envs, normalisation and the
    collection buffers stay on the CPU.
    """

    def __init__(
        self,
        envs: VectorEnv,
        actor: Actor,
        critic: Critic | None = None,
        *,
        seed: int | None = None,
        normalizer: Normalizer | None = None,
        update_normalizer: bool = True,
    ) -> None:
        self.envs = envs
        self.actor = actor
        self.critic = critic
        self.num_envs = envs.num_envs
        self.encode = ObsEncoder(
            envs.single_observation_space, actor.action_mask, envs.single_action_space
        )
        self.to_env = ActionAdapter(
            envs.single_action_space, squash=isinstance(actor.head, TanhGaussianHead)
        )
        self.normalizer = normalizer
        self.update_normalizer = update_normalizer and normalizer is not None
        self.device = next(actor.parameters()).device
        # Small MLP actors act through a numpy mirror: same distribution, far less overhead.
        self.mirror = NumpyActor.build(actor)
        #: The actor has dropout: a training batch acts with keyed masks (and stores the
        #: keys), so that the update recomputes its log-probabilities under the same masks.
        self.keyed = has_keyed_dropout(actor)
        #: Observations kept as the env's bytes (see :func:`reads_image_bytes`).
        self.image_bytes = normalizer is None and reads_image_bytes(self.encode, actor, critic)
        self._next_seed = seed
        self._obs: np.ndarray | None = None  # the current observations, prepared
        self._prev_done = np.zeros(self.num_envs, dtype=bool)
        self._episode_return = np.zeros(self.num_envs, dtype=np.float64)
        self._episode_length = np.zeros(self.num_envs, dtype=np.int64)
        #: Every env step taken, including reset steps and steps beyond a quota.
        self.env_steps = 0
        #: Asked before every step of a training batch: a stop was requested (Ctrl-C)?
        self.stop: Callable[[], bool] | None = None

    @property
    def obs(self) -> np.ndarray | None:
        """The current observations, prepared (encoded, normalised) ``[N, obs_dim]``."""
        return self._obs

    @property
    def acts_in_numpy(self) -> bool:
        """Whether the actor acts through its numpy mirror (small MLP actors)."""
        return self.mirror is not None

    def reset(self) -> None:
        """Reset all envs (seeded on the first call) and forget episodes in progress."""
        self._begin()
        raw, info = self.envs.reset(seed=self._next_seed)
        self._next_seed = None
        self._obs = self._prepare(raw, info)
        self._prev_done[:] = False
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0

    def _begin(self) -> None:
        """Act with the actor's current weights, without dropout, and (for a head
        whose noise lasts over steps) with noise of its own."""
        self.actor.eval()
        self.actor.start_rollout()
        if self.mirror is not None:
            self.mirror.sync()

    def _prepare(self, raw: Any, info: dict[str, Any]) -> np.ndarray:
        """Encoded (and normalised) observations, float32 ``[N, obs_dim]`` (with the
        action masks that ``info`` reports, where the actor takes them from there)."""
        if self.image_bytes:
            return self.encode.image_bytes(raw)
        obs = self.encode.array(raw, self.encode.info_mask(info, self.num_envs))
        if self.normalizer is None:
            return obs
        return self.normalizer.observe(obs, self.update_normalizer)

    def _step(
        self,
        t: int,
        buffers: _Buffers | None,
        deterministic: bool,
        active: np.ndarray,
        stats: EpisodeStats,
    ) -> np.ndarray:
        """One step of every env, stored at row ``t``; returns where a counted episode ended."""
        keys = None
        if self.keyed and buffers is not None:  # a training batch: masks of its own
            keys = draw_dropout_keys(self.num_envs)
        actions = self._act(deterministic, keys)
        outcome = self.envs.step(self.to_env(actions))
        ended = self.observe(t, buffers, actions, outcome, active, stats)
        if keys is not None:
            buffers.arrays["dropout_keys"][t] = keys.numpy()
        return ended

    def _act(self, deterministic: bool, keys: Tensor | None = None) -> np.ndarray:
        """The actor's actions for the current observations (with dropout masks keyed by
        ``keys`` where given)."""
        if self.mirror is not None:
            return self.mirror.act(self._obs, deterministic)
        with torch.inference_mode(), self._dropping(keys):
            device_obs = torch.from_numpy(self._obs).to(self.device)
            return self.actor.act(device_obs, deterministic).cpu().numpy()

    def _dropping(self, keys: Tensor | None) -> contextlib.AbstractContextManager:
        """Within the block the actor drops units by ``keys`` (None: no dropout, as the
        collector acts otherwise)."""
        return under_masks(self.actor, None if keys is None else keys.to(self.device))

    def observe(
        self,
        t: int,
        buffers: _Buffers | None,
        actions: np.ndarray,
        outcome: tuple,
        active: np.ndarray,
        stats: EpisodeStats,
    ) -> np.ndarray:
        """Record the step that ``actions`` led to (``outcome``, the env's step) at row
        ``t``; returns where a counted episode ended."""
        obs = self._obs
        raw, rewards, terminated, truncated, info = outcome
        self.env_steps += self.num_envs
        done = terminated | truncated
        valid = active & ~self._prev_done
        ended = done & valid
        if self.update_normalizer:
            self.normalizer.track_rewards(rewards, valid, ended)
        if buffers is not None:
            buffers.put(t, obs, actions, rewards, terminated, truncated, valid)
        elif not ended.any():  # the common step of an evaluation: only the carries grow
            self._episode_return += np.where(valid, rewards, 0.0)
            self._episode_length += valid
        else:
            self._count_episodes(rewards[None], valid[None], ended[None], stats)
        if "success" in info and ended.any():
            reported = info.get("_success", np.ones(self.num_envs, dtype=bool))
            stats.successes += info["success"][ended & reported].astype(bool).tolist()
        if SCORE_KEY in info and ended.any():
            reported = info.get(f"_{SCORE_KEY}", np.ones(self.num_envs, dtype=bool))
            stats.scores += np.asarray(info[SCORE_KEY])[ended & reported].astype(float).tolist()
        self._prev_done = done
        self._obs = self._prepare(raw, info)
        return ended

    def _count_episodes(
        self, rewards: np.ndarray, valid: np.ndarray, ended: np.ndarray, stats: EpisodeStats
    ) -> None:
        """Add the episodes that end within these ``[T, N]`` steps to ``stats``, in time order.

        Episodes still running carry their partial return and length to the next call.
        """
        totals = np.cumsum(np.where(valid, rewards, 0.0), axis=0)
        counts = np.cumsum(valid, axis=0)
        finished: list[tuple[int, int, float, int]] = []
        for i in np.flatnonzero(ended.any(axis=0)):
            ends = np.flatnonzero(ended[:, i])
            # sums up to each end, minus sums up to the end before (the carry before the first)
            ret = totals[ends, i] - np.concatenate(
                [[-self._episode_return[i]], totals[ends[:-1], i]]
            )
            length = counts[ends, i] - np.concatenate(
                [[-self._episode_length[i]], counts[ends[:-1], i]]
            )
            finished += zip(ends.tolist(), [i] * len(ends), ret.tolist(), length.tolist())
            self._episode_return[i] = -totals[ends[-1], i]
            self._episode_length[i] = -counts[ends[-1], i]
        for _, _, episode_return, episode_length in sorted(finished):
            stats.returns.append(float(episode_return))
            stats.lengths.append(int(episode_length))
        self._episode_return += totals[-1]
        self._episode_length += counts[-1]

    def _buffers(self, capacity: int) -> _Buffers:
        space = self.envs.single_action_space
        shape = space.shape if len(space.shape) else ()
        if isinstance(space, (gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
            shape = (int(np.prod(shape)),)  # as the head draws them: one flat row
        dtype = np.float32 if np.issubdtype(space.dtype, np.floating) else np.int64
        obs_dtype = np.uint8 if self.image_bytes else np.float32
        return _Buffers(
            capacity, self.num_envs, self.encode.dim, shape, dtype, obs_dtype, self.keyed
        )

    def collect_steps(
        self, steps_per_env: int, deterministic: bool = False, scorer: Scorer | None = None
    ) -> Batch:
        """Run every env ``steps_per_env`` steps, continuing episodes from the last batch
        (``scorer``: as for :meth:`finish_batches`)."""
        buffers, stats = self.start_batch(steps_per_env)
        everyone = np.ones(self.num_envs, dtype=bool)
        for t in range(steps_per_env):
            self.check_stop()
            self._step(t, buffers, deterministic, everyone, stats)
        return self.finish_batches([self], [buffers], steps_per_env, [stats], scorer)[0]

    def check_stop(self) -> None:
        """Raise :class:`CollectionStopped` if :attr:`stop` says a stop was requested."""
        if self.stop is not None and self.stop():
            raise CollectionStopped

    def start_batch(self, steps_per_env: int) -> tuple[_Buffers, EpisodeStats]:
        if self._obs is None:
            self.reset()
        self._begin()
        return self._buffers(steps_per_env), EpisodeStats()

    def _run_episodes(
        self,
        num_episodes: int,
        buffers: _Buffers | None,
        deterministic: bool,
        stats: EpisodeStats,
    ) -> int:
        """Reset, then step until ``num_episodes`` complete episodes are in; returns T
        (which episodes count: :class:`Quota`)."""
        self.reset()
        quota = Quota(self.num_envs, num_episodes)
        t = 0
        while quota.open():
            if buffers is not None:  # a training batch (an evaluation plays its episodes)
                self.check_stop()
            quota.close(self._step(t, buffers, deterministic, quota.counted, stats))
            t += 1
        return t

    def collect_episodes(self, num_episodes: int, deterministic: bool = False) -> Batch:
        """Reset the envs and run them until ``num_episodes`` complete episodes are in."""
        buffers = self._buffers(256)
        stats = EpisodeStats()
        length = self._run_episodes(num_episodes, buffers, deterministic, stats)
        return self._finish(buffers, length, stats)

    def run_episodes(self, num_episodes: int, deterministic: bool = True) -> EpisodeStats:
        """Play ``num_episodes`` complete episodes and return their statistics only."""
        stats = EpisodeStats()
        self._run_episodes(num_episodes, None, deterministic, stats)
        return stats

    def _finish(self, buffers: _Buffers, length: int, stats: EpisodeStats) -> Batch:
        return self.finish_batches([self], [buffers], length, [stats])[0]

    @staticmethod
    def finish_batches(
        collectors: Sequence[Collector],
        buffers: Sequence[_Buffers],
        length: int,
        stats: Sequence[EpisodeStats],
        scorer: Scorer | None = None,
    ) -> list[Batch]:
        """The collectors' batches from their filled ``buffers``: episodes counted,
        rewards normalised, the last step marked truncated, and the log-probabilities
        and values of the collecting networks (each collector's own, or all from
        ``scorer`` in one call)."""
        parts = [c._gather(b, length, s) for c, b, s in zip(collectors, buffers, stats)]
        if scorer is None:
            scores = [
                c._score(*part[1:], keys=part[0].get("dropout_keys"))
                for c, part in zip(collectors, parts)
            ]
        else:
            stacked = scorer(*(torch.stack(tensors) for tensors in list(zip(*parts))[1:]))
            scores = list(zip(*stacked))
        return [
            c._batch(data, *score, length, s)
            for c, (data, *_), score, s in zip(collectors, parts, scores, stats)
        ]

    def _gather(
        self, buffers: _Buffers, length: int, stats: EpisodeStats
    ) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """The buffers' first ``length`` rows on the device, with the episodes that
        ended counted; and what :meth:`_score` takes (flat observations and actions,
        the observations after the last step)."""
        data = buffers.tensors(length)
        ends = (data["terminated"] | data["truncated"]) & data["valid"]
        self._count_episodes(data["rewards"].numpy(), data["valid"].numpy(), ends.numpy(), stats)
        if self.normalizer is not None:
            data["rewards"] = self.normalizer.rewards(data["rewards"])
        data = {key: value.to(self.device) for key, value in data.items()}
        # The rollout stops here: bootstrap from the next observation where the
        # episode did not truly terminate.
        data["truncated"] = data["truncated"].clone()
        data["truncated"][-1] |= ~data["terminated"][-1]
        flat_obs = data["obs"].reshape(length * self.num_envs, -1)
        last_obs = torch.from_numpy(self._obs).to(self.device)
        return data, flat_obs, data["actions"].flatten(0, 1), last_obs

    def _score(
        self, obs: Tensor, actions: Tensor, last_obs: Tensor, keys: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The actor's log-probabilities of ``actions`` at ``obs`` (under the dropout
        masks the steps acted with, ``keys`` ``[T, N]``), and the critic's values of
        ``obs`` and of ``last_obs`` (None without a critic); a shared body runs once
        over ``obs`` (:func:`~pglab.policies.evaluate_actions`)."""
        flat_keys = None if keys is None else keys.flatten()
        with torch.no_grad():
            with self._dropping(flat_keys):
                log_probs, _, values = evaluate_actions(self.actor, self.critic, obs, actions)
            if self.critic is None:
                return log_probs, None, None
            return log_probs, values, self.critic(last_obs)

    def _batch(
        self,
        data: dict[str, Tensor],
        log_probs: Tensor,
        values: Tensor | None,
        last_values: Tensor | None,
        length: int,
        stats: EpisodeStats,
    ) -> Batch:
        shape = (length, self.num_envs)
        next_values = None
        if values is not None:
            values = values.reshape(shape)
            next_values = torch.cat([values[1:], last_values.unsqueeze(0)])
        return Batch(
            obs=data["obs"],
            actions=data["actions"],
            log_probs=log_probs.reshape(shape),
            rewards=data["rewards"],
            terminated=data["terminated"],
            truncated=data["truncated"],
            valid=data["valid"],
            values=values,
            next_values=next_values,
            episodes=stats,
            dropout_keys=data.get("dropout_keys"),
        )
