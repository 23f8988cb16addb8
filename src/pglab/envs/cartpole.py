r"""A leaner step for Gymnasium's CartPole vector env, with identical numbers.

With small policies a CartPole batch is bound by the fixed cost of each vector step,
not by arithmetic: Gymnasium's ``CartPoleVectorEnv.step`` checks the action space,
stacks a new state array and runs its reset bookkeeping on every call. This subclass
computes the same dynamics (Barto, Sutton and Anderson 1983, Euler integration with
:math:`\tau = 0.02`)

.. math::

    \ddot\theta = \frac{g \sin\theta - \cos\theta\, h}
                       {l \left(\tfrac43 - m_p \cos^2\theta / (m_c + m_p)\right)},
    \qquad h = \frac{F + m_p l\, \dot\theta^2 \sin\theta}{m_c + m_p},
    \qquad \ddot x = h - \frac{m_p l\, \ddot\theta \cos\theta}{m_c + m_p}

with the same floating-point operations in the same order, and draws its resets from
the same generator with the same calls, so every observation, reward and flag equals
Gymnasium's bit for bit (``tests/test_envs.py`` checks this). It skips the action
check (the collector's actions come from a categorical head over the two actions)
and the reset bookkeeping on steps that follow no episode end.

:func:`pglab.envs.make_vec_env` uses it wherever Gymnasium would build its own
``CartPoleVectorEnv`` (``CartPole-v0``, ``CartPole-v1``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv as GymCartPoleVectorEnv

#: Gymnasium's vector entry point that this class replaces.
GYMNASIUM_ENTRY_POINT = "gymnasium.envs.classic_control.cartpole:CartPoleVectorEnv"
ENTRY_POINT = "pglab.envs.cartpole:CartPoleVectorEnv"


class CartPoleVectorEnv(GymCartPoleVectorEnv):
    """Gymnasium's CartPole vector env (NEXT_STEP autoreset) with a cheaper ``step``."""

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every env one step; an env that ended on the last step resets instead."""
        if self.state is None:
            raise RuntimeError("call reset before step")
        x, x_dot, theta, theta_dot = self.state
        force = np.where(np.asarray(action) > 0, self.force_mag, -self.force_mag)
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        state = np.empty_like(self.state)
        if self.kinematics_integrator == "euler":
            np.add(x, self.tau * x_dot, out=state[0])
            np.add(x_dot, self.tau * xacc, out=state[1])
            np.add(theta, self.tau * theta_dot, out=state[2])
            np.add(theta_dot, self.tau * thetaacc, out=state[3])
        else:  # semi-implicit Euler
            np.add(x_dot, self.tau * xacc, out=state[1])
            np.add(x, self.tau * state[1], out=state[0])
            np.add(theta_dot, self.tau * thetaacc, out=state[3])
            np.add(theta, self.tau * state[3], out=state[2])
        self.state = state
        terminated = (np.abs(state[0]) > self.x_threshold) | (
            np.abs(state[2]) > self.theta_threshold_radians
        )
        self.steps += 1
        truncated = self.steps >= self.max_episode_steps
        if self._sutton_barto_reward:
            reward = -terminated.astype(np.float32)
        else:
            reward = np.ones(self.num_envs, dtype=np.float32)
        restart = self.prev_done
        if restart.any():  # these envs ended last step: this step is their reset
            state[:, restart] = self.np_random.uniform(
                low=self.low, high=self.high, size=(4, int(restart.sum()))
            )
            self.steps[restart] = 0
            reward[restart] = 0.0
            terminated[restart] = False
            truncated[restart] = False
        self.prev_done = terminated | truncated
        return state.T.astype(np.float32), reward, terminated, truncated, {}
