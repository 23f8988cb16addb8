"""The best expected return of a toy-text env, computed from its transition table.

Gymnasium's toy-text envs (FrozenLake, Taxi, CliffWalking) publish their dynamics as
``env.unwrapped.P[state][action] = [(probability, next state, reward, terminated), ...]``
and their start distribution as ``initial_state_distrib``. Under a time limit of
:math:`H` steps the optimal undiscounted return is found by backward induction:

.. math::

    V_0(s) = 0, \\qquad
    V_h(s) = \\max_a \\sum_{(p, s', r, d)} p \\,\\big(r + (1 - d)\\, V_{h-1}(s')\\big),

and the figure printed is :math:`\\sum_s \\rho_0(s)\\, V_H(s)`: the return no policy can
beat on average (for FrozenLake, the best success rate), the ceiling for a learning table.

    python tabular_optimum.py FrozenLake-v1
    python tabular_optimum.py FrozenLake-v1 --kwargs '{"map_name": "8x8"}'
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import numpy as np

from machine import command_line


def optimal_return(env_id: str, kwargs: dict | None = None, horizon: int | None = None) -> float:
    """The optimal expected return of ``env_id`` within ``horizon`` steps (default: its
    registered time limit), from its start distribution."""
    env = gym.make(env_id, **(kwargs or {}))
    horizon = horizon or env.spec.max_episode_steps
    table, start = env.unwrapped.P, np.asarray(env.unwrapped.initial_state_distrib)
    env.close()
    values = np.zeros(len(table))
    for _ in range(horizon):
        values = np.array(
            [
                max(
                    sum(p * (r + (0.0 if done else values[s2])) for p, s2, r, done in outcomes)
                    for outcomes in table[s].values()
                )
                for s in range(len(table))
            ]
        )
    return float(start @ values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env", help="a toy-text env id, e.g. FrozenLake-v1")
    parser.add_argument("--kwargs", default="{}", help="env kwargs as JSON")
    parser.add_argument("--horizon", type=int, default=None, help="default: the time limit")
    args = parser.parse_args()
    value = optimal_return(args.env, json.loads(args.kwargs), args.horizon)
    print(f"command: `{command_line()}`")
    print(f"optimal expected return of {args.env} {args.kwargs}: {value:.4f}")


if __name__ == "__main__":
    main()
