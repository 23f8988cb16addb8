"""Weight functions of a user's own, for the tests of ``algo.weights = "weight_functions:..."``."""

import torch
from torch import Tensor


def reward_to_go(rewards: Tensor, terminated: Tensor, truncated: Tensor) -> Tensor:
    """The reward-to-go, written as a user would: a loop back in time that restarts at
    every episode end (what pglab's ``fr`` computes)."""
    ends = (terminated | truncated).to(rewards.dtype)
    psi = torch.zeros_like(rewards)
    carry = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        carry = rewards[t] + (1.0 - ends[t]) * carry
        psi[t] = carry
    return psi


def one_step_advantage(
    rewards: Tensor, terminated: Tensor, gamma: float, values: Tensor, next_values: Tensor
) -> Tensor:
    """The TD residual r_t + gamma (1 - d_t) V(s_t+1) - V(s_t): it names the values, so
    its run fits a critic."""
    return rewards + gamma * (~terminated) * next_values - values


def every_argument(**given: Tensor) -> Tensor:
    """Takes whatever it is given (``**kwargs``): every argument, the values None without
    a critic."""
    assert given["values"] is None and set(given) >= {"rewards", "valid", "lam"}
    return given["rewards"].clone()


def a_number(rewards: Tensor) -> float:
    """Returns a number, not Psi [T, N]."""
    return float(rewards.sum())


def one_per_env(rewards: Tensor) -> Tensor:
    """Returns one value per env [N], not one per step."""
    return rewards.sum(0)


def needs_a_discount_table(rewards: Tensor, discounts: Tensor) -> Tensor:
    """Takes an argument pglab does not give."""
    return rewards * discounts
