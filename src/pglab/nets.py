"""Network bodies: multilayer perceptrons with configurable width, activation and dropout.

(An MLP's forward and backward passes written out on explicit weights, the speed path
of PPO's update, are in :mod:`pglab.dense`.)"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

#: Activation functions selectable by name (``policy.activation``).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int | None = None,
    activation: str = "tanh",
    dropout: float = 0.0,
) -> nn.Sequential:
    """A multilayer perceptron ``in_dim -> hidden[0] -> ... -> hidden[-1] (-> out_dim)``.

    Each hidden layer is ``Linear -> activation (-> Dropout)``. With ``out_dim`` a
    final linear layer without activation is added. With no hidden layers and no
    ``out_dim`` the body is the identity (so a head on it is a linear model).
    """
    layers: list[nn.Module] = []
    width = in_dim
    for units in hidden:
        layers += [nn.Linear(width, units), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = units
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def output_dim(in_dim: int, hidden: Sequence[int]) -> int:
    """Width of the features that :func:`mlp` without ``out_dim`` produces."""
    return hidden[-1] if hidden else in_dim
