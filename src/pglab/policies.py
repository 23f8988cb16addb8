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
bernoulli       ``Discrete(2)``             one logit, :math:`P(a = 1) = \sigma(l)`
gaussian        ``Box`` (1-D)               :math:`\mathcal N(\mu(s), \mathrm{diag}(\sigma^2))`, state-independent :math:`\log\sigma`
tanh_gaussian   ``Box`` (1-D, bounded)      :math:`a = \ell + (h - \ell)(\tanh u + 1)/2`, :math:`u \sim \mathcal N(\mu, \sigma^2)`
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

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pglab.nets import dense_backward, dense_forward, dense_layers, mlp, output_dim

#: Head names selectable with ``policy.head`` (``auto`` picks from the action space).
HEADS: tuple[str, ...] = ("auto", "categorical", "bernoulli", "gaussian", "tanh_gaussian")

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

#: Maps a loss's gradients with respect to the log-probabilities and the entropies
#: (None: the loss has no entropy term) to its gradients with respect to the head's
#: distribution parameters and its log std (None where it has none).
HeadBackward = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]


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

    def sample(self, logits: Tensor) -> Tensor:
        """Gumbel-max sampling: :math:`\\arg\\max_k (l_k - \\log E_k)`, :math:`E_k \\sim \\mathrm{Exp}(1)`."""
        noise = torch.empty_like(logits).exponential_().log()
        return (logits - noise).argmax(dim=-1)

    def mode(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=-1)

    def log_prob(self, logits: Tensor, actions: Tensor) -> Tensor:
        return self._pick(logits.log_softmax(dim=-1), actions)

    def entropy(self, logits: Tensor) -> Tensor:
        r""":math:`H = -\sum_k \pi_k \log \pi_k`."""
        return self._entropy(logits.log_softmax(dim=-1))

    def log_prob_entropy(self, logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Both from one log-softmax (the update's hot path)."""
        log_pi = logits.log_softmax(dim=-1)
        return self._pick(log_pi, actions), self._entropy(log_pi)

    def log_prob_entropy_vjp(
        self, logits: Tensor, actions: Tensor, log_std: Tensor | None = None
    ) -> tuple[Tensor, Tensor, HeadBackward]:
        r""":meth:`log_prob_entropy` and the map from a loss's gradients with respect to
        them to its gradient with respect to the logits (``log_std`` is unused):

        .. math::
            \frac{\partial \log \pi_a}{\partial l} = e_a - \pi, \qquad
            \frac{\partial H}{\partial l} = -\pi \odot (\log \pi + H)
        """
        log_pi = logits.log_softmax(dim=-1)
        pi = log_pi.exp()
        index = actions.long().unsqueeze(-1)
        log_prob = log_pi.gather(-1, index).squeeze(-1)
        entropy = -(pi * log_pi).sum(dim=-1)

        def backward(g_log_prob: Tensor, g_entropy: Tensor | None) -> tuple[Tensor, None]:
            g_logits = pi * -g_log_prob.unsqueeze(-1)
            g_logits.scatter_add_(-1, index, g_log_prob.unsqueeze(-1))
            if g_entropy is not None:
                g_logits -= g_entropy.unsqueeze(-1) * pi * (log_pi + entropy.unsqueeze(-1))
            return g_logits, None

        return log_prob, entropy, backward

    @staticmethod
    def _pick(log_pi: Tensor, actions: Tensor) -> Tensor:
        return log_pi.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def _entropy(log_pi: Tensor) -> Tensor:
        return -(log_pi.exp() * log_pi).sum(dim=-1)

    def kl(self, old: Tensor, new: Tensor, old_log_std: Tensor | None = None) -> Tensor:
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

    def log_prob_entropy_vjp(
        self, mean: Tensor, actions: Tensor, log_std: Tensor | None = None
    ) -> tuple[Tensor, Tensor, HeadBackward]:
        r""":meth:`log_prob_entropy` and the map from a loss's gradients with respect to
        them to its gradients with respect to the means and the (unclamped) log std
        ``log_std`` (this head's own by default; ``[M, A]`` for M stacked heads). With
        :math:`z = (a - \mu) / \sigma`:

        .. math::
            \frac{\partial \log \pi}{\partial \mu} = \frac{z}{\sigma}, \qquad
            \frac{\partial \log \pi}{\partial \log\sigma_i} = z_i^2 - 1, \qquad
            \frac{\partial H}{\partial \log\sigma_i} = 1

        summed over the batch for :math:`\log\sigma`, and zero where the clamp holds it.
        """
        raw = self.log_std if log_std is None else log_std
        clamped = raw.clamp(LOG_STD_MIN, LOG_STD_MAX).unsqueeze(-2)
        std = clamped.exp()
        z = (actions - mean) / std
        log_prob = (-0.5 * z**2 - clamped - 0.5 * math.log(2 * math.pi)).sum(dim=-1)
        per_dim = 0.5 + 0.5 * math.log(2 * math.pi) + clamped
        entropy = per_dim.sum(dim=-1).expand(mean.shape[:-1])

        def backward(g_log_prob: Tensor, g_entropy: Tensor | None) -> tuple[Tensor, Tensor]:
            g = g_log_prob.unsqueeze(-1)
            g_log_std = (g * (z * z - 1.0)).sum(dim=-2)
            if g_entropy is not None:
                g_log_std = g_log_std + g_entropy.sum(dim=-1, keepdim=True)
            inside = (raw >= LOG_STD_MIN) & (raw <= LOG_STD_MAX)
            return g * z / std, g_log_std * inside

        return log_prob, entropy, backward

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

    def log_prob_entropy_vjp(
        self, mean: Tensor, actions: Tensor, log_std: Tensor | None = None
    ) -> tuple[Tensor, Tensor, HeadBackward]:
        raise NotImplementedError("the squashed Gaussian's gradient is left to autograd")

    def squash(self, u: Tensor) -> Tensor:
        """The env action :math:`\\ell + (h - \\ell)(\tanh u + 1)/2`."""
        return self.low + (self.high - self.low) * (torch.tanh(u) + 1.0) / 2.0

    def log_prob(self, mean: Tensor, actions: Tensor) -> Tensor:
        u = actions
        log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        log_scale = torch.log((self.high - self.low) / 2.0)
        return super().log_prob(mean, u) - (log_det + log_scale).sum(dim=-1)


ActionHead = CategoricalHead | BernoulliHead | GaussianHead | TanhGaussianHead


def make_head(
    in_dim: int, action_space: gym.Space, head: str = "auto", log_std_init: float = 0.0
) -> ActionHead:
    """The action head for ``action_space``; ``head`` forces a kind (see :data:`HEADS`)."""
    if isinstance(action_space, gym.spaces.Discrete):
        n = int(action_space.n)
        if head == "bernoulli":
            if n != 2:
                raise ValueError(f"the bernoulli head needs Discrete(2), got Discrete({n})")
            return BernoulliHead(in_dim)
        if head in ("auto", "categorical"):
            return CategoricalHead(in_dim, n)
    elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        if head in ("auto", "gaussian"):
            return GaussianHead(in_dim, action_space.shape[0], log_std_init)
        if head == "tanh_gaussian":
            low, high = action_space.low, action_space.high
            if not (np.isfinite(low).all() and np.isfinite(high).all()):
                raise ValueError(f"the tanh_gaussian head needs finite bounds, got {action_space}")
            return TanhGaussianHead(in_dim, low, high, log_std_init)
    raise ValueError(f"policy head {head!r} does not fit the action space {action_space}")


class Actor(nn.Module):
    r"""A stochastic policy :math:`\pi_\theta(a \mid s)`: body then head."""

    def __init__(self, body: nn.Module, head: ActionHead) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, obs: Tensor) -> Tensor:
        """Distribution parameters (logits or means) for a batch of observations."""
        return self.head(self.body(obs))

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

    def forward(self, obs: Tensor) -> Tensor:
        return self.value(self.body(obs)).squeeze(-1)


def make_body(
    obs_dim: int,
    hidden: Sequence[int],
    activation: str = "tanh",
    dropout: float = 0.0,
    image_shape: Sequence[int] | None = None,
) -> tuple[nn.Module, int]:
    """A body for flat observations of width ``obs_dim`` and the width of its features.

    ``image_shape`` ``(C, H, W)`` makes a Nature CNN (with ``hidden[-1]`` units,
    512 when empty) for pixel observations; otherwise an MLP.
    """
    if image_shape is not None:
        units = hidden[-1] if hidden else 512
        return NatureCNN(tuple(image_shape), units), units
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
    image_shape: Sequence[int] | None = None,
) -> Actor:
    """An actor for flat observations of width ``obs_dim``.

    ``hidden=[]`` makes a linear policy (for a Discrete space: linear softmax).
    """
    body, width = make_body(obs_dim, hidden, activation, dropout, image_shape)
    return Actor(body, make_head(width, action_space, head, log_std_init))


def make_critic(
    obs_dim: int,
    hidden: Sequence[int],
    activation: str = "tanh",
    image_shape: Sequence[int] | None = None,
) -> Critic:
    """A critic with a body of its own."""
    return Critic(*make_body(obs_dim, hidden, activation, 0.0, image_shape))


def shared_critic(actor: Actor) -> Critic:
    """A critic on the actor's own body (one set of features, two heads)."""
    width = actor.head.linear.in_features
    return Critic(actor.body, width)


def orthogonal_init(actor: Actor, critic: Critic | None) -> None:
    r"""Orthogonal initialisation with the usual gains (Engstrom et al. 2020; Huang et al. 2022).

    Hidden layers: gain :math:`\sqrt 2`; the policy output: 0.01 (a near-uniform
    initial policy); the value output: 1. Biases are zero.
    """

    def init(module: nn.Module, gain: float) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(module.weight, gain)
            nn.init.zeros_(module.bias)

    for network in [actor.body] + ([critic.body] if critic is not None else []):
        for module in network.modules():
            init(module, math.sqrt(2))
    init(actor.head.linear, 0.01)
    if critic is not None:
        init(critic.value, 1.0)


def unique_parameters(*modules: nn.Module | None) -> list[nn.Parameter]:
    """The parameters of ``modules``, each once (a shared body appears in both nets)."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        if module is not None:
            for p in module.parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


#: A map from a loss's gradients with respect to the log-probabilities, the entropies
#: (None: no entropy term) and the values to its gradients by parameter name.
DenseBackward = Callable[[Tensor, Tensor | None, Tensor], dict[str, Tensor]]


class DenseActorCritic:
    r"""An actor and a critic whose forward and backward passes are written out, so a
    loss's gradient needs no autograd graph: separate plain MLP bodies (see
    :func:`~pglab.nets.dense_layers`) under a categorical or Gaussian head and a
    linear value output. :meth:`build` returns None for any other pair.

    Parameters go by their names in a module holding the actor as ``actor`` and the
    critic as ``critic`` (``actor.body.0.weight``, ``critic.value.bias``, ...), and may
    be stacked ``[M, ...]`` to run M networks (a population's members) at once.
    """

    def __init__(
        self,
        head: CategoricalHead | GaussianHead,
        actor: tuple[list[str], str],
        critic: tuple[list[str], str],
    ) -> None:
        self.head = head
        self.actor_layers, self.actor_activation = actor
        self.critic_layers, self.critic_activation = critic
        self.log_std = "actor.head.log_std" if isinstance(head, GaussianHead) else None
        self._actor_names = [(f"{n}.weight", f"{n}.bias") for n in self.actor_layers]
        self._critic_names = [(f"{n}.weight", f"{n}.bias") for n in self.critic_layers]

    @classmethod
    def build(cls, actor: Actor, critic: Critic) -> DenseActorCritic | None:
        if type(actor) is not Actor or type(critic) is not Critic or critic.body is actor.body:
            return None
        if type(actor.head) not in (CategoricalHead, GaussianHead):
            return None
        actor_body, critic_body = dense_layers(actor.body), dense_layers(critic.body)
        if actor_body is None or critic_body is None:
            return None
        names = {id(m): f"actor.{n}" for n, m in actor.named_modules()}
        names.update({id(m): f"critic.{n}" for n, m in critic.named_modules()})
        actor_linears = [*actor_body[0], actor.head.linear]
        critic_linears = [*critic_body[0], critic.value]
        return cls(
            actor.head,
            ([names[id(m)] for m in actor_linears], actor_body[1]),
            ([names[id(m)] for m in critic_linears], critic_body[1]),
        )

    @staticmethod
    def parameters(actor: Actor, critic: Critic) -> dict[str, Tensor]:
        """The networks' parameters by the names :meth:`forward` takes."""
        named = {f"actor.{n}": p for n, p in actor.named_parameters()}
        named.update({f"critic.{n}": p for n, p in critic.named_parameters()})
        return named

    def values(self, params: dict[str, Tensor], obs: Tensor) -> Tensor:
        """The critic's values at ``obs`` (``[B]``, or ``[M, B]`` with stacked parameters)."""
        critic = [(params[w], params[b]) for w, b in self._critic_names]
        return dense_forward(obs, critic, self.critic_activation)[-1].squeeze(-1)

    def forward(
        self, params: dict[str, Tensor], obs: Tensor, actions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, DenseBackward]:
        """Log-probabilities of ``actions``, entropies and values at ``obs`` (``[B]``, or
        ``[M, B]`` with stacked parameters), and the backward pass from a loss's
        gradients with respect to those three to its gradient by parameter name."""
        actor = [(params[w], params[b]) for w, b in self._actor_names]
        critic = [(params[w], params[b]) for w, b in self._critic_names]
        h_actor = dense_forward(obs, actor, self.actor_activation)
        h_critic = dense_forward(obs, critic, self.critic_activation)
        log_std = params[self.log_std] if self.log_std else None
        log_probs, entropy, head_backward = self.head.log_prob_entropy_vjp(
            h_actor[-1], actions, log_std
        )

        def backward(
            g_log_probs: Tensor, g_entropy: Tensor | None, g_values: Tensor
        ) -> dict[str, Tensor]:
            g_head, g_log_std = head_backward(g_log_probs, g_entropy)
            grads: dict[str, Tensor] = {}
            for names, layers, outputs, activation, g in (
                (self._actor_names, actor, h_actor, self.actor_activation, g_head),
                (self._critic_names, critic, h_critic, self.critic_activation, g_values[..., None]),
            ):
                for (w, b), (dw, db) in zip(names, dense_backward(outputs, layers, activation, g)):
                    grads[w], grads[b] = dw, db
            if self.log_std:
                grads[self.log_std] = g_log_std
            return grads

        return log_probs, entropy, h_critic[-1].squeeze(-1), backward


class NatureCNN(nn.Module):
    """The Atari CNN of Mnih et al. (2015) on flattened ``(C, H, W)`` frames in [0, 255].

    Three convolutions (32 8x8 stride 4, 64 4x4 stride 2, 64 3x3 stride 1), then a
    ReLU layer of ``units``. Pixel values are scaled to [0, 1] inside.
    """

    def __init__(self, shape: tuple[int, ...], units: int = 512) -> None:
        super().__init__()
        self.shape = shape
        channels = shape[0]
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, *shape)).shape[-1]
        self.fc = nn.Sequential(nn.Linear(flat, units), nn.ReLU())

    def forward(self, obs: Tensor) -> Tensor:
        frames = obs.reshape(*obs.shape[:-1], *self.shape) / 255.0
        lead = frames.shape[: -len(self.shape)]
        features = self.fc(self.conv(frames.reshape(-1, *self.shape)))
        return features.reshape(*lead, -1)


#: The heads a numpy mirror samples as the torch head would.
_MIRRORED_HEADS = (CategoricalHead, BernoulliHead, GaussianHead, TanhGaussianHead)

_NUMPY_ACTIVATIONS = {
    nn.Tanh: np.tanh,
    nn.ReLU: lambda x: np.maximum(x, 0.0),
    nn.LeakyReLU: lambda x: np.where(x > 0, x, 0.01 * x),
    nn.ELU: lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
}


class NumpyActor:
    r"""A numpy mirror of a small MLP actor, for acting during data collection.

    For the tiny networks of classic control, a torch call costs far more in dispatch
    than in arithmetic; the same layers in numpy act several times faster. The
    mirror samples from the same distribution as the actor (categorical by
    Gumbel-max, :math:`\arg\max_k (l_k + G_k)`; Bernoulli by a uniform draw; Gaussian
    as :math:`\mu + \sigma \epsilon`). It holds copies of the weights: call
    :meth:`sync` after every update. Log-probabilities are not taken from here: the
    collector recomputes them with the torch actor.

    :meth:`build` returns None when the actor has a layer the mirror does not know.
    """

    def __init__(self, actor: Actor, layers: list, seed: int) -> None:
        self.actor = actor
        self._layers = layers  # ("linear", module) or ("act", numpy function)
        self._rng = np.random.default_rng(seed)
        self._weights: list[tuple[np.ndarray, np.ndarray]] = []
        self._log_std: np.ndarray | None = None
        self._categorical = isinstance(actor.head, CategoricalHead)
        self._bernoulli = isinstance(actor.head, BernoulliHead)
        self.sync()

    @classmethod
    def build(cls, actor: Actor) -> NumpyActor | None:
        """The mirror of ``actor``, or None unless the actor is exactly pglab's own
        :class:`Actor` with a built-in head and a plain MLP body (no subclass of any of
        them, whose overridden methods the mirror would bypass)."""
        if type(actor) is not Actor or type(actor.head) not in _MIRRORED_HEADS:
            return None
        if type(actor.body) is not nn.Sequential:
            return None
        layers: list = []
        for module in [*actor.body, actor.head.linear]:
            if type(module) is nn.Linear:
                layers.append(("linear", module))
            elif type(module) in _NUMPY_ACTIVATIONS:
                if isinstance(module, nn.LeakyReLU) and module.negative_slope != 0.01:
                    return None
                if isinstance(module, nn.ELU) and module.alpha != 1.0:
                    return None
                layers.append(("act", _NUMPY_ACTIVATIONS[type(module)]))
            elif type(module) is nn.Dropout:
                continue  # collection acts in eval mode: dropout is the identity
            else:
                return None
        seed = int(torch.randint(0, 2**31 - 1, ()).item())  # follows the torch seed
        return cls(actor, layers, seed)

    def sync(self) -> None:
        """Copy the actor's current weights."""
        with torch.no_grad():
            self._weights = [
                (m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy())
                for kind, m in self._layers
                if kind == "linear"
            ]
            if isinstance(self.actor.head, GaussianHead):
                self._log_std = self.actor.head._log_std().detach().cpu().numpy().copy()

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions for a ``[N, obs_dim]`` float32 batch, as the torch actor would draw them."""
        return self.sample(self.forward(obs, self._weights), deterministic)

    def forward(self, x: np.ndarray, weights: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """The head's input (logits, logit or mean) for ``x`` through the layers with
        ``weights``: this mirror's own, or several members' stacked (``[M, in, out]``
        and ``[M, 1, out]``, with ``x`` ``[M, N, in]``)."""
        weights_in_order = iter(weights)
        for kind, layer in self._layers:
            if kind == "linear":
                w, b = next(weights_in_order)
                x = x @ w + b
            else:
                x = layer(x)
        return x

    def sample(self, x: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions from the head's input ``x`` (see :meth:`forward`), drawn with this
        mirror's own generator."""
        if self._categorical:
            if not deterministic:
                x = x + self._rng.gumbel(size=x.shape).astype(x.dtype)
            return x.argmax(axis=-1)
        if self._bernoulli:
            logit = x[..., 0]
            if deterministic:
                return (logit > 0).astype(np.int64)
            return (self._rng.random(logit.shape) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
        if deterministic:
            return x
        noise = self._rng.standard_normal(x.shape).astype(np.float32)
        return (x + np.exp(self._log_std) * noise).astype(np.float32)


def _structure(actor: NumpyActor) -> list:
    """A mirror's layers: each activation function and each weight's shape, in order."""
    weights = iter(actor._weights)
    return [layer if kind == "act" else next(weights)[0].shape for kind, layer in actor._layers]


class NumpyActorGroup:
    """Several :class:`NumpyActor` of one structure (a population's members) acting in
    one call: the layers run once on the members' weights stacked along a leading axis
    (numpy's batched matmul), then each member samples with its own generator, so a
    member draws what it would draw alone.

    :meth:`build` returns None when the mirrors differ in their layers.
    """

    def __init__(self, actors: Sequence[NumpyActor]) -> None:
        self.actors = list(actors)
        self._weights: list[tuple[np.ndarray, np.ndarray]] = []

    @classmethod
    def build(cls, actors: Sequence[NumpyActor | None]) -> NumpyActorGroup | None:
        if not actors or any(a is None for a in actors):
            return None
        mirrors = [a for a in actors if a is not None]
        first = _structure(mirrors[0])
        if any(_structure(other) != first for other in mirrors[1:]):
            return None
        return cls(mirrors)

    def stack(self) -> None:
        """Stack the members' current mirrored weights (call after their ``sync``)."""
        self._weights = [
            (
                np.stack([a._weights[i][0] for a in self.actors]),
                np.stack([a._weights[i][1] for a in self.actors])[:, None, :],
            )
            for i in range(len(self.actors[0]._weights))
        ]

    def act(self, obs: np.ndarray, deterministic: bool = False) -> list[np.ndarray]:
        """Each member's actions for its rows of ``obs`` ``[M, N, obs_dim]``."""
        x = self.actors[0].forward(obs, self._weights)
        return [actor.sample(x[m], deterministic) for m, actor in enumerate(self.actors)]
