"""Which Gymnasium spaces pglab handles, and the conversions at the env boundary.

Observations are encoded as one float32 vector per step (:class:`ObsEncoder`), part by
part in the space's order:

==================  ==============================================================
space               encoding
==================  ==============================================================
``Box``             its values, flattened (uint8 images as they are: the image
                    body scales them, see :class:`ImagePart`)
``Discrete(n)``     one-hot of width n
``MultiDiscrete``   one one-hot per entry, side by side
``MultiBinary``     its bits as 0.0 / 1.0
``Tuple``, ``Dict`` each sub-space's encoding in turn (nested ones flattened)
==================  ==============================================================

``Text``, ``Graph`` and ``Sequence`` observations are refused with one line.
Actions: ``Discrete`` (categorical or Bernoulli head), 1-D ``Box`` (Gaussian head),
``MultiDiscrete`` (independent categoricals) and ``MultiBinary`` (independent
Bernoullis).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from pglab.errors import EnvError
from pglab.nets import ImagePart
from pglab.policies import squash

SUPPORTED_OBSERVATIONS = "Box, Discrete, MultiDiscrete, MultiBinary, or a Tuple or Dict of them"
SUPPORTED_ACTIONS = "Discrete, 1-D Box, MultiDiscrete or MultiBinary"

_ACTION_SPACES = (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)


def check_spaces(env_id: str, observation_space: gym.Space, action_space: gym.Space) -> None:
    """Raise :class:`EnvError` with one line when a space is not supported."""
    try:
        ObsEncoder(observation_space)
    except EnvError as error:
        raise EnvError(f"env {env_id!r}: {error}") from None
    box_1d = isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1
    if not (isinstance(action_space, _ACTION_SPACES) or box_1d):
        raise EnvError(
            f"env {env_id!r} has action space {action_space}; "
            f"pglab supports {SUPPORTED_ACTIONS} actions"
        )


def is_image(space: gym.Space) -> bool:
    """Whether ``space`` holds images: a uint8 ``Box`` of shape (H, W), (H, W, C) or
    (C, H, W) with 1 to 4 channels, or a stack of those, (K, H, W, C) or (K, C, H, W)."""
    if not isinstance(space, gym.spaces.Box) or space.dtype != np.uint8:
        return False
    shape = space.shape
    if len(shape) == 2:
        return min(shape) >= 2
    if len(shape) == 4:
        shape = shape[1:]
    return len(shape) == 3 and (shape[-1] <= 4 or shape[0] <= 4) and max(shape) > 1


@dataclasses.dataclass
class _Leaf:
    """One non-composite sub-space: where it is in the nested observation (``path``),
    its encoding function, its width and offset in the flat vector."""

    path: tuple[Any, ...]
    encode: Callable[[np.ndarray], np.ndarray]
    dim: int
    offset: int = 0


def _leaf_encoder(space: gym.Space, where: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """The encoding of a batch ``[N, ...]`` of one leaf space as ``[N, width]``, and the width."""
    if isinstance(space, gym.spaces.Box):
        dim = int(np.prod(space.shape))
        return (lambda x: np.asarray(x, dtype=np.float32).reshape(len(x), dim)), dim
    if isinstance(space, gym.spaces.Discrete):
        eye, start = np.eye(int(space.n), dtype=np.float32), int(space.start)
        return (lambda x: eye[np.asarray(x, dtype=np.int64).reshape(-1) - start]), int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec, dtype=np.int64).reshape(-1)
        start = np.asarray(space.start, dtype=np.int64).reshape(-1)
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        width = int(nvec.sum())

        def one_hots(x: np.ndarray) -> np.ndarray:
            index = np.asarray(x, dtype=np.int64).reshape(len(x), -1) - start + offsets
            out = np.zeros((len(x), width), dtype=np.float32)
            np.put_along_axis(out, index, 1.0, axis=1)
            return out

        return one_hots, width
    if isinstance(space, gym.spaces.MultiBinary):
        dim = int(np.prod(space.n))
        return (lambda x: np.asarray(x, dtype=np.float32).reshape(len(x), dim)), dim
    raise EnvError(
        f"observation {where}has space {space}; pglab supports {SUPPORTED_OBSERVATIONS} "
        "observations (a Text observation: encode it in a wrapper first)"
    )


#: Where the legal actions come from (``env.action_mask`` once resolved): nowhere, the
#: observation's ``action_mask`` key (a Dict space), or ``info["action_mask"]``.
MASK_SOURCES = ("none", "obs", "info")
#: The key that holds the legal actions, in a Dict observation or in the info.
MASK_KEY = "action_mask"


def mask_source(setting: str, observation_space: gym.Space) -> str:
    """``env.action_mask`` (``auto``, ``info`` or ``none``) for this observation space:
    ``auto`` is ``obs`` when a Dict observation has an ``action_mask`` key, else ``none``."""
    if setting != "auto":
        return setting
    has_key = (
        isinstance(observation_space, gym.spaces.Dict) and MASK_KEY in observation_space.spaces
    )
    return "obs" if has_key else "none"


def mask_width(action_space: gym.Space) -> int:
    """The number of mask columns for ``action_space``: one per action of a Discrete
    space, one per choice of every entry of a MultiDiscrete one."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return int(np.asarray(action_space.nvec).sum())
    raise EnvError(
        f"an action mask needs a Discrete or MultiDiscrete action space; got {action_space}"
    )


class ObsEncoder:
    """Turns a batch of observations from a vector env into a float32 ``[N, dim]`` tensor
    (see the module docstring); :attr:`images` says where images lie in it.

    With an action mask (``mask``: ``obs`` or ``info``, see :data:`MASK_SOURCES`) its
    :attr:`mask_dim` columns come last, 1.0 for a legal action and 0.0 for another;
    the observation's own values are the first :attr:`features` columns.
    """

    def __init__(
        self, space: gym.Space, mask: str = "none", action_space: gym.Space | None = None
    ) -> None:
        if mask not in MASK_SOURCES:
            raise EnvError(f"action mask source must be one of {MASK_SOURCES}; got {mask!r}")
        self.space = space
        self.mask = mask
        self.leaves: list[_Leaf] = []
        #: The images in the encoding (uint8 Box leaves of image shape), in order.
        self.images: list[ImagePart] = []
        self._add(space, ())
        self.features = sum(leaf.dim for leaf in self.leaves)
        self.mask_dim = 0 if mask == "none" else mask_width(action_space)
        if mask == "obs":
            if not isinstance(space, gym.spaces.Dict) or MASK_KEY not in space.spaces:
                raise EnvError(f"the observation space has no {MASK_KEY!r} key: {space}")
            if int(np.prod(space[MASK_KEY].shape)) != self.mask_dim:
                raise EnvError(
                    f"the observation's {MASK_KEY!r} has shape {space[MASK_KEY].shape}; "
                    f"the action space {action_space} needs {self.mask_dim} values"
                )
        self.dim = self.features + self.mask_dim
        self._composite = isinstance(space, (gym.spaces.Tuple, gym.spaces.Dict))

    def _add(self, space: gym.Space, path: tuple[Any, ...]) -> None:
        if isinstance(space, gym.spaces.Dict):
            for key, sub in space.spaces.items():
                if path or key != MASK_KEY or self.mask != "obs":  # the mask goes last
                    self._add(sub, (*path, key))
            return
        if isinstance(space, gym.spaces.Tuple):
            for i, sub in enumerate(space.spaces):
                self._add(sub, (*path, i))
            return
        where = f"{'/'.join(map(str, path))} " if path else ""
        encode, dim = _leaf_encoder(space, where)
        offset = sum(leaf.dim for leaf in self.leaves)
        if is_image(space):
            self.images.append(ImagePart(offset, tuple(space.shape)))
        self.leaves.append(_Leaf(path, encode, dim, offset))

    @property
    def one_image(self) -> bool:
        """Whether the whole encoding is one image (no other values, no action mask):
        its values are then the env's bytes, see :meth:`image_bytes`."""
        return len(self.images) == 1 and not self._composite and self.dim == self.images[0].size

    def image_bytes(self, obs: Any) -> np.ndarray:
        """The encoding of :attr:`one_image` observations as a copy of their bytes, uint8
        ``[N, dim]``: the values of :meth:`array` (uint8 converts to float32 exactly) in a
        quarter of the memory."""
        return np.array(obs, dtype=np.uint8).reshape(len(obs), self.dim)

    def __call__(self, obs: Any, legal: np.ndarray | None = None) -> Tensor:
        return torch.from_numpy(self.array(obs, legal))

    def array(self, obs: Any, legal: Any = None) -> np.ndarray:
        """The encoding as a float32 numpy array ``[N, dim]``. ``legal`` is the action
        mask ``[N, mask_dim]`` where it comes from the info (None: every action legal)."""
        if not self._composite and not self.mask_dim:
            return self.leaves[0].encode(obs)
        parts = []
        for leaf in self.leaves:
            value = obs
            for key in leaf.path:
                value = value[key]
            parts.append(leaf.encode(value))
        if self.mask == "obs":
            legal = obs[MASK_KEY]
        if self.mask_dim:
            count = len(parts[0])
            if legal is None:
                parts.append(np.ones((count, self.mask_dim), dtype=np.float32))
            else:
                parts.append(np.asarray(legal, dtype=np.float32).reshape(count, self.mask_dim))
        return np.concatenate(parts, axis=1)

    def info_mask(self, info: dict[str, Any], count: int) -> np.ndarray | None:
        """The action masks a vector env's ``info`` reports, ``[count, mask_dim]`` (every
        action legal for an env that reported none); None unless the mask comes from info."""
        if self.mask != "info":
            return None
        legal = np.ones((count, self.mask_dim), dtype=np.float32)
        if MASK_KEY in info:
            reported = np.asarray(info.get(f"_{MASK_KEY}", np.ones(count, dtype=bool)), bool)
            values = np.asarray(info[MASK_KEY])
            legal[reported] = values.reshape(count, self.mask_dim)[reported]
        return legal

    def batch_size(self, obs: Any) -> int | None:
        """The number of observations in ``obs`` when it is a batch (every leaf has one
        more leading axis than its space), None when it is a single observation."""
        first = obs
        for key in self.leaves[0].path:
            first = first[key]
        space = self.space
        for key in self.leaves[0].path:
            space = space[key]
        array = np.asarray(first)
        shape = tuple(space.shape or ())
        if array.shape == shape:
            return None
        if array.shape[1:] == shape:
            return array.shape[0]
        raise ValueError(
            f"expected an observation of shape {shape} or a batch of shape (N, "
            f"{', '.join(map(str, shape))}); got shape {array.shape}"
        )


class ActionAdapter:
    """Turns the policy's actions into what the env accepts.

    Discrete and MultiDiscrete actions are shifted by the space's ``start`` (and a
    MultiDiscrete or MultiBinary one takes the space's shape); Box actions are clipped to
    the bounds (the unclipped action stays in the batch for its log-probability), or
    with ``squash`` mapped into them by :func:`pglab.policies.squash`.

    One mapping, :meth:`map`, on numpy arrays (calling the adapter: the collector's
    path) or on tensors (:meth:`tensor`: :class:`pglab.Agent` and the policies
    :func:`pglab.export` writes).
    """

    def __init__(self, space: gym.Space, squash: bool = False) -> None:
        self.space = space
        self.squash = squash
        #: The dtype of what the env receives (None: the policy's own integers).
        self.dtype: np.dtype | None = None
        numbers: dict[str, Any] = {}
        if isinstance(space, gym.spaces.Discrete):
            numbers["start"] = space.start
        elif isinstance(space, gym.spaces.MultiDiscrete):
            numbers["start"] = np.asarray(space.start)
            self.dtype = np.dtype(space.dtype)
        elif isinstance(space, gym.spaces.MultiBinary):
            self.dtype = np.dtype(np.int8)
        elif isinstance(space, gym.spaces.Box):
            self.low = space.low.astype(np.float32)
            self.high = space.high.astype(np.float32)
            numbers.update(low=self.low, high=self.high)
            self.dtype = np.dtype(np.float32)
        # The same constants as numpy values and as tensors, for either kind of input.
        self._constants: dict[Any, dict[str, Any]] = {
            np: numbers,
            torch: {key: torch.as_tensor(value) for key, value in numbers.items()},
        }
        self._torch_dtype = (
            None if self.dtype is None else torch.from_numpy(np.zeros(0, self.dtype)).dtype
        )

    def __call__(self, array: np.ndarray) -> np.ndarray:
        return self.map(array, np)

    def tensor(self, actions: Tensor) -> Tensor:
        """:meth:`map` on a tensor of the policy's actions (on the CPU)."""
        return self.map(actions, torch)

    def map(self, actions: Any, xp: Any) -> Any:
        """The env's actions for a batch of the policy's, ``[..., action_dim]``: a numpy
        array (``xp=numpy``) or a tensor (``xp=torch``)."""
        space, constants = self.space, self._constants[xp]
        if isinstance(space, gym.spaces.Discrete):
            return actions + constants["start"] if space.start else actions
        if isinstance(space, gym.spaces.MultiDiscrete):
            shape = (*actions.shape[:-1], *space.shape)
            actions = actions.reshape(shape) + constants["start"]
        elif isinstance(space, gym.spaces.MultiBinary):
            actions = actions.reshape(*actions.shape[:-1], *np.atleast_1d(space.n))
        elif self.squash:
            actions = squash(actions, constants["low"], constants["high"], xp)
        else:
            actions = xp.clip(actions, constants["low"], constants["high"])
        if xp is torch:
            return actions.to(self._torch_dtype)
        return actions.astype(self.dtype, copy=False)


def space_to_data(space: gym.Space) -> dict[str, Any]:
    """``space`` as plain data (numbers, strings, lists, tensors) that a checkpoint holds
    and :func:`space_from_data` reads back, so an agent loads without making its env."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "low": torch.from_numpy(np.array(space.low)),
            "high": torch.from_numpy(np.array(space.high)),
            "dtype": np.dtype(space.dtype).name,
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "nvec": torch.from_numpy(np.array(space.nvec, dtype=np.int64)),
            "start": torch.from_numpy(np.array(space.start, dtype=np.int64)),
        }
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": [int(n) for n in np.atleast_1d(space.n)]}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_data(s) for s in space.spaces]}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_data(s) for k, s in space.spaces.items()}}
    raise EnvError(f"space {space} cannot be stored; pglab supports {SUPPORTED_OBSERVATIONS}")


def space_from_data(data: Any, source: str = "checkpoint") -> gym.Space:
    """The space :func:`space_to_data` stored; :class:`EnvError` naming ``source`` for
    anything else."""
    try:
        kind = data["type"]
        if kind == "Box":
            dtype = np.dtype(data["dtype"])
            if dtype.kind not in "fiu":
                raise ValueError(f"dtype {dtype}")
            low, high = data["low"].numpy(), data["high"].numpy()
            return gym.spaces.Box(low, high, low.shape, dtype)
        if kind == "Discrete":
            return gym.spaces.Discrete(int(data["n"]), start=int(data["start"]))
        if kind == "MultiDiscrete":
            return gym.spaces.MultiDiscrete(data["nvec"].numpy(), start=data["start"].numpy())
        if kind == "MultiBinary":
            n = [int(v) for v in data["n"]]
            return gym.spaces.MultiBinary(n[0] if len(n) == 1 else n)
        if kind == "Tuple":
            return gym.spaces.Tuple([space_from_data(s, source) for s in data["spaces"]])
        if kind == "Dict":
            return gym.spaces.Dict(
                {str(k): space_from_data(s, source) for k, s in data["spaces"].items()}
            )
        raise ValueError(f"space type {kind!r}")
    except EnvError:
        raise
    except Exception as error:  # a malformed entry: say which file
        raise EnvError(f"{source!r} holds a malformed space ({error})") from None
