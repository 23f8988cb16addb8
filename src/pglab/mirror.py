r"""A numpy mirror of small MLP actors, for acting during data collection.

For the tiny networks of classic control a torch call costs far more in dispatch
than in arithmetic; the same layers in numpy act several times faster. This is a
sibling of :mod:`pglab.policies` used only where it provably acts as the actor would:
:meth:`NumpyActor.build` returns a mirror only for exactly pglab's own
:class:`~pglab.policies.Actor` with a built-in head and a plain MLP body (a subclass
of any of them could override what the mirror would bypass), and None otherwise, in
which case the collector acts with the torch actor. A run's ``summary.json`` says
which acted (``paths.acting``). Tests: ``tests/test_policies.py`` (the mirror samples
the actor's distribution) and ``tests/test_rollout.py`` (a user's actor or head acts itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from pglab.policies import (
    Actor,
    BernoulliHead,
    CategoricalHead,
    GaussianHead,
    TanhGaussianHead,
)

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
        if actor.mask_dim:  # a masked categorical acts through the torch actor
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
                (
                    m.weight.detach().cpu().numpy().T.copy(),
                    m.bias.detach().cpu().numpy().copy(),
                )
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
