r"""Running normalisation of observations and rewards, with state for checkpoints.

Observations: :math:`\hat o = \mathrm{clip}\big((o - \mu) / \sqrt{\sigma^2 + \epsilon}, \pm c_o\big)`
with :math:`\mu, \sigma^2` running over every observation seen in training.

Rewards, by one of three methods, then clipped to :math:`\pm c_r`:

- ``return``: :math:`\hat r_t = r_t / \sqrt{\mathrm{Var}[R] + \epsilon}`, the running
  variance of the discounted return :math:`R_t = \gamma R_{t-1} + r_t` (reset to 0 at each
  episode end). The mean is not subtracted, so the sign of a reward is kept (the "reward
  scaling" of Engstrom et al. 2020, as in Stable-Baselines3's VecNormalize).
- ``reward``: :math:`\hat r_t = r_t / \sqrt{\mathrm{Var}[r] + \epsilon}`, the running
  variance of the rewards themselves (sign kept).
- ``standardize``: :math:`\hat r_t = (r_t - \mathrm{E}[r]) / \sqrt{\mathrm{Var}[r] + \epsilon}`.
  Subtracting the mean changes the task wherever episodes end early (a constant reward
  of 1 per step, CartPole's, becomes 0), which is what makes it instructive.

Training updates the statistics; evaluation and :class:`pglab.Agent` apply them
frozen, exactly as the networks saw them last.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

EPSILON = 1e-8
REWARD_METHODS: tuple[str, ...] = ("return", "reward", "standardize")


class RunningMeanStd:
    """Mean and variance of a stream of batches (the parallel algorithm of Chan et al. 1979)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = EPSILON

    def update(self, batch: np.ndarray) -> None:
        """Fold in a batch ``[B, *shape]``."""
        if len(batch) == 0:
            return
        n = batch.shape[0]
        if n == 1:  # one env: the row is its mean and 0 its variance, as numpy would give
            batch_mean, batch_var = batch[0], 0.0
        else:
            batch_mean, batch_var = batch.mean(axis=0), batch.var(axis=0)
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Tensor | float]:
        return {
            "mean": torch.from_numpy(np.array(self.mean, dtype=np.float64)),
            "var": torch.from_numpy(np.array(self.var, dtype=np.float64)),
            "count": float(self.count),
        }

    def load_state_dict(self, state: dict) -> None:
        self.mean = state["mean"].numpy().astype(np.float64)
        self.var = state["var"].numpy().astype(np.float64)
        self.count = float(state["count"])


class Normalizer:
    """Observation normalisation and reward scaling for one run.

    Args:
        obs_dim: width of the (encoded) observations.
        num_envs: parallel envs whose discounted returns are tracked.
        obs: normalise observations.
        reward: scale rewards.
        reward_method: how (one of :data:`REWARD_METHODS`, see the module docstring).
        clip_obs / clip_reward: clip after normalising (0 = no clipping).
        gamma: the discount of the tracked return.
    """

    def __init__(
        self,
        obs_dim: int,
        num_envs: int,
        *,
        obs: bool,
        reward: bool,
        reward_method: str = "return",
        clip_obs: float = 10.0,
        clip_reward: float = 10.0,
        gamma: float = 0.99,
    ) -> None:
        self.normalize_obs = obs
        if reward_method not in REWARD_METHODS:
            raise ValueError(
                f"reward_method must be one of {REWARD_METHODS}, got {reward_method!r}"
            )
        self.scale_rewards = reward
        self.reward_method = reward_method
        self.clip_obs = clip_obs
        self.clip_reward = clip_reward
        self.gamma = gamma
        self.obs_stats = RunningMeanStd((obs_dim,))
        self.reward_stats = RunningMeanStd()  # of the return or of the reward, by method
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._refresh()

    def _refresh(self) -> None:
        """Cache the observation mean and std as float32 arrays (used every step)."""
        self._obs_mean = self.obs_stats.mean.astype(np.float32)
        self._obs_std = np.sqrt(self.obs_stats.var + EPSILON).astype(np.float32)

    def observe(self, obs: np.ndarray, update: bool) -> np.ndarray:
        """Normalise a float32 batch ``[N, obs_dim]``, first folding it into the
        statistics if ``update``."""
        if not self.normalize_obs:
            return obs
        if update:
            self.obs_stats.update(obs[..., : len(self._obs_mean)].astype(np.float64))
            self._refresh()
        return self.obs(obs)

    def obs(self, obs: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """Normalise observations (a tensor or a float32 array) with the current (frozen)
        statistics; columns beyond ``obs_dim`` (an action mask) pass unchanged. Both
        types take the same float32 operations, so they give the same numbers."""
        if not self.normalize_obs:
            return obs
        width = len(self._obs_mean)
        if obs.shape[-1] > width:
            head, mask = self.obs(obs[..., :width]), obs[..., width:]
            if isinstance(obs, Tensor):
                return torch.cat([head, mask], dim=-1)
            return np.concatenate([head, mask], axis=-1)
        mean, std = self._obs_mean, self._obs_std
        if isinstance(obs, Tensor):
            mean, std = torch.from_numpy(mean).to(obs.device), torch.from_numpy(std).to(obs.device)
        out = (obs - mean) / std
        return out.clip(-self.clip_obs, self.clip_obs) if self.clip_obs > 0 else out

    def track_rewards(self, rewards: np.ndarray, valid: np.ndarray, ended: np.ndarray) -> None:
        """Fold one step's rewards (or, for ``return``, each env's discounted return) in."""
        if not self.scale_rewards:
            return
        if self.reward_method != "return":
            self.reward_stats.update(np.asarray(rewards, dtype=np.float64)[valid])
            return
        self._returns = np.where(valid, self._returns * self.gamma + rewards, self._returns)
        self.reward_stats.update(self._returns[valid])
        self._returns[ended] = 0.0

    def rewards(self, rewards: Tensor) -> Tensor:
        """Scale (or standardise) rewards with the running statistics, then clip."""
        if not self.scale_rewards:
            return rewards
        if self.reward_method == "standardize":
            rewards = rewards - float(self.reward_stats.mean)
        out = rewards / float(np.sqrt(self.reward_stats.var + EPSILON))
        return out.clamp(-self.clip_reward, self.clip_reward) if self.clip_reward > 0 else out

    def state_dict(self) -> dict:
        return {
            "obs": self.obs_stats.state_dict(),
            "return": self.reward_stats.state_dict(),
            "returns": torch.from_numpy(self._returns.copy()),
        }

    def load_state_dict(self, state: dict) -> None:
        self.obs_stats.load_state_dict(state["obs"])
        self.reward_stats.load_state_dict(state["return"])
        self._refresh()
        returns = state["returns"].numpy()
        if returns.shape == self._returns.shape:
            self._returns = returns.astype(np.float64)
