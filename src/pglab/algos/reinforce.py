r"""REINFORCE: the vanilla policy gradient with a choice of weights :math:`\Psi_t`.

Williams (1992); Sutton et al. (2000); Schulman et al. (2016) for the weights.
One update per batch:

1. collect a batch (complete episodes for ``r``/``fr``/``dfr``, or T steps of N envs);
2. compute the weights :math:`\Psi_t` (see :mod:`pglab.returns`), optionally
   standardised over the batch;
3. take one gradient step on
   :math:`L(\theta) = -\frac{1}{|\mathcal V|}\sum \log\pi_\theta(a_t \mid s_t)\,\Psi_t
   - c_H\, \bar H`;
4. for the critic weights (``dfrb``, ``td``, ``gae``), regress :math:`V_\phi(s_t)` on
   the targets :math:`\hat R_t = \Psi_t + V_\phi(s_t)` for ``value_epochs`` full-batch
   steps with its own optimizer (optionally re-created every batch, which keeps the
   critic from carrying momentum into a moving target).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pglab.algos.base import fit_critic, gradient_step, scheduled_lr
from pglab.losses import entropy_loss, explained_variance, policy_gradient_loss
from pglab.optim import FlatOptimizer
from pglab.policies import Actor, Critic
from pglab.returns import masked_mean, masked_var, policy_gradient_weights, standardize
from pglab.rollout import Batch

if TYPE_CHECKING:  # the config layer sits above; only its type is named here
    from pglab.config import AlgoConfig


class Reinforce:
    """The REINFORCE family of ``--weights r|fr|dfr|dfrb|td|gae``."""

    #: Diagnostics returned by :meth:`update`, in logging order.
    METRICS = (
        "policy_loss",
        "entropy",
        "grad_norm",
        "lr",
        "weights_mean",
        "weights_var",
        "value_loss",
        "explained_variance",
    )

    def __init__(self, actor: Actor, critic: Critic | None, config: AlgoConfig) -> None:
        self.actor = actor
        self.critic = critic
        self.config = config
        self.policy_optimizer = FlatOptimizer(
            config.optimizer, actor.parameters(), config.lr, config.weight_decay, config.eps
        )
        self.value_optimizer = self._make_value_optimizer() if critic is not None else None

    def _make_value_optimizer(self) -> FlatOptimizer:
        cfg = self.config
        return FlatOptimizer(cfg.optimizer, self.critic.parameters(), cfg.value_lr, eps=cfg.eps)

    def update(self, batch: Batch, progress: float) -> dict[str, float]:
        """One policy-gradient step (and critic fit) on ``batch``; ``progress`` in [0, 1]."""
        cfg = self.config
        valid = batch.valid
        # Pong's returns restart after each point: a non-zero reward ends the sum.
        terminated = batch.terminated
        if cfg.reset_return_at_reward:
            terminated = terminated | (batch.rewards != 0)

        # Weights Psi_t: data, not a path for the gradient.
        psi = policy_gradient_weights(
            cfg.weights,
            rewards=batch.rewards,
            terminated=terminated,
            truncated=batch.truncated,
            gamma=cfg.gamma,
            lam=cfg.lam,
            values=batch.values,
            next_values=batch.next_values,
            valid=valid,
        )
        weights = standardize(psi, valid) if cfg.normalize_weights else psi

        # Policy step on L = -mean(log pi * Psi) - c_H * mean(H).
        lr = scheduled_lr(cfg.lr, cfg.lr_schedule, progress)
        self.policy_optimizer.lr = lr
        self.actor.train()
        log_probs, entropy = self.actor.log_prob_entropy(
            batch.obs.flatten(0, 1), batch.actions.flatten(0, 1)
        )
        log_probs = log_probs.view_as(batch.rewards)
        entropy = entropy.view_as(batch.rewards)
        pg_loss = policy_gradient_loss(log_probs, weights, valid)
        loss = pg_loss + cfg.entropy_coef * entropy_loss(entropy, valid)
        grad_norm = gradient_step(self.policy_optimizer, loss, cfg.max_grad_norm, "policy loss")
        metrics = {
            "policy_loss": pg_loss.item(),
            "entropy": masked_mean(entropy.detach(), valid).item(),
            "grad_norm": grad_norm,
            "lr": lr,
            "weights_mean": masked_mean(psi, valid).item(),
            "weights_var": masked_var(psi, valid).item(),
        }
        if self.critic is not None:
            metrics.update(self._fit_critic(batch, targets=psi + batch.values, progress=progress))
        return metrics

    def _fit_critic(self, batch: Batch, targets: torch.Tensor, progress: float) -> dict[str, float]:
        """``value_epochs`` full-batch steps of MSE regression of V(s_t) on the targets."""
        cfg = self.config
        if cfg.value_reset_optimizer:
            self.value_optimizer = self._make_value_optimizer()
        self.value_optimizer.lr = scheduled_lr(cfg.value_lr, cfg.lr_schedule, progress)
        mask = batch.valid.flatten()
        loss = fit_critic(
            self.critic,
            self.value_optimizer,
            batch.obs.flatten(0, 1)[mask],
            targets.flatten()[mask],
            epochs=cfg.value_epochs,
            max_grad_norm=cfg.max_grad_norm,
        )
        return {
            "value_loss": loss,
            "explained_variance": explained_variance(batch.values, targets, batch.valid).item(),
        }

    def state_dict(self) -> dict:
        state = {"policy_optimizer": self.policy_optimizer.state_dict()}
        if self.value_optimizer is not None:
            state["value_optimizer"] = self.value_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        if self.value_optimizer is not None and "value_optimizer" in state:
            self.value_optimizer.load_state_dict(state["value_optimizer"])
