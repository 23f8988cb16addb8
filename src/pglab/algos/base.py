"""Pieces every learning rule uses (the learning-rate schedule, a guarded gradient step,
minibatches, the critic's regression) and :class:`JointOptimizer`, the update schedule of
every stacking rule (:class:`StackedRule`), for one run or a population of runs stacked."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from pglab.dense import DenseActorCritic
from pglab.errors import PglabError, TrainingError
from pglab.losses import explained_variance, value_loss
from pglab.nets import dropout_keys
from pglab.optim import FlatOptimizer, ParameterStack, make_optimizer
from pglab.policies import Actor, Critic, GaussianHead, unique_parameters
from pglab.returns import gae, masked_mean, masked_var
from pglab.rollout import Batch

if TYPE_CHECKING:  # the config layer sits above; only its type is named here
    from pglab.config import AlgoConfig


def scheduled_lr(
    base_lr: float, schedule: str, progress: float, every: float = 0.25, gamma: float = 0.5
) -> float:
    r"""Learning rate (or clip range) at ``progress`` :math:`p \in [0, 1]` of the budget.

    A user's function :math:`f` (``package.module:name``): :math:`\alpha_0 f(p)`.
    ``constant``: :math:`\alpha_0`; ``linear``: :math:`\alpha_0 (1 - p)`; ``cosine``:
    :math:`\alpha_0 \tfrac12 (1 + \cos \pi p)`; ``step``: :math:`\alpha_0
    \gamma^{\lfloor p / e \rfloor}` (``every`` :math:`e`, ``gamma`` :math:`\gamma`).
    """
    progress = min(max(progress, 0.0), 1.0)
    if ":" in schedule or "." in schedule:  # the user's function of the progress
        return base_lr * float(user_schedule(schedule)(progress))
    if schedule == "linear":
        return base_lr * (1.0 - progress)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return base_lr * gamma ** math.floor(progress / every + 1e-9)
    return base_lr


@functools.cache
def user_schedule(name: str) -> Callable[[float], float]:
    """The user's schedule ``package.module:name``: a function of the progress in
    [0, 1] that gives the factor of the base value (imported once; a run read from a
    file has had the import checked, see :func:`pglab.agent.stored_config`)."""
    from pglab.envs.wrappers import import_named

    function = import_named(name, "schedule", PglabError)
    if not callable(function):
        raise PglabError(f"schedule {name!r} is not a function of the progress")
    return function


def scheduled(config: AlgoConfig, base: float, schedule: str, progress: float) -> float:
    """:func:`scheduled_lr` with the config's step-schedule settings."""
    return scheduled_lr(base, schedule, progress, config.schedule_every, config.schedule_gamma)


def gradient_step(
    optimizer: FlatOptimizer,
    loss: Tensor,
    max_grad_norm: float = 0.0,
    what: str = "loss",
    grad: Tensor | None = None,
) -> float:
    r"""Backpropagate ``loss`` into the optimizer's parameters and step, clipping the
    global gradient norm when ``max_grad_norm`` > 0.

    With :math:`g` the gradient and :math:`c` = ``max_grad_norm``, the step uses
    :math:`g \cdot \min(1, c / (\lVert g \rVert_2 + 10^{-6}))` (as
    ``clip_grad_norm_``). Returns :math:`\lVert g \rVert_2` *before* clipping. A
    non-finite loss or gradient raises :class:`TrainingError` and leaves the
    parameters untouched. A parameter the loss does not reach gets a zero gradient.
    ``grad``, when given, is the gradient already taken (one vector in the optimizer's
    parameter order), and ``loss`` is then only checked.
    """
    if not math.isfinite(loss.item()):
        raise TrainingError(
            f"the {what} became non-finite ({loss.item()}); "
            "lower the learning rate or enable gradient clipping"
        )
    if grad is None:
        grad = optimizer.flatten(torch.autograd.grad(loss, optimizer.params, allow_unused=True))
    norm = float(grad.norm())
    if not math.isfinite(norm):
        raise TrainingError(
            f"the gradient of the {what} became non-finite; "
            "lower the learning rate or enable gradient clipping"
        )
    scale = max_grad_norm / (norm + 1e-6) if max_grad_norm > 0 else 1.0
    if scale < 1.0:
        grad.mul_(scale)
    optimizer.step(grad)
    return norm


def gae_advantages(batch: Batch, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    r"""GAE(:math:`\gamma, \lambda`) advantages :math:`\hat A_t` and the critic's targets
    :math:`\hat R_t = \hat A_t + V(s_t)` (the :math:`\lambda`-returns), both ``[T, N]``."""
    advantages = gae(
        batch.rewards,
        batch.values,
        batch.next_values,
        batch.terminated,
        batch.episode_ends,
        gamma,
        lam,
        valid=batch.valid,
    )
    return advantages, advantages + batch.values


def valid_samples(batch: Batch, masked: bool = False, **extra: Tensor) -> dict[str, Tensor]:
    """The batch's transitions as flat ``[B, ...]`` tensors (obs, actions, log_probs,
    values, and every ``[T, N]`` tensor passed in ``extra``).

    By default only the valid transitions; with ``masked`` every transition, plus a
    ``valid`` flag for the losses to weigh them by (equal shapes across batches, as a
    population's stacked update needs).
    """
    tensors = {
        "obs": batch.obs,
        "actions": batch.actions,
        "log_probs": batch.log_probs,
        "values": batch.values,
        "dropout_keys": batch.dropout_keys,
        **extra,
    }
    flat = {k: v.flatten(0, 1) for k, v in tensors.items() if v is not None}
    if masked:
        return {**flat, "valid": batch.valid.flatten()}
    mask = batch.valid.flatten()
    return {k: v[mask] for k, v in flat.items()}


def minibatch_indices(
    size: int, minibatches: int, generator: torch.Generator | None = None
) -> list[Tensor] | list[slice]:
    """A random partition of ``range(size)`` into ``minibatches`` near-equal parts.

    With one minibatch, the whole batch as a slice: the order does not matter then,
    and a slice indexes without copying.
    """
    if minibatches <= 1:
        return [slice(None)]
    order = torch.randperm(size, generator=generator)
    return list(order.chunk(min(minibatches, max(size, 1))))


def fit_critic(
    critic: Critic,
    optimizer: FlatOptimizer,
    obs: Tensor,
    targets: Tensor,
    *,
    epochs: int,
    minibatches: int = 1,
    max_grad_norm: float = 0.0,
) -> float:
    r"""Regress :math:`V_\phi(s)` on fixed targets: ``epochs`` passes of ``minibatches``
    MSE steps, :math:`\frac1B \sum (V_\phi(s_b) - \hat R_b)^2`. Returns the last loss.

    ``obs`` ``[B, obs_dim]`` and ``targets`` ``[B]`` hold valid samples only.
    """
    loss = torch.zeros(())
    for _ in range(epochs):
        for index in minibatch_indices(len(targets), minibatches):
            loss = value_loss(critic(obs[index]), targets[index])
            gradient_step(optimizer, loss, max_grad_norm, "value loss")
    return loss.item()


def advantage_metrics(data: dict[str, Tensor], actor: Actor) -> dict[str, float]:
    """Mean and variance of the advantages, the critic's explained variance on the
    batch's values, and (for a Gaussian policy) the policy std."""
    valid = data.get("valid")
    return {
        "weights_mean": masked_mean(data["advantages"], valid).item(),
        "weights_var": masked_var(data["advantages"], valid).item(),
        "explained_variance": explained_variance(data["values"], data["returns"], valid).item(),
        **policy_std(actor),
    }


def policy_std(actor: Actor) -> dict[str, float]:
    """``{"policy_std": mean std}`` for a Gaussian policy, else nothing."""
    if isinstance(actor.head, GaussianHead):
        return {"policy_std": actor.head.std().mean().item()}
    return {}


class StackedRule:
    r"""The update schedule of every stacking learning rule (REINFORCE, A2C, PPO), for
    M >= 1 members of one structure: a single run is a population of one, and every
    member's run is the same experiment whatever M is.

    A rule gives the loss of one minibatch (:meth:`loss`, and optionally
    :meth:`loss_and_gradient`, the same loss with its gradient written out), what a
    batch becomes before it (:meth:`prepare`) and its hyperparameters; the schedule
    is here:

    1. each member's batch is prepared on its own (its weights :math:`\Psi_t` or
       advantages, under the policy that collected it);
    2. for ``epochs`` passes, each member partitions all :math:`T \times N` samples of
       its batch into ``minibatches`` random minibatches with its own generator
       (samples that are not transitions stay in, weighted 0 by the losses), and every
       member takes one gradient step per minibatch, its global gradient norm clipped;
    3. with ``target_kl`` set, a member stops its passes at the first minibatch whose
       approximate :math:`\mathrm{KL}(\pi_{old} \| \pi_\theta)` (the k3 estimator)
       exceeds it, before stepping on it, and draws no more minibatches; the others go on.

    The trained parameters (:attr:`JOINT`: actor and critic, else the actor alone) are
    the rows of one :class:`~pglab.optim.ParameterStack`, stepped by one
    :class:`~pglab.optim.StackedOptimizer`, each member with its own learning rate and
    step count. Gradients come either written out for all members at once (batched
    matrix products, where :meth:`loss_and_gradient` applies) or by autograd on each
    member's own networks. Every operation reduces per member, so a member's numbers
    do not depend on the others.
    """

    METRICS: tuple[str, ...] = ()
    #: Hyperparameters of :meth:`loss` that may differ between population members.
    LOSS_HYPERPARAMETERS: tuple[str, ...] = ()
    #: Whether the rule writes out its loss's gradient (:meth:`loss_and_gradient`).
    WRITTEN_GRADIENT = False
    #: Whether the loss trains the critic with the actor (else the actor alone).
    JOINT = True
    #: Whether the rule takes ``algo.weights`` (else its weights are GAE advantages).
    CHOOSES_WEIGHTS = False
    #: Whether its critic is fitted apart from the policy (then they cannot share a body).
    CRITIC_APART = False

    def __init__(
        self,
        actors: Sequence[Actor],
        critics: Sequence[Critic | None],
        configs: Sequence[AlgoConfig],
        seeds: Sequence[int],
    ) -> None:
        self.actors, self.critics, self.configs = list(actors), list(critics), list(configs)
        self.actor, self.critic, self.config = self.actors[0], self.critics[0], self.configs[0]
        trained = [
            unique_parameters(a, c if self.JOINT else None)
            for a, c in zip(self.actors, self.critics)
        ]
        self.stack = ParameterStack(trained)
        cfg = self.config
        self.optimizer = make_optimizer(
            cfg.optimizer, self.stack.flat, cfg.eps, cfg.weight_decay, cfg.optimizer_kwargs
        )
        #: Each member's minibatch sampler, seeded by its run's seed.
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        #: The networks, where the loss's gradient is taken without autograd (else None).
        self.dense: DenseActorCritic | None = None
        if self.WRITTEN_GRADIENT and cfg.gradients == "auto":
            self.dense = DenseActorCritic.build(self.actor, self.critic)
        if self.dense is not None:  # parameter names in stack order
            names = {
                id(p): n for n, p in DenseActorCritic.parameters(self.actor, self.critic).items()
            }
            self.names = [names[id(p)] for p in self.stack.members[0]]
        self._all_params: dict[str, Tensor] | None = None
        self._one_params: dict[int, dict[str, Tensor]] = {}
        self.setup()

    @classmethod
    def single(cls, actor: Actor, critic: Critic | None, config: AlgoConfig, seed: int = 0):
        """The rule for one run (a population of one)."""
        return cls([actor], [critic], [config], [seed])

    @property
    def params(self) -> list[nn.Parameter]:
        """The first member's trained parameters, in stack order."""
        return self.stack.members[0]

    @property
    def gradient_path(self) -> str:
        """How the loss's gradient is taken: ``written`` out, or by ``autograd``."""
        return "autograd" if self.dense is None else "written"

    # What a rule gives.

    @property
    def epochs(self) -> int:
        """Passes over each batch (``algo.epochs``)."""
        return self.config.epochs

    @property
    def minibatches(self) -> int:
        """Minibatches per pass (``algo.minibatches``)."""
        return self.config.minibatches

    def setup(self) -> None:
        """What a rule builds beside the stack (REINFORCE: its critics' own)."""

    @staticmethod
    def loss(
        actor: Actor, critic: Critic | None, mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one minibatch and its diagnostics (tensors; ``approx_kl`` among them)."""
        raise NotImplementedError

    @staticmethod
    def loss_and_gradient(
        net: DenseActorCritic, params: dict[str, Tensor], mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """:meth:`loss` and its gradient by parameter name, without autograd (where
        :attr:`WRITTEN_GRADIENT`); ``mb`` holds its :meth:`minibatch_constants` too."""
        raise NotImplementedError

    #: The keys :meth:`minibatch_constants` adds to a minibatch.
    MINIBATCH_CONSTANTS: tuple[str, ...] = ()

    @staticmethod
    def minibatch_constants(mb: dict[str, Tensor], hp: dict[str, Any]) -> dict[str, Tensor]:
        """What :meth:`loss_and_gradient` computes from a minibatch ``mb`` alone (not from
        the parameters), added to it before its gradient is taken: once per update
        where every epoch's one minibatch is the whole batch."""
        return {}

    @staticmethod
    def prepare(batch: Batch, config: AlgoConfig) -> dict[str, Tensor]:
        """The batch as flat samples ``[T*N, ...]`` with a ``valid`` flag, and what the
        loss needs (see :func:`valid_samples`)."""
        raise NotImplementedError

    @staticmethod
    def hyperparameters(config: AlgoConfig, progress: float) -> dict[str, Any]:
        """The learning rate ``lr`` and the loss's hyperparameters at ``progress`` in
        [0, 1] of the budget."""
        raise NotImplementedError

    def member_metrics(self, member: int, data: dict[str, Tensor]) -> dict[str, float]:
        """Diagnostics of member ``member``'s prepared batch, after its update."""
        return {}

    def after_update(
        self, members: list[int], datas: list[dict[str, Tensor]], progress: Sequence[float]
    ) -> list[dict[str, float]]:
        """What a rule does after the schedule (REINFORCE fits its critic); its metrics."""
        return [{} for _ in members]

    # The shared update.

    def update(self, batch: Batch, progress: float) -> dict[str, float]:
        """One update of a single run's rule on ``batch``; ``progress`` in [0, 1]."""
        return self.update_members([0], [batch], [progress])[0]

    def update_members(
        self, members: Sequence[int], batches: Sequence[Batch], progress: Sequence[float]
    ) -> list[dict[str, float]]:
        """One update of ``members`` (indices, in any order) on their ``batches``, each
        at its ``progress`` in [0, 1] of its budget; returns each member's metrics."""
        self.stack.check()
        members = list(members)
        device = self.stack.flat.device
        datas = [self.prepare(b, self.configs[m]) for m, b in zip(members, batches)]
        sizes = [d["valid"].shape[0] for d in datas]
        # Batches of steps have one size: one stacked tensor per key. Batches of
        # episodes may differ: each member's samples stay its own.
        stacked = len(set(sizes)) == 1
        data = {k: torch.stack([d[k] for d in datas]) for k in datas[0]} if stacked else {}
        hps = [self.hyperparameters(self.configs[m], p) for m, p in zip(members, progress)]
        # A hyperparameter the members share stays a number (as for a run alone, which
        # lets the loss skip terms whose coefficient is 0); one they differ in is a [K] tensor.
        varying = {
            k: torch.tensor([hp[k] for hp in hps], device=device)
            for k in self.LOSS_HYPERPARAMETERS
            if len({hp[k] for hp in hps}) > 1
        }
        fixed = {k: v for k, v in hps[0].items() if k not in varying and k != "lr"}
        lrs = [hp["lr"] for hp in hps]
        everyone = list(range(len(members)))
        going = [True] * len(members)  # members that have not stopped at target_kl
        taken = [0] * len(members)  # the steps each member took
        names: list[str] = []
        totals: Tensor | None = None  # the steps' diagnostics summed, [statistics, members]
        per_epoch = [1] * len(members)
        for actor in self.actors:
            actor.train()
        rows = torch.arange(len(members), device=device)[:, None]
        if self.dense is not None and stacked and self.minibatches <= 1:
            data = self._with_constants(data, {**fixed, **varying})  # the same every epoch
        for _ in range(self.epochs):
            # A member that has stopped draws no more (as it would alone).
            parts = [
                minibatch_indices(size, self.minibatches, self.generators[m])
                if on
                else list(torch.arange(size).chunk(min(self.minibatches, max(size, 1))))
                for m, size, on in zip(members, sizes, going)
            ]
            per_epoch = [len(p) for p in parts]
            for k in range(max(per_epoch)):
                at = [i for i in everyone if k < per_epoch[i]]  # members with a minibatch now
                if stacked and self.minibatches <= 1:
                    mb: dict[str, Tensor] | list[dict[str, Tensor]] = data
                elif stacked:
                    idx = torch.stack([p[k] for p in parts]).to(device)
                    mb = {key: value[rows, idx] for key, value in data.items()}
                else:
                    mb = [{key: v[parts[i][k]] for key, v in datas[i].items()} for i in at]
                hp = {**fixed, **varying}
                if at != everyone:
                    hp.update({key: v[at] for key, v in varying.items()})
                grads, stats = self.gradients([members[i] for i in at], mb, hp)
                if at != everyone:  # rows of the members without a minibatch now
                    where = torch.tensor(at, device=device)
                    grads = grads.new_zeros(len(members), grads.shape[1]).index_copy_(
                        0, where, grads
                    )
                    stats = {
                        key: value.new_zeros(len(members)).index_copy_(0, where, value)
                        for key, value in stats.items()
                    }
                if self.config.target_kl > 0:
                    kl = stats["approx_kl"].tolist()
                    going = [
                        on and (i not in at or kl[i] <= self.config.target_kl)
                        for i, on in enumerate(going)
                    ]
                stepping = [i for i in at if going[i]]
                if not stepping:
                    if not any(going):
                        break
                    continue
                mask = None
                if stepping != everyone:
                    mask = torch.tensor([i in stepping for i in everyone], device=device)
                stats["grad_norm"] = self._clip(grads, mask, members)
                self.optimizer.step(
                    grads if mask is None else grads[mask],
                    [members[i] for i in stepping],
                    [lrs[i] for i in stepping],
                )
                names = list(stats)
                block = torch.stack([stats[key] for key in names])
                if mask is not None:
                    block = torch.where(mask, block, 0.0)
                totals = block if totals is None else totals + block
                for i in stepping:
                    taken[i] += 1
            if not any(going):
                break

        extras = self.after_update(members, datas, progress)
        results = []
        means = None if totals is None else (totals / torch.tensor(taken).clamp(min=1)).tolist()
        for i, (m, d, extra) in enumerate(zip(members, datas, extras)):
            metrics = {}
            if taken[i] > 0:
                metrics = {key: row[i] for key, row in zip(names, means)}
            metrics.update(lr=lrs[i], clip_range=hps[i].get("clip_range"))
            metrics["epochs"] = float(taken[i]) / per_epoch[i]
            metrics.update(self.member_metrics(m, d), **extra)
            results.append({key: value for key, value in metrics.items() if key in self.METRICS})
        return results

    def gradients(
        self,
        members: list[int],
        mb: dict[str, Tensor] | list[dict[str, Tensor]],
        hp: dict[str, Any],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Each member's gradient of its loss on its minibatch, as rows ``[K, P]`` of the stack.

        ``mb`` holds ``[K, B, ...]`` tensors for the K ``members`` (in that order), or
        one dict of ``[B_k, ...]`` tensors per member where their sizes differ;
        ``hp`` the loss's hyperparameters, ``[K]`` tensors where members differ.
        Returns the gradients and the loss's diagnostics ``[K]``.
        """
        if self.dense is not None:
            mb = self._with_constants(mb, hp)
        if self.dense is not None and (isinstance(mb, list) or len(members) == 1):
            # One member at a time, in plain (2-D) matrix products.
            mbs = mb if isinstance(mb, list) else [{k: v[0] for k, v in mb.items()}]
            parts = [
                self._written_gradient(m, one, self._row_hp(hp, i))
                for i, (m, one) in enumerate(zip(members, mbs))
            ]
            if len(parts) == 1:  # views, not copies
                return parts[0][0][None], {key: v.reshape(1) for key, v in parts[0][1].items()}
            grads = torch.stack([g for g, _ in parts])
            return grads, {key: torch.stack([st[key] for _, st in parts]) for key in parts[0][1]}
        if self.dense is not None:  # the gradient written out, for all members at once
            params = self._params(members)
            with torch.inference_mode():
                _, stats, grads = self.loss_and_gradient(self.dense, params, mb, hp)
            return torch.cat([grads[n].flatten(1) for n in self.names], dim=1), stats
        rows, member_stats = [], []
        for k, m in enumerate(members):  # autograd on each member's own networks
            own_mb = mb[k] if isinstance(mb, list) else {key: value[k] for key, value in mb.items()}
            with dropout_keys(own_mb.get("dropout_keys")):  # the masks it acted with
                loss, stats = self.loss(
                    self.actors[m], self.critics[m], own_mb, self._row_hp(hp, k)
                )
            self._check_finite(loss, m)
            params = self.stack.members[m]
            rows.append(self.stack.flatten(torch.autograd.grad(loss, params, allow_unused=True)))
            member_stats.append(stats)
        stats = {
            key: torch.stack([s[key].detach() for s in member_stats]) for key in member_stats[0]
        }
        return torch.stack(rows), stats

    def _written_gradient(
        self, member: int, mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One member's written-out gradient as a row ``[P]`` and its diagnostics (0-d)."""
        with torch.inference_mode():
            _, stats, grads = self.loss_and_gradient(
                self.dense, self._member_params(member), mb, hp
            )
        return torch.cat([grads[n].flatten() for n in self.names]), stats

    def _with_constants(
        self, mb: dict[str, Tensor] | list[dict[str, Tensor]], hp: dict[str, Any]
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """``mb`` (stacked, or one dict per member) with its :meth:`minibatch_constants`
        (as it is where it has them)."""
        if not self.MINIBATCH_CONSTANTS:
            return mb
        if isinstance(mb, dict):
            if all(key in mb for key in self.MINIBATCH_CONSTANTS):
                return mb
            return {**mb, **self.minibatch_constants(mb, hp)}
        return [
            {**one, **self.minibatch_constants(one, self._row_hp(hp, i))}
            for i, one in enumerate(mb)
        ]

    @staticmethod
    def _row_hp(hp: dict[str, Any], row: int) -> dict[str, Any]:
        """The hyperparameters of one member (row), a network alone (0-d tensors)."""
        return {k: v[row] if isinstance(v, Tensor) else v for k, v in hp.items()}

    def _check_finite(self, loss: Tensor, member: int) -> None:
        if not math.isfinite(loss.item()):
            which = f"member {member}'s " if len(self.stack) > 1 else ""
            raise TrainingError(
                f"{which}{type(self).__name__} loss became non-finite ({loss.item()}); "
                "lower the learning rate or enable gradient clipping"
            )

    def _params(self, members: list[int]) -> dict[str, Tensor]:
        """The members' parameters ``{name: [K, *shape]}`` (views of their rows; of all
        rows, made once)."""
        flat = self.stack.flat
        if members == list(range(len(self.stack))):
            if self._all_params is None:
                self._all_params = dict(zip(self.names, self.stack.unflatten(flat)))
            return self._all_params
        flat = flat[torch.tensor(members, device=flat.device)]
        return dict(zip(self.names, self.stack.unflatten(flat)))

    def _member_params(self, member: int) -> dict[str, Tensor]:
        """One member's parameters ``{name: tensor}``, detached views of its row (made once)."""
        if member not in self._one_params:
            views = [p.detach() for p in self.stack.members[member]]
            self._one_params[member] = dict(zip(self.names, views))
        return self._one_params[member]

    def _clip(self, grads: Tensor, going: Tensor | None, members: list[int]) -> Tensor:
        """:func:`clip_rows` at ``max_grad_norm``, for the rows ``going`` (all: None)."""
        return clip_rows(grads, self.config.max_grad_norm, going, members, type(self).__name__)

    @torch.no_grad()
    def score(
        self, members: Sequence[int], obs: Tensor, actions: Tensor, last_obs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The members' log-probabilities and values of their collected batches (see
        :data:`~pglab.rollout.Scorer`) in one call over their stacked parameters, by
        the written-out networks (the update's own forward pass, so the first pass of
        an update starts at a ratio of exactly 1). Only where :attr:`dense` is set."""
        params = self._params(list(members))
        log_probs, _, values, _ = self.dense.forward(params, obs, actions)
        return log_probs, values, self.dense.values(params, last_obs)

    def state_dict(self, member: int = 0) -> dict:
        """Member ``member``'s optimizer state and minibatch sampler."""
        return {
            "optimizer": self.optimizer.member_state(member),
            "sampler": self.generators[member].get_state(),
        }

    def load_state_dict(self, state: dict, member: int = 0) -> None:
        self.optimizer.load_member_state(member, state["optimizer"], self.stack.members[member])
        if "sampler" in state:
            self.generators[member].set_state(state["sampler"])


def clip_rows(
    grads: Tensor, max_norm: float, going: Tensor | None, members: Sequence[int], what: str
) -> Tensor:
    r"""Clip each row of ``grads`` ``[K, P]`` (a member's global gradient) to norm
    ``max_norm`` when > 0, in place: :math:`g \cdot \min(1, c / (\lVert g \rVert_2 +
    10^{-6}))`; returns the norms before clipping, ``[K]``. A non-finite row of a
    member still ``going`` (a ``[K]`` mask; None: every row) raises
    :class:`TrainingError` naming ``what``."""
    norms = torch.linalg.vector_norm(grads, dim=1)
    values = norms.tolist()
    for i, norm in enumerate(values):
        if not math.isfinite(norm):
            if going is not None and not going[i]:
                continue
            which = f"member {members[i]}'s " if len(members) > 1 else ""
            raise TrainingError(
                f"{which}gradient of the {what} loss became non-finite; "
                "lower the learning rate or enable gradient clipping"
            )
        scale = max_norm / (norm + 1e-6) if max_norm > 0 else 1.0
        if scale < 1.0:  # each row on its own, as a run alone (the same numbers)
            grads[i].mul_(scale)
    return norms


class JointOptimizer(StackedRule):
    r"""Actor and critic trained through one loss (A2C, PPO): each batch's advantages
    :math:`\hat A_t` by GAE(:math:`\gamma, \lambda`) and value targets
    :math:`\hat R_t = \hat A_t + V(s_t)`, under the policy that collected it, then the
    schedule of :class:`StackedRule` on the rule's loss."""

    LOSS_HYPERPARAMETERS = ("vf_coef", "entropy_coef")

    @staticmethod
    def prepare(batch: Batch, config: AlgoConfig) -> dict[str, Tensor]:
        """The batch as flat samples, every one with a ``valid`` flag, with
        ``advantages`` and ``returns`` (see :func:`valid_samples`)."""
        advantages, returns = gae_advantages(batch, config.gamma, config.lam)
        return valid_samples(batch, True, advantages=advantages, returns=returns)

    @staticmethod
    def hyperparameters(config: AlgoConfig, progress: float) -> dict[str, Any]:
        """Learning rate, clip range (linearly annealed where configured) and the loss's
        coefficients at ``progress`` in [0, 1] of the budget."""
        return {
            "lr": scheduled(config, config.lr, config.lr_schedule, progress),
            "clip_range": scheduled(config, config.clip_range, config.clip_schedule, progress),
            "vf_coef": config.vf_coef,
            "entropy_coef": config.entropy_coef,
            "value_clip": config.value_clip,
            "normalize": config.normalize_weights,
        }

    def member_metrics(self, member: int, data: dict[str, Tensor]) -> dict[str, float]:
        return advantage_metrics(data, self.actors[member])
