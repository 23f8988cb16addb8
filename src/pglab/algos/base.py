"""Pieces every learning rule uses: optimizers, the learning-rate schedule, a guarded step."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pglab.errors import TrainingError

_OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``adam`` | ``sgd`` | ``rmsprop`` over ``params`` (foreach implementation)."""
    return _OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, foreach=True)


def scheduled_lr(base_lr: float, schedule: str, progress: float) -> float:
    r"""Learning rate at ``progress`` in [0, 1] of the budget.

    ``constant``: :math:`\alpha_0`; ``linear``: :math:`\alpha_0 (1 - \text{progress})`.
    """
    if schedule == "linear":
        return base_lr * max(0.0, 1.0 - progress)
    return base_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def gradient_step(
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    params: list[nn.Parameter],
    max_grad_norm: float = 0.0,
    what: str = "loss",
) -> float:
    r"""Backpropagate ``loss`` and step, clipping the global gradient norm when > 0.

    Returns the gradient norm :math:`\lVert \nabla \rVert_2` *before* clipping. A
    non-finite loss or gradient raises :class:`TrainingError` and leaves the
    parameters untouched.
    """
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the {what} became non-finite ({loss.item()}); "
            "lower the learning rate or enable gradient clipping"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    limit = max_grad_norm if max_grad_norm > 0 else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(params, limit, foreach=True))
    if not math.isfinite(norm):
        raise TrainingError(
            f"the gradient of the {what} became non-finite; "
            "lower the learning rate or enable gradient clipping"
        )
    optimizer.step()
    return norm
