r"""The line world: walk to a target on a line (or a grid) of cells.

A line of ``grid_size`` cells per dimension. Each episode starts at a random cell with
a random target. The observation is (position, target), the actions move each
coordinate by -1, 0 or +1 (``3 ** dimensions`` discrete actions, one per combination),
and every step is rewarded

.. math:: r_t = -\frac{\lVert p_{t+1} - g \rVert_1}{\text{grid\_size} - 1}

so the reward is 0 at the target and more negative the farther away. Episodes last
exactly ``episode_length`` steps (the end is a true termination: the task is
finite-horizon). At the last step ``info["success"]`` says whether the agent stands
on the target.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class LineWorldEnv(gym.Env[np.ndarray, int]):
    """Walk to the target on a ``dimensions``-D grid with ``grid_size`` cells a side."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(
        self,
        grid_size: int = 10,
        dimensions: int = 1,
        episode_length: int = 20,
        render_mode: str | None = None,
    ) -> None:
        if grid_size < 2:
            raise ValueError(f"grid_size must be >= 2, got {grid_size}")
        if dimensions < 1:
            raise ValueError(f"dimensions must be >= 1, got {dimensions}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self.grid_size = grid_size
        self.dimensions = dimensions
        self.episode_length = episode_length
        self.render_mode = render_mode
        high = np.full(2 * dimensions, grid_size - 1, dtype=np.float32)
        self.observation_space = gym.spaces.Box(np.zeros_like(high), high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(3**dimensions)
        # Row k of the table is the move of action k: base-3 digits minus 1.
        digits = (np.arange(3**dimensions)[:, None] // 3 ** np.arange(dimensions)) % 3
        self._moves = digits.astype(np.int64) - 1
        self._position = np.zeros(dimensions, dtype=np.int64)
        self._target = np.zeros(dimensions, dtype=np.int64)
        self._t = 0

    def _obs(self) -> np.ndarray:
        return np.concatenate([self._position, self._target]).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._position = self.np_random.integers(0, self.grid_size, self.dimensions)
        self._target = self.np_random.integers(0, self.grid_size, self.dimensions)
        self._t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        move = self._moves[int(action)]
        self._position = np.clip(self._position + move, 0, self.grid_size - 1)
        self._t += 1
        distance = np.abs(self._position - self._target).sum()
        reward = -float(distance) / (self.grid_size - 1)
        terminated = self._t >= self.episode_length
        info: dict[str, Any] = {}
        if terminated:
            info["success"] = bool(distance == 0)
        return self._obs(), reward, terminated, False, info

    def render(self) -> np.ndarray:
        """An RGB picture: grey cells, the target in green, the agent in blue."""
        size = self.grid_size
        cell = 24
        rows = size if self.dimensions >= 2 else 1
        image = np.full((rows * cell, size * cell, 3), 220, dtype=np.uint8)
        for point, colour in ((self._target, (60, 170, 60)), (self._position, (50, 90, 200))):
            x = int(point[0])
            y = int(point[1]) if self.dimensions >= 2 else 0
            image[y * cell + 3 : (y + 1) * cell - 3, x * cell + 3 : (x + 1) * cell - 3] = colour
        return image
