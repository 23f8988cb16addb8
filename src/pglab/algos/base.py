"""Pieces every learning rule uses: optimizers, the learning-rate schedule, a guarded step."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from pglab.errors import TrainingError
from pglab.losses import explained_variance, value_loss
from pglab.policies import Actor, Critic, GaussianHead, unique_parameters
from pglab.returns import gae, masked_var
from pglab.rollout import Batch

if TYPE_CHECKING:  # the config layer sits above; only its type is named here
    from pglab.config import AlgoConfig

_OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


def make_optimizer(
    name: str,
    params: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """``adam`` | ``sgd`` | ``rmsprop`` over ``params`` (foreach implementation).

    ``eps`` is Adam's and RMSprop's epsilon (RMSprop with smoothing 0.99).
    """
    extra = {} if name == "sgd" else {"eps": eps}
    return _OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, foreach=True, **extra)


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


def gae_advantages(batch: Batch, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    r"""GAE(:math:`\gamma, \lambda`) advantages :math:`\hat A_t` and the critic's targets
    :math:`\hat R_t = \hat A_t + V(s_t)` (the :math:`\lambda`-returns), both ``[T, N]``."""
    advantages = gae(
        batch.rewards,
        batch.values,
        batch.next_values,
        batch.terminated,
        batch.episode_ends,
        gamma,
        lam,
        valid=batch.valid,
    )
    return advantages, advantages + batch.values


def valid_samples(batch: Batch, **extra: Tensor) -> dict[str, Tensor]:
    """The batch's valid transitions as flat ``[B, ...]`` tensors (obs, actions, log_probs,
    values, and every ``[T, N]`` tensor passed in ``extra``)."""
    mask = batch.valid.flatten()
    tensors = {
        "obs": batch.obs,
        "actions": batch.actions,
        "log_probs": batch.log_probs,
        "values": batch.values,
        **extra,
    }
    return {k: v.flatten(0, 1)[mask] for k, v in tensors.items() if v is not None}


def minibatch_indices(size: int, minibatches: int) -> list[Tensor]:
    """A random partition of ``range(size)`` into ``minibatches`` near-equal parts."""
    return list(torch.randperm(size).chunk(min(minibatches, max(size, 1))))


def fit_critic(
    critic: Critic,
    optimizer: torch.optim.Optimizer,
    obs: Tensor,
    targets: Tensor,
    *,
    epochs: int,
    minibatches: int = 1,
    max_grad_norm: float = 0.0,
) -> float:
    r"""Regress :math:`V_\phi(s)` on fixed targets: ``epochs`` passes of ``minibatches``
    MSE steps, :math:`\frac1B \sum (V_\phi(s_b) - \hat R_b)^2`. Returns the last loss.

    ``obs`` ``[B, obs_dim]`` and ``targets`` ``[B]`` hold valid samples only.
    """
    loss = torch.zeros(())
    for _ in range(epochs):
        for index in minibatch_indices(len(targets), minibatches):
            loss = value_loss(critic(obs[index]), targets[index])
            gradient_step(optimizer, loss, list(critic.parameters()), max_grad_norm, "value loss")
    return loss.item()


def advantage_metrics(data: dict[str, Tensor], actor: Actor) -> dict[str, float]:
    """Mean and variance of the advantages, the critic's explained variance on the
    batch's values, and (for a Gaussian policy) the policy std."""
    return {
        "weights_mean": data["advantages"].mean().item(),
        "weights_var": masked_var(data["advantages"]).item(),
        "explained_variance": explained_variance(data["values"], data["returns"]).item(),
        **policy_std(actor),
    }


def policy_std(actor: Actor) -> dict[str, float]:
    """``{"policy_std": mean std}`` for a Gaussian policy, else nothing."""
    if isinstance(actor.head, GaussianHead):
        return {"policy_std": actor.head.std().mean().item()}
    return {}


class JointOptimizer:
    """Actor and critic trained through one loss by one optimizer (A2C, PPO).

    A shared body is stepped once: the parameters are collected without repeats.
    """

    def __init__(self, actor: Actor, critic: Critic, config: AlgoConfig) -> None:
        self.actor = actor
        self.critic = critic
        self.config = config
        self.params = unique_parameters(actor, critic)
        self.optimizer = make_optimizer(
            config.optimizer, self.params, config.lr, config.weight_decay, config.eps
        )

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
