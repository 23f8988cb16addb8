"""Network bodies: multilayer perceptrons with configurable width, activation and dropout,
and an MLP's forward and backward passes written out on explicit weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

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


#: Activations whose derivative :func:`dense_backward` knows, by their module type.
DENSE_ACTIVATIONS: dict[type[nn.Module], str] = {nn.Tanh: "tanh", nn.ReLU: "relu"}

#: One layer's weights: ``W`` ``[..., out, in]`` and ``b`` ``[..., out]``.
Dense = tuple[Tensor, Tensor]


def dense_layers(body: nn.Module) -> tuple[list[nn.Linear], str] | None:
    """The linear layers of a plain MLP body (``Linear`` layers with one kind of
    activation from :data:`DENSE_ACTIVATIONS` between them, no dropout) and the
    activation's name; None for any other body."""
    if not isinstance(body, nn.Sequential) or len(body) % 2:
        return None
    modules = list(body)
    linears, activations = modules[0::2], modules[1::2]
    if not all(type(m) is nn.Linear for m in linears):
        return None
    kinds = {DENSE_ACTIVATIONS.get(type(m)) for m in activations}
    if None in kinds or len(kinds) > 1:
        return None
    return linears, kinds.pop() if kinds else "tanh"  # no hidden layer: no activation


def dense_forward(x: Tensor, layers: Sequence[Dense], activation: str) -> list[Tensor]:
    r"""An MLP's forward pass on explicit weights, keeping what :func:`dense_backward` needs.

    Layer :math:`i` computes :math:`h_i = f(h_{i-1} W_i^\top + b_i)`, with :math:`f`
    the activation on every layer but the last. ``x`` is ``[B, in]``, or
    ``[M, B, in]`` with weights ``[M, ...]`` for M networks at once (a population).
    Returns :math:`[h_0 = x, h_1, \dots, h_L]`.

    A layer with one output (a value, a Bernoulli logit, a 1-D Gaussian's mean) is
    computed as the weighted sum :math:`\sum_j h_j w_j + b`: a batched matrix product
    with one output column rounds differently with the number of stacked networks,
    and a network's numbers must not depend on the others in its stack.
    """
    outputs = [x]
    for i, (weight, bias) in enumerate(layers):
        hidden = i < len(layers) - 1
        # tanh(z) = 2 sigmoid(2z) - 1: torch's sigmoid kernel is several times faster
        # on a CPU than its tanh, and the affine map gives 2z for free.
        scale = 2.0 if hidden and activation == "tanh" else 1.0
        if weight.shape[-2] == 1:  # one output: a weighted sum (see the docstring)
            h = (outputs[-1] * weight).sum(-1, keepdim=True).add_(bias.unsqueeze(-2))
            h = h.mul_(scale) if scale != 1.0 else h
        elif x.dim() == 2:
            h = torch.addmm(bias, outputs[-1], weight.t(), beta=scale, alpha=scale)
        else:
            h = torch.baddbmm(bias.unsqueeze(-2), outputs[-1], weight.mT, beta=scale, alpha=scale)
        if hidden:
            h = h.sigmoid_().mul_(2.0).sub_(1.0) if activation == "tanh" else h.relu_()
        outputs.append(h)
    return outputs


def dense_backward(
    outputs: Sequence[Tensor], layers: Sequence[Dense], activation: str, grad: Tensor
) -> list[Dense]:
    r"""Backpropagation through :func:`dense_forward`: the gradient of a loss with
    respect to every layer's weights, given ``grad`` :math:`= \partial L / \partial h_L`.

    From the top down, with :math:`g_i = \partial L / \partial z_i` the gradient at
    layer :math:`i`'s pre-activation :math:`z_i` (:math:`g_L` = ``grad``):

    .. math::
        \frac{\partial L}{\partial W_i} = g_i^\top h_{i-1}, \qquad
        \frac{\partial L}{\partial b_i} = \sum_{\text{batch}} g_i, \qquad
        g_{i-1} = (g_i W_i) \odot f'(z_{i-1})

    where :math:`f'` comes from the layer's output: :math:`1 - h^2` for tanh,
    :math:`[h > 0]` for relu. Returns ``(dW, db)`` per layer, shaped as the weights.
    """
    grads: list[Dense] = []
    g = grad
    for i in range(len(layers) - 1, -1, -1):
        h = outputs[i]
        grads.append((g.mT @ h, g.sum(-2)))
        if i > 0:
            g = g @ layers[i][0]
            if activation == "tanh":
                g = torch.ops.aten.tanh_backward(g, h)
            else:
                g = torch.ops.aten.threshold_backward(g, h, 0.0)
    return grads[::-1]
