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

from pglab.algos.base import (
    JointOptimizer,
    advantage_metrics,
    gae_advantages,
    gradient_step,
    minibatch_indices,
    scheduled_lr,
    set_lr,
    valid_samples,
)
from pglab.losses import approx_kl, clipped_surrogate_loss, clipped_value_loss
from pglab.returns import standardize
from pglab.rollout import Batch


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

    def update(self, batch: Batch, progress: float) -> dict[str, float]:
        """Epochs x minibatches of clipped-surrogate steps on ``batch``; ``progress`` in [0, 1]."""
        cfg = self.config
        advantages, returns = gae_advantages(batch, cfg.gamma, cfg.lam)
        data = valid_samples(batch, advantages=advantages, returns=returns)
        lr = scheduled_lr(cfg.lr, cfg.lr_schedule, progress)
        clip = scheduled_lr(cfg.clip_range, cfg.clip_schedule, progress)
        set_lr(self.optimizer, lr)
        self.actor.train()

        totals: dict[str, float] = {}
        steps, stopped, per_epoch = 0, False, 1
        for _ in range(cfg.epochs):
            parts = minibatch_indices(len(data["returns"]), cfg.minibatches)
            per_epoch = len(parts)
            for index in parts:
                mb = {k: v[index] for k, v in data.items()}
                log_probs, entropy = self.actor.log_prob_entropy(mb["obs"], mb["actions"])
                log_ratio = log_probs - mb["log_probs"]
                kl_k1, kl_k3 = approx_kl(log_ratio)
                if cfg.target_kl > 0 and kl_k3 > cfg.target_kl:
                    stopped = True
                    break
                adv = mb["advantages"]
                if cfg.normalize_weights and len(adv) > 1:
                    adv = standardize(adv)
                policy_loss = clipped_surrogate_loss(log_ratio, adv, clip)
                values = self.critic(mb["obs"])
                v_loss = clipped_value_loss(values, mb["values"], mb["returns"], cfg.value_clip)
                loss = policy_loss + cfg.vf_coef * v_loss - cfg.entropy_coef * entropy.mean()
                grad_norm = gradient_step(
                    self.optimizer, loss, self.params, cfg.max_grad_norm, "PPO loss"
                )
                clipped = ((log_ratio.exp() - 1.0).abs() > clip).float().mean()
                for key, value in (
                    ("policy_loss", policy_loss.item()),
                    ("value_loss", v_loss.item()),
                    ("entropy", entropy.mean().item()),
                    ("approx_kl", kl_k3.item()),
                    ("approx_kl_k1", kl_k1.item()),
                    ("clip_fraction", clipped.item()),
                    ("grad_norm", grad_norm),
                ):
                    totals[key] = totals.get(key, 0.0) + value
                steps += 1
            if stopped:
                break

        metrics = {key: total / max(steps, 1) for key, total in totals.items()}
        metrics.update(
            lr=lr,
            clip_range=clip,
            epochs=steps / per_epoch,
            **advantage_metrics(data, self.actor),
        )
        return metrics
