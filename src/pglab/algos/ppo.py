r"""PPO: proximal policy optimisation with the clipped surrogate (Schulman et al. 2017).

For each batch of T steps from N envs:

1. advantages :math:`\hat A_t` by GAE(:math:`\gamma, \lambda`) and value targets
   :math:`\hat R_t = \hat A_t + V(s_t)`, under the policy :math:`\pi_{old}` that
   collected the batch;
2. for ``epochs`` passes, for each of ``minibatches`` random minibatches, one
   gradient step on

   .. math::
       L = -\frac1B\sum \min\big(\rho_t \hat A_t,\ \mathrm{clip}(\rho_t, 1\pm\epsilon)\hat A_t\big)
           + c_V\, L^V - c_H\, \bar H,
       \qquad \rho_t = \frac{\pi_\theta(a_t \mid s_t)}{\pi_{old}(a_t \mid s_t)}

   with the advantages standardised per minibatch, :math:`L^V` the (optionally
   clipped) value MSE, and the global gradient norm clipped;
3. with ``target_kl`` set, stop the passes at the first minibatch whose approximate
   :math:`\mathrm{KL}(\pi_{old} \| \pi_\theta)` (the k3 estimator) exceeds it, before
   stepping on it.

The learning rate and the clip range :math:`\epsilon` may decay linearly to 0 over
the budget.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pglab.algos.base import JointOptimizer
from pglab.losses import (
    actor_critic_loss,
    approx_kl,
    clipped_surrogate_loss,
    clipped_value_loss,
)
from pglab.policies import Actor, Critic
from pglab.returns import masked_mean, standardize


class PPO(JointOptimizer):
    """Clipped-surrogate PPO over epochs x minibatches of each batch."""

    METRICS = (
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "approx_kl_k1",
        "clip_fraction",
        "explained_variance",
        "grad_norm",
        "lr",
        "clip_range",
        "policy_std",
        "epochs",
        "weights_mean",
        "weights_var",
    )
    LOSS_HYPERPARAMETERS = ("clip_range", "vf_coef", "entropy_coef")

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def minibatches(self) -> int:
        return self.config.minibatches

    @staticmethod
    def loss(
        actor: Actor, critic: Critic, mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Clipped surrogate + ``vf_coef`` x value loss - ``entropy_coef`` x entropy.

        ``mb`` holds flat samples (with a ``valid`` flag when some are not samples);
        ``hp`` the clip range, the coefficients, ``value_clip`` and ``normalize``.
        """
        valid = mb.get("valid")
        log_probs, entropy = actor.log_prob_entropy(mb["obs"], mb["actions"])
        log_ratio = log_probs - mb["log_probs"]
        kl_k1, kl_k3 = approx_kl(log_ratio, valid)
        adv = mb["advantages"]
        if hp["normalize"] and adv.shape[0] > 1:
            adv = standardize(adv, valid)
        clip = hp["clip_range"]
        policy_loss = clipped_surrogate_loss(log_ratio, adv, clip, valid)
        values = critic(mb["obs"])
        v_loss = clipped_value_loss(values, mb["values"], mb["returns"], hp["value_clip"], valid)
        mean_entropy = masked_mean(entropy, valid)
        loss = actor_critic_loss(
            policy_loss, v_loss, mean_entropy, hp["vf_coef"], hp["entropy_coef"]
        )
        clipped = ((log_ratio.detach().exp() - 1.0).abs() > clip).float()
        return loss, {
            "policy_loss": policy_loss.detach(),
            "value_loss": v_loss.detach(),
            "entropy": mean_entropy.detach(),
            "approx_kl": kl_k3,
            "approx_kl_k1": kl_k1,
            "clip_fraction": masked_mean(clipped, valid),
        }
