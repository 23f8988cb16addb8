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
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pglab.algos.base import JointOptimizer
from pglab.losses import actor_critic_loss, approx_kl, policy_gradient_loss, value_loss
from pglab.policies import Actor, Critic
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
        log_probs, entropy = actor.log_prob_entropy(mb["obs"], mb["actions"])
        adv = standardize(mb["advantages"], valid) if hp["normalize"] else mb["advantages"]
        policy_loss = policy_gradient_loss(log_probs, adv, valid)
        v_loss = value_loss(critic(mb["obs"]), mb["returns"], valid)
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
