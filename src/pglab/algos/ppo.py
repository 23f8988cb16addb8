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

:meth:`PPO.loss` defines the loss; for MLP actor-critics (the usual case)
:meth:`PPO.loss_and_gradient` computes the same loss with its gradient written out,
which takes a fraction of autograd's time on small networks (``algo.gradients``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from pglab.algos.base import JointOptimizer
from pglab.dense import DenseActorCritic
from pglab.losses import (
    actor_critic_loss,
    approx_kl,
    clipped_surrogate_loss,
    clipped_value_loss,
    per_sample,
    sample_weights,
    weighted_standardize,
)
from pglab.policies import Actor, Critic, evaluate_actions
from pglab.returns import masked_mean, standardize

if TYPE_CHECKING:
    from pglab.config import AlgoConfig


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
    LOSS_HYPERPARAMETERS = ("clip_range", "ratio_low", "ratio_high", "vf_coef", "entropy_coef")
    WRITTEN_GRADIENT = True

    @staticmethod
    def hyperparameters(config: AlgoConfig, progress: float) -> dict[str, Any]:
        r""":meth:`JointOptimizer.hyperparameters`, and the ratio's bounds
        :math:`1 \pm \epsilon` worked out in Python's double precision: a member whose
        clip range differs from the rest of its population gets them as the same
        float32 values a run alone clamps to (rounding :math:`\epsilon` to float32 first
        would move them by an ulp)."""
        hp = JointOptimizer.hyperparameters(config, progress)
        hp["ratio_low"], hp["ratio_high"] = 1.0 - hp["clip_range"], 1.0 + hp["clip_range"]
        return hp

    @staticmethod
    def loss(
        actor: Actor, critic: Critic, mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Clipped surrogate + ``vf_coef`` x value loss - ``entropy_coef`` x entropy.

        ``mb`` holds flat samples (with a ``valid`` flag when some are not samples);
        ``hp`` the clip range, the coefficients, ``value_clip`` and ``normalize``.
        """
        valid = mb.get("valid")
        log_probs, entropy, values = evaluate_actions(actor, critic, mb["obs"], mb["actions"])
        log_ratio = log_probs - mb["log_probs"]
        kl_k1, kl_k3 = approx_kl(log_ratio, valid)
        adv = mb["advantages"]
        if hp["normalize"] and adv.shape[0] > 1:
            adv = standardize(adv, valid)
        clip = hp["clip_range"]
        policy_loss = clipped_surrogate_loss(log_ratio, adv, clip, valid)
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

    MINIBATCH_CONSTANTS = ("weights", "weighted_advantages")

    @staticmethod
    def minibatch_constants(mb: dict[str, Tensor], hp: dict[str, Any]) -> dict[str, Tensor]:
        r"""What :meth:`loss_and_gradient` takes from the minibatch alone: each sample's
        weight :math:`w_b` (:func:`~pglab.losses.sample_weights`) and the advantages,
        standardised over the valid samples (with ``normalize``, and more than one)."""
        w = sample_weights(mb.get("valid"), mb["log_probs"])
        adv = mb["advantages"]
        if hp["normalize"] and adv.shape[-1] > 1:
            adv = weighted_standardize(adv, w)
        return {"weights": w, "weighted_advantages": adv}

    @staticmethod
    def loss_and_gradient(
        net: DenseActorCritic, params: dict[str, Tensor], mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        r""":meth:`loss`, its diagnostics, and its gradient by parameter name, written out
        for the networks of :class:`~pglab.dense.DenseActorCritic` (no autograd graph).

        ``params`` and ``mb`` may be stacked ``[M, ...]``, with the hyperparameters
        numbers or ``[M]`` tensors: then M losses, each with its own gradient. With
        :math:`w_b` = 1 / (number of valid samples) for a valid sample b and 0 for others,
        the loss's gradients with respect to each sample's log-probability, value and
        entropy are

        .. math::
            \frac{\partial L}{\partial \log\pi_b} = -w_b\, \rho_b \hat A_b\,
                \big[\rho_b \hat A_b \le \mathrm{clip}(\rho_b, 1\pm\epsilon) \hat A_b\big],
            \qquad
            \frac{\partial L}{\partial V_b} = 2 c_V w_b (V_b - \hat R_b),
            \qquad
            \frac{\partial L}{\partial H_b} = -c_H w_b

        (where the clipped term is the minimum, :math:`\rho` is clipped and its gradient
        is zero; with value clipping, :math:`V_b - \hat R_b` is that of the larger of
        the two squared errors, the clipped one's gradient being zero where the clip
        holds). The networks' backward pass takes it from there.
        """
        log_probs, entropy, values, backward = net.forward(params, mb["obs"], mb["actions"])
        w, adv = mb["weights"], mb["weighted_advantages"]

        clip, vf_coef = per_sample(hp["clip_range"]), per_sample(hp["vf_coef"])
        entropy_coef = per_sample(hp["entropy_coef"])
        log_ratio = log_probs - mb["log_probs"]
        ratio = log_ratio.exp()
        unclipped = ratio * adv
        clipped = ratio.clamp(per_sample(hp["ratio_low"]), per_sample(hp["ratio_high"])) * adv
        g_log_probs = torch.where(unclipped <= clipped, unclipped, 0.0) * -w

        error = values - mb["returns"]
        squared = error**2
        if hp["value_clip"] > 0:
            change = values - mb["values"]
            clipped_error = mb["values"] + change.clamp(-hp["value_clip"], hp["value_clip"])
            clipped_error = clipped_error - mb["returns"]
            held = change.abs() > hp["value_clip"]
            larger = squared >= clipped_error**2
            squared = torch.maximum(squared, clipped_error**2)
            error = torch.where(larger, error, torch.where(held, 0.0, clipped_error))
        g_values = error * w * (2.0 * vf_coef)
        g_entropy = None
        if isinstance(entropy_coef, Tensor) or entropy_coef != 0:
            g_entropy = w * -entropy_coef

        # Every mean over the samples at once: the weighted sums with w.
        terms = [torch.minimum(unclipped, clipped), squared, entropy, -log_ratio]
        terms += [ratio - 1.0 - log_ratio, ((ratio - 1.0).abs() > clip).to(w.dtype)]
        means = (torch.stack(terms) * w).sum(-1)
        surrogate, v_loss, mean_entropy, kl_k1, kl_k3, clip_fraction = means
        policy_loss = -surrogate
        loss = actor_critic_loss(
            policy_loss, v_loss, mean_entropy, hp["vf_coef"], hp["entropy_coef"]
        )
        stats = {
            "policy_loss": policy_loss,
            "value_loss": v_loss,
            "entropy": mean_entropy,
            "approx_kl": kl_k3,
            "approx_kl_k1": kl_k1,
            "clip_fraction": clip_fraction,
        }
        return loss, stats, backward(g_log_probs, g_entropy, g_values)
