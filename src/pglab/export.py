"""``pglab export``: a trained policy as one deployable file, ONNX or TorchScript.

The file holds :class:`pglab.agent.Policy`, the module :meth:`pglab.Agent.act` itself
runs, traced on the CPU: observation normalisation with the frozen statistics of
training (when the run normalised observations), the actor's most likely action
(``deterministic=True``), and the action mapping into the env's format (a Discrete
space's ``start``, a MultiDiscrete or MultiBinary space's shape, a Box's bounds by
clipping, or the tanh head's squash). So the file maps a batch of observations to
exactly the actions ``agent.act(obs, deterministic=True)`` takes.

Input ``obs``: float32 ``[batch, dim]``, the observations as pglab encodes them
(:class:`~pglab.envs.spaces.ObsEncoder`). For a 1-D ``Box`` observation that is the
observation itself; an image, a ``Dict`` or a ``Tuple`` observation is flattened part by
part (``agent.encode.array(obs)`` gives the encoding), and an action mask (a Dict's
``action_mask`` key, or ``env.action_mask = "info"``) takes the last columns, 1 for a
legal action. Output ``action``: ``[batch]`` for a Discrete space (int64), ``[batch,
*shape]`` for the others (float32 for a Box, the space's integers otherwise).

Neither format runs code from the checkpoint: it is read with ``weights_only=True`` as
by :func:`pglab.load`. The file is written whole or not at all.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from pglab.agent import Agent, Policy, load
from pglab.checkpoint import CHECKPOINT_DIR, CHOICES, checkpoint_path
from pglab.errors import ConfigError, PglabError
from pglab.paths import write_atomic

#: The formats :func:`export` writes, and the extension of each one's default file name.
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
#: The checkpoints of a run folder that can be exported (``checkpoints/<name>.pt``).
CHECKPOINTS: tuple[str, ...] = tuple(CHOICES)
#: The ONNX graph's input and output names.
INPUT, OUTPUT = "obs", "action"
#: The key of the description of the policy in a file's metadata (ONNX metadata props;
#: a TorchScript file's extra file ``pglab.json``).
METADATA_KEY = "pglab"

_NEEDS_ONNX = "exporting to ONNX needs the onnx package: pip install 'pglab[export]'"


def export(
    source: str | Path | Agent,
    path: str | Path | None = None,
    *,
    format: str = "onnx",
    checkpoint: str = "last",
    allow_import: Iterable[str] = (),
) -> Path:
    """Write the deterministic policy of a run (or an :class:`~pglab.Agent`) as one file.

    Args:
        source: a run folder, a checkpoint file or a loaded agent.
        path: the file to write; by default ``<run folder>/policy-<checkpoint>.onnx``
            (``.torchscript.pt`` for TorchScript). Needed when ``source`` is not a run
            folder. It is replaced atomically (a link there is replaced, not followed);
            the checkpoint read is never overwritten.
        format: ``"onnx"`` (needs ``pip install 'pglab[export]'``) or ``"torchscript"``.
        checkpoint: which checkpoint of a run folder, ``"last"`` (default) or
            ``"best"`` (the weights of its best evaluation).
        allow_import: modules the checkpoint's env id may name, as for :func:`pglab.load`.

    Returns:
        The path written. Load it with ``onnxruntime.InferenceSession(path)`` (input
        ``obs``, output ``action``) or ``torch.jit.load(path)``; see the module
        docstring for the input's layout.

    Raises:
        PglabError: (one line) a bad format or checkpoint name, a missing checkpoint,
            the onnx package missing, or a policy that cannot be traced.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}; got {checkpoint!r}")
    if format == "onnx":
        _require_onnx()
    agent, read, out = _resolve(source, path, format, checkpoint, allow_import)
    if out.is_dir():
        raise PglabError(f"{str(out)!r} is a folder; give the file to write")
    if read is not None and out.resolve() == read.resolve():
        raise PglabError(f"{str(out)!r} is the checkpoint being exported; give another file")
    module = _deployable(agent)
    example = torch.zeros(2, agent.encode.dim)
    metadata = json.dumps(describe(agent, str(read) if read is not None else None))
    writer = WRITERS[format]
    try:
        with warnings.catch_warnings():  # the exporters' deprecation and tracer notes
            warnings.simplefilter("ignore")
            data = writer(module, example, metadata)
    except PglabError:
        raise
    except Exception as error:  # a module the tracer cannot follow
        first = str(error).strip().splitlines()
        reason = first[0] if first else type(error).__name__
        raise PglabError(f"cannot export this policy to {format}: {reason}") from None
    return write_atomic(out, lambda temp: temp.write_bytes(data), out.parent)


def describe(agent: Agent, checkpoint: str | None = None) -> dict[str, object]:
    """What an exported file holds, stored in its metadata: the env, the input width and
    layout, the action space and whether the observation normalisation is inside."""
    normalizer = agent.normalizer
    return {
        "format": "pglab-policy",
        "env": agent.config.env.id,
        "algo": agent.config.algo.name,
        "checkpoint": checkpoint,
        "input": {
            "name": INPUT,
            "dim": agent.encode.dim,
            "features": agent.encode.features,
            "action_mask_columns": agent.encode.mask_dim,
            "observation_space": str(agent.observation_space),
        },
        "output": {"name": OUTPUT, "action_space": str(agent.action_space)},
        "normalizes_observations": bool(normalizer is not None and normalizer.normalize_obs),
        "deterministic": True,
    }


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise PglabError(_NEEDS_ONNX) from None


def _resolve(
    source: str | Path | Agent,
    path: str | Path | None,
    format: str,
    checkpoint: str,
    allow_import: Iterable[str],
) -> tuple[Agent, Path | None, Path]:
    """The agent, the checkpoint file it was read from (None for an agent given) and
    the file to write."""
    if isinstance(source, Agent):
        if path is None:
            raise ConfigError("give the file to write (an agent has no run folder to write into)")
        return source, None, Path(path)
    folder = Path(source)
    read = checkpoint_path(folder, checkpoint)  # one line when there is nothing there
    if folder.is_dir():
        out = Path(path) if path is not None else folder / f"policy-{checkpoint}{FORMATS[format]}"
    elif path is None:
        raise ConfigError(f"give the file to write (--out) for the checkpoint file {str(read)!r}")
    else:
        out = Path(path)
    if out.parent.name == CHECKPOINT_DIR and out.suffix == ".pt":
        raise PglabError(f"{str(out)!r} would replace a run's checkpoint; give another file")
    return load(read, allow_import=allow_import), read, out


def _deployable(agent: Agent) -> torch.nn.Module:
    """The agent's :class:`~pglab.agent.Policy` on a CPU copy of its actor, in eval mode
    (no dropout) and without gradients."""
    actor = copy.deepcopy(agent.actor).cpu().eval().requires_grad_(False)
    return Policy(actor, agent.normalizer, agent.to_env)


def _onnx_bytes(module: torch.nn.Module, example: torch.Tensor, metadata: str) -> bytes:
    import onnx

    buffer = io.BytesIO()
    # The TorchScript-based exporter: the torch.export-based one needs onnxscript too.
    torch.onnx.export(
        module,
        (example,),
        buffer,
        dynamo=False,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
    )
    model = onnx.load_model_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata
    onnx.checker.check_model(model, full_check=True)  # types and shapes infer
    data = model.SerializeToString()
    try:
        import onnxruntime
    except ImportError:  # nothing to run it with here
        return data
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    session.run(None, {INPUT: example.numpy()})  # it loads and runs
    return data


def _torchscript_bytes(module: torch.nn.Module, example: torch.Tensor, metadata: str) -> bytes:
    traced = torch.jit.trace(module, (example,))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": metadata})
    return buffer.getvalue()


#: How each format is written: the policy module, an example input, the metadata -> bytes.
WRITERS: dict[str, Callable[[torch.nn.Module, torch.Tensor, str], bytes]] = {
    "onnx": _onnx_bytes,
    "torchscript": _torchscript_bytes,
}
