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

from pglab.algos.base import (
    JointOptimizer,
    advantage_metrics,
    gae_advantages,
    gradient_step,
    scheduled_lr,
    set_lr,
    valid_samples,
)
from pglab.losses import policy_gradient_loss, value_loss
from pglab.returns import standardize
from pglab.rollout import Batch


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

    def update(self, batch: Batch, progress: float) -> dict[str, float]:
        """One step on the actor-critic loss of ``batch``; ``progress`` in [0, 1]."""
        cfg = self.config
        advantages, returns = gae_advantages(batch, cfg.gamma, cfg.lam)
        data = valid_samples(batch, advantages=advantages, returns=returns)
        adv = standardize(data["advantages"]) if cfg.normalize_weights else data["advantages"]

        lr = scheduled_lr(cfg.lr, cfg.lr_schedule, progress)
        set_lr(self.optimizer, lr)
        self.actor.train()
        log_probs, entropy = self.actor.log_prob_entropy(data["obs"], data["actions"])
        policy_loss = policy_gradient_loss(log_probs, adv)
        v_loss = value_loss(self.critic(data["obs"]), data["returns"])
        loss = policy_loss + cfg.vf_coef * v_loss - cfg.entropy_coef * entropy.mean()
        grad_norm = gradient_step(self.optimizer, loss, self.params, cfg.max_grad_norm, "A2C loss")
        return {
            "policy_loss": policy_loss.item(),
            "value_loss": v_loss.item(),
            "entropy": entropy.mean().item(),
            "grad_norm": grad_norm,
            "lr": lr,
            **advantage_metrics(data, self.actor),
        }
