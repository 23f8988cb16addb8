"""A trained agent: the actor with everything needed to act in the raw env."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from pglab.checkpoint import checkpoint_path, load_checkpoint
from pglab.config import BODIES, Config
from pglab.envs import check_env_import, env_module, make_configured_env
from pglab.envs.normalize import Normalizer
from pglab.envs.spaces import ActionAdapter, ObsEncoder, mask_source, space_from_data
from pglab.envs.wrappers import check_import, check_wrapper_imports, import_named, wrapper_module
from pglab.errors import CheckpointError, PglabError
from pglab.nets import ImagePart, compute_images_in
from pglab.policies import (
    Actor,
    BodyFactory,
    Critic,
    TanhGaussianHead,
    make_actor,
    make_critic,
    orthogonal_init,
    shared_critic,
)

#: The most parameters pglab builds from a config read from a file: a checkpoint cannot
#: make it allocate more (the weights it holds must fit the networks anyway).
MAX_STORED_PARAMETERS = 100_000_000


def _hidden_parameters(sizes: list[int]) -> int:
    """Weights and biases between consecutive hidden layers: a lower bound of a body's size."""
    return sum(a * b + b for a, b in pairwise(sizes))


def stored_config(state: dict[str, Any], source: str, allow_import: Iterable[str] = ()) -> Config:
    """The run config a loaded checkpoint holds, checked before anything is built from it.

    ``source`` names the file in messages. Raises :class:`CheckpointError` when the
    config is missing or invalid, or its networks would exceed
    :data:`MAX_STORED_PARAMETERS`; :class:`~pglab.errors.EnvError` when its env id would
    import a module that is not in ``allow_import`` (see
    :func:`pglab.envs.check_env_import`), or a wrapper would (see
    :func:`pglab.envs.wrappers.check_wrapper_imports`).
    """
    raw = state.get("config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source!r} holds no run config; it cannot be loaded")
    try:
        config = Config.from_dict(raw, source=source)
    except PglabError as error:
        raise CheckpointError(f"{source!r} holds an invalid run config: {error}") from None
    except (TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{source!r} holds a malformed run config ({error})") from None
    p = config.policy
    size = _hidden_parameters(p.hidden) + _hidden_parameters(p.value_hidden)
    if size > MAX_STORED_PARAMETERS:
        raise CheckpointError(
            f"{source!r} describes networks of at least {size:,} parameters "
            f"(policy.hidden {p.hidden}, policy.value_hidden {p.value_hidden}); pglab builds "
            f"at most {MAX_STORED_PARAMETERS:,} from a file"
        )
    check_env_import(config.env.id, allow_import, source)
    check_wrapper_imports(config.env.wrappers, allow_import, source)
    for option, name in _own_code(config).items():
        check_import(name, option, allow_import, source, CheckpointError)
    return config


def _own_code(config: Config) -> dict[str, str]:
    """The options of ``config`` that name a user's class or function by import path."""
    p = config.policy
    own = {
        "policy.body": p.body if p.body not in BODIES else "",
        "policy.actor": p.actor,
        "policy.critic": p.critic,
        "algo.lr_schedule": config.algo.lr_schedule,
        "algo.clip_schedule": config.algo.clip_schedule,
        "algo.weights": config.algo.weights,
    }
    return {option: name for option, name in own.items() if ":" in name or "." in name}


def named_modules(config: Config) -> list[str]:
    """Every module ``config`` names for import (its env, wrappers, classes and
    functions of the user's): what a run the user configured in this process may load
    back from its own files (see :func:`stored_config`)."""
    names = [env_module(config.env.id)]
    names += [wrapper_module(entry["name"]) for entry in config.env.wrappers]
    names += [wrapper_module(name) for name in _own_code(config).values()]
    return sorted({name for name in names if name})


def load_weights(module: Any, tensors: Any, source: str, what: str) -> None:
    """Load ``tensors`` (the checkpoint's entry ``what``) into ``module``, or raise a
    :class:`CheckpointError` naming ``source`` when they do not fit it."""
    try:
        module.load_state_dict(tensors)
    except Exception as error:  # missing, unexpected or misshapen tensors, or not a dict
        first = str(error).strip().splitlines()
        reason = first[1].strip() if len(first) > 1 else (first[0] if first else "")
        raise CheckpointError(
            f"{source!r}: the {what} weights do not fit the networks its config describes"
            f"{' (' + reason + ')' if reason else ''}"
        ) from None


def _images(config: Config, observation_space: gym.Space, encoder: ObsEncoder) -> list[ImagePart]:
    """Where the CNN bodies read images in ``encoder``'s encoding (``policy.body``:
    ``auto`` for every uint8 image in the observations, ``cnn`` also for a float Box of
    image shape, ``mlp`` never)."""
    body = config.policy.body
    if body not in BODIES or body == "mlp":  # an MLP, or the user's own body
        return []
    images = encoder.images
    if body == "auto" or images:
        return images
    shape = tuple(getattr(observation_space, "shape", None) or ())
    if isinstance(observation_space, gym.spaces.Box) and len(shape) in (2, 3):
        return [ImagePart(0, shape, divide_by=1.0)]
    raise PglabError(
        "policy.body cnn needs image observations ((H, W), (H, W, C) or (C, H, W)); "
        f"got {observation_space}"
    )


def obs_encoder(
    config: Config, observation_space: gym.Space, action_space: gym.Space
) -> ObsEncoder:
    """The run's observation encoding, with its action mask (``env.action_mask``)."""
    source = mask_source(config.env.action_mask, observation_space)
    return ObsEncoder(observation_space, source, action_space)


def user_class(option: str, name: str, kwargs: dict[str, Any]) -> Callable[..., Any]:
    """The user's class ``name`` (``policy.<option>``), as a function of its leading
    arguments that adds ``kwargs``; a class that cannot be imported or made is one
    :class:`PglabError` line. Callers reading the config from a file check the import
    first (:func:`stored_config`)."""
    cls = import_named(name, f"policy.{option}", PglabError)
    if not callable(cls):
        raise PglabError(f"policy.{option} {name!r} is not a class")

    def make(*args: Any) -> Any:
        try:
            return cls(*args, **kwargs)
        except TypeError as error:
            raise PglabError(
                f"policy.{option} {name!r} with {option}_kwargs {kwargs}: {error}"
            ) from None

    return make


def body_factory(config: Config) -> BodyFactory | None:
    """How to make the user's own body (``policy.body = "package.module:Class"``, made
    as ``Class(obs_dim, **policy.body_kwargs)``), or None for a built-in one."""
    p = config.policy
    return None if p.body in BODIES else user_class("body", p.body, p.body_kwargs)


def _own_actor(config: Config, obs_dim: int, action_space: gym.Space) -> Actor:
    """The user's actor (``policy.actor``): it must be a :class:`~pglab.policies.Actor`."""
    p = config.policy
    actor = user_class("actor", p.actor, p.actor_kwargs)(obs_dim, action_space)
    if not isinstance(actor, Actor):
        raise PglabError(
            f"policy.actor {p.actor!r} must make a pglab.policies.Actor (or a subclass); "
            f"it made {type(actor).__name__}"
        )
    return actor


def _own_critic(config: Config, obs_dim: int) -> nn.Module:
    """The user's critic (``policy.critic``): a module from ``[N, obs_dim]`` to ``[N]``."""
    p = config.policy
    critic = user_class("critic", p.critic, p.critic_kwargs)(obs_dim)
    values = critic(torch.zeros(2, obs_dim)) if isinstance(critic, nn.Module) else None
    if not isinstance(values, Tensor) or tuple(values.shape) != (2,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(critic).__name__
        raise PglabError(
            f"policy.critic {p.critic!r} must make a torch module from [N, {obs_dim}] to "
            f"values [N]; got {shape}"
        )
    return critic


def build_models(
    config: Config, observation_space: gym.Space, action_space: gym.Space
) -> tuple[Actor, Critic | None]:
    """The actor (and the critic when the algorithm uses one) for these spaces."""
    encoder = obs_encoder(config, observation_space, action_space)
    obs_dim = encoder.dim
    p = config.policy
    images = _images(config, observation_space, encoder)
    factory = body_factory(config)
    try:
        actor = (
            _own_actor(config, obs_dim, action_space)
            if p.actor
            else make_actor(
                obs_dim,
                action_space,
                p.hidden,
                activation=p.activation,
                dropout=p.dropout,
                head=p.head,
                log_std_init=p.log_std_init,
                sde_sample_freq=p.sde_sample_freq,
                images=images,
                mask_dim=encoder.mask_dim,
                action_mask=encoder.mask,
                factory=factory,
            )
        )
    except ValueError as error:
        where = "policy.body" if factory is not None and "body" in str(error) else "policy.head"
        raise PglabError(f"{where}: {error}") from None
    critic = None
    if config.algo.uses_critic and p.critic:
        critic = _own_critic(config, obs_dim)
    elif config.algo.uses_critic:
        critic = (
            shared_critic(actor)
            if p.shared
            else make_critic(obs_dim, p.value_hidden, p.activation, images, factory)
        )
    if p.ortho_init and not (p.actor or p.critic):  # a user's own networks keep their init
        orthogonal_init(actor, critic)
    if p.precision != "float32":
        found = sum(compute_images_in(net, p.precision) for net in (actor, critic) if net)
        if not found:
            raise PglabError(
                f"policy.precision = {p.precision!r} applies to pglab's image bodies (a CNN "
                "for image observations); this run's networks have none; use 'float32'"
            )
    return actor, critic


def build_normalizer(
    config: Config, observation_space: gym.Space, action_space: gym.Space, num_envs: int
) -> Normalizer | None:
    """The run's observation/reward normaliser, or None when both are off. It
    normalises the observation's own values, never the action mask's columns."""
    env = config.env
    if not (env.normalize_obs or env.normalize_reward):
        return None
    return Normalizer(
        obs_encoder(config, observation_space, action_space).features,
        num_envs,
        obs=env.normalize_obs,
        reward=env.normalize_reward,
        reward_method=env.reward_norm,
        clip_obs=env.clip_obs,
        clip_reward=env.clip_reward,
        gamma=config.algo.gamma,
    )


class Policy(nn.Module):
    """What :meth:`Agent.act` computes after encoding: a batch of encoded observations
    ``[N, dim]`` (float32, :class:`~pglab.envs.spaces.ObsEncoder`'s output) to the env's
    actions, as a tensor on the CPU.

    The observations are normalised with the frozen statistics of training (when the
    run normalised them), the actor takes its most likely action (or samples one unless
    ``deterministic``), and the action is mapped into the env's format
    (:meth:`~pglab.envs.spaces.ActionAdapter.tensor`: a start offset, the space's
    shape, clipping to a Box or the tanh head's squash). :func:`pglab.export` traces
    this very module, so an exported file acts as :meth:`Agent.act` does.
    """

    def __init__(self, actor: Actor, normalizer: Normalizer | None, to_env: ActionAdapter) -> None:
        super().__init__()
        self.actor = actor
        self.normalizer = normalizer
        self.to_env = to_env

    def forward(self, obs: Tensor, deterministic: bool = True) -> Tensor:
        if self.normalizer is not None:
            obs = self.normalizer.obs(obs)
        device = next(self.actor.parameters()).device
        if obs.device != device:
            obs = obs.to(device)
        actions = self.actor.act(obs, deterministic)
        if actions.device.type != "cpu":
            actions = actions.cpu()
        return self.to_env.tensor(actions)


class Agent:
    """Acts in an environment: ``agent.act(obs)`` for one observation or a batch.

    Observations are the env's raw ones (after the run's ``env.preprocess``, which
    the env made by :func:`pglab.envs.make_vec_env` applies); the normalisation
    statistics of training are applied frozen. Actions come back in the env's
    format (an ``int`` for a Discrete space, an array within the bounds for a Box).
    """

    def __init__(
        self,
        actor: Actor,
        observation_space: gym.Space,
        action_space: gym.Space,
        config: Config,
        normalizer: Normalizer | None = None,
    ) -> None:
        self.actor = actor
        self.observation_space = observation_space
        self.action_space = action_space
        self.config = config
        self.normalizer = normalizer
        self.encode = obs_encoder(config, observation_space, action_space)
        self.to_env = ActionAdapter(action_space, squash=isinstance(actor.head, TanhGaussianHead))

    def act(self, obs: Any, deterministic: bool = True, action_mask: Any = None) -> Any:
        """The action for ``obs`` (the most likely one unless ``deterministic=False``).

        A run trained with ``env.action_mask = "info"`` takes the legal actions as
        ``action_mask`` (1 legal, 0 not; default: all legal); one whose Dict observation
        holds an ``action_mask`` key reads them there. An illegal action is never taken.
        """
        try:
            single = self.encode.batch_size(obs) is None
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise ValueError(f"Agent.act: {error}") from None
        batch = _as_batch(obs) if single else obs
        self.actor.eval()
        with torch.inference_mode():
            legal = None
            if action_mask is not None and self.encode.mask == "info":
                legal = np.asarray(action_mask, dtype=np.float32).reshape(-1, self.encode.mask_dim)
            actions = self.policy()(self.encode(batch, legal), deterministic).numpy()
        if not single:
            return actions
        return actions[0].item() if actions[0].ndim == 0 else actions[0]

    def policy(self) -> Policy:
        """The module from encoded observations to env actions that :meth:`act` runs
        (and :func:`pglab.export` writes)."""
        return Policy(self.actor, self.normalizer, self.to_env)

    @classmethod
    def from_checkpoint(
        cls, state: dict[str, Any], source: str = "checkpoint", allow_import: Iterable[str] = ()
    ) -> Agent:
        """Rebuild the agent stored in a loaded checkpoint dict (read from ``source``).

        An env id that imports a module (``package.module:Class``) is refused unless
        that module is in ``allow_import``; see :func:`stored_config`.
        """
        config = stored_config(state, source, allow_import)
        spaces = state.get("spaces")
        if isinstance(spaces, dict):  # stored with the weights: no env to make
            observation_space = space_from_data(spaces.get("observation"), source)
            action_space = space_from_data(spaces.get("action"), source)
        else:  # a checkpoint from before spaces were stored
            envs = make_configured_env(config.env, 1)
            observation_space = envs.single_observation_space
            action_space = envs.single_action_space
            envs.close()
        actor, _ = build_models(config, observation_space, action_space)
        load_weights(actor, state.get("actor"), source, "actor")
        normalizer = build_normalizer(config, observation_space, action_space, 1)
        if normalizer is not None:
            load_weights(normalizer, state.get("normalizer"), source, "normalizer")
        return cls(actor, observation_space, action_space, config, normalizer)


def _as_batch(obs: Any) -> Any:
    """One observation as a batch of one (each leaf of a Dict or Tuple observation)."""
    if isinstance(obs, dict):
        return {key: _as_batch(value) for key, value in obs.items()}
    if isinstance(obs, tuple):
        return tuple(_as_batch(value) for value in obs)
    return np.asarray(obs)[None]


def load(path: str | Path, *, allow_import: Iterable[str] = (), checkpoint: str = "last") -> Agent:
    """The agent saved in a run folder (its ``checkpoint``: ``last``, or ``best``, the
    weights of its best evaluation) or a checkpoint file.

    Loading runs no code from the file: the checkpoint is read with
    ``torch.load(weights_only=True)``, and an env id of the form
    ``package.module:Class`` is refused unless its module is named in
    ``allow_import`` (``pglab.load(path, allow_import=["my_envs"])``).
    """
    file = checkpoint_path(path, checkpoint)
    return Agent.from_checkpoint(load_checkpoint(file), str(file), allow_import)
