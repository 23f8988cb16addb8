r"""The weights :math:`\Psi_t` of the policy gradient, as pure tensor functions.

The policy gradient is

.. math::  g = \mathbb{E}\Big[\sum_t \nabla_\theta \log \pi_\theta(a_t \mid s_t)\, \Psi_t\Big]

and the choice of :math:`\Psi_t` sets its variance. This module computes every
classic choice (Schulman et al. 2016, "High-Dimensional Continuous Control Using
Generalized Advantage Estimation", section 2):

====  ===============================  ===================================================
code  function                         :math:`\Psi_t`
====  ===============================  ===================================================
r     :func:`total_return`             :math:`\sum_{t'=0}^{T_{ep}} r_{t'}` (whole episode)
fr    :func:`reward_to_go`             :math:`\sum_{t' \ge t} r_{t'}`
dfr   :func:`discounted_reward_to_go`  :math:`\sum_{t' \ge t} \gamma^{t'-t} r_{t'}`
dfrb  :func:`baseline_return`          the above (bootstrapped) minus :math:`V(s_t)`
td    :func:`td_residual`              :math:`\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)`
gae   :func:`gae`                      :math:`\sum_k (\gamma\lambda)^k \delta_{t+k}`
====  ===============================  ===================================================

A function of the user's may give :math:`\Psi_t` instead (:func:`custom_weights`).

Conventions (shared by every function here):

* Tensors are time-major, ``[T, N]``: T steps of N parallel environments.
  Every function also works under ``torch.func.vmap`` over an extra leading axis.
* ``terminated[t]``: the episode truly ended at step t; nothing follows it.
  ``episode_ends[t] = terminated[t] | truncated[t]``: the episode (or the rollout)
  stopped at step t. A truncated step bootstraps from ``next_values[t]``, the value
  of the real observation after step t.
* ``valid[t]`` (optional) marks real transitions. Gymnasium's NEXT_STEP autoreset
  inserts a reset step after each episode end; it is not a transition and gets
  weight 0 in every output.
* Pure: inputs are never written; the only Python loop runs over time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pglab.errors import TrainingError

#: The short codes of the weights, in the order of increasing use of a critic.
WEIGHT_KINDS: tuple[str, ...] = ("r", "fr", "dfr", "dfrb", "td", "gae")

#: The weight kinds that need a learned value function V(s).
CRITIC_WEIGHTS: frozenset[str] = frozenset({"dfrb", "td", "gae"})

#: A function of the user's giving the weights :math:`\Psi_t` ``[T, N]`` from keyword
#: arguments among :data:`WEIGHT_ARGUMENTS` (see :func:`custom_weights`).
WeightFunction = Callable[..., Tensor]

#: What a weight function of the user's may take, by name: those of
#: :func:`policy_gradient_weights` but ``kind``.
WEIGHT_ARGUMENTS: tuple[str, ...] = (
    "rewards",
    "terminated",
    "truncated",
    "gamma",
    "lam",
    "values",
    "next_values",
    "valid",
)

#: The arguments that make a weight function's run fit a critic: :math:`V(s_t)` and
#: :math:`V(s_{t+1})`.
CRITIC_ARGUMENTS: tuple[str, ...] = ("values", "next_values")


def _mask(x: Tensor, valid: Tensor | None) -> Tensor:
    return x if valid is None else torch.where(valid, x, torch.zeros_like(x))


def _flag(x: Tensor) -> Tensor:
    """A float copy of a boolean (or 0/1) tensor."""
    return x.to(torch.get_default_dtype()) if x.dtype == torch.bool else x


def _numpy_views(*tensors: Tensor) -> list[np.ndarray] | None:
    """Numpy views of CPU tensors of one dtype outside autograd; None where any is not
    one (on a GPU, needing a gradient, or a transform's batched tensor without storage)."""
    if any(t.device.type != "cpu" or t.requires_grad for t in tensors):
        return None
    if len({t.dtype for t in tensors}) > 1:
        return None
    try:
        return [t.numpy() for t in tensors]
    except RuntimeError:  # under torch.func.vmap: no storage to view
        return None


def _backward_scan(step_terms: Tensor, carry_factor: Tensor) -> Tensor:
    r"""Solve :math:`y_t = x_t + c_t\, y_{t+1}` backwards in time with :math:`y_T = 0`.

    Shapes: ``step_terms`` and ``carry_factor`` are ``[T, ...]``; returns ``[T, ...]``.
    On a CPU the loop runs on numpy views of the same memory, whose per-step cost is a
    fraction of torch's on rows this small; each step is the same two rounded float
    operations (a product, then a sum) either way, so the results are identical.
    """
    x, c = torch.broadcast_tensors(step_terms, carry_factor)
    arrays = _numpy_views(x, c)
    if arrays is not None:
        xs, cs = arrays
        out = np.empty_like(xs)
        carry = np.zeros_like(xs[0])
        for t in range(xs.shape[0] - 1, -1, -1):
            carry = out[t] = xs[t] + cs[t] * carry
        return torch.from_numpy(out)
    outputs = []
    carry = torch.zeros_like(x[0])
    for t in range(x.shape[0] - 1, -1, -1):
        carry = x[t] + c[t] * carry
        outputs.append(carry)
    outputs.reverse()
    return torch.stack(outputs)


def discounted_reward_to_go(
    rewards: Tensor,
    episode_ends: Tensor,
    gamma: float,
    *,
    bootstrap: Tensor | None = None,
    valid: Tensor | None = None,
) -> Tensor:
    r"""Discounted reward-to-go (code ``dfr``).

    .. math::
        G_t = r_t + \gamma \begin{cases} b_t & \text{if the episode ends at } t \\
                                         G_{t+1} & \text{otherwise} \end{cases}

    so :math:`G_t = \sum_{t' \ge t}^{\text{end}} \gamma^{t'-t} r_{t'}` plus, when a
    ``bootstrap`` is given, :math:`\gamma^{\text{end}-t+1} b_{\text{end}}` (the value
    of the state after a truncation; pass 0 where the episode terminated).
    Beyond the last step nothing is added.

    Args:
        rewards: ``[T, N]`` rewards :math:`r_t`.
        episode_ends: ``[T, N]`` bool, ``terminated | truncated``.
        gamma: discount :math:`\gamma \in [0, 1]`.
        bootstrap: ``[T, N]`` value :math:`b_t` added at episode ends, or None for 0.
        valid: ``[T, N]`` bool mask of real transitions, or None if all are.

    Returns:
        ``[T, N]`` returns :math:`G_t` (0 where not valid).
    """
    rewards = _mask(rewards, valid)
    ends = _flag(episode_ends)
    step_terms = rewards if bootstrap is None else rewards + gamma * ends * bootstrap
    returns = _backward_scan(step_terms, gamma * (1.0 - ends))
    return _mask(returns, valid)


def reward_to_go(rewards: Tensor, episode_ends: Tensor, *, valid: Tensor | None = None) -> Tensor:
    r"""Undiscounted reward-to-go (code ``fr``): :math:`\sum_{t'=t}^{\text{end}} r_{t'}`.

    Equal to :func:`discounted_reward_to_go` with :math:`\gamma = 1`. Shapes ``[T, N]``.
    """
    return discounted_reward_to_go(rewards, episode_ends, 1.0, valid=valid)


def total_return(rewards: Tensor, episode_ends: Tensor, *, valid: Tensor | None = None) -> Tensor:
    r"""Return of the whole episode at every one of its steps (code ``r``).

    .. math:: \Psi_t = R(\tau) = \sum_{t'=\text{start}}^{\text{end}} r_{t'}

    the original REINFORCE weight (Williams 1992). Equal to :func:`reward_to_go` at
    the first step of each episode, and constant along the episode. An episode that
    began before the first step of the tensor counts only its steps inside it.
    Shapes ``[T, N]``.
    """
    to_go = reward_to_go(rewards, episode_ends, valid=valid)
    # An episode starts at t = 0, after an episode end, and after a reset step.
    starts = episode_ends if valid is None else episode_ends | ~valid
    starts = _flag(starts)
    totals = []
    total = to_go[0]
    for t in range(to_go.shape[0]):
        if t > 0:
            total = starts[t - 1] * to_go[t] + (1.0 - starts[t - 1]) * total
        totals.append(total)
    return _mask(torch.stack(totals), valid)


def td_residual(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    gamma: float,
    *,
    valid: Tensor | None = None,
) -> Tensor:
    r"""One-step temporal-difference residual (code ``td``).

    .. math:: \delta_t = r_t + \gamma (1 - d_t) V(s_{t+1}) - V(s_t)

    with :math:`d_t` = ``terminated[t]``. A truncated step keeps its bootstrap
    :math:`V(s_{t+1})` from ``next_values[t]``, the value of the real final
    observation. Shapes ``[T, N]``.
    """
    not_terminal = 1.0 - _flag(terminated)
    delta = _mask(rewards, valid) + gamma * not_terminal * next_values - values
    return _mask(delta, valid)


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    episode_ends: Tensor,
    gamma: float,
    lam: float,
    *,
    valid: Tensor | None = None,
) -> Tensor:
    r"""Generalised advantage estimate GAE(:math:`\gamma, \lambda`) (code ``gae``).

    .. math::
        \hat A_t = \delta_t + \gamma \lambda (1 - e_t)\, \hat A_{t+1}
                 = \sum_{k \ge 0} (\gamma\lambda)^k \delta_{t+k}

    where :math:`\delta_t` is :func:`td_residual` and :math:`e_t` = ``episode_ends[t]``
    stops the sum at the end of the episode or rollout (Schulman et al. 2016, eq. 16).
    :math:`\lambda = 0` gives :math:`\delta_t`; :math:`\lambda = 1` gives the
    bootstrapped discounted return minus :math:`V(s_t)`. Shapes ``[T, N]``.
    """
    delta = td_residual(rewards, values, next_values, terminated, gamma, valid=valid)
    advantages = _backward_scan(delta, gamma * lam * (1.0 - _flag(episode_ends)))
    return _mask(advantages, valid)


def baseline_return(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    episode_ends: Tensor,
    gamma: float,
    *,
    valid: Tensor | None = None,
) -> Tensor:
    r"""Discounted reward-to-go minus a learned baseline (code ``dfrb``).

    .. math:: \Psi_t = G_t - V(s_t)

    with :math:`G_t` from :func:`discounted_reward_to_go`, bootstrapped from
    ``next_values`` where the episode was truncated (not where it terminated).
    Equal to :func:`gae` with :math:`\lambda = 1`. Shapes ``[T, N]``.
    """
    bootstrap = (1.0 - _flag(terminated)) * next_values
    returns = discounted_reward_to_go(
        rewards, episode_ends, gamma, bootstrap=bootstrap, valid=valid
    )
    return _mask(returns - values, valid)


def masked_mean(x: Tensor, valid: Tensor | None = None, dim: int | None = None) -> Tensor:
    r"""Mean of ``x`` over the valid entries: :math:`\sum_i m_i x_i / \max(1, \sum_i m_i)`.

    Over all entries, or along ``dim`` only (one mean per row of the other axes).
    """
    if valid is None:
        return x.mean() if dim is None else x.mean(dim)
    weights = _flag(valid)
    if dim is None:
        return (x * weights).sum() / weights.sum().clamp(min=1.0)
    return (x * weights).sum(dim) / weights.sum(dim).clamp(min=1.0)


def masked_sum(x: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""Sum of ``x`` over the valid entries: :math:`\sum_i m_i x_i`."""
    return x.sum() if valid is None else (x * _flag(valid)).sum()


def masked_var(x: Tensor, valid: Tensor | None = None, dim: int | None = None) -> Tensor:
    r"""Population variance of ``x`` over the valid entries: mean of :math:`(x - \bar x)^2`
    (over all entries, or along ``dim`` only)."""
    if valid is None:
        return torch.var_mean(x, dim=dim, correction=0)[0]
    mean = masked_mean(x, valid, dim)
    if dim is not None:
        mean = mean.unsqueeze(dim)
    return masked_mean((x - mean) ** 2, valid, dim)


def standardize(
    x: Tensor, valid: Tensor | None = None, eps: float = 1e-8, dim: int | None = None
) -> Tensor:
    r"""Per-batch standardisation of the weights: :math:`(x - \bar x) / (\sigma_x + \epsilon)`.

    Mean and standard deviation are taken over the valid entries only; invalid
    entries come out as 0. Standardising returns acts as a batch-mean baseline and a
    per-batch step-size normalisation. Any shape; with ``dim``, each row along that
    axis is standardised on its own.
    """
    if valid is None:
        var, mean = torch.var_mean(x, dim=dim, keepdim=dim is not None, correction=0)
    else:
        mean, var = masked_mean(x, valid, dim), masked_var(x, valid, dim)
        if dim is not None:
            mean, var = mean.unsqueeze(dim), var.unsqueeze(dim)
    return _mask((x - mean) / (var.sqrt() + eps), valid)


def weight_parameters(function: WeightFunction) -> tuple[str, ...]:
    """The arguments of :data:`WEIGHT_ARGUMENTS` that ``function`` is called with: those
    its signature names (all of them where it takes ``**kwargs``).

    Raises ValueError when it is not a function, or needs an argument that is not one
    of them (or one by position only).
    """
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        raise ValueError(f"must be a function; got {function!r}") from None
    for p in parameters:
        required = p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        by_name = p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if required and not (by_name and p.name in WEIGHT_ARGUMENTS):
            raise ValueError(
                f"takes {p.name!r}, which it is not given; a weight function takes keyword "
                f"arguments among {', '.join(WEIGHT_ARGUMENTS)}"
            )
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return WEIGHT_ARGUMENTS
    names = {p.name for p in parameters}
    return tuple(a for a in WEIGHT_ARGUMENTS if a in names)


def takes_values(function: WeightFunction) -> bool:
    """Whether the weight function names ``values`` or ``next_values`` as a parameter:
    its run then fits a critic, whose values it is given (else they are None)."""
    names = inspect.signature(function).parameters
    return any(name in names for name in CRITIC_ARGUMENTS)


def custom_weights(function: WeightFunction, given: Mapping[str, Any]) -> Tensor:
    r"""The weights of a function :math:`f` of the user's (``algo.weights =
    "package.module:name"``):

    .. math:: \Psi_t = f(r, d, u, \gamma, \lambda, V, V', m)_t \ \text{where } m_t,
        \qquad 0 \text{ elsewhere}

    ``given`` holds every argument of :data:`WEIGHT_ARGUMENTS` (the keyword arguments of
    :func:`policy_gradient_weights`; ``values`` and ``next_values`` are None without a
    critic); :math:`f` is called with those it names (:func:`weight_parameters`). It
    must return a floating-point tensor of the rewards' shape ``[T, N]``, else
    :class:`~pglab.errors.TrainingError`. Samples that are not transitions get 0
    whatever :math:`f` gives them.
    """
    rewards, valid = given["rewards"], given["valid"]
    psi = function(**{name: given[name] for name in weight_parameters(function)})
    if not (isinstance(psi, Tensor) and psi.shape == rewards.shape and psi.is_floating_point()):
        got = (
            f"a {psi.dtype} tensor of shape {tuple(psi.shape)}"
            if isinstance(psi, Tensor)
            else f"a {type(psi).__name__}"
        )
        name = f"{getattr(function, '__module__', '?')}:{getattr(function, '__qualname__', '?')}"
        raise TrainingError(
            f"weights {name} must return Psi as a float tensor of the rewards' shape "
            f"{tuple(rewards.shape)} ([T, N]); it returned {got}"
        )
    return _mask(psi, valid)


def policy_gradient_weights(
    kind: str | WeightFunction,
    *,
    rewards: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    lam: float = 0.95,
    values: Tensor | None = None,
    next_values: Tensor | None = None,
    valid: Tensor | None = None,
) -> Tensor:
    r"""The weights :math:`\Psi_t` named by ``kind`` (one of :data:`WEIGHT_KINDS`), or
    given by ``kind``, a function of the user's (:func:`custom_weights`).

    ``values`` and ``next_values`` are needed for the kinds in :data:`CRITIC_WEIGHTS`.
    Shapes ``[T, N]``.
    """
    if callable(kind):
        arguments = (rewards, terminated, truncated, gamma, lam, values, next_values, valid)
        return custom_weights(kind, dict(zip(WEIGHT_ARGUMENTS, arguments)))
    episode_ends = terminated | truncated
    if kind == "r":
        return total_return(rewards, episode_ends, valid=valid)
    if kind == "fr":
        return reward_to_go(rewards, episode_ends, valid=valid)
    if kind == "dfr":
        return discounted_reward_to_go(rewards, episode_ends, gamma, valid=valid)
    if kind not in CRITIC_WEIGHTS:
        raise ValueError(f"unknown weights {kind!r}; allowed: {', '.join(WEIGHT_KINDS)}")
    if values is None or next_values is None:
        raise ValueError(f"weights {kind!r} need values and next_values")
    if kind == "dfrb":
        return baseline_return(
            rewards, values, next_values, terminated, episode_ends, gamma, valid=valid
        )
    if kind == "td":
        return td_residual(rewards, values, next_values, terminated, gamma, valid=valid)
    return gae(rewards, values, next_values, terminated, episode_ends, gamma, lam, valid=valid)
