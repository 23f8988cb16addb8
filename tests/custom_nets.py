"""A network body of a user's own, for the tests of ``policy.body = "custom_nets:..."``."""

from torch import Tensor, nn


class GatedBody(nn.Module):
    """Features ``tanh(W x) * sigmoid(G x)``: nothing pglab's fast paths know."""

    def __init__(self, obs_dim: int, width: int = 16) -> None:
        super().__init__()
        self.value = nn.Linear(obs_dim, width)
        self.gate = nn.Linear(obs_dim, width)

    def forward(self, obs: Tensor) -> Tensor:
        return self.value(obs).tanh() * self.gate(obs).sigmoid()
