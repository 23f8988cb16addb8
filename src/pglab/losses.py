r"""Losses minimised by the learning rules, as pure tensor functions.

Every loss averages over the valid samples of a time-major ``[T, N]`` batch (reset
steps of Gymnasium's autoreset are not samples). Weights and targets are detached
inside the losses: they are data, never a path for the gradient.
"""

from __future__ import annotations

from torch import Tensor

from pglab.returns import masked_mean, masked_var


def policy_gradient_loss(log_probs: Tensor, weights: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""Surrogate loss whose gradient is minus the policy-gradient estimate.

    .. math::
        L(\theta) = -\frac{1}{|\mathcal{V}|} \sum_{(t,i) \in \mathcal{V}}
                    \log \pi_\theta(a_t^i \mid s_t^i)\, \Psi_t^i,
        \qquad -\nabla_\theta L = \hat g

    (Williams 1992; Sutton et al. 2000). :math:`\mathcal V` is the set of valid
    samples. ``weights`` (:math:`\Psi`) carry no gradient. Shapes ``[T, N]``.
    """
    return -masked_mean(log_probs * weights.detach(), valid)


def value_loss(values: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""Mean squared error of the critic: :math:`\frac{1}{|\mathcal V|}\sum (V(s_t) - \hat R_t)^2`.

    ``targets`` carry no gradient. Shapes ``[T, N]``.
    """
    return masked_mean((values - targets.detach()) ** 2, valid)


def entropy_loss(entropy: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""Minus the mean policy entropy, :math:`-\frac{1}{|\mathcal V|}\sum H(\pi(\cdot \mid s_t))`.

    Adding ``coef * entropy_loss`` to a loss rewards exploration. Shapes ``[T, N]``.
    """
    return -masked_mean(entropy, valid)


def explained_variance(predictions: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""Fraction of the targets' variance the critic explains: :math:`1 - \mathrm{Var}[y - \hat y] / \mathrm{Var}[y]`.

    1 is perfect, 0 is no better than a constant, negative is worse. NaN when the
    targets have no variance. Shapes ``[T, N]``.
    """

    target_var = masked_var(targets, valid)
    return 1.0 - masked_var(targets - predictions, valid) / target_var
