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

from collections.abc import Sequence
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
        return self._advance(self._dynamics(self.state, action))

    @staticmethod
    def step_together(
        envs: Sequence[CartPoleVectorEnv], actions: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]]:
        """``[env.step(a) for env, a in zip(envs, actions)]`` with the dynamics of all
        of them in one set of array operations (elementwise, so every number is the
        same). The envs must share their physical constants; each keeps its own
        episode counters and draws its resets from its own generator."""
        first = envs[0]
        if any(env.state is None for env in envs):
            raise RuntimeError("call reset before step")
        if any(_constants(env) != _constants(first) for env in envs):
            raise ValueError("step_together needs envs with the same physical constants")
        state = first._dynamics(
            np.concatenate([env.state for env in envs], axis=1), np.concatenate(actions)
        )
        bounds = np.cumsum([0] + [env.num_envs for env in envs])
        return [
            env._advance(state[:, low:high]) for env, low, high in zip(envs, bounds, bounds[1:])
        ]

    def _dynamics(self, state: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The state ``[4, n]`` one Euler step after ``state`` under ``action`` ``[n]``."""
        x, x_dot, theta, theta_dot = state
        force = np.where(np.asarray(action) > 0, self.force_mag, -self.force_mag)
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        new = np.empty_like(state)
        if self.kinematics_integrator == "euler":
            np.add(x, self.tau * x_dot, out=new[0])
            np.add(x_dot, self.tau * xacc, out=new[1])
            np.add(theta, self.tau * theta_dot, out=new[2])
            np.add(theta_dot, self.tau * thetaacc, out=new[3])
        else:  # semi-implicit Euler
            np.add(x_dot, self.tau * xacc, out=new[1])
            np.add(x, self.tau * new[1], out=new[0])
            np.add(theta_dot, self.tau * thetaacc, out=new[3])
            np.add(theta, self.tau * new[3], out=new[2])
        return new

    def _advance(
        self, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Take ``state`` (from :meth:`_dynamics`) as the new state: rewards, episode
        ends, and the resets of the envs that ended on the previous step."""
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


def _constants(env: CartPoleVectorEnv) -> tuple:
    """What fixes an env's dynamics and rewards."""
    return (
        env.gravity,
        env.masscart,
        env.masspole,
        env.length,
        env.force_mag,
        env.tau,
        env.kinematics_integrator,
        env.x_threshold,
        env.theta_threshold_radians,
        env.max_episode_steps,
        env._sutton_barto_reward,
    )
