r"""Actors (stochastic policies) and critics (value functions).

An actor is a body (:func:`pglab.nets.mlp`) followed by an action head. A head turns
features into the parameters of a distribution and knows how to sample, take the
mode, and compute :math:`\log \pi(a \mid s)` and the entropy. The heads are written
with plain tensor operations (no ``torch.distributions``): sampling is on the hot
path of data collection, and plain operations also run under ``torch.func.vmap``.

==============  ==========================  ========================================
head            action space                distribution
==============  ==========================  ========================================
categorical     ``Discrete(n)``             softmax over n logits
                ``MultiDiscrete``           one softmax per entry, independent
bernoulli       ``Discrete(2)``             one logit, :math:`P(a = 1) = \sigma(l)`
                ``MultiBinary``             one logit per bit, independent
gaussian        ``Box`` (1-D)               :math:`\mathcal N(\mu(s), \mathrm{diag}(\sigma^2))`, state-independent :math:`\log\sigma`
tanh_gaussian   ``Box`` (1-D, bounded)      :math:`a = \ell + (h - \ell)(\tanh u + 1)/2`, :math:`u \sim \mathcal N(\mu, \sigma^2)`
gsde            ``Box`` (1-D)               :math:`a = \mu(s) + z(s)^\top \Theta`, noise weights :math:`\Theta` held over many steps (state-dependent exploration)
==============  ==========================  ========================================

Every head also gives the KL divergence between two of its distributions
(:meth:`kl`), which TRPO's trust region is measured in.

Gaussian actions live in the batch as drawn: the plain Gaussian's are clipped to the
Box only on the way to the env, and the tanh head's are the pre-squash :math:`u`,
squashed on the way to the env. Either way the log-probability is that of exactly
what was sampled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pglab.nets import ImageCNN, ImagePart, MultiInputBody, mlp, output_dim

#: Head names selectable with ``policy.head`` (``auto`` picks from the action space).
HEADS: tuple[str, ...] = (
    "auto",
    "categorical",
    "bernoulli",
    "gaussian",
    "tanh_gaussian",
    "gsde",
)

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def squash(u: Any, low: Any, high: Any, xp: Any = torch) -> Any:
    r"""The tanh head's env action :math:`a = \ell + (h - \ell)(\tanh u + 1)/2`, which maps
    any :math:`u` into the Box :math:`[\ell, h]`.

    One formula for tensors (``xp=torch``) and numpy arrays (``xp=numpy``): the collector
    maps its numpy actions with it and :class:`pglab.Agent` (and an exported policy) its
    tensors, so they cannot drift apart.
    """
    return low + (high - low) * (xp.tanh(u) + 1.0) / 2.0


class _Head(nn.Module):
    """What every action head shares."""

    def log_prob_entropy(self, params: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`log_prob` of ``actions`` and :meth:`entropy`, from one set of parameters."""
        return self.log_prob(params, actions), self.entropy(params)


class CategoricalHead(_Head):
    r"""Softmax policy over ``n`` actions: :math:`\pi(k \mid s) = e^{l_k} / \sum_j e^{l_j}`."""

    def __init__(self, in_dim: int, n: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, n)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)

    @staticmethod
    def sample(logits: Tensor) -> Tensor:
        """Gumbel-max sampling: :math:`\\arg\\max_k (l_k - \\log E_k)`, :math:`E_k \\sim \\mathrm{Exp}(1)`."""
        noise = torch.empty_like(logits).exponential_().log()
        return (logits - noise).argmax(dim=-1)

    @staticmethod
    def mode(logits: Tensor) -> Tensor:
        return logits.argmax(dim=-1)

    def log_prob(self, logits: Tensor, actions: Tensor) -> Tensor:
        return self._pick(logits.log_softmax(dim=-1), actions)

    def entropy(self, logits: Tensor) -> Tensor:
        r""":math:`H = -\sum_k \pi_k \log \pi_k`."""
        return self._entropy(logits.log_softmax(dim=-1))

    @classmethod
    def log_prob_entropy(cls, logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Both from one log-softmax (the update's hot path)."""
        log_pi = logits.log_softmax(dim=-1)
        return cls._pick(log_pi, actions), cls._entropy(log_pi)

    @staticmethod
    def _pick(log_pi: Tensor, actions: Tensor) -> Tensor:
        return log_pi.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def _entropy(log_pi: Tensor) -> Tensor:
        return -(log_pi.exp() * log_pi).sum(dim=-1)

    @staticmethod
    def kl(old: Tensor, new: Tensor, old_log_std: Tensor | None = None) -> Tensor:
        r""":math:`\mathrm{KL}(\pi_{old} \| \pi_{new}) = \sum_k \pi^{old}_k (\log \pi^{old}_k - \log \pi^{new}_k)`."""
        old_log_pi = old.log_softmax(dim=-1)
        return (old_log_pi.exp() * (old_log_pi - new.log_softmax(dim=-1))).sum(dim=-1)


class BernoulliHead(_Head):
    r"""Two actions from one logit: :math:`P(a=1 \mid s) = \sigma(l(s))` (the classic Pong policy)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 1)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features).squeeze(-1)

    def sample(self, logit: Tensor) -> Tensor:
        return (torch.rand_like(logit) < torch.sigmoid(logit)).long()

    def mode(self, logit: Tensor) -> Tensor:
        return (logit > 0).long()

    def log_prob(self, logit: Tensor, actions: Tensor) -> Tensor:
        r""":math:`a \log\sigma(l) + (1-a)\log\sigma(-l)`."""
        a = actions.to(logit.dtype)
        return a * F.logsigmoid(logit) + (1.0 - a) * F.logsigmoid(-logit)

    def entropy(self, logit: Tensor) -> Tensor:
        p = torch.sigmoid(logit)
        return -(p * F.logsigmoid(logit) + (1.0 - p) * F.logsigmoid(-logit))

    def kl(self, old: Tensor, new: Tensor, old_log_std: Tensor | None = None) -> Tensor:
        r""":math:`p \log\frac{p}{q} + (1-p)\log\frac{1-p}{1-q}` with :math:`p = \sigma(l_{old}), q = \sigma(l_{new})`."""
        p = torch.sigmoid(old)
        return p * (F.logsigmoid(old) - F.logsigmoid(new)) + (1.0 - p) * (
            F.logsigmoid(-old) - F.logsigmoid(-new)
        )


class MultiCategoricalHead(_Head):
    r"""Independent categoricals for a ``MultiDiscrete`` space, one per entry, their
    logits side by side: :math:`\log\pi(a) = \sum_i \log\pi_i(a_i)`,
    :math:`H = \sum_i H_i`, :math:`\mathrm{KL} = \sum_i \mathrm{KL}_i`."""

    def __init__(self, in_dim: int, nvec: Sequence[int]) -> None:
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        self.linear = nn.Linear(in_dim, sum(self.nvec))

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)

    def _groups(self, logits: Tensor) -> tuple[Tensor, ...]:
        return logits.split(self.nvec, dim=-1)

    def sample(self, logits: Tensor) -> Tensor:
        return torch.stack([CategoricalHead.sample(g) for g in self._groups(logits)], dim=-1)

    def mode(self, logits: Tensor) -> Tensor:
        return torch.stack([CategoricalHead.mode(g) for g in self._groups(logits)], dim=-1)

    def log_prob(self, logits: Tensor, actions: Tensor) -> Tensor:
        return self.log_prob_entropy(logits, actions)[0]

    def entropy(self, logits: Tensor) -> Tensor:
        return sum(CategoricalHead._entropy(g.log_softmax(dim=-1)) for g in self._groups(logits))  # type: ignore[return-value]

    def log_prob_entropy(self, logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        pairs = [
            CategoricalHead.log_prob_entropy(g, actions[..., i])
            for i, g in enumerate(self._groups(logits))
        ]
        return sum(p for p, _ in pairs), sum(h for _, h in pairs)  # type: ignore[return-value]

    def kl(self, old: Tensor, new: Tensor, old_log_std: Tensor | None = None) -> Tensor:
        parts = zip(self._groups(old), self._groups(new))
        return sum(CategoricalHead.kl(o, n) for o, n in parts)  # type: ignore[return-value]


class MultiBernoulliHead(BernoulliHead):
    r"""Independent Bernoullis for a ``MultiBinary`` space, one logit per bit: the
    log-probabilities, entropies and KL of :class:`BernoulliHead` summed over the bits."""

    def __init__(self, in_dim: int, n: int) -> None:
        _Head.__init__(self)
        self.linear = nn.Linear(in_dim, n)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)

    def log_prob(self, logit: Tensor, actions: Tensor) -> Tensor:
        return super().log_prob(logit, actions).sum(dim=-1)

    def entropy(self, logit: Tensor) -> Tensor:
        return super().entropy(logit).sum(dim=-1)

    def kl(self, old: Tensor, new: Tensor, old_log_std: Tensor | None = None) -> Tensor:
        return super().kl(old, new).sum(dim=-1)


class GaussianHead(_Head):
    r"""Diagonal Gaussian with a state-independent, clamped :math:`\log\sigma`.

    .. math:: \log \pi(a \mid s) = -\sum_i \Big[\frac{(a_i - \mu_i)^2}{2\sigma_i^2}
              + \log\sigma_i + \tfrac12 \log 2\pi\Big]

    The action is unbounded; clipping to the Box happens only on the way to the env.
    """

    def __init__(self, in_dim: int, action_dim: int, log_std_init: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, action_dim)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)

    def _log_std(self) -> Tensor:
        return self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, mean: Tensor) -> Tensor:
        return mean + self._log_std().exp() * torch.randn_like(mean)

    def mode(self, mean: Tensor) -> Tensor:
        return mean

    def log_prob(self, mean: Tensor, actions: Tensor) -> Tensor:
        log_std = self._log_std()
        z = (actions - mean) / log_std.exp()
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def entropy(self, mean: Tensor) -> Tensor:
        r""":math:`H = \sum_i \big(\tfrac12 + \tfrac12\log 2\pi + \log\sigma_i\big)`."""
        per_dim = 0.5 + 0.5 * math.log(2 * math.pi) + self._log_std()
        return per_dim.sum().expand(mean.shape[:-1])

    def std(self) -> Tensor:
        """The current standard deviation per action dimension."""
        return self._log_std().exp()

    def kl(self, old: Tensor, new: Tensor, old_log_std: Tensor | None = None) -> Tensor:
        r""":math:`\sum_i \log\frac{\sigma_i}{\sigma^{old}_i} + \frac{(\sigma^{old}_i)^2 + (\mu^{old}_i - \mu_i)^2}{2\sigma_i^2} - \frac12`.

        ``old`` and ``new`` are means; ``old_log_std`` is the old (detached) log std,
        the current one by default.
        """
        log_std = self._log_std()
        old_log_std = log_std.detach() if old_log_std is None else old_log_std
        var = (2 * log_std).exp()
        per_dim = log_std - old_log_std + ((2 * old_log_std).exp() + (old - new) ** 2) / (2 * var)
        return (per_dim - 0.5).sum(dim=-1)


class TanhGaussianHead(GaussianHead):
    r"""A Gaussian squashed by tanh into the Box :math:`[\ell, h]`.

    The head samples :math:`u \sim \mathcal N(\mu, \sigma^2)`; the env receives
    :math:`a = \ell + (h - \ell)(\tanh u + 1)/2` (see :meth:`squash`). By the change
    of variables,

    .. math::
        \log \pi(a \mid s) = \log \mathcal N(u; \mu, \sigma^2)
            - \sum_i \Big[\log\big(1 - \tanh^2 u_i\big) + \log\tfrac{h_i - \ell_i}{2}\Big]

    with :math:`\log(1 - \tanh^2 u) = 2(\log 2 - u - \mathrm{softplus}(-2u))` for
    stability. The batch stores :math:`u`. :meth:`entropy` is that of :math:`u` (the
    squashed entropy has no closed form); the KL is the same for :math:`u` and
    :math:`a`, since the squash is a bijection.
    """

    def __init__(
        self, in_dim: int, low: np.ndarray, high: np.ndarray, log_std_init: float = 0.0
    ) -> None:
        super().__init__(in_dim, len(low), log_std_init)
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))

    def squash(self, u: Tensor) -> Tensor:
        """The env action :math:`\\ell + (h - \\ell)(\tanh u + 1)/2` (see :func:`squash`)."""
        return squash(u, self.low, self.high)

    def log_prob(self, mean: Tensor, actions: Tensor) -> Tensor:
        u = actions
        log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        log_scale = torch.log((self.high - self.low) / 2.0)
        return super().log_prob(mean, u) - (log_det + log_scale).sum(dim=-1)


class GSDEHead(_Head):
    r"""Generalised state-dependent exploration (gSDE; Raffin, Kober and Stulp 2022).

    The noise is a linear function of the policy's own features :math:`z(s)` (the body's
    output, detached: exploration does not train the body), with weights drawn once and
    held for many steps rather than drawn afresh at every step:

    .. math::
        a = \mu(s) + z(s)^\top \Theta, \qquad \Theta_{ji} \sim \mathcal N(0, \sigma_{ji}^2)

    so that an env's actions change smoothly along its trajectory (what a task such as
    MountainCarContinuous needs to reach its goal at all). Each env gets its own
    :math:`\Theta`, drawn at the first step of every batch (and every ``sample_every``
    steps within it when that is positive); a call with another number of rows (an
    :class:`pglab.Agent` acting on a batch of its own) draws a :math:`\Theta` per row.

    Given the state, the action is Gaussian with a state-dependent variance, which is
    what the log-probability, entropy and KL use:

    .. math::
        \sigma_i(s)^2 = \sum_j z_j(s)^2 \sigma_{ji}^2 + \epsilon, \qquad
        \log \pi(a \mid s) = -\sum_i \Big[\frac{(a_i - \mu_i)^2}{2\sigma_i(s)^2}
              + \log\sigma_i(s) + \tfrac12 \log 2\pi\Big]

    with :math:`\epsilon = 10^{-6}`. The parameters it hands around are
    :math:`[\mu(s), z(s)]` side by side; :math:`\log\sigma` is a learned
    ``[features, actions]`` matrix. The action is unbounded, clipped to the Box on the
    way to the env, as the plain Gaussian's.
    """

    EPSILON = 1e-6

    def __init__(
        self, in_dim: int, action_dim: int, log_std_init: float = 0.0, sample_every: int = -1
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, action_dim)
        self.log_std = nn.Parameter(torch.full((in_dim, action_dim), float(log_std_init)))
        self.action_dim = action_dim
        self.sample_every = sample_every
        self._weights: Tensor | None = None  # [N, features, actions], one Theta per env
        self._steps = 0

    def forward(self, features: Tensor) -> Tensor:
        return torch.cat([self.linear(features), features.detach()], dim=-1)

    def _log_std(self) -> Tensor:
        return self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., : self.action_dim], params[..., self.action_dim :]

    def _state_log_std(self, z: Tensor, log_std: Tensor | None = None) -> Tensor:
        r""":math:`\log\sigma_i(s) = \tfrac12 \log\big(\sum_j z_j^2 \sigma_{ji}^2 + \epsilon\big)`."""
        log_std = self._log_std() if log_std is None else log_std
        return 0.5 * torch.log(z.square() @ (2 * log_std).exp() + self.EPSILON)

    def start_rollout(self) -> None:
        """Forget the noise weights: the next :meth:`sample` draws new ones."""
        self._weights = None
        self._steps = 0

    def sample(self, params: Tensor) -> Tensor:
        mean, z = self._split(params)
        due = self.sample_every > 0 and self._steps % self.sample_every == 0
        if self._weights is None or self._weights.shape[0] != len(z) or due:
            std = self._log_std().exp()
            self._weights = std * torch.randn((len(z), *std.shape), device=z.device)
        self._steps += 1
        return mean + torch.bmm(z.unsqueeze(1), self._weights).squeeze(1)

    def mode(self, params: Tensor) -> Tensor:
        return self._split(params)[0]

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        mean, z = self._split(params)
        log_std = self._state_log_std(z)
        u = (actions - mean) * (-log_std).exp()
        return (-0.5 * u**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=-1)

    def entropy(self, params: Tensor) -> Tensor:
        r""":math:`H = \sum_i \big(\tfrac12 + \tfrac12\log 2\pi + \log\sigma_i(s)\big)`."""
        log_std = self._state_log_std(self._split(params)[1])
        return (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum(dim=-1)

    def std(self) -> Tensor:
        r"""The noise weights' standard deviations :math:`\sigma_{ji}` (``[features, actions]``)."""
        return self._log_std().exp()

    def kl(self, old: Tensor, new: Tensor, old_log_std: Tensor | None = None) -> Tensor:
        r"""The Gaussians' KL (as :meth:`GaussianHead.kl`) with each side's
        :math:`\sigma(s)`; ``old_log_std`` is the old :math:`\log\sigma` matrix (the
        current one, detached, by default)."""
        (old_mean, old_z), (mean, z) = self._split(old), self._split(new)
        if old_log_std is None:
            old_log_std = self._log_std().detach()
        old_s = self._state_log_std(old_z, old_log_std)
        new_s = self._state_log_std(z)
        per_dim = (
            new_s - old_s + ((2 * old_s).exp() + (old_mean - mean) ** 2) / (2 * (2 * new_s).exp())
        )
        return (per_dim - 0.5).sum(dim=-1)


ActionHead = (
    CategoricalHead
    | BernoulliHead
    | MultiCategoricalHead
    | MultiBernoulliHead
    | GaussianHead
    | TanhGaussianHead
    | GSDEHead
)


def make_head(
    in_dim: int,
    action_space: gym.Space,
    head: str = "auto",
    log_std_init: float = 0.0,
    sde_sample_freq: int = -1,
) -> ActionHead:
    """The action head for ``action_space``; ``head`` forces a kind (see :data:`HEADS`;
    ``sde_sample_freq``: how often the ``gsde`` head redraws its noise, see
    :class:`GSDEHead`)."""
    if isinstance(action_space, gym.spaces.Discrete):
        n = int(action_space.n)
        if head == "bernoulli":
            if n != 2:
                raise ValueError(f"the bernoulli head needs Discrete(2), got Discrete({n})")
            return BernoulliHead(in_dim)
        if head in ("auto", "categorical"):
            return CategoricalHead(in_dim, n)
    elif isinstance(action_space, gym.spaces.MultiDiscrete) and head in ("auto", "categorical"):
        return MultiCategoricalHead(in_dim, np.asarray(action_space.nvec).reshape(-1))
    elif isinstance(action_space, gym.spaces.MultiBinary) and head in ("auto", "bernoulli"):
        return MultiBernoulliHead(in_dim, int(np.prod(action_space.n)))
    elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        if head in ("auto", "gaussian"):
            return GaussianHead(in_dim, action_space.shape[0], log_std_init)
        if head == "tanh_gaussian":
            low, high = action_space.low, action_space.high
            if not (np.isfinite(low).all() and np.isfinite(high).all()):
                raise ValueError(f"the tanh_gaussian head needs finite bounds, got {action_space}")
            return TanhGaussianHead(in_dim, low, high, log_std_init)
        if head == "gsde":
            return GSDEHead(in_dim, action_space.shape[0], log_std_init, sde_sample_freq)
    raise ValueError(f"policy head {head!r} does not fit the action space {action_space}")


#: The logit an illegal action gets: its probability is exp(-1e8) = 0 exactly in float32,
#: so it is never sampled and adds nothing to the entropy (0 x -1e8 = 0).
MASKED_LOGIT = -1e8


class Actor(nn.Module):
    r"""A stochastic policy :math:`\pi_\theta(a \mid s)`: body then head.

    With ``mask_dim`` > 0 the last ``mask_dim`` columns of an observation are its action
    mask (1 legal, 0 not; see :class:`~pglab.envs.spaces.ObsEncoder`), and the logits
    of illegal actions become :data:`MASKED_LOGIT`: a masked categorical, whose
    log-probabilities and entropy are over the legal actions. ``action_mask`` says where
    the collector finds the mask (``obs``, ``info`` or ``none``).
    """

    def __init__(
        self, body: nn.Module, head: ActionHead, mask_dim: int = 0, action_mask: str = "none"
    ) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.mask_dim = mask_dim
        self.action_mask = action_mask if mask_dim else "none"

    def forward(self, obs: Tensor) -> Tensor:
        """Distribution parameters (logits or means) for a batch of observations."""
        return self.params(self.body(obs), obs)

    def params(self, features: Tensor, obs: Tensor) -> Tensor:
        """Distribution parameters from the body's ``features`` of ``obs`` (whose mask
        columns, if any, rule out illegal actions)."""
        params = self.head(features)
        if self.mask_dim:
            legal = obs[..., obs.shape[-1] - self.mask_dim :] > 0.5
            params = params.masked_fill(~legal, MASKED_LOGIT)
        return params

    def start_rollout(self) -> None:
        """Called by the collector before every batch: a head whose noise lasts over
        several steps (:class:`GSDEHead`) draws it afresh."""
        start = getattr(self.head, "start_rollout", None)
        if start is not None:
            start()

    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Sample an action, or take the most likely one when ``deterministic``."""
        params = self(obs)
        return self.head.mode(params) if deterministic else self.head.sample(params)

    def log_prob_entropy(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`\log \pi(a \mid s)` of given actions, and the entropy at each state."""
        return self.head.log_prob_entropy(self(obs), actions)


class Critic(nn.Module):
    r"""A state-value function :math:`V_\phi(s)`: a body and one linear output.

    The body may be the actor's own (a shared body), in which case the two
    networks are trained through one loss.
    """

    def __init__(self, body: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.body = body
        self.value = nn.Linear(feature_dim, 1)
        #: Whether its layers have :func:`orthogonal_init`'s initialisation (else
        #: torch's own): what :func:`redraw_critic` draws.
        self.orthogonal = False

    def forward(self, obs: Tensor) -> Tensor:
        return self.value(self.body(obs)).squeeze(-1)


def evaluate_actions(
    actor: Actor, critic: Critic | None, obs: Tensor, actions: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    r""":math:`\log \pi(a \mid s)`, the entropy at each state, and :math:`V(s)` (None
    without a critic), for a loss. A critic on the actor's own body (``policy.shared``;
    exactly :class:`Actor` and :class:`Critic`) takes the features of the one forward
    pass through it, so an update of a shared CNN costs one forward and one backward
    pass, not two."""
    shared = type(actor) is Actor and type(critic) is Critic and critic.body is actor.body
    if not shared:  # (a user's own actor or critic class runs its own forward)
        log_probs, entropy = actor.log_prob_entropy(obs, actions)
        return log_probs, entropy, None if critic is None else critic(obs)
    features = actor.body(obs)
    log_probs, entropy = actor.head.log_prob_entropy(actor.params(features, obs), actions)
    return log_probs, entropy, critic.value(features).squeeze(-1)


#: Makes a body of the user's own from the encoded observations' width.
BodyFactory = Callable[[int], nn.Module]


def custom_body(factory: BodyFactory, obs_dim: int) -> tuple[nn.Module, int]:
    """A body of the user's own (``factory(obs_dim)``, a module from ``[N, obs_dim]`` to
    ``[N, F]`` features) and its width ``F``, found by one forward pass of zeros."""
    body = factory(obs_dim)
    if not isinstance(body, nn.Module):
        raise ValueError(f"a body must be a torch.nn.Module; the class made {type(body).__name__}")
    with torch.no_grad():
        features = body(torch.zeros(2, obs_dim))
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"a body must map [N, {obs_dim}] to [N, features]; it gave {shape}")
    return body, int(features.shape[1])


def make_body(
    obs_dim: int,
    hidden: Sequence[int],
    activation: str = "tanh",
    dropout: float = 0.0,
    images: Sequence[ImagePart] = (),
    factory: BodyFactory | None = None,
) -> tuple[nn.Module, int]:
    """A body for encoded observations of width ``obs_dim`` and the width of its features.

    A ``factory`` makes one of the user's own (:func:`custom_body`). Without ``images``,
    an MLP. With one image that is the whole observation, an
    :class:`~pglab.nets.ImageCNN` of ``hidden[-1]`` units (512 when empty); with images
    among other values, a :class:`~pglab.nets.MultiInputBody` (a CNN per image, then an
    MLP of ``hidden``).
    """
    if factory is not None:
        return custom_body(factory, obs_dim)
    if len(images) == 1 and images[0].offset == 0 and images[0].size == obs_dim:
        units = hidden[-1] if hidden else 512
        return ImageCNN(images[0], units), units
    if images:
        body = MultiInputBody(obs_dim, images, hidden, activation, dropout)
        return body, body.width
    return mlp(obs_dim, hidden, None, activation, dropout), output_dim(obs_dim, hidden)


def make_actor(
    obs_dim: int,
    action_space: gym.Space,
    hidden: Sequence[int],
    *,
    activation: str = "tanh",
    dropout: float = 0.0,
    head: str = "auto",
    log_std_init: float = 0.0,
    sde_sample_freq: int = -1,
    images: Sequence[ImagePart] = (),
    mask_dim: int = 0,
    action_mask: str = "none",
    factory: BodyFactory | None = None,
) -> Actor:
    """An actor for encoded observations of width ``obs_dim`` (``images``: where images
    lie in them, see :func:`make_body`; ``mask_dim``, ``action_mask``: its action
    mask, see :class:`Actor`; ``head``, ``log_std_init``, ``sde_sample_freq``: see
    :func:`make_head`).

    ``hidden=[]`` makes a linear policy (for a Discrete space: linear softmax).
    """
    body, width = make_body(obs_dim, hidden, activation, dropout, images, factory)
    action_head = make_head(width, action_space, head, log_std_init, sde_sample_freq)
    if mask_dim and not isinstance(action_head, (CategoricalHead, MultiCategoricalHead)):
        raise ValueError(f"an action mask needs a categorical head, not {head!r}")
    return Actor(body, action_head, mask_dim, action_mask)


def make_critic(
    obs_dim: int,
    hidden: Sequence[int],
    activation: str = "tanh",
    images: Sequence[ImagePart] = (),
    factory: BodyFactory | None = None,
) -> Critic:
    """A critic with a body of its own."""
    return Critic(*make_body(obs_dim, hidden, activation, 0.0, images, factory))


def shared_critic(actor: Actor) -> Critic:
    """A critic on the actor's own body (one set of features, two heads)."""
    width = actor.head.linear.in_features
    return Critic(actor.body, width)


def init_layer(
    module: nn.Module, gain: float | None, generator: torch.Generator | None = None
) -> None:
    r"""Draw a linear or convolutional layer's weights afresh (any other module: nothing).

    With ``gain`` None, torch's own initialisation of the layer: with :math:`k =
    1/\sqrt{\text{fan}_\text{in}}`, :math:`W_{ij} \sim U(-k, k)` (Kaiming uniform with
    :math:`a = \sqrt 5`) and :math:`b_i \sim U(-k, k)`. With a gain :math:`g`, an
    orthogonal :math:`W` scaled by :math:`g` and :math:`b = 0` (Saxe et al. 2014). The
    numbers come from ``generator`` (torch's global stream where None), drawn on the CPU
    in torch's order and copied into the layer: a layer on any device gets the same.
    """
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        return
    weight = torch.empty(module.weight.shape, dtype=module.weight.dtype)
    bias = (
        torch.zeros(module.bias.shape, dtype=module.bias.dtype) if module.bias is not None else None
    )
    if gain is None:
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        if bias is not None:
            bound = 1.0 / math.sqrt(weight[0].numel())  # fan in
            nn.init.uniform_(bias, -bound, bound, generator=generator)
    else:
        nn.init.orthogonal_(weight, gain, generator=generator)
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)


def orthogonal_init(actor: Actor, critic: Critic | None) -> None:
    r"""Orthogonal initialisation with the usual gains (Engstrom et al. 2020; Huang et al. 2022).

    Hidden layers: gain :math:`\sqrt 2`; the policy output: 0.01 (a near-uniform
    initial policy); the value output: 1. Biases are zero.
    """
    for network in [actor.body] + ([critic.body] if critic is not None else []):
        for module in network.modules():
            init_layer(module, math.sqrt(2))
    init_layer(actor.head.linear, 0.01)
    if critic is not None:
        init_layer(critic.value, 1.0)
        critic.orthogonal = True


def redrawable(critic: nn.Module) -> bool:
    """Whether :func:`redraw_critic` can redraw ``critic``: a :class:`Critic` whose every
    parameter lies in a linear or convolutional layer (pglab's own bodies)."""
    layers = (m for m in critic.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    covered = {id(p) for m in layers for p in m.parameters(recurse=False)}
    return isinstance(critic, Critic) and all(id(p) in covered for p in critic.parameters())


def redraw_critic(critic: Critic, generator: torch.Generator) -> None:
    r"""Give ``critic`` (one that is :func:`redrawable`) a fresh draw of the
    initialisation it was built with, from ``generator``, layer by layer
    (:func:`init_layer`): torch's own, or :func:`orthogonal_init`'s (gain :math:`\sqrt 2`
    in the body, 1 for the value) where :attr:`Critic.orthogonal`. Its parameters keep
    their storage: views of a parameter stack stay views, and the stack holds the draw."""
    for module in critic.body.modules():
        init_layer(module, math.sqrt(2) if critic.orthogonal else None, generator)
    init_layer(critic.value, 1.0 if critic.orthogonal else None, generator)


def unique_parameters(*modules: nn.Module | None) -> list[nn.Parameter]:
    """The parameters of ``modules``, each once (a shared body appears in both nets)."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        if module is not None:
            for p in module.parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())
