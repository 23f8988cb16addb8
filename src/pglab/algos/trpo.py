r"""TRPO: trust-region policy optimisation (Schulman et al. 2015), value function fitted apart.

For each batch of T steps from N envs:

1. advantages :math:`\hat A_t` by GAE(:math:`\gamma, \lambda`), standardised;
2. the surrogate :math:`L(\theta) = \frac1B\sum \rho_t \hat A_t` (plus
   :math:`c_H \bar H`) and its gradient :math:`g` at :math:`\theta_{old}`;
3. the natural direction :math:`s \approx F^{-1} g` by conjugate gradient, where the
   Fisher matrix :math:`F` is the Hessian of the mean
   :math:`\mathrm{KL}(\pi_{old} \| \pi_\theta)`, touched only through products
   :math:`F v = \nabla_\theta\big((\nabla_\theta \overline{\mathrm{KL}})^\top v\big) + \beta v`;
4. the largest step within the trust region,
   :math:`\Delta\theta = \sqrt{2\delta / s^\top F s}\; s`, then a backtracking line
   search over :math:`\Delta\theta, c\Delta\theta, c^2\Delta\theta, \dots` that
   accepts the first step with mean KL :math:`\le \delta` *and* a surrogate that
   improved; if none does, the policy stays where it was;
5. the critic regresses :math:`V_\phi(s_t)` on :math:`\hat A_t + V(s_t)` with its
   own optimizer (``value_epochs`` x ``minibatches`` steps).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn.utils import vector_to_parameters

from pglab.algos.base import (
    advantage_metrics,
    fit_critic,
    gae_advantages,
    scheduled,
    valid_samples,
)
from pglab.errors import TrainingError
from pglab.losses import approx_kl
from pglab.nets import dropout_keys
from pglab.optim import FlatOptimizer
from pglab.policies import Actor, Critic
from pglab.returns import standardize
from pglab.rollout import Batch

if TYPE_CHECKING:  # the config layer sits above; only its type is named here
    from pglab.config import AlgoConfig


def conjugate_gradient(matvec, b: Tensor, iters: int, tol: float = 1e-10) -> Tensor:
    r"""Approximately solve :math:`A x = b` for symmetric positive-definite :math:`A`,
    given only :math:`v \mapsto A v` (Hestenes and Stiefel 1952)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


class TRPO:
    """Natural-gradient steps inside a KL trust region; a separately trained critic."""

    #: Traits (see :data:`pglab.algos.ALGORITHMS`): GAE advantages, a critic fitted apart.
    CHOOSES_WEIGHTS = False
    CRITIC_APART = True

    METRICS = (
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "approx_kl_k1",
        "kl",
        "explained_variance",
        "grad_norm",
        "lr",
        "policy_std",
        "line_search_steps",
        "weights_mean",
        "weights_var",
    )

    def __init__(self, actor: Actor, critic: Critic, config: AlgoConfig) -> None:
        self.actor = actor
        self.critic = critic
        self.config = config
        self.params = list(actor.parameters())
        self.value_optimizer = FlatOptimizer(
            config.optimizer,
            critic.parameters(),
            config.value_lr,
            eps=config.eps,
            kwargs=config.optimizer_kwargs,
        )

    def _surrogate(self, data: dict[str, Tensor], adv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:math:`L(\theta)`, the log-ratios and the entropies at the batch's states."""
        log_probs, entropy = self.actor.log_prob_entropy(data["obs"], data["actions"])
        log_ratio = log_probs - data["log_probs"]
        objective = (log_ratio.exp() * adv).mean() + self.config.entropy_coef * entropy.mean()
        return objective, log_ratio, entropy

    def _mean_kl(self, obs: Tensor, old_params: Tensor, old_log_std: Tensor | None) -> Tensor:
        return self.actor.head.kl(old_params, self.actor(obs), old_log_std).mean()

    def update(self, batch: Batch, progress: float) -> dict[str, float]:
        """One trust-region policy step and a critic fit on ``batch``."""
        cfg = self.config
        advantages, returns = gae_advantages(batch, cfg.gamma, cfg.lam)
        data = valid_samples(batch, advantages=advantages, returns=returns)
        adv = standardize(data["advantages"]) if cfg.normalize_weights else data["advantages"]
        self.actor.train()
        with dropout_keys(data.get("dropout_keys")):  # the masks the batch acted with
            return self._trust_region_step(data, adv, progress)

    def _trust_region_step(
        self, data: dict[str, Tensor], adv: Tensor, progress: float
    ) -> dict[str, float]:
        """The natural-gradient step with its line search, then the critic's fit."""
        cfg = self.config
        with torch.no_grad():
            old_params = self.actor(data["obs"])
            head_std = getattr(self.actor.head, "_log_std", None)
            old_log_std = head_std() if head_std is not None else None
        objective, _, _ = self._surrogate(data, adv)
        grads = torch.autograd.grad(objective, self.params)
        g = flat(grads)
        if not torch.isfinite(g).all():
            raise TrainingError("the TRPO surrogate gradient became non-finite")

        kl = self._mean_kl(data["obs"], old_params, old_log_std)
        kl_grad = flat(torch.autograd.grad(kl, self.params, create_graph=True))

        def fisher_vector(v: Tensor) -> Tensor:
            hv = torch.autograd.grad(kl_grad @ v, self.params, retain_graph=True)
            return flat(hv) + cfg.cg_damping * v

        direction = conjugate_gradient(fisher_vector, g, cfg.cg_iters)
        curvature = direction @ fisher_vector(direction)
        step = torch.sqrt(2 * cfg.max_kl / curvature.clamp(min=1e-12)) * direction

        theta_old = flat(self.params).detach()
        old_objective = objective.item()
        accepted, steps_taken = False, 0
        with torch.no_grad():
            for i in range(cfg.line_search_steps):
                steps_taken = i + 1
                vector_to_parameters(theta_old + cfg.line_search_decay**i * step, self.params)
                new_objective, _, _ = self._surrogate(data, adv)
                new_kl = self._mean_kl(data["obs"], old_params, old_log_std)
                if new_kl <= cfg.max_kl and new_objective.item() > old_objective:
                    accepted = True
                    break
            if not accepted:
                vector_to_parameters(theta_old, self.params)
            final_objective, log_ratio, entropy = self._surrogate(data, adv)
            final_kl = self._mean_kl(data["obs"], old_params, old_log_std)
        kl_k1, kl_k3 = approx_kl(log_ratio)

        value_lr = scheduled(cfg, cfg.value_lr, cfg.lr_schedule, progress)
        self.value_optimizer.lr = value_lr
        v_loss = fit_critic(
            self.critic,
            self.value_optimizer,
            data["obs"],
            data["returns"],
            epochs=cfg.value_epochs,
            minibatches=cfg.minibatches,
            max_grad_norm=cfg.max_grad_norm,
        )
        return {
            "policy_loss": -final_objective.item(),
            "value_loss": v_loss,
            "entropy": entropy.mean().item(),
            "approx_kl": kl_k3.item(),
            "approx_kl_k1": kl_k1.item(),
            "kl": final_kl.item(),
            "grad_norm": g.norm().item(),
            "lr": value_lr,
            "line_search_steps": steps_taken if accepted else 0,
            **advantage_metrics(data, self.actor),
        }

    def state_dict(self, member: int = 0) -> dict:
        return {"value_optimizer": self.value_optimizer.state_dict()}

    def load_state_dict(self, state: dict, member: int = 0) -> None:
        self.value_optimizer.load_state_dict(state["value_optimizer"])


def flat(tensors: Iterable[Tensor]) -> Tensor:
    """``tensors`` as one vector, in order (a convolution's gradient may be laid out
    channels-last, which ``parameters_to_vector``'s ``view`` cannot flatten)."""
    return torch.cat([t.reshape(-1) for t in tensors])
