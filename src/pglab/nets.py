"""Network bodies: multilayer perceptrons with configurable width, activation and
dropout (keyed, so that a mask drawn while acting is drawn again in the update);
convolutional bodies for images of any size; a body for observations that mix
images and vectors.

(An MLP's forward and backward passes written out on explicit weights, the speed path
of PPO's update, are in :mod:`pglab.dense`.)"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: Activation functions selectable by name (``policy.activation``).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int | None = None,
    activation: str = "tanh",
    dropout: float = 0.0,
) -> nn.Sequential:
    """A multilayer perceptron ``in_dim -> hidden[0] -> ... -> hidden[-1] (-> out_dim)``.

    Each hidden layer is ``Linear -> activation (-> KeyedDropout)``. With ``out_dim`` a
    final linear layer without activation is added. With no hidden layers and no
    ``out_dim`` the body is the identity (so a head on it is a linear model).
    """
    layers: list[nn.Module] = []
    width = in_dim
    for layer, units in enumerate(hidden):
        layers += [nn.Linear(width, units), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(KeyedDropout(dropout, salt=layer))
        width = units
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


_DROPOUT_KEYS: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar(
    "dropout_keys", default=None
)


@contextlib.contextmanager
def dropout_keys(keys: Tensor | None) -> Iterator[None]:
    """Within the block, every :class:`KeyedDropout` in training mode draws its mask
    from ``keys`` (one integer per sample, ``[B]``; None: fresh random masks)."""
    token = _DROPOUT_KEYS.set(keys)
    try:
        yield
    finally:
        _DROPOUT_KEYS.reset(token)


@contextlib.contextmanager
def under_masks(module: nn.Module, keys: Tensor | None) -> Iterator[None]:
    """Within the block ``module`` drops units by ``keys`` (training mode, its own mode
    restored after); with None nothing changes. How a batch's log-probabilities are
    recomputed under the masks its steps acted with (``batch.dropout_keys``, flat)."""
    if keys is None:
        yield
        return
    was_training = module.training
    module.train()
    try:
        with dropout_keys(keys):
            yield
    finally:
        module.train(was_training)


def draw_dropout_keys(count: int) -> Tensor:
    """``count`` fresh sample keys (from torch's random stream), int64 in
    :math:`[0, 2^{30})`."""
    return torch.randint(0, 2**30, (count,), dtype=torch.int64)


def _mix32(x: Tensor) -> Tensor:
    """An integer hash of 32-bit values (int64 tensors in :math:`[0, 2^{32})`): two
    rounds of xor-shift and multiply, so that neighbouring inputs land far apart."""
    for _ in range(2):
        x = ((x >> 16) ^ x) * 0x45D9F3B & 0xFFFFFFFF
    return (x >> 16) ^ x


def keyed_uniform(keys: Tensor, salt: int, width: int) -> Tensor:
    r"""Uniform numbers in :math:`[0, 1)`, ``[*keys.shape, width]``, a pure function of
    (key, ``salt``, unit): :math:`u_{bj} = \lfloor h(h(k_b) \oplus (j\,c_1 + s\,c_2)) / 2^8 \rfloor / 2^{24}`
    with :math:`h` the hash :func:`_mix32` (its top 24 bits, exact in float32). The same key gives the same numbers on
    every call, on any device."""
    units = torch.arange(width, device=keys.device, dtype=torch.int64)
    spread = (units * 0x9E3779B1 + (salt + 1) * 0x632BE5AB) & 0xFFFFFFFF
    x = _mix32(_mix32(keys & 0xFFFFFFFF).unsqueeze(-1) ^ spread)
    return (x >> 8).to(torch.float32) * (1.0 / 2**24)


class KeyedDropout(nn.Dropout):
    r"""Dropout whose mask is a function of a per-sample key (inverted dropout,
    :math:`h \cdot m / (1 - p)` with :math:`m_{bj} = [u_{bj} \ge p]`, :math:`u` from
    :func:`keyed_uniform`).

    The policy gradient needs the log-probability of the action under the very network
    that drew it. With dropout that network includes the mask: the collector draws a
    key per step, acts with the keyed masks and stores the keys in the batch; the
    update recomputes every log-probability under the same keys (:func:`dropout_keys`),
    so stored and recomputed log-probabilities agree and the estimator is unbiased.
    Without keys it is ordinary dropout; in eval mode (evaluation, export) the identity.
    ``salt`` tells the layers of one network apart (:func:`mlp` passes the layer index).
    """

    def __init__(self, p: float = 0.5, salt: int = 0) -> None:
        super().__init__(p)
        self.salt = salt

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keys = _DROPOUT_KEYS.get()
        if keys is None:
            return F.dropout(x, self.p, True)
        if tuple(keys.shape) != tuple(x.shape[: keys.dim()]):
            raise ValueError(
                f"dropout keys of shape {tuple(keys.shape)} do not match features "
                f"{tuple(x.shape)} (one key per sample, the leading axes)"
            )
        units = x[(0,) * keys.dim()].numel() if x.numel() else 0  # per sample, any shape
        keep = keyed_uniform(keys, self.salt, units).reshape(x.shape) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}, salt={self.salt}"


def has_keyed_dropout(module: nn.Module) -> bool:
    """Whether ``module`` holds a :class:`KeyedDropout` that drops anything."""
    return any(isinstance(m, KeyedDropout) and m.p > 0 for m in module.modules())


#: torch's dropout layers, which draw their masks from torch's random stream.
_TORCH_DROPOUTS = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout
)  # fmt: skip


def has_unkeyed_dropout(module: nn.Module) -> bool:
    """Whether ``module`` holds one of torch's dropout layers (not a :class:`KeyedDropout`)
    that drops anything: its masks in the update are not those it acted with."""
    return any(
        isinstance(m, _TORCH_DROPOUTS) and not isinstance(m, KeyedDropout) and m.p > 0
        for m in module.modules()
    )


def output_dim(in_dim: int, hidden: Sequence[int]) -> int:
    """Width of the features that :func:`mlp` without ``out_dim`` produces."""
    return hidden[-1] if hidden else in_dim


@dataclasses.dataclass(frozen=True)
class ImagePart:
    """An image inside the flat encoding: ``size`` values from ``offset``, stored in the
    env's own ``shape`` (channels last unless the first axis is the small one), read
    as ``(C, H, W)`` by :meth:`frames`, divided by ``divide_by`` (255 for pixels)."""

    offset: int
    shape: tuple[int, ...]
    divide_by: float = 255.0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def channels_last(self) -> bool:
        """Whether the channels are the last axis (an image is (H, W, C), or a stack of
        them (K, H, W, C)), else they come before the height."""
        if len(self.shape) == 2:
            return True
        image = self.shape[-3:]
        return image[-1] <= 4 and (image[0] > 4 or image[-1] <= image[0])

    @property
    def chw(self) -> tuple[int, int, int]:
        """``(channels, height, width)``; a stack's images side by side on the channels."""
        if len(self.shape) == 2:
            return (1, *self.shape)
        stack = int(np.prod(self.shape[:-3]))
        if self.channels_last:
            height, width, channels = self.shape[-3:]
        else:
            channels, height, width = self.shape[-3:]
        return stack * channels, height, width

    def frames(self, flat: Tensor, channels_last: bool = False) -> Tensor:
        """This image out of encoded observations ``[..., dim]`` (floats, or the env's
        uint8 bytes), as ``[B, C, H, W]`` floats divided by :attr:`divide_by` (B: every
        leading index); ``channels_last``:
        laid out NHWC in memory, written so by the division itself."""
        values = flat[..., self.offset : self.offset + self.size].reshape(-1, *self.shape)
        if len(self.shape) == 2:
            values = values.unsqueeze(1)
        elif self.channels_last:  # (B, [K,] H, W, C) -> (B, [K,] C, H, W)
            last = values.dim() - 1  # axes counted from the front: ONNX's Transpose needs that
            values = values.movedim(last, last - 2)
        values = values.reshape(-1, *self.chw)
        if channels_last and values.dtype == torch.uint8:  # the env's bytes: a float copy
            # laid out NHWC, divided in place (the same numbers, far faster than a
            # division from bytes into an NHWC output)
            return values.to(torch.float32, memory_format=torch.channels_last).div_(self.divide_by)
        if channels_last:
            out = torch.empty(
                values.shape, dtype=torch.result_type(values, self.divide_by),
                device=values.device,
                memory_format=torch.channels_last,
            )  # fmt: skip
            return torch.div(values, self.divide_by, out=out)
        return values / self.divide_by


def conv_layers(channels: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """The convolutions ``(out_channels, kernel, stride, padding)`` for images of this size.

    Images of at least 36 x 36 get the Atari CNN of Mnih et al. (2015): 32 8x8 stride 4,
    64 4x4 stride 2, 64 3x3 stride 1. Smaller ones (a 7x7 grid world, a 16x16 sprite)
    get three 3x3 convolutions (16, 32, 32 channels) padded to keep their size, each
    of stride 2 while the image is more than 8 pixels on its shorter side: a grid world
    of a few object kinds needs few channels, and at full resolution the Atari widths
    would cost four times the arithmetic.
    """
    if min(height, width) >= 36:
        return [(32, 8, 4, 0), (64, 4, 2, 0), (64, 3, 1, 0)]
    layers, size = [], min(height, width)
    for out in (16, 32, 32):
        stride = 2 if size > 8 else 1
        layers.append((out, 3, stride, 1))
        size = (size - 1) // stride + 1
    return layers


#: Images at least this many pixels on their shorter side enter the convolutions
#: channels last (NHWC), the layout in which PyTorch's CPU kernels run the Nature CNN's
#: backward pass fastest (``benchmarks/speed_envs.py``'s Atari part measures the whole
#: update); smaller images (grid worlds) keep the NCHW kernels, and their numbers.
CHANNELS_LAST_MIN = 36


#: The arithmetic an image body can compute in (``policy.precision``).
PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ImageCNN(nn.Module):
    """A convolutional body for one :class:`ImagePart` of the observations: the
    convolutions of :func:`conv_layers` with ReLUs, flattened, then a ReLU layer of
    ``units``. For (4, 84, 84) Atari frames this is the Nature CNN, fed channels last
    (see :data:`CHANNELS_LAST_MIN`; the weights keep their layout).

    ``precision`` (see :func:`compute_images_in`) is the arithmetic of its layers:
    under ``bfloat16`` they run in mixed precision (``torch.autocast``: each layer's
    inputs and weights rounded to bfloat16's 8-bit significand, products accumulated in
    float32), and the features come out as float32; the parameters stay float32.
    """

    def __init__(self, part: ImagePart, units: int = 512) -> None:
        super().__init__()
        self.part = part
        channels, height, width = part.chw
        layers: list[nn.Module] = []
        for out, kernel, stride, padding in conv_layers(channels, height, width):
            layers += [nn.Conv2d(channels, out, kernel, stride, padding), nn.ReLU()]
            channels = out
        self.conv = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, *part.chw)).shape[-1]
        self.fc = nn.Sequential(nn.Linear(flat, units), nn.ReLU())
        self.channels_last = min(height, width) >= CHANNELS_LAST_MIN
        self.precision = "float32"
        #: The weights rounded to ``precision`` for passes without gradients, with the
        #: parameters' versions they were rounded at (see :meth:`_rounded_weights`).
        self._rounded: tuple[tuple, dict[str, Tensor], dict[str, Tensor]] | None = None

    def forward(self, obs: Tensor) -> Tensor:
        lead = obs.shape[:-1]
        exporting = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
        frames = self.part.frames(obs, channels_last=self.channels_last and not exporting)
        mixed = self.precision != "float32" and not exporting
        if mixed and not self.training and not torch.is_grad_enabled():  # acting, scoring
            conv, fc = self._rounded_weights()
            dtype = PRECISIONS[self.precision]
            hidden = torch.func.functional_call(self.conv, conv, (frames.to(dtype),))
            features = torch.func.functional_call(self.fc, fc, (hidden,))
        else:
            with torch.autocast(frames.device.type, PRECISIONS[self.precision], enabled=mixed):
                features = self.fc(self.conv(frames))
        return features.float().reshape(*lead, -1)

    def train(self, mode: bool = True) -> ImageCNN:
        """Switch mode, forgetting the rounded weights: every update runs in training mode
        and every collection starts in eval mode, so none outlives a step."""
        self._rounded = None
        return super().train(mode)

    def _rounded_weights(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The convolutions' and the dense layer's parameters rounded to ``precision``,
        as autocast rounds them at every pass, for passes in eval mode without gradients
        (acting, scoring a batch): acting runs hundreds of passes between two updates,
        and rounding the dense layer's 1.6M weights at each of them cost more than the
        pass. They are rounded again after a mode switch (see :meth:`train`) or when a
        parameter changes in place or is replaced (its version or storage)."""
        versions = tuple((p._version, p.data_ptr()) for p in self.parameters())
        if self._rounded is None or self._rounded[0] != versions:
            dtype = PRECISIONS[self.precision]
            conv = {k: p.detach().to(dtype) for k, p in self.conv.named_parameters()}
            fc = {k: p.detach().to(dtype) for k, p in self.fc.named_parameters()}
            self._rounded = (versions, conv, fc)
        return self._rounded[1], self._rounded[2]


def compute_images_in(module: nn.Module, precision: str) -> int:
    """Sets the arithmetic of every :class:`ImageCNN` inside ``module`` (a body, an
    actor, a critic) to ``precision`` (a key of :data:`PRECISIONS`); returns how many
    it found. Exported models compute in float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    cnns = [m for m in module.modules() if isinstance(m, ImageCNN)]
    for cnn in cnns:
        cnn.precision = precision
    return len(cnns)


class MultiInputBody(nn.Module):
    """A body for observations that hold images and other values side by side (a
    ``Dict`` or ``Tuple`` space): an :class:`ImageCNN` of ``image_units`` per image,
    their features beside the other values, then an MLP of ``hidden``."""

    def __init__(
        self,
        obs_dim: int,
        images: Sequence[ImagePart],
        hidden: Sequence[int],
        activation: str = "tanh",
        dropout: float = 0.0,
        image_units: int = 256,
    ) -> None:
        super().__init__()
        self.cnns = nn.ModuleList([ImageCNN(part, image_units) for part in images])
        keep = torch.ones(obs_dim, dtype=torch.bool)
        for part in images:
            keep[part.offset : part.offset + part.size] = False
        self.register_buffer("rest", keep.nonzero().squeeze(-1), persistent=False)
        in_dim = image_units * len(images) + int(keep.sum())
        self.mlp = mlp(in_dim, hidden, None, activation, dropout)
        self.width = output_dim(in_dim, hidden)

    def forward(self, obs: Tensor) -> Tensor:
        parts = [cnn(obs) for cnn in self.cnns] + [obs.index_select(-1, self.rest)]
        return self.mlp(torch.cat(parts, dim=-1))
