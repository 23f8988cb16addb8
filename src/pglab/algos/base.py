"""Pieces every learning rule uses: optimizers, the learning-rate schedule, a guarded step."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from pglab.errors import TrainingError
from pglab.losses import explained_variance, value_loss
from pglab.optim import FlatOptimizer
from pglab.policies import Actor, Critic, DenseActorCritic, GaussianHead, unique_parameters
from pglab.returns import gae, masked_mean, masked_var
from pglab.rollout import Batch

if TYPE_CHECKING:  # the config layer sits above; only its type is named here
    from pglab.config import AlgoConfig


def scheduled_lr(base_lr: float, schedule: str, progress: float) -> float:
    r"""Learning rate at ``progress`` in [0, 1] of the budget.

    ``constant``: :math:`\alpha_0`; ``linear``: :math:`\alpha_0 (1 - \text{progress})`.
    """
    if schedule == "linear":
        return base_lr * max(0.0, 1.0 - progress)
    return base_lr


def gradient_step(
    optimizer: FlatOptimizer,
    loss: Tensor,
    max_grad_norm: float = 0.0,
    what: str = "loss",
    grad: Tensor | None = None,
) -> float:
    r"""Backpropagate ``loss`` into the optimizer's parameters and step, clipping the
    global gradient norm when ``max_grad_norm`` > 0.

    With :math:`g` the gradient and :math:`c` = ``max_grad_norm``, the step uses
    :math:`g \cdot \min(1, c / (\lVert g \rVert_2 + 10^{-6}))` (as
    ``clip_grad_norm_``). Returns :math:`\lVert g \rVert_2` *before* clipping. A
    non-finite loss or gradient raises :class:`TrainingError` and leaves the
    parameters untouched. A parameter the loss does not reach gets a zero gradient.
    ``grad``, when given, is the gradient already taken (one vector in the optimizer's
    parameter order), and ``loss`` is then only checked.
    """
    if not math.isfinite(loss.item()):
        raise TrainingError(
            f"the {what} became non-finite ({loss.item()}); "
            "lower the learning rate or enable gradient clipping"
        )
    if grad is None:
        grad = optimizer.flatten(torch.autograd.grad(loss, optimizer.params, allow_unused=True))
    norm = float(grad.norm())
    if not math.isfinite(norm):
        raise TrainingError(
            f"the gradient of the {what} became non-finite; "
            "lower the learning rate or enable gradient clipping"
        )
    scale = max_grad_norm / (norm + 1e-6) if max_grad_norm > 0 else 1.0
    if scale < 1.0:
        grad.mul_(scale)
    optimizer.step(grad)
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


def valid_samples(batch: Batch, masked: bool = False, **extra: Tensor) -> dict[str, Tensor]:
    """The batch's transitions as flat ``[B, ...]`` tensors (obs, actions, log_probs,
    values, and every ``[T, N]`` tensor passed in ``extra``).

    By default only the valid transitions; with ``masked`` every transition, plus a
    ``valid`` flag for the losses to weigh them by (equal shapes across batches, as a
    population's stacked update needs).
    """
    tensors = {
        "obs": batch.obs,
        "actions": batch.actions,
        "log_probs": batch.log_probs,
        "values": batch.values,
        **extra,
    }
    flat = {k: v.flatten(0, 1) for k, v in tensors.items() if v is not None}
    if masked:
        return {**flat, "valid": batch.valid.flatten()}
    mask = batch.valid.flatten()
    return {k: v[mask] for k, v in flat.items()}


def minibatch_indices(
    size: int, minibatches: int, generator: torch.Generator | None = None
) -> list[Tensor] | list[slice]:
    """A random partition of ``range(size)`` into ``minibatches`` near-equal parts.

    With one minibatch, the whole batch as a slice: the order does not matter then,
    and a slice indexes without copying.
    """
    if minibatches <= 1:
        return [slice(None)]
    order = torch.randperm(size, generator=generator)
    return list(order.chunk(min(minibatches, max(size, 1))))


def fit_critic(
    critic: Critic,
    optimizer: FlatOptimizer,
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
            gradient_step(optimizer, loss, max_grad_norm, "value loss")
    return loss.item()


def advantage_metrics(data: dict[str, Tensor], actor: Actor) -> dict[str, float]:
    """Mean and variance of the advantages, the critic's explained variance on the
    batch's values, and (for a Gaussian policy) the policy std."""
    valid = data.get("valid")
    return {
        "weights_mean": masked_mean(data["advantages"], valid).item(),
        "weights_var": masked_var(data["advantages"], valid).item(),
        "explained_variance": explained_variance(data["values"], data["returns"], valid).item(),
        **policy_std(actor),
    }


def policy_std(actor: Actor) -> dict[str, float]:
    """``{"policy_std": mean std}`` for a Gaussian policy, else nothing."""
    if isinstance(actor.head, GaussianHead):
        return {"policy_std": actor.head.std().mean().item()}
    return {}


class JointOptimizer:
    r"""Actor and critic trained through one loss by one optimizer (A2C, PPO).

    A subclass gives the loss of one minibatch (:meth:`loss`) and how many passes
    over how many minibatches an update makes; the update itself is shared:

    1. advantages :math:`\hat A_t` by GAE(:math:`\gamma, \lambda`) and value targets
       :math:`\hat R_t = \hat A_t + V(s_t)`, under the policy that collected the batch;
    2. for ``epochs`` passes, for each of ``minibatches`` random minibatches, one
       gradient step on the loss, with the global gradient norm clipped;
    3. with ``target_kl`` set, stop the passes at the first minibatch whose approximate
       :math:`\mathrm{KL}(\pi_{old} \| \pi_\theta)` (the k3 estimator) exceeds it,
       before stepping on it.

    A shared body is stepped once: the parameters are collected without repeats.
    """

    METRICS: tuple[str, ...] = ()
    #: Hyperparameters of :meth:`loss` that may differ between population members.
    LOSS_HYPERPARAMETERS = ("vf_coef", "entropy_coef")
    #: Whether the subclass writes out its loss's gradient (:meth:`loss_and_gradient`).
    WRITTEN_GRADIENT = False

    def __init__(self, actor: Actor, critic: Critic, config: AlgoConfig) -> None:
        self.actor = actor
        self.critic = critic
        self.config = config
        self.params = unique_parameters(actor, critic)
        self.optimizer = FlatOptimizer(
            config.optimizer, self.params, config.lr, config.weight_decay, config.eps
        )
        #: The networks, where the loss's gradient is taken without autograd (else None).
        self.dense: DenseActorCritic | None = None
        if self.WRITTEN_GRADIENT and config.gradients == "auto":
            self.dense = DenseActorCritic.build(actor, critic)
        if self.dense is not None:  # parameters by name, and the names in step order
            self._named = DenseActorCritic.parameters(actor, critic)
            names = {id(p): name for name, p in self._named.items()}
            self._order = [names[id(p)] for p in self.params]

    # What a subclass gives.

    @property
    def epochs(self) -> int:
        return 1

    @property
    def minibatches(self) -> int:
        return 1

    @staticmethod
    def loss(
        actor: Actor, critic: Critic, mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one minibatch and its diagnostics (tensors; ``approx_kl`` among them)."""
        raise NotImplementedError

    @staticmethod
    def loss_and_gradient(
        net: DenseActorCritic, params: dict[str, Tensor], mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """:meth:`loss` and its gradient by parameter name, without autograd (where
        :attr:`WRITTEN_GRADIENT`)."""
        raise NotImplementedError

    # The shared update.

    def prepare(self, batch: Batch, masked: bool = False) -> dict[str, Tensor]:
        """The batch as flat samples with ``advantages`` and ``returns`` (see :func:`valid_samples`)."""
        advantages, returns = gae_advantages(batch, self.config.gamma, self.config.lam)
        return valid_samples(batch, masked, advantages=advantages, returns=returns)

    def hyperparameters(self, progress: float) -> dict[str, Any]:
        """Learning rate, clip range (linearly annealed where configured) and the loss's
        coefficients at ``progress`` in [0, 1] of the budget."""
        cfg = self.config
        return {
            "lr": scheduled_lr(cfg.lr, cfg.lr_schedule, progress),
            "clip_range": scheduled_lr(cfg.clip_range, cfg.clip_schedule, progress),
            "vf_coef": cfg.vf_coef,
            "entropy_coef": cfg.entropy_coef,
            "value_clip": cfg.value_clip,
            "normalize": cfg.normalize_weights,
        }

    def update(self, batch: Batch, progress: float) -> dict[str, float]:
        """Epochs x minibatches of steps on :meth:`loss` over ``batch``; ``progress`` in [0, 1]."""
        cfg = self.config
        data = self.prepare(batch)
        hp = self.hyperparameters(progress)
        self.optimizer.lr = hp["lr"]
        self.actor.train()
        totals: dict[str, float] = {}
        steps, stopped, per_epoch = 0, False, 1
        for _ in range(self.epochs):
            parts = minibatch_indices(len(data["returns"]), self.minibatches)
            per_epoch = len(parts)
            for index in parts:
                mb = {k: v[index] for k, v in data.items()}
                loss, stats, grad = self.minibatch_loss(mb, hp)
                if cfg.target_kl > 0 and stats["approx_kl"] > cfg.target_kl:
                    stopped = True
                    break
                name = f"{type(self).__name__} loss"
                stats["grad_norm"] = gradient_step(
                    self.optimizer, loss, cfg.max_grad_norm, name, grad
                )
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + float(value)
                steps += 1
            if stopped:
                break
        metrics = {key: total / max(steps, 1) for key, total in totals.items()}
        metrics.update(lr=hp["lr"], clip_range=hp["clip_range"], epochs=steps / per_epoch)
        return self.finish_metrics(metrics, data)

    def minibatch_loss(
        self, mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        """The minibatch's loss and diagnostics, with its gradient (one vector in the
        optimizer's order) where it is written out, else None for autograd to take."""
        if self.dense is None:
            return *self.loss(self.actor, self.critic, mb, hp), None
        with torch.inference_mode():
            loss, stats, grads = self.loss_and_gradient(self.dense, self._named, mb, hp)
        return loss, stats, torch.cat([grads[name].flatten() for name in self._order])

    def finish_metrics(
        self, metrics: dict[str, float], data: dict[str, Tensor]
    ) -> dict[str, float]:
        """The update's diagnostics: ``metrics`` plus the advantages' and the critic's,
        restricted to :attr:`METRICS`."""
        metrics.update(advantage_metrics(data, self.actor))
        return {key: value for key, value in metrics.items() if key in self.METRICS}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
