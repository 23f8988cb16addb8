r"""Pixel pipelines for Atari: the classic Pong preprocessing and the standard wrappers.

``pong``: the preprocessing of the policy-gradient Pong agent (Karpathy, "Pong from
Pixels", 2016). Each 210x160 RGB frame is cropped to the playing field (rows
35-194), downsampled by 2 to 80x80 (one colour channel), and binarised (background
0, paddles and ball 1). The observation is the difference of the last two such
frames, 6400 numbers in {-1, 0, 1} that show where things move. The agent chooses
between two actions, UP and DOWN, so a Bernoulli policy fits.

``atari``: the wrappers of Mnih et al. (2015) as most PPO implementations use them:
up to 30 no-op actions at reset, 4 repeated frames with max-pooling over the last two,
84x84 grayscale, rewards clipped to their sign, 4 stacked frames (``(4, 84, 84)``
uint8, for a CNN).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TransformReward

#: The Pong background colours (in the red channel) that become 0.
PONG_BACKGROUND = (144, 109)
#: UP and DOWN in Pong's minimal action set.
PONG_ACTIONS = (2, 3)


def pong_frame(frame: np.ndarray) -> np.ndarray:
    """One 210x160x3 frame as an 80x80 float32 image: 1 where a paddle or the ball is."""
    field = frame[35:195:2, ::2, 0]
    return (~np.isin(field, PONG_BACKGROUND) & (field != 0)).astype(np.float32)


class PongDifference(gym.Wrapper):
    """Observations: the difference of consecutive :func:`pong_frame` images, flat (6400,).

    Actions: 0 = UP, 1 = DOWN. The first observation of an episode is all zeros.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (6400,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._previous: np.ndarray | None = None

    def _difference(self, frame: np.ndarray) -> np.ndarray:
        current = pong_frame(frame)
        previous = current if self._previous is None else self._previous
        self._previous = current
        return (current - previous).reshape(-1)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        frame, info = self.env.reset(**kwargs)
        self._previous = None
        return self._difference(frame), info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        frame, reward, terminated, truncated, info = self.env.step(PONG_ACTIONS[int(action)])
        return self._difference(frame), reward, terminated, truncated, info


def standard_atari(env: gym.Env) -> gym.Env:
    """The Mnih et al. (2015) wrappers; ``env`` must be made with ``frameskip=1``."""
    env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84)
    env = TransformReward(env, lambda r: float(np.sign(r)))
    return FrameStackObservation(env, 4)


#: ``env.preprocess`` name -> (wrapper, keyword arguments the base env needs).
PREPROCESSORS: dict[str, tuple[Any, dict[str, Any]]] = {
    "pong": (PongDifference, {}),
    "atari": (standard_atari, {"frameskip": 1}),
}
