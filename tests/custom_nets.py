"""A network body of a user's own, for the tests of ``policy.body = "custom_nets:..."``."""

import gymnasium as gym
import torch
from torch import Tensor, nn

from pglab.policies import Actor, make_head


class GatedBody(nn.Module):
    """Features ``tanh(W x) * sigmoid(G x)``: nothing pglab's fast paths know."""

    def __init__(self, obs_dim: int, width: int = 16) -> None:
        super().__init__()
        self.value = nn.Linear(obs_dim, width)
        self.gate = nn.Linear(obs_dim, width)

    def forward(self, obs: Tensor) -> Tensor:
        return self.value(obs).tanh() * self.gate(obs).sigmoid()


class WideActor(Actor):
    """A whole actor of the user's own: a ReLU body of ``width`` and pglab's head for the
    action space."""

    def __init__(self, obs_dim: int, action_space: gym.Space, width: int = 24) -> None:
        body = nn.Sequential(nn.Linear(obs_dim, width), nn.ReLU())
        super().__init__(body, make_head(width, action_space))


class TwoTowerCritic(nn.Module):
    """A whole critic of the user's own: the mean of two small value towers."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.towers = nn.ModuleList([nn.Linear(obs_dim, 1) for _ in range(2)])

    def forward(self, obs: Tensor) -> Tensor:
        return torch.stack([tower(obs).squeeze(-1) for tower in self.towers]).mean(0)


class NotAnActor(nn.Module):
    """Takes an actor's arguments but is a plain module: refused as an actor."""

    def __init__(self, obs_dim: int, action_space: gym.Space) -> None:
        super().__init__()
        self.linear = nn.Linear(obs_dim, 2)


def warm_up(progress: float) -> float:
    """A learning-rate schedule of the user's own: a tenth at the start, whole from 50%."""
    return min(1.0, 0.1 + 1.8 * progress)


class DroppingBody(nn.Module):
    """A ReLU layer followed by torch's own dropout (not pglab's keyed one)."""

    def __init__(self, obs_dim: int, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(obs_dim, width), nn.ReLU(), nn.Dropout(0.3))

    def forward(self, obs: Tensor) -> Tensor:
        return self.layers(obs)
