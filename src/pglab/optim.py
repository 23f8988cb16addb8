r"""Adam, RMSprop and SGD with PyTorch's update rules, in two layouts.

* :class:`FlatOptimizer`: one run's parameters. Gradient and moments are one flat
  vector, so a step is a handful of tensor operations however many parameter
  tensors the networks have.
* :class:`StackedOptimizer`: a population's parameters stacked ``[M, ...]``, M
  independent optimizers with a learning rate and a step count per member.

Both apply the same rules (:func:`step_direction`), with L2 weight decay
:math:`g \leftarrow g + w\,\theta`:

* Adam: :math:`m \leftarrow \beta_1 m + (1-\beta_1) g`,
  :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2`,
  :math:`\theta \leftarrow \theta - \alpha \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon}`
  with :math:`\beta = (0.9, 0.999)`;
* RMSprop: :math:`v \leftarrow \rho v + (1-\rho) g^2`,
  :math:`\theta \leftarrow \theta - \alpha\, g / (\sqrt v + \epsilon)` with :math:`\rho = 0.99`;
* SGD: :math:`\theta \leftarrow \theta - \alpha g`.

Why not ``torch.optim``: creating the first torch optimizer imports
``torch._dynamo``, about 1.8 s here, which is half the time PPO takes to solve
CartPole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pglab.errors import ConfigError

#: Optimizer names (``algo.optimizer``) and the moments each keeps.
MOMENTS: dict[str, tuple[str, ...]] = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "rmsprop": ("square_avg",),
    "sgd": (),
}
BETAS = (0.9, 0.999)
ALPHA = 0.99


def _check_name(name: str) -> None:
    if name not in MOMENTS:
        raise ConfigError(f"optimizer must be one of {', '.join(MOMENTS)}; got {name!r}")


def step_direction(
    name: str, g: Tensor, moments: dict[str, Tensor], t: float | Tensor, eps: float
) -> Tensor:
    """Update ``moments`` in place with gradient ``g`` at step ``t`` (1 for the first)
    and return the step direction, before the learning rate."""
    if name == "adam":
        beta1, beta2 = BETAS
        m = moments["exp_avg"].lerp_(g, 1 - beta1)
        v = moments["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        return (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + eps)
    if name == "rmsprop":
        v = moments["square_avg"].mul_(ALPHA).addcmul_(g, g, value=1 - ALPHA)
        return g / (v.sqrt() + eps)
    return g


def _fused_adam(flat: Tensor) -> bool:
    """Whether torch has a fused Adam kernel for ``flat``'s device and dtype."""
    return (
        hasattr(torch, "_fused_adam_")
        and flat.device.type in ("cpu", "cuda")
        and flat.dtype in (torch.float32, torch.float64)
    )


class FlatOptimizer:
    """One optimizer over ``params``; parameters, gradients and moments are each one
    flat vector in parameter order.

    Construction moves the parameters into :attr:`flat`: each becomes a view of its
    slice, so a step is one in-place update of the vector. Parameters given new storage
    afterwards (``p.data = ...``, ``module.to(...)``) no longer follow its steps: a
    population does this on purpose, stepping its stack with :class:`StackedOptimizer`
    and using each member's :class:`FlatOptimizer` only to hold exported state.
    """

    def __init__(
        self,
        name: str,
        params: Iterable[nn.Parameter],
        lr: float,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        _check_name(name)
        self.name = name
        self.params = list(params)
        self.lr = lr
        self.weight_decay = weight_decay
        self.eps = eps
        self.steps = 0
        self.flat = torch.cat([p.detach().flatten() for p in self.params])
        for p, view in zip(self.params, self.flat.split([p.numel() for p in self.params])):
            p.data = view.view_as(p)
        self.state = {key: torch.zeros_like(self.flat) for key in MOMENTS[name]}
        self._fused = name == "adam" and _fused_adam(self.flat)
        self._step = torch.zeros((), device=self.flat.device)  # the fused kernel's count

    def flatten(self, grads: Sequence[Tensor | None]) -> Tensor:
        """``grads`` (one per parameter, ``None`` for zero) as one vector."""
        return torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).flatten()
                for g, p in zip(grads, self.params)
            ]
        )

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        """One step with the flat gradient ``grad`` (see :meth:`flatten`).

        Adam runs as torch's fused kernel where the build has one (one pass over the
        vectors instead of a dozen tensor operations; the same rule, equal to rounding).
        """
        self.steps += 1
        if self._fused:
            self._step.fill_(self.steps)
            torch._fused_adam_(
                [self.flat],
                [grad],
                [self.state["exp_avg"]],
                [self.state["exp_avg_sq"]],
                [],
                [self._step],
                lr=self.lr,
                beta1=BETAS[0],
                beta2=BETAS[1],
                weight_decay=self.weight_decay,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
            return
        if self.weight_decay:
            grad = grad + self.weight_decay * self.flat
        direction = step_direction(self.name, grad, self.state, self.steps, self.eps)
        self.flat.add_(direction, alpha=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, **self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (or a ``torch.optim`` state dict of
        the same kind of optimizer over the same parameters, from older runs)."""
        if "param_groups" in state:
            state = self._from_torch(state["state"])
        self.steps = int(state["steps"])
        for key in self.state:
            self.state[key] = state[key].to(self.state[key]).clone()

    def _from_torch(self, per_param: dict[int, dict[str, Tensor]]) -> dict[str, Any]:
        steps = next((float(s["step"]) for s in per_param.values() if "step" in s), 0)
        flat = {
            key: torch.cat(
                [
                    per_param.get(i, {}).get(key, torch.zeros_like(p)).flatten()
                    for i, p in enumerate(self.params)
                ]
            )
            for key in self.state
        }
        return {"steps": steps, **flat}


class StackedOptimizer:
    """M independent optimizers over stacked parameters ``[M, ...]``: each member has
    its own learning rate and step count, and steps only when it takes part."""

    def __init__(
        self, name: str, params: list[Tensor], eps: float = 1e-8, weight_decay: float = 0.0
    ) -> None:
        _check_name(name)
        self.name = name
        self.params = params
        self.eps = eps
        self.weight_decay = weight_decay
        self.steps = torch.zeros(params[0].shape[0], device=params[0].device)
        self.state = [{key: torch.zeros_like(p) for key in MOMENTS[name]} for p in params]

    def step(self, grads: list[Tensor], members: Tensor, lr: Tensor) -> None:
        """Step the rows ``members`` of every parameter with ``grads`` (rows in that order)."""
        every = len(members) == len(self.steps)  # members are in order when all step
        rows = slice(None) if every else members
        self.steps[rows] += 1
        t = self.steps[rows]
        for param, g, state in zip(self.params, grads, self.state):
            shape = (-1,) + (1,) * (param.dim() - 1)
            theta = param[rows]
            if self.weight_decay:
                g = g + self.weight_decay * theta
            moments = {key: value[rows] for key, value in state.items()}
            direction = step_direction(self.name, g, moments, t.view(shape), self.eps)
            for key, value in moments.items():
                state[key][rows] = value
            param[rows] = theta - lr.view(shape) * direction
