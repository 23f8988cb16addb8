r"""Forward and backward passes written out, for PPO's update on MLP actor-critics.

Autograd's bookkeeping costs more than the arithmetic on the small networks of
classic control; here the MLP's forward and backward passes, and the heads'
log-probability and entropy gradients, are written out on explicit (optionally
stacked) weights, so a loss's gradient needs no graph. A sibling of
:mod:`pglab.nets` and :mod:`pglab.policies`, which keep only the plain modules; its
one entry point is :meth:`DenseActorCritic.build`, which returns None for any pair of
networks it does not cover exactly (a subclass, another layer or head, a shared
body), and the rule then takes the gradient by autograd (``algo.gradients``;
``summary.json`` names the path taken). Tests pin it to autograd:
``tests/test_policies.py`` (backward passes, heads) and ``tests/test_algos.py``
(PPO's written loss and gradient against :meth:`~pglab.algos.ppo.PPO.loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pglab.policies import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    Actor,
    CategoricalHead,
    Critic,
    GaussianHead,
)

#: Activations whose derivative :func:`dense_backward` knows, by their module type.
DENSE_ACTIVATIONS: dict[type[nn.Module], str] = {nn.Tanh: "tanh", nn.ReLU: "relu"}

#: One layer's weights: ``W`` ``[..., out, in]`` and ``b`` ``[..., out]``.
Dense = tuple[Tensor, Tensor]


def dense_layers(body: nn.Module) -> tuple[list[nn.Linear], str] | None:
    """The linear layers of a plain MLP body (``Linear`` layers with one kind of
    activation from :data:`DENSE_ACTIVATIONS` between them, no dropout) and the
    activation's name; None for any other body."""
    if not isinstance(body, nn.Sequential) or len(body) % 2:
        return None
    modules = list(body)
    linears, activations = modules[0::2], modules[1::2]
    if not all(type(m) is nn.Linear for m in linears):
        return None
    kinds = {DENSE_ACTIVATIONS.get(type(m)) for m in activations}
    if None in kinds or len(kinds) > 1:
        return None
    return linears, kinds.pop() if kinds else "tanh"  # no hidden layer: no activation


#: Below this many rows (the observations of a few envs, a tiny minibatch) a batched
#: matrix product can round differently from the plain one a network alone runs (the
#: BLAS picks other kernels for small matrices); there a stack's products run one
#: network at a time, as plain ones (``tests/test_one_experiment.py`` pins it).
SMALL_BATCH = 32


def _stacked_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for stacked ``[M, ...]`` operands of a small batch: one plain product each."""
    return torch.stack([a[m] @ b[m] for m in range(a.shape[0])])


def dense_forward(x: Tensor, layers: Sequence[Dense], activation: str) -> list[Tensor]:
    r"""An MLP's forward pass on explicit weights, keeping what :func:`dense_backward` needs.

    Layer :math:`i` computes :math:`h_i = f(h_{i-1} W_i^\top + b_i)`, with :math:`f`
    the activation on every layer but the last. ``x`` is ``[B, in]``, or
    ``[M, B, in]`` with weights ``[M, ...]`` for M networks at once (a population).
    Returns :math:`[h_0 = x, h_1, \dots, h_L]`.

    A layer with one output (a value, a Bernoulli logit, a 1-D Gaussian's mean) is
    computed as the weighted sum :math:`\sum_j h_j w_j + b`: a batched matrix product
    with one output column rounds differently with the number of stacked networks,
    and a network's numbers must not depend on the others in its stack. For the same
    reason a stack's batch of fewer than :data:`SMALL_BATCH` rows runs network by network.
    """
    outputs = [x]
    for i, (weight, bias) in enumerate(layers):
        hidden = i < len(layers) - 1
        # tanh(z) = 2 sigmoid(2z) - 1: torch's sigmoid kernel is several times faster
        # on a CPU than its tanh, and the affine map gives 2z for free.
        scale = 2.0 if hidden and activation == "tanh" else 1.0
        if weight.shape[-2] == 1:  # one output: a weighted sum (see the docstring)
            h = (outputs[-1] * weight).sum(-1, keepdim=True).add_(bias.unsqueeze(-2))
            h = h.mul_(scale) if scale != 1.0 else h
        elif x.dim() == 2:
            h = torch.addmm(bias, outputs[-1], weight.t(), beta=scale, alpha=scale)
        elif x.shape[-2] < SMALL_BATCH:
            h = torch.stack(
                [
                    torch.addmm(bias[m], outputs[-1][m], weight[m].t(), beta=scale, alpha=scale)
                    for m in range(x.shape[0])
                ]
            )
        else:
            h = torch.baddbmm(bias.unsqueeze(-2), outputs[-1], weight.mT, beta=scale, alpha=scale)
        if hidden:
            h = h.sigmoid_().mul_(2.0).sub_(1.0) if activation == "tanh" else h.relu_()
        outputs.append(h)
    return outputs


def dense_backward(
    outputs: Sequence[Tensor], layers: Sequence[Dense], activation: str, grad: Tensor
) -> list[Dense]:
    r"""Backpropagation through :func:`dense_forward`: the gradient of a loss with
    respect to every layer's weights, given ``grad`` :math:`= \partial L / \partial h_L`.

    From the top down, with :math:`g_i = \partial L / \partial z_i` the gradient at
    layer :math:`i`'s pre-activation :math:`z_i` (:math:`g_L` = ``grad``):

    .. math::
        \frac{\partial L}{\partial W_i} = g_i^\top h_{i-1}, \qquad
        \frac{\partial L}{\partial b_i} = \sum_{\text{batch}} g_i, \qquad
        g_{i-1} = (g_i W_i) \odot f'(z_{i-1})

    where :math:`f'` comes from the layer's output: :math:`1 - h^2` for tanh,
    :math:`[h > 0]` for relu. Returns ``(dW, db)`` per layer, shaped as the weights.
    """
    grads: list[Dense] = []
    g = grad
    x = outputs[0]
    mm = _stacked_mm if x.dim() == 3 and x.shape[-2] < SMALL_BATCH else torch.matmul
    for i in range(len(layers) - 1, -1, -1):
        h = outputs[i]
        grads.append((mm(g.mT, h), g.sum(-2)))
        if i > 0:
            g = mm(g, layers[i][0])
            if activation == "tanh":
                g = torch.ops.aten.tanh_backward(g, h)
            else:
                g = torch.ops.aten.threshold_backward(g, h, 0.0)
    return grads[::-1]


#: Maps a loss's gradients with respect to the log-probabilities and the entropies
#: (None: the loss has no entropy term) to its gradients with respect to the head's
#: distribution parameters and its log std (None where it has none).
HeadBackward = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]


def categorical_vjp(
    logits: Tensor, actions: Tensor, log_std: Tensor | None = None
) -> tuple[Tensor, Tensor, HeadBackward]:
    r"""A categorical head's log-probabilities and entropies, and the map from a loss's gradients with respect to
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


def gaussian_vjp(
    mean: Tensor, actions: Tensor, log_std: Tensor
) -> tuple[Tensor, Tensor, HeadBackward]:
    r"""A Gaussian head's log-probabilities and entropies, and the map from a loss's gradients with respect to
    them to its gradients with respect to the means and the (unclamped) log std
    ``log_std`` (``[A]``, or ``[M, A]`` for M stacked heads). With
    :math:`z = (a - \mu) / \sigma`:

    .. math::
        \frac{\partial \log \pi}{\partial \mu} = \frac{z}{\sigma}, \qquad
        \frac{\partial \log \pi}{\partial \log\sigma_i} = z_i^2 - 1, \qquad
        \frac{\partial H}{\partial \log\sigma_i} = 1

    summed over the batch for :math:`\log\sigma`, and zero where the clamp holds it.
    """
    raw = log_std
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


#: The heads whose gradients are written out, and the function for each.
HEAD_VJPS: dict[type, Callable] = {
    CategoricalHead: categorical_vjp,
    GaussianHead: gaussian_vjp,
}


#: A map from a loss's gradients with respect to the log-probabilities, the entropies
#: (None: no entropy term) and the values to its gradients by parameter name.
DenseBackward = Callable[[Tensor, Tensor | None, Tensor], dict[str, Tensor]]


def _stack_of_one(obs: Tensor) -> bool:
    """Whether ``obs`` ``[M, B, obs_dim]`` belongs to a stack of one network."""
    return obs.dim() == 3 and obs.shape[0] == 1


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
        if actor.mask_dim:  # a masked categorical: its logits are not the head's alone
            return None
        if type(actor.head) not in HEAD_VJPS:
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
        if _stack_of_one(obs):
            return self.values({k: p[0] for k, p in params.items()}, obs[0]).unsqueeze(0)
        critic = [(params[w], params[b]) for w, b in self._critic_names]
        return dense_forward(obs, critic, self.critic_activation)[-1].squeeze(-1)

    def forward(
        self, params: dict[str, Tensor], obs: Tensor, actions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, DenseBackward]:
        """Log-probabilities of ``actions``, entropies and values at ``obs`` (``[B]``, or
        ``[M, B]`` with stacked parameters), and the backward pass from a loss's
        gradients with respect to those three to its gradient by parameter name.

        A stack of one network runs as plain matrix products, which are faster than
        batched ones and give the same numbers as a row of any stack (pinned by
        ``tests/test_one_experiment.py``).
        """
        if _stack_of_one(obs):
            one = {k: p[0] for k, p in params.items()}
            log_probs, entropy, values, backward_one = self.forward(one, obs[0], actions[0])

            def backward_stack(
                g_log_probs: Tensor, g_entropy: Tensor | None, g_values: Tensor
            ) -> dict[str, Tensor]:
                g_ent = None if g_entropy is None else g_entropy[0]
                grads = backward_one(g_log_probs[0], g_ent, g_values[0])
                return {k: g.unsqueeze(0) for k, g in grads.items()}

            return log_probs[None], entropy[None], values[None], backward_stack
        actor = [(params[w], params[b]) for w, b in self._actor_names]
        critic = [(params[w], params[b]) for w, b in self._critic_names]
        h_actor = dense_forward(obs, actor, self.actor_activation)
        h_critic = dense_forward(obs, critic, self.critic_activation)
        log_std = params[self.log_std] if self.log_std else None
        vjp = HEAD_VJPS[type(self.head)]
        log_probs, entropy, head_backward = vjp(h_actor[-1], actions, log_std)

        def backward(
            g_log_probs: Tensor, g_entropy: Tensor | None, g_values: Tensor
        ) -> dict[str, Tensor]:
            g_head, g_log_std = head_backward(g_log_probs, g_entropy)
            grads: dict[str, Tensor] = {}
            for names, layers, outputs, activation, g in (
                (self._actor_names, actor, h_actor, self.actor_activation, g_head),
                (
                    self._critic_names,
                    critic,
                    h_critic,
                    self.critic_activation,
                    g_values[..., None],
                ),
            ):
                for (w, b), (dw, db) in zip(names, dense_backward(outputs, layers, activation, g)):
                    grads[w], grads[b] = dw, db
            if self.log_std:
                grads[self.log_std] = g_log_std
            return grads

        return log_probs, entropy, h_critic[-1].squeeze(-1), backward
