r"""Losses minimised by the learning rules, as pure tensor functions.

Every loss averages over the valid samples of a time-major ``[T, N]`` batch (reset
steps of Gymnasium's autoreset are not samples); REINFORCE's two may sum over them
instead (``reduction``). Weights and targets are detached inside the losses: they are
data, never a path for the gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pglab.returns import masked_mean, masked_sum, masked_var

#: How a loss reduces over the valid samples (``algo.loss_reduction``): their mean, or
#: their sum.
REDUCTIONS: tuple[str, ...] = ("mean", "sum")


def reduce_samples(x: Tensor, valid: Tensor | None = None, reduction: str = "mean") -> Tensor:
    r"""``x`` reduced over the valid samples :math:`\mathcal V`: their mean
    :math:`\frac{1}{|\mathcal V|}\sum_{\mathcal V} x` (``mean``) or their sum
    :math:`\sum_{\mathcal V} x` (``sum``). Any shape."""
    if reduction == "mean":
        return masked_mean(x, valid)
    if reduction == "sum":
        return masked_sum(x, valid)
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")


def policy_gradient_loss(
    log_probs: Tensor, weights: Tensor, valid: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    r"""Surrogate loss whose gradient is minus the policy-gradient estimate.

    .. math::
        L(\theta) = -\frac{1}{|\mathcal{V}|} \sum_{(t,i) \in \mathcal{V}}
                    \log \pi_\theta(a_t^i \mid s_t^i)\, \Psi_t^i,
        \qquad -\nabla_\theta L = \hat g

    (Williams 1992; Sutton et al. 2000). :math:`\mathcal V` is the set of valid
    samples. ``weights`` (:math:`\Psi`) carry no gradient. Shapes ``[T, N]``.

    With ``reduction="sum"`` the sum without the :math:`\frac{1}{|\mathcal V|}`, as
    the PyTorch tutorial's REINFORCE sums over its episode: the same direction, a
    gradient :math:`|\mathcal V|` times larger.
    """
    return -reduce_samples(log_probs * weights.detach(), valid, reduction)


def value_loss(values: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""Mean squared error of the critic: :math:`\frac{1}{|\mathcal V|}\sum (V(s_t) - \hat R_t)^2`.

    ``targets`` carry no gradient. Shapes ``[T, N]``.
    """
    return masked_mean((values - targets.detach()) ** 2, valid)


def entropy_loss(entropy: Tensor, valid: Tensor | None = None, reduction: str = "mean") -> Tensor:
    r"""Minus the mean policy entropy, :math:`-\frac{1}{|\mathcal V|}\sum H(\pi(\cdot \mid s_t))`
    (with ``reduction="sum"``, minus the sum :math:`-\sum H(\pi(\cdot \mid s_t))`).

    Adding ``coef * entropy_loss`` to a loss rewards exploration. Shapes ``[T, N]``.
    """
    return -reduce_samples(entropy, valid, reduction)


def actor_critic_loss(
    policy_loss: Tensor,
    v_loss: Tensor,
    mean_entropy: Tensor,
    vf_coef: float | Tensor,
    entropy_coef: float | Tensor,
) -> Tensor:
    r"""The one loss of an actor and a critic trained together (A2C, PPO):
    :math:`L = L^{\pi} + c_V\, L^V - c_H\, \bar H`.

    An entropy coefficient of exactly 0 leaves the entropy out of the loss, so the
    backward pass does not go through it. Coefficients may be ``[M]`` tensors (a
    population's members).
    """
    loss = policy_loss + vf_coef * v_loss
    if isinstance(entropy_coef, Tensor) or entropy_coef != 0:
        loss = loss - entropy_coef * mean_entropy
    return loss


def explained_variance(predictions: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""Fraction of the targets' variance the critic explains: :math:`1 - \mathrm{Var}[y - \hat y] / \mathrm{Var}[y]`.

    1 is perfect, 0 is no better than a constant, negative is worse. NaN when the
    targets have no variance. Shapes ``[T, N]``.
    """

    target_var = masked_var(targets, valid)
    return 1.0 - masked_var(targets - predictions, valid) / target_var


def clipped_surrogate_loss(
    log_ratio: Tensor, advantages: Tensor, clip_range: float, valid: Tensor | None = None
) -> Tensor:
    r"""PPO's clipped surrogate, negated so that it is minimised (Schulman et al. 2017, eq. 7).

    .. math::
        L^{CLIP}(\theta) = -\frac{1}{|\mathcal V|}\sum \min\big(\rho_t A_t,\
            \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\, A_t\big),
        \qquad \rho_t = \frac{\pi_\theta(a_t \mid s_t)}{\pi_{\theta_{old}}(a_t \mid s_t)}

    ``log_ratio`` is :math:`\log\rho_t`. Once :math:`\rho_t` leaves
    :math:`[1-\epsilon, 1+\epsilon]` in the direction the advantage favours, the
    sample's gradient is zero: the update has no incentive to move it further.
    ``advantages`` carry no gradient. Any shape; ``valid`` masks samples.
    """
    ratio = log_ratio.exp()
    advantages = advantages.detach()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages
    return -masked_mean(torch.minimum(unclipped, clipped), valid)


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    targets: Tensor,
    clip_range: float,
    valid: Tensor | None = None,
) -> Tensor:
    r"""Value MSE, optionally with PPO's clipping of the value change.

    With :math:`\epsilon_V > 0`:
    :math:`\max\big((V - \hat R)^2,\ (V_{old} + \mathrm{clip}(V - V_{old}, \pm\epsilon_V) - \hat R)^2\big)`;
    with :math:`\epsilon_V = 0` plain :func:`value_loss`. ``old_values`` and
    ``targets`` carry no gradient.
    """
    if clip_range <= 0:
        return value_loss(values, targets, valid)
    targets, old_values = targets.detach(), old_values.detach()
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    worst = torch.maximum((values - targets) ** 2, (clipped - targets) ** 2)
    return masked_mean(worst, valid)


def approx_kl(log_ratio: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Two estimators of :math:`\mathrm{KL}(\pi_{old} \,\|\, \pi_\theta)` from samples of :math:`\pi_{old}`.

    With :math:`\log\rho = \log\pi_\theta - \log\pi_{old}` (Schulman, "Approximating
    KL divergence", 2020):

    * k1 :math:`= \mathbb E[-\log\rho]`, unbiased but can be negative;
    * k3 :math:`= \mathbb E[(\rho - 1) - \log\rho]`, unbiased and never negative.
    """
    log_ratio = log_ratio.detach()
    k1 = masked_mean(-log_ratio, valid)
    k3 = masked_mean(log_ratio.exp() - 1.0 - log_ratio, valid)
    return k1, k3


def sample_weights(valid: Tensor | None, like: Tensor) -> Tensor:
    r"""Each sample's weight in a mean over the last axis: :math:`w_b = 1 / |\mathcal V|`
    for a valid sample b and 0 for others (every sample valid where ``valid`` is None).

    A written-out loss takes its means as :math:`\sum_b w_b x_b`, and its gradient
    with respect to a sample's term is :math:`w_b`. Shaped as ``like`` (``[B]``, or
    ``[M, B]`` for M members, each with its own count).
    """
    if valid is None:
        return torch.full_like(like, 1.0 / like.shape[-1])
    w = valid.to(like.dtype)
    return w / w.sum(-1, keepdim=True).clamp(min=1.0)


def weighted_standardize(x: Tensor, w: Tensor, eps: float = 1e-8) -> Tensor:
    r""":math:`(x - \bar x) / (\sigma_x + \epsilon)` with the mean and the (population)
    variance weighted by :func:`sample_weights` ``w``, along the last axis."""
    centred = x - (x * w).sum(-1, keepdim=True)
    return centred / ((centred * centred * w).sum(-1, keepdim=True).sqrt() + eps)


def per_sample(value: float | Tensor) -> float | Tensor:
    """A coefficient to multiply ``[M, B]`` samples by: an ``[M]`` tensor (one value per
    member) as ``[M, 1]``, a number as it is."""
    return value.unsqueeze(-1) if isinstance(value, Tensor) else value
