"""Small environments for tests: one whose returns are known by hand, one that never
ends, and ones that break in the ways real ones do; made by ``faulty_envs:Class`` ids.

``tests/`` is on ``sys.path`` under pytest; a subprocess gets it through PYTHONPATH.
"""

from __future__ import annotations

import math
import time

import gymnasium as gym
import numpy as np

#: What ``FaultyEnv(fault=...)`` returns at its faulty call: (quantity, value).
FAULTS = {
    "obs-nan": ("observation", float("nan")),
    "obs-inf": ("observation", float("inf")),
    "obs-neginf": ("observation", float("-inf")),
    "obs-1e30": ("observation", 1e30),
    "obs-None": ("observation", None),
    "reward-nan": ("reward", float("nan")),
    "reward-inf": ("reward", float("inf")),
    "reward-neginf": ("reward", float("-inf")),
    "reward-1e30": ("reward", 1e30),
    "reward-None": ("reward", None),
    "reward-text": ("reward", "1.0"),
}


class Countdown(gym.Env):
    """Observation = steps taken so far; reward = 1 each step.

    Ends after ``length`` steps, by termination or (``truncate=True``) truncation.
    """

    def __init__(self, length: int = 3, truncate: bool = False):
        self.length, self.truncate = length, truncate
        self.observation_space = gym.spaces.Box(0.0, np.inf, (1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.length
        obs = np.array([float(self.t)], dtype=np.float32)
        return obs, 1.0, end and not self.truncate, end and self.truncate, {}


class NeverEnds(Countdown):
    """Observation = steps since reset; reward 1; no episode ever ends on its own."""

    def __init__(self) -> None:
        super().__init__(length=math.inf)


class FaultyEnv(gym.Env):
    """Well behaved until the ``at``-th step of an episode (``at=0``: its reset), where
    it gives the ``fault``: a bad value from :data:`FAULTS`, ``raise``, ``shape`` (an
    observation of 3 numbers for a space of 2), ``dtype`` (an observation of strings),
    ``large`` (large values that are still sane: no fault).
    Only episodes from the ``from_episode``-th on (counting from 0) are faulty.
    Episodes end (terminate) after 10 steps. Healthy for Gymnasium's env checker, which
    steps each episode once or twice."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, fault: str = "obs-nan", at: int = 3, from_episode: int = 0):
        self.fault, self.at, self.from_episode = fault, at, from_episode
        self.episode = -1

    def _faulty(self, obs, reward):
        if self.fault == "raise":
            raise RuntimeError("the simulator diverged")
        if self.fault == "shape":
            return np.zeros(3, dtype=np.float32), reward
        if self.fault == "dtype":
            return np.array(["0.1", "0.2"]), reward
        if self.fault == "large":  # large but finite and below 1e20: not a fault
            return np.full(2, 1e19, dtype=np.float32), 1e19
        quantity, value = FAULTS[self.fault]
        if quantity == "reward":
            return obs, value
        if value is None:
            return None, reward
        obs = obs.copy()
        obs[1] = value
        return obs, reward

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.episode += 1
        obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        if self.at == 0 and self.episode >= self.from_episode:
            obs, _ = self._faulty(obs, 0.0)
        return obs, {}

    def step(self, action):
        self.t += 1
        obs = np.array([self.t / 10, 0.0], dtype=np.float32)
        reward = 1.0
        if self.t == self.at and self.episode >= self.from_episode:
            obs, reward = self._faulty(obs, reward)
        return obs, reward, self.t >= 10, False, {}


class OldApiEnv(gym.Env):
    """Written for gym < 0.26: ``step`` returns (obs, reward, done, info)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(2, dtype=np.float32), 1.0, False, {}


class OldResetEnv(OldApiEnv):
    """Written for gym < 0.26: ``reset`` returns the observation alone."""

    def reset(self, *, seed=None, options=None):
        return super().reset(seed=seed)[0]


class NoneFlagEnv(OldApiEnv):
    """``step`` returns ``terminated=None``."""

    def step(self, action):
        return np.zeros(2, dtype=np.float32), 1.0, None, False, {}


class UnseededEnv(gym.Env):
    """Runs fine, but ignores the seed: Gymnasium's env checker rejects it."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.random.uniform(-1, 1, 2).astype(np.float32)
        return obs, 1.0, self.t >= 20, False, {}


class SlowNeverEnds(NeverEnds):
    """A :class:`NeverEnds` whose steps take 5 ms: a batch of its episodes takes minutes."""

    def step(self, action):
        time.sleep(0.005)
        return super().step(action)
