r"""REINFORCE: the vanilla policy gradient with a choice of weights :math:`\Psi_t`.

Williams (1992); Sutton et al. (2000); Schulman et al. (2016) for the weights.
One update per batch:

1. collect a batch (complete episodes for ``r``/``fr``/``dfr``, or T steps of N envs);
2. compute the weights :math:`\Psi_t` (see :mod:`pglab.returns`; or a function of
   the user's, ``algo.weights = "package.module:name"``), optionally standardised over
   the batch;
3. take gradient steps on
   :math:`L(\theta) = -\frac{1}{|\mathcal V|}\sum \log\pi_\theta(a_t \mid s_t)\,\Psi_t
   - c_H\, \bar H` (with ``loss_reduction = "sum"`` the sums over the valid
   samples, without the :math:`\frac{1}{|\mathcal V|}`): one on the whole batch by
   default; ``epochs`` passes of ``minibatches`` minibatches make the multi-epoch
   vanilla policy gradient (the same weights reused for several steps, without PPO's
   clipping, which is what makes it unstable at larger learning rates);
4. for the critic weights (``dfrb``, ``td``, ``gae``, and a function of the user's
   that takes ``values`` or ``next_values``), regress :math:`V_\phi(s_t)` on
   the targets :math:`\hat R_t = \Psi_t + V_\phi(s_t)` for ``value_epochs`` full-batch
   steps with its own optimizer (optionally re-created every batch, which keeps the
   critic from carrying momentum into a moving target; or with the critic's weights
   redrawn from their initialisation too, ``value_reinit``: a critic fitted afresh to
   each batch). With ``value_holdout`` :math:`h`, a fraction :math:`h` of the batch's
   samples stays out of this fit, and the fitted critic's MSE on them
   (``value_loss_heldout``) shows whether it learned the values or the batch's noise.

Members of a population stack: the policy steps by the schedule of
:class:`~pglab.algos.base.StackedRule`, the critics by one stacked optimizer of their own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from pglab.algos.base import StackedRule, clip_rows, scheduled, valid_samples
from pglab.errors import ConfigError
from pglab.losses import (
    approx_kl,
    entropy_loss,
    explained_variance,
    policy_gradient_loss,
    value_loss,
)
from pglab.optim import ParameterStack, make_optimizer
from pglab.policies import Actor, Critic, redraw_critic, redrawable
from pglab.returns import (
    CRITIC_WEIGHTS,
    WEIGHT_KINDS,
    WeightFunction,
    masked_mean,
    masked_var,
    policy_gradient_weights,
    standardize,
    takes_values,
    weight_parameters,
)
from pglab.rollout import Batch

if TYPE_CHECKING:  # the config layer sits above; only its type is named here
    from pglab.config import AlgoConfig


@functools.cache
def user_weights(name: str) -> WeightFunction:
    """The user's weight function ``package.module:name`` (``algo.weights``), imported
    once (a run read from a file has had the import checked, see
    :func:`pglab.agent.stored_config`); one that cannot be imported, or takes an argument
    it is not given, is one :class:`~pglab.errors.ConfigError` line."""
    from pglab.envs.wrappers import import_named

    function = import_named(name, "algo.weights", ConfigError)
    try:
        weight_parameters(function)
    except ValueError as error:
        raise ConfigError(f"algo.weights {name!r} {error}") from None
    return function


def weights_need_critic(weights: str) -> bool:
    """Whether REINFORCE's ``algo.weights`` need a critic: the kinds of
    :data:`~pglab.returns.CRITIC_WEIGHTS`, and a function of the user's that names
    ``values`` or ``next_values`` as a parameter (imported to read its signature)."""
    if weights in WEIGHT_KINDS:
        return weights in CRITIC_WEIGHTS
    return takes_values(user_weights(weights))


def member_stream(seed: int, stream: int) -> torch.Generator:
    """A random stream of a member's own: the torch generator seeded by stream number
    ``stream`` of its run's ``seed`` (numpy's ``SeedSequence([seed, stream])``), apart
    from its minibatch sampler (seeded by ``seed`` itself) and from every other run's."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


class Reinforce(StackedRule):
    """The REINFORCE family of ``--weights r|fr|dfr|dfrb|td|gae`` (or a function of the
    user's, ``--weights package.module:name``)."""

    #: Diagnostics returned by :meth:`update`, in logging order.
    METRICS = (
        "policy_loss",
        "entropy",
        "approx_kl",
        "grad_norm",
        "lr",
        "epochs",
        "weights_mean",
        "weights_var",
        "value_loss",
        "value_loss_heldout",
        "explained_variance",
    )
    LOSS_HYPERPARAMETERS = ("entropy_coef",)
    JOINT = False  # the critic is fitted apart
    CHOOSES_WEIGHTS = True
    CRITIC_APART = True
    OWN_OPTIONS = ("loss_reduction", "value_reinit", "value_holdout")
    #: The streams of its own (:func:`member_stream`, by number) from which a member draws
    #: its critic's new weights (``value_reinit``) and its held-out samples
    #: (``value_holdout``).
    VALUE_STREAMS = {"redraw": 1, "holdout": 2}

    def setup(self) -> None:
        self.value_stack: ParameterStack | None = None
        if self.critic is None:
            return
        self.value_stack = ParameterStack([list(c.parameters()) for c in self.critics])
        cfg = self.config
        self.value_optimizer = make_optimizer(
            cfg.optimizer, self.value_stack.flat, cfg.eps, 0.0, cfg.optimizer_kwargs
        )
        if cfg.value_reinit and not all(redrawable(c) for c in self.critics):
            raise ConfigError(
                "algo.value_reinit redraws the initialisation of the critics pglab builds "
                "(policy.value_hidden, linear and convolutional layers); a critic or body of "
                "your own (policy.critic, policy.body) keeps its own; got true"
            )
        seeds = [g.initial_seed() for g in self.generators]  # each member's run seed
        #: Each member's generators of :attr:`VALUE_STREAMS`, by name.
        self.value_samplers = {
            name: [member_stream(seed, stream) for seed in seeds]
            for name, stream in self.VALUE_STREAMS.items()
        }

    @staticmethod
    def prepare(batch: Batch, config: AlgoConfig) -> dict[str, Tensor]:
        r"""The batch's weights :math:`\Psi_t` (``psi``), standardised where configured
        (``weights``, what the loss takes), as flat samples with a ``valid`` flag."""
        # Pong's returns restart after each point: a non-zero reward ends the sum.
        terminated = batch.terminated
        if config.reset_return_at_reward:
            terminated = terminated | (batch.rewards != 0)
        kind = config.weights
        psi = policy_gradient_weights(
            kind if kind in WEIGHT_KINDS else user_weights(kind),
            rewards=batch.rewards,
            terminated=terminated,
            truncated=batch.truncated,
            gamma=config.gamma,
            lam=config.lam,
            values=batch.values,
            next_values=batch.next_values,
            valid=batch.valid,
        )
        weights = standardize(psi, batch.valid) if config.normalize_weights else psi
        return valid_samples(batch, True, psi=psi, weights=weights)

    @staticmethod
    def hyperparameters(config: AlgoConfig, progress: float) -> dict[str, Any]:
        return {
            "lr": scheduled(config, config.lr, config.lr_schedule, progress),
            "value_lr": scheduled(config, config.value_lr, config.lr_schedule, progress),
            "entropy_coef": config.entropy_coef,
            "loss_reduction": config.loss_reduction,
        }

    @staticmethod
    def loss(
        actor: Actor, critic: Critic | None, mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """:math:`-\\text{mean}(\\log\\pi \\cdot \\Psi) - c_H\\,\\text{mean}(H)` over the valid
        samples, or with ``loss_reduction = "sum"``
        :math:`-\\sum_t \\log\\pi(a_t \\mid s_t)\\,\\Psi_t - c_H \\sum_t H_t`."""
        valid, reduction = mb["valid"], hp["loss_reduction"]
        log_probs, entropy = actor.log_prob_entropy(mb["obs"], mb["actions"])
        pg_loss = policy_gradient_loss(log_probs, mb["weights"], valid, reduction)
        loss = pg_loss + hp["entropy_coef"] * entropy_loss(entropy, valid, reduction)
        _, kl = approx_kl(log_probs.detach() - mb["log_probs"], valid)
        return loss, {
            "policy_loss": pg_loss.detach(),
            "entropy": masked_mean(entropy.detach(), valid),
            "approx_kl": kl,
        }

    def member_metrics(self, member: int, data: dict[str, Tensor]) -> dict[str, float]:
        valid = data["valid"]
        return {
            "weights_mean": masked_mean(data["psi"], valid).item(),
            "weights_var": masked_var(data["psi"], valid).item(),
        }

    def after_update(
        self, members: list[int], datas: list[dict[str, Tensor]], progress: Sequence[float]
    ) -> list[dict[str, float]]:
        r"""The critics' fit: ``value_epochs`` full-batch steps of the MSE of
        :math:`V_\phi(s_t)` on :math:`\hat R_t = \Psi_t + V(s_t)` over the valid samples,
        each member by autograd on its own critic, one stacked optimizer step each.

        With ``value_reinit``, a member's critic first gets a fresh draw of its
        initialisation (from the member's own generator, into the stacked parameters)
        and a new optimizer. With ``value_holdout`` :math:`h`, the fit leaves out
        :math:`\mathcal H`, :math:`\operatorname{round}(h |\mathcal V|)` of the valid
        samples (at least one, never all; drawn by the member's own generator), and
        ``value_loss_heldout`` is the fitted critic's
        :math:`\frac{1}{|\mathcal H|}\sum_{\mathcal H} (V_\phi(s_t) - \hat R_t)^2`."""
        if self.value_stack is None:
            return [{} for _ in members]
        self.value_stack.check()
        configs = [self.configs[m] for m in members]
        lrs = [self.hyperparameters(c, p)["value_lr"] for c, p in zip(configs, progress)]
        for m, c in zip(members, configs):
            if c.value_reinit:
                redraw_critic(self.critics[m], self.value_samplers["redraw"][m])
        resets = [m for m, c in zip(members, configs) if c.value_reset_optimizer or c.value_reinit]
        if resets:  # a fresh optimizer for these members: no steps, no moments
            self.value_optimizer.reset(resets)
        targets = [d["psi"] + d["values"] for d in datas]
        splits = [
            self._holdout(m, d["valid"], c.value_holdout)
            for m, d, c in zip(members, datas, configs)
        ]
        losses = [torch.zeros(())] * len(members)
        for _ in range(self.config.value_epochs):
            rows = []
            for k, (m, d) in enumerate(zip(members, datas)):
                losses[k] = value_loss(self.critics[m](d["obs"]), targets[k], splits[k][0])
                self._check_finite(losses[k], m)
                params = self.value_stack.members[m]
                rows.append(self.value_stack.flatten(torch.autograd.grad(losses[k], params)))
            grads = torch.stack(rows)
            clip_rows(grads, self.config.max_grad_norm, None, members, "value")
            self.value_optimizer.step(grads, members, lrs)
        results = []
        for k, (m, d) in enumerate(zip(members, datas)):
            metrics = {
                "value_loss": losses[k].item(),
                "explained_variance": explained_variance(
                    d["values"], targets[k], d["valid"]
                ).item(),
            }
            held = splits[k][1]
            if held is not None:
                with torch.no_grad():
                    heldout = value_loss(self.critics[m](d["obs"]), targets[k], held)
                metrics["value_loss_heldout"] = heldout.item()
            results.append(metrics)
        return results

    def _holdout(self, member: int, valid: Tensor, fraction: float) -> tuple[Tensor, Tensor | None]:
        """Member ``member``'s samples to fit its critic on, and those held out of the
        fit (None where ``fraction`` is 0 or there are fewer than two samples), as masks
        like ``valid``; drawn by the member's own generator."""
        index = valid.nonzero().squeeze(1)
        count = len(index)
        if fraction <= 0 or count < 2:
            return valid, None
        kept_out = min(max(round(fraction * count), 1), count - 1)
        drawn = torch.randperm(count, generator=self.value_samplers["holdout"][member])
        held = torch.zeros_like(valid)
        held[index[drawn[:kept_out].to(index.device)]] = True
        return valid & ~held, held

    def state_dict(self, member: int = 0) -> dict:
        """Member ``member``'s optimizers' state and random streams (its minibatch
        sampler, and with a critic the draws of its new weights and held-out samples)."""
        state = super().state_dict(member)
        if self.value_stack is not None:
            state["value_optimizer"] = self.value_optimizer.member_state(member)
            state["value_samplers"] = {
                name: generators[member].get_state()
                for name, generators in self.value_samplers.items()
            }
        return state

    def load_state_dict(self, state: dict, member: int = 0) -> None:
        if "policy_optimizer" in state:  # the layout of older checkpoints
            state = {**state, "optimizer": state["policy_optimizer"]}
        super().load_state_dict(state, member)
        if self.value_stack is not None and "value_optimizer" in state:
            params = self.value_stack.members[member]
            self.value_optimizer.load_member_state(member, state["value_optimizer"], params)
        if self.value_stack is not None:  # (older checkpoints hold none)
            for name, sampler in state.get("value_samplers", {}).items():
                self.value_samplers[name][member].set_state(sampler)
