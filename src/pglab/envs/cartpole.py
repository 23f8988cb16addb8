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

import itertools
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
        return _advance([self], self._dynamics(self.state, action))[0]

    @staticmethod
    def step_together(
        envs: Sequence[CartPoleVectorEnv], actions: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]]:
        """``[env.step(a) for env, a in zip(envs, actions)]`` in one set of array
        operations over all their envs (elementwise, so every number is the same). The
        envs must share their physical constants; each keeps its own episode counters
        and draws its resets from its own generator."""
        first = envs[0]
        if any(env.state is None for env in envs):
            raise RuntimeError("call reset before step")
        constants = _constants(first)
        if any(_constants(env) != constants for env in envs[1:]):
            raise ValueError("step_together needs envs with the same physical constants")
        state = np.concatenate([env.state for env in envs], axis=1)
        return _advance(envs, first._dynamics(state, np.concatenate(actions)))

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
    envs: Sequence[CartPoleVectorEnv], state: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]]:
    """Take ``state`` ``[4, n]`` (from :meth:`CartPoleVectorEnv._dynamics`) as the new
    state of ``envs``, whose envs own its columns in order: rewards, episode ends, and
    the resets of the envs that ended on the previous step. Returns each env's step."""
    first = envs[0]
    alone = len(envs) == 1
    if alone:
        steps, restart = first.steps + 1, first.prev_done
    else:
        steps = np.concatenate([env.steps for env in envs]) + 1
        restart = np.concatenate([env.prev_done for env in envs])
    terminated = (np.abs(state[0]) > first.x_threshold) | (
        np.abs(state[2]) > first.theta_threshold_radians
    )
    truncated = steps >= first.max_episode_steps
    if first._sutton_barto_reward:
        reward = -terminated.astype(np.float32)
    else:
        reward = np.ones(len(steps), dtype=np.float32)
    if restart.any():  # these envs ended last step: this step is their reset
        for env, part in zip(envs, [slice(None)] if alone else _columns(envs)):
            mine = restart[part]
            if mine.any():
                state[:, part][:, mine] = env.np_random.uniform(
                    low=env.low, high=env.high, size=(4, int(mine.sum()))
                )
        steps[restart] = 0
        reward[restart] = 0.0
        terminated[restart] = False
        truncated[restart] = False
    done = terminated | truncated
    obs = state.T.astype(np.float32)
    if alone:
        first.state, first.steps, first.prev_done = state, steps, done
        return [(obs, reward, terminated, truncated, {})]
    outcomes = []
    for env, part in zip(envs, _columns(envs)):
        env.state, env.steps, env.prev_done = state[:, part], steps[part], done[part]
        outcomes.append((obs[part], reward[part], terminated[part], truncated[part], {}))
    return outcomes


def _columns(envs: Sequence[CartPoleVectorEnv]) -> list[slice]:
    """Each env's columns of the stacked state."""
    ends = list(itertools.accumulate(env.num_envs for env in envs))
    return [slice(end - env.num_envs, end) for env, end in zip(envs, ends)]


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
