"""The env's own episodic return (the game score), whatever wrappers do to the rewards.

Training often changes the rewards: Atari's wrappers clip them to their sign, a user's
``TransformReward`` rescales them. Papers and other libraries report the game's own
score, so evaluation does too. :class:`GameScore` sits on each copy of the env under
every reward-changing wrapper (above the episode cap, below frame skipping, which
steps it once per frame): it adds up the env's own rewards and, at the step where an
episode ends, puts the sum in ``info["game_score"]``. The collector records it beside
the return of the rewards it trained on (:class:`~pglab.rollout.EpisodeStats`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

#: The info key that carries an ended episode's game score.
SCORE_KEY = "game_score"


class GameScore(gym.Wrapper):
    """Adds ``info["game_score"]``, the sum of the env's own rewards, where an episode ends."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._total = 0.0

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self._total = 0.0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._total += float(reward)
        if terminated or truncated:
            info = {**info, SCORE_KEY: self._total}
        return obs, reward, terminated, truncated, info
