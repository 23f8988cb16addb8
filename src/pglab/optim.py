r"""Adam, AdamW, RMSprop and SGD with PyTorch's update rules, over parameters stacked in rows.

* :class:`ParameterStack`: the parameters of M members of one structure as the rows
  of one ``[M, P]`` tensor; each member's ``nn.Parameter`` becomes a view of its row.
* :class:`StackedOptimizer`: M independent optimizers over such rows, each member
  with its own learning rate and step count. A single run is a stack of one.
* :class:`FlatOptimizer`: the optimizer of one set of parameters (a stack of one),
  for learning rules that own several optimizers (REINFORCE's policy and critic).

The rules (:func:`step_direction`), with L2 weight decay :math:`g \leftarrow g + w\,\theta`:

* Adam: :math:`m \leftarrow \beta_1 m + (1-\beta_1) g`,
  :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2`,
  :math:`\theta \leftarrow \theta - \alpha \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon}`
  with :math:`\beta = (0.9, 0.999)`; where torch has a fused Adam kernel for the
  device, Adam runs as that kernel, one pass per row (the same rule, equal to rounding);
* AdamW: Adam with the weight decay decoupled from the gradient (Loshchilov and Hutter
  2019): :math:`\theta \leftarrow \theta (1 - \alpha w)` before the Adam step, whose
  :math:`g` then carries no decay (torch's fused AdamW kernel where it has one);
* RMSprop: :math:`v \leftarrow \rho v + (1-\rho) g^2`,
  :math:`\theta \leftarrow \theta - \alpha\, g / (\sqrt v + \epsilon)` with :math:`\rho = 0.99`;
* SGD: :math:`\theta \leftarrow \theta - \alpha g`.

Every rule is elementwise and every row is stepped on its own, so a member's row
evolves bit for bit as it would in a stack of any other size.

Any other ``torch.optim`` optimizer, named ``torch.optim.NAdam`` (or ``nadam``), runs as
:class:`TorchOptimizers`: one instance of it per member, over that member's row, with
the member's learning rate (:func:`make_optimizer` picks).

Why not ``torch.optim``: creating the first torch optimizer imports
``torch._dynamo``, about 1.8 s here, which is half the time PPO takes to solve
CartPole.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pglab.errors import ConfigError, TrainingError

#: Optimizer names (``algo.optimizer``) and the moments each keeps.
MOMENTS: dict[str, tuple[str, ...]] = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "rmsprop": ("square_avg",),
    "sgd": (),
}
BETAS = (0.9, 0.999)
ALPHA = 0.99


def _check_name(name: str) -> None:
    if name not in MOMENTS and torch_optimizer(name) is None:
        raise ConfigError(
            f"optimizer must be one of {', '.join(MOMENTS)} or a torch.optim optimizer "
            f"(torch.optim.NAdam, nadam); got {name!r}"
        )


#: torch.optim optimizers that need more than a gradient per step (a closure, sparse
#: gradients): not offered.
_NOT_OFFERED = ("LBFGS", "SparseAdam", "Optimizer")


def torch_optimizer(name: str) -> type[torch.optim.Optimizer] | None:
    """The ``torch.optim`` class ``name`` names (``torch.optim.NAdam``, ``NAdam`` or
    ``nadam``), or None."""
    wanted = name.removeprefix("torch.optim.").lower()
    for attr in dir(torch.optim):
        cls = getattr(torch.optim, attr)
        if (
            attr.lower() == wanted
            and attr not in _NOT_OFFERED
            and isinstance(cls, type)
            and issubclass(cls, torch.optim.Optimizer)
        ):
            return cls
    return None


def make_optimizer(
    name: str,
    flat: Tensor,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    kwargs: dict[str, Any] | None = None,
) -> StackedOptimizer | TorchOptimizers:
    """The optimizers of the rows of ``flat``: pglab's own for its rules (:data:`MOMENTS`),
    else one ``torch.optim`` instance per row (``kwargs``: the class's other arguments)."""
    if name in MOMENTS:
        if kwargs:
            raise ConfigError(
                f"algo.optimizer_kwargs go with a torch.optim optimizer; {name} takes "
                f"algo.eps and algo.weight_decay (got {kwargs})"
            )
        return StackedOptimizer(name, flat, eps, weight_decay)
    return TorchOptimizers(name, flat, eps, weight_decay, kwargs or {})


def step_direction(
    name: str, g: Tensor, moments: dict[str, Tensor], t: float | Tensor, eps: float
) -> Tensor:
    """Update ``moments`` in place with gradient ``g`` at step ``t`` (1 for the first)
    and return the step direction, before the learning rate."""
    if name in ("adam", "adamw"):
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


#: Values each row of a :class:`ParameterStack` is padded to a multiple of (64 bytes of
#: float32, the alignment of torch's CPU allocations).
ROW_ALIGN = 16


class ParameterStack:
    """The parameters of M members that share one structure, as the rows of one
    ``[M, P]`` tensor :attr:`flat` (each member's parameters flattened, in the order
    given).

    Construction re-homes every parameter as a view of its slice of its member's row:
    an optimizer step is then one in-place update of the rows, and the members'
    modules act, evaluate and save with the stepped values. A parameter given new
    storage afterwards (``module.to(...)``, ``p.data = ...``) would no longer follow
    the steps; :meth:`check` finds that and raises.
    """

    def __init__(self, members: Sequence[Sequence[nn.Parameter]]) -> None:
        if not members:
            raise ValueError("a parameter stack needs at least one member")
        self.members = [list(params) for params in members]
        self.shapes = [p.shape for p in self.members[0]]
        for params in self.members[1:]:
            if [p.shape for p in params] != self.shapes:
                raise ValueError("stacked members must have parameters of the same shapes")
        self.sizes = [p.numel() for p in self.members[0]]
        width = sum(self.sizes)
        # Every row starts at the same memory alignment as the first (rows padded to
        # ROW_ALIGN values): a matrix-vector product can round differently with the
        # address of its weights, and a member's numbers must not depend on its row.
        padded = -(-width // ROW_ALIGN) * ROW_ALIGN
        first = self.members[0][0]
        storage = torch.zeros(len(self.members), padded, dtype=first.dtype, device=first.device)
        #: The rows ``[M, P]`` (a view of the padded storage).
        self.flat = storage[:, :width]
        for row, params in zip(self.flat, self.members):
            row.copy_(torch.cat([p.detach().flatten() for p in params]))
        for row, params in zip(self.flat, self.members):
            for p, view in zip(params, row.split(self.sizes)):
                p.data = view.view_as(p)
        self._homes = [[p.data_ptr() for p in params] for params in self.members]

    def __len__(self) -> int:
        return len(self.members)

    def check(self) -> None:
        """Raise :class:`~pglab.errors.TrainingError` if a parameter no longer lives in
        the stack (it was moved or replaced after the learning rule was built)."""
        for params, homes in zip(self.members, self._homes):
            for p, home in zip(params, homes):
                if p.data_ptr() != home:
                    raise TrainingError(
                        f"a parameter of shape {tuple(p.shape)} was moved or replaced after "
                        "its optimizer was built (module.to(...) or .data = ...); move the "
                        "modules before building the learning rule"
                    )

    def flatten(self, grads: Sequence[Tensor | None]) -> Tensor:
        """One member's per-parameter gradients (``None`` for zero) as one row ``[P]``."""
        return torch.cat(
            [
                (g if g is not None else torch.zeros(shape, device=self.flat.device)).flatten()
                for g, shape in zip(grads, self.shapes)
            ]
        )

    def unflatten(self, rows: Tensor) -> list[Tensor]:
        """Rows ``[K, P]`` as per-parameter tensors ``[K, *shape]`` (views)."""
        parts = rows.split(self.sizes, dim=1)
        return [part.unflatten(1, shape) for part, shape in zip(parts, self.shapes)]


class StackedOptimizer:
    """M independent optimizers over the rows of ``flat`` ``[M, P]``: each member has
    its own learning rate and step count, and steps only when it takes part."""

    def __init__(self, name: str, flat: Tensor, eps: float = 1e-8, weight_decay: float = 0.0):
        _check_name(name)
        self.name = name
        self.flat = flat
        self.eps = eps
        self.weight_decay = weight_decay
        self.steps = torch.zeros(flat.shape[0], device=flat.device)
        self.state = {key: torch.zeros_like(flat) for key in MOMENTS[name]}
        self._fused = name in ("adam", "adamw") and _fused_adam(flat)
        self._everyone = list(range(flat.shape[0]))
        # Each member's row of every tensor the fused kernel takes (views, made once).
        self._rows = [list(t.unbind(0)) for t in (flat, *self.state.values(), self.steps)]

    @torch.no_grad()
    def step(self, grads: Tensor, members: Sequence[int], lrs: Sequence[float]) -> None:
        """Step the rows ``members`` with ``grads`` (``[K, P]``, rows in that order),
        each with its learning rate in ``lrs``."""
        members = list(members)
        every = members == self._everyone
        index = None if every else torch.tensor(members, device=self.flat.device)
        if every:
            self.steps += 1
        else:
            self.steps[index] += 1
        lrs = [float(lr) for lr in lrs]
        if self._fused:
            self._fused_step(grads, members, lrs)
            return
        for lr in dict.fromkeys(lrs):  # one learning rate at a time: the same formula
            picked = [k for k, value in enumerate(lrs) if value == lr]
            if every and len(picked) == len(members):  # every row, in order: in place
                self._step_rows(grads, slice(None), lr)
                continue
            rows = torch.tensor([members[k] for k in picked], device=self.flat.device)
            theta = self.flat[rows]
            moments = {key: value[rows] for key, value in self.state.items()}
            self._step_rows(grads[picked], rows, lr, theta, moments)
            self.flat[rows] = theta
            for key, value in moments.items():
                self.state[key][rows] = value

    def _step_rows(
        self,
        grads: Tensor,
        rows: slice | Tensor,
        lr: float,
        theta: Tensor | None = None,
        moments: dict[str, Tensor] | None = None,
    ) -> None:
        """The rule on ``rows`` (their parameters ``theta`` and ``moments``, the stack's
        own when None), in place."""
        theta = self.flat if theta is None else theta
        moments = self.state if moments is None else moments
        if self.name == "adamw":  # decoupled: the parameters shrink, the gradient is kept
            theta.mul_(1 - lr * self.weight_decay)
            g = grads
        else:
            g = grads + self.weight_decay * theta if self.weight_decay else grads
        t = self.steps[rows].unsqueeze(1)
        theta.add_(step_direction(self.name, g, moments, t, self.eps), alpha=-lr)

    def _fused_step(self, grads: Tensor, members: list[int], lrs: list[float]) -> None:
        """Adam (or AdamW) by torch's fused kernel: one call per distinct learning rate,
        one pass per row (each row is processed from its start, as a stack of one would)."""
        params, exp_avgs, exp_avg_sqs, steps = self._rows
        rows = grads.unbind(0)
        kernel = torch._fused_adamw_ if self.name == "adamw" else torch._fused_adam_
        for lr in dict.fromkeys(lrs):
            picked = [k for k, value in enumerate(lrs) if value == lr]
            kernel(
                [params[members[k]] for k in picked],
                [rows[k] for k in picked],
                [exp_avgs[members[k]] for k in picked],
                [exp_avg_sqs[members[k]] for k in picked],
                [],
                [steps[members[k]] for k in picked],
                lr=lr,
                beta1=BETAS[0],
                beta2=BETAS[1],
                weight_decay=self.weight_decay,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )

    def reset(self, members: Sequence[int]) -> None:
        """Make the optimizers of ``members`` new: no steps taken, zero moments."""
        index = torch.tensor(list(members), device=self.flat.device)
        self.steps[index] = 0
        for value in self.state.values():
            value[index] = 0

    def member_state(self, member: int) -> dict[str, Any]:
        """Member ``member``'s state: its step count and its rows of the moments."""
        state = {key: value[member].clone() for key, value in self.state.items()}
        return {"name": self.name, "steps": int(self.steps[member]), **state}

    def load_member_state(
        self, member: int, state: dict[str, Any], params: Sequence[Tensor] = ()
    ) -> None:
        """Restore :meth:`member_state`'s output into member ``member`` (or a
        ``torch.optim`` state dict of the same kind of optimizer over ``params``,
        from older runs)."""
        if "param_groups" in state:
            state = _from_torch(state["state"], list(params), tuple(self.state))
        self.steps[member] = float(state["steps"])
        for key, value in self.state.items():
            value[member] = state[key].to(value)


def _from_torch(
    per_param: dict[int, dict[str, Tensor]], params: list[Tensor], keys: tuple[str, ...]
) -> dict[str, Any]:
    """A ``torch.optim`` state dict over ``params`` as :meth:`StackedOptimizer.member_state`."""
    steps = next((float(s["step"]) for s in per_param.values() if "step" in s), 0)
    flat = {
        key: torch.cat(
            [
                per_param.get(i, {}).get(key, torch.zeros_like(p)).flatten()
                for i, p in enumerate(params)
            ]
        )
        for key in keys
    }
    return {"steps": steps, **flat}


class TorchOptimizers:
    """One ``torch.optim`` optimizer per row of ``flat``, each over its row (a parameter
    sharing the row's memory), with :class:`StackedOptimizer`'s interface. ``eps`` and
    ``weight_decay`` go to the class where it takes them, then ``kwargs``."""

    def __init__(
        self,
        name: str,
        flat: Tensor,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        cls = torch_optimizer(name)
        if cls is None:
            _check_name(name)
        self.name, self.cls, self.flat = name, cls, flat
        taken = inspect.signature(cls).parameters
        options = {"eps": eps, "weight_decay": weight_decay}
        self.kwargs = {k: v for k, v in options.items() if k in taken} | dict(kwargs or {})
        self.rows = [nn.Parameter(row, requires_grad=False) for row in flat]  # views
        self.optimizers = [self._new(m) for m in range(len(self.rows))]

    def _new(self, member: int) -> torch.optim.Optimizer:
        try:
            return self.cls([self.rows[member]], lr=1e-3, **self.kwargs)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"optimizer {self.name} with {self.kwargs}: {error}") from None

    @torch.no_grad()
    def step(self, grads: Tensor, members: Sequence[int], lrs: Sequence[float]) -> None:
        """Step rows ``members`` with ``grads`` ``[K, P]``, each at its learning rate."""
        for grad, member, lr in zip(grads, members, lrs):
            optimizer, row = self.optimizers[member], self.rows[member]
            for group in optimizer.param_groups:
                group["lr"] = float(lr)
            row.grad = grad
            optimizer.step()
            row.grad = None

    def reset(self, members: Sequence[int]) -> None:
        """New optimizers for ``members``."""
        for member in members:
            self.optimizers[member] = self._new(member)

    def member_state(self, member: int) -> dict[str, Any]:
        return {"name": self.name, "torch": self.optimizers[member].state_dict()}

    def load_member_state(
        self, member: int, state: dict[str, Any], params: Sequence[Tensor] = ()
    ) -> None:
        self.optimizers[member].load_state_dict(state["torch"])


class FlatOptimizer:
    """The optimizer of one set of ``params``: a :class:`ParameterStack` of one member
    and its :class:`StackedOptimizer` (the parameters become views of :attr:`flat`)."""

    def __init__(
        self,
        name: str,
        params: Iterable[nn.Parameter],
        lr: float,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        _check_name(name)
        self.params = list(params)
        self.lr = lr
        self.stack = ParameterStack([self.params])
        self.optimizer = make_optimizer(name, self.stack.flat, eps, weight_decay, kwargs)

    @property
    def flat(self) -> Tensor:
        """The parameters as one vector."""
        return self.stack.flat[0]

    @property
    def steps(self) -> int:
        return int(self.optimizer.steps[0])

    @property
    def state(self) -> dict[str, Tensor]:
        """The moments, one vector each."""
        return {key: value[0] for key, value in self.optimizer.state.items()}

    def flatten(self, grads: Sequence[Tensor | None]) -> Tensor:
        """``grads`` (one per parameter, ``None`` for zero) as one vector."""
        return self.stack.flatten(grads)

    def step(self, grad: Tensor) -> None:
        """One step with the flat gradient ``grad`` (see :meth:`flatten`)."""
        self.stack.check()
        self.optimizer.step(grad.unsqueeze(0), [0], [self.lr])

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.member_state(0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (or a ``torch.optim`` state dict of
        the same kind of optimizer over the same parameters, from older runs)."""
        self.optimizer.load_member_state(0, state, self.params)
