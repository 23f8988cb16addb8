"""Which Gymnasium spaces pglab handles, and the conversions at the env boundary.

Observations: ``Box`` (flattened to a vector) and ``Discrete`` (one-hot).
Actions: ``Discrete`` (categorical or Bernoulli head) and 1-D ``Box`` (Gaussian head).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from pglab.errors import EnvError

SUPPORTED_OBSERVATIONS = "Box or Discrete"
SUPPORTED_ACTIONS = "Discrete or 1-D Box"


def check_spaces(env_id: str, observation_space: gym.Space, action_space: gym.Space) -> None:
    """Raise :class:`EnvError` with one line when a space is not supported."""
    if not isinstance(observation_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise EnvError(
            f"env {env_id!r} has observation space {observation_space}; "
            f"pglab supports {SUPPORTED_OBSERVATIONS} observations"
        )
    box_1d = isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1
    if not (isinstance(action_space, gym.spaces.Discrete) or box_1d):
        raise EnvError(
            f"env {env_id!r} has action space {action_space}; "
            f"pglab supports {SUPPORTED_ACTIONS} actions"
        )


class ObsEncoder:
    """Turns a batch of observations from a vector env into a float32 ``[N, dim]`` tensor."""

    def __init__(self, space: gym.Space) -> None:
        self.space = space
        if isinstance(space, gym.spaces.Discrete):
            self.dim = int(space.n)
            self._one_hot = np.eye(self.dim, dtype=np.float32)
        else:
            self.dim = int(np.prod(space.shape))

    def __call__(self, obs: np.ndarray) -> Tensor:
        return torch.from_numpy(self.array(obs))

    def array(self, obs: np.ndarray) -> np.ndarray:
        """The encoding as a float32 numpy array ``[N, dim]``."""
        if isinstance(self.space, gym.spaces.Discrete):
            index = np.asarray(obs, dtype=np.int64) - self.space.start
            return self._one_hot[index]
        array = np.asarray(obs, dtype=np.float32)
        return array.reshape(array.shape[0], self.dim)


class ActionAdapter:
    """Turns the policy's actions into what the env accepts.

    Discrete actions are shifted by the space's ``start``; Box actions are clipped to
    the bounds (the unclipped action stays in the batch for its log-probability), or
    with ``squash`` mapped into them by :math:`\\ell + (h - \\ell)(\tanh u + 1)/2`.
    """

    def __init__(self, space: gym.Space, squash: bool = False) -> None:
        self.space = space
        self.squash = squash
        if isinstance(space, gym.spaces.Box):
            self.low = space.low.astype(np.float32)
            self.high = space.high.astype(np.float32)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        if isinstance(self.space, gym.spaces.Discrete):
            return array + self.space.start if self.space.start else array
        if self.squash:
            squashed = self.low + (self.high - self.low) * (np.tanh(array) + 1.0) / 2.0
            return squashed.astype(np.float32, copy=False)
        return np.clip(array, self.low, self.high).astype(np.float32, copy=False)
