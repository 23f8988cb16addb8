"""Tiny envs over every Gymnasium space, for the space tests.

``SpacesEnv`` draws its observations from any observation space and rewards a fixed
rule on any action space; the ``*Task`` envs have a known best policy, for the seeded
learning tests: the observation tells the answer, and the best return is ``LENGTH``.
"""

import copy

import gymnasium as gym
import numpy as np

LENGTH = 5


class SpacesEnv(gym.Env):
    """Observations drawn from ``observation_space``; reward 1 when the first entry of
    the (flattened) action is 0, else 0; episodes of 6 steps."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        # Copies: a space samples from its own generator, which copies must not share.
        self.observation_space = copy.deepcopy(observation_space)
        self.action_space = copy.deepcopy(action_space)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        assert self.action_space.contains(action), action
        self._t += 1
        first = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        reward = 1.0 if first == 0.0 else 0.0
        return self.observation_space.sample(), reward, False, self._t >= 6, {}


class _Task(gym.Env):
    """An episode of ``LENGTH`` steps; each step's answer is in the observation."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._new()
        return self._obs(), {}

    def step(self, action):
        reward = self._reward(action)
        self._t += 1
        self._new()
        return self._obs(), reward, self._t >= LENGTH, False, {}


class DictTask(_Task):
    """A Dict observation: ``goal`` (Discrete(3)) names the action that pays 1;
    ``noise`` (a Box) and ``flag`` (MultiBinary) are distractions."""

    observation_space = gym.spaces.Dict(
        {
            "goal": gym.spaces.Discrete(3),
            "noise": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
            "flag": gym.spaces.MultiBinary(2),
        }
    )
    action_space = gym.spaces.Discrete(3)

    def _new(self):
        self._goal = int(self.np_random.integers(3))

    def _obs(self):
        return {
            "goal": self._goal,
            "noise": self.np_random.uniform(-1, 1, 2).astype(np.float32),
            "flag": self.np_random.integers(0, 2, 2).astype(np.int8),
        }

    def _reward(self, action):
        return 1.0 if int(action) == self._goal else 0.0


class MultiDiscreteTask(_Task):
    """MultiDiscrete([3, 2]) actions: each entry pays 0.5 when it equals the target the
    observation shows one-hot (a Box of 5)."""

    observation_space = gym.spaces.Box(0.0, 1.0, (5,), np.float32)
    action_space = gym.spaces.MultiDiscrete([3, 2])

    def _new(self):
        self._target = (int(self.np_random.integers(3)), int(self.np_random.integers(2)))

    def _obs(self):
        obs = np.zeros(5, dtype=np.float32)
        obs[self._target[0]] = 1.0
        obs[3 + self._target[1]] = 1.0
        return obs

    def _reward(self, action):
        return 0.5 * (int(action[0]) == self._target[0]) + 0.5 * (int(action[1]) == self._target[1])


class ImageTask(_Task):
    """7x7 RGB images (height x width x channels, uint8) with one lit pixel: action 0
    pays 1 when it is in the left three columns, action 1 when in the right three."""

    observation_space = gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def _new(self):
        self._side = int(self.np_random.integers(2))
        self._row = int(self.np_random.integers(7))
        self._column = int(self.np_random.integers(3)) + 4 * self._side

    def _obs(self):
        image = np.zeros((7, 7, 3), dtype=np.uint8)
        image[self._row, self._column] = 255
        return image

    def _reward(self, action):
        return 1.0 if int(action) == self._side else 0.0


class Fives(gym.Env):
    """Every step pays 5; episodes of 6 steps (a game score of 30)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self._t += 1
        return np.zeros(2, np.float32), 5.0, self._t >= 6, False, {}


class MaskedEnv(gym.Env):
    """Each step a random set of legal actions (at least one), reported in
    ``info["action_mask"]`` or, with ``in_obs``, in the Dict observation's
    ``action_mask`` key; an illegal action fails the step. Reward: 1 for the highest
    legal action. ``nvec`` makes the actions MultiDiscrete (a mask per entry)."""

    def __init__(self, in_obs: bool = False, nvec: tuple[int, ...] = ()) -> None:
        self.in_obs = in_obs
        self.nvec = list(nvec)
        self.action_space = gym.spaces.MultiDiscrete(nvec) if nvec else gym.spaces.Discrete(4)
        self.sizes = self.nvec or [4]
        features = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        mask = gym.spaces.MultiBinary(sum(self.sizes))
        self.observation_space = (
            gym.spaces.Dict({"features": features, "action_mask": mask}) if in_obs else features
        )

    def _draw(self):
        parts = []
        for size in self.sizes:
            legal = self.np_random.integers(0, 2, size).astype(np.int8)
            legal[self.np_random.integers(size)] = 1
            parts.append(legal)
        self._legal = parts
        mask = np.concatenate(parts)
        features = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        if self.in_obs:
            return {"features": features, "action_mask": mask}, {}
        return features, {"action_mask": mask}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._draw()

    def step(self, action):
        chosen = np.atleast_1d(np.asarray(action))
        for legal, a in zip(self._legal, chosen):
            assert legal[int(a)], f"illegal action {int(a)} taken (legal: {legal.tolist()})"
        reward = float(
            all(int(a) == int(np.flatnonzero(legal)[-1]) for legal, a in zip(self._legal, chosen))
        )
        self._t += 1
        obs, info = self._draw()
        return obs, reward, False, self._t >= 8, info
