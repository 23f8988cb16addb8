r"""A2C: synchronous advantage actor-critic (Mnih et al. 2016, the synchronous variant).

For each batch of T steps (n-step rollouts) from N envs:

1. advantages :math:`\hat A_t` by GAE(:math:`\gamma, \lambda`); :math:`\lambda = 1`
   gives the plain n-step advantage
   :math:`\sum_{k<n} \gamma^k r_{t+k} + \gamma^n V(s_{t+n}) - V(s_t)`;
   value targets :math:`\hat R_t = \hat A_t + V(s_t)`;
2. one gradient step on

   .. math::
       L = -\frac1B\sum \log\pi_\theta(a_t \mid s_t)\,\hat A_t
           + c_V \frac1B\sum \big(V_\phi(s_t) - \hat R_t\big)^2 - c_H\, \bar H

   over every valid sample, with the global gradient norm clipped (RMSprop by default).

:meth:`A2C.loss` defines the loss; for MLP actor-critics :meth:`A2C.loss_and_gradient`
computes it with its gradient written out (see :mod:`pglab.dense`), as PPO does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pglab.algos.base import JointOptimizer
from pglab.dense import DenseActorCritic
from pglab.losses import (
    actor_critic_loss,
    approx_kl,
    per_sample,
    policy_gradient_loss,
    sample_weights,
    value_loss,
    weighted_standardize,
)
from pglab.policies import Actor, Critic, evaluate_actions
from pglab.returns import masked_mean, standardize


class A2C(JointOptimizer):
    """One actor-critic gradient step per n-step batch."""

    METRICS = (
        "policy_loss",
        "value_loss",
        "entropy",
        "explained_variance",
        "grad_norm",
        "lr",
        "policy_std",
        "weights_mean",
        "weights_var",
    )
    WRITTEN_GRADIENT = True

    @property
    def epochs(self) -> int:
        return 1  # one gradient step per batch

    @property
    def minibatches(self) -> int:
        return 1

    @staticmethod
    def loss(
        actor: Actor, critic: Critic, mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Policy-gradient loss + ``vf_coef`` x value MSE - ``entropy_coef`` x entropy."""
        valid = mb.get("valid")
        log_probs, entropy, values = evaluate_actions(actor, critic, mb["obs"], mb["actions"])
        adv = standardize(mb["advantages"], valid) if hp["normalize"] else mb["advantages"]
        policy_loss = policy_gradient_loss(log_probs, adv, valid)
        v_loss = value_loss(values, mb["returns"], valid)
        mean_entropy = masked_mean(entropy, valid)
        loss = actor_critic_loss(
            policy_loss, v_loss, mean_entropy, hp["vf_coef"], hp["entropy_coef"]
        )
        _, kl = approx_kl(log_probs - mb["log_probs"], valid)
        return loss, {
            "policy_loss": policy_loss.detach(),
            "value_loss": v_loss.detach(),
            "entropy": mean_entropy.detach(),
            "approx_kl": kl,
        }

    @staticmethod
    def loss_and_gradient(
        net: DenseActorCritic, params: dict[str, Tensor], mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        r""":meth:`loss`, its diagnostics, and its gradient by parameter name, written out
        for the networks of :class:`~pglab.dense.DenseActorCritic` (stacked ``[M, ...]``
        as in :meth:`~pglab.algos.ppo.PPO.loss_and_gradient`). With :math:`w_b` from
        :func:`~pglab.losses.sample_weights`, the loss's gradients with respect to each
        sample's log-probability, value and entropy are

        .. math::
            \frac{\partial L}{\partial \log\pi_b} = -w_b \hat A_b, \qquad
            \frac{\partial L}{\partial V_b} = 2 c_V w_b (V_b - \hat R_b), \qquad
            \frac{\partial L}{\partial H_b} = -c_H w_b
        """
        log_probs, entropy, values, backward = net.forward(params, mb["obs"], mb["actions"])
        w = sample_weights(mb.get("valid"), log_probs)
        adv = mb["advantages"]
        if hp["normalize"]:  # standardised over the valid samples
            adv = weighted_standardize(adv, w)
        error = values - mb["returns"]
        log_ratio = log_probs - mb["log_probs"]
        terms = [log_probs * adv, error * error, entropy, log_ratio.exp() - 1.0 - log_ratio]
        surrogate, v_loss, mean_entropy, kl = (torch.stack(terms) * w).sum(-1)
        policy_loss = -surrogate
        loss = actor_critic_loss(
            policy_loss, v_loss, mean_entropy, hp["vf_coef"], hp["entropy_coef"]
        )
        entropy_coef = per_sample(hp["entropy_coef"])
        g_entropy = None
        if isinstance(entropy_coef, Tensor) or entropy_coef != 0:
            g_entropy = w * -entropy_coef
        grads = backward(adv * -w, g_entropy, error * w * (2.0 * per_sample(hp["vf_coef"])))
        stats = {
            "policy_loss": policy_loss,
            "value_loss": v_loss,
            "entropy": mean_entropy,
            "approx_kl": kl,
        }
        return loss, stats, grads
