"""A trained agent: the actor with everything needed to act in the raw env."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from pglab.checkpoint import load_checkpoint
from pglab.config import Config
from pglab.envs import make_vec_env
from pglab.envs.normalize import Normalizer
from pglab.envs.spaces import ActionAdapter, ObsEncoder
from pglab.errors import PglabError
from pglab.policies import (
    Actor,
    Critic,
    TanhGaussianHead,
    make_actor,
    make_critic,
    orthogonal_init,
    shared_critic,
)


def _image_shape(config: Config, observation_space: gym.Space) -> tuple[int, ...] | None:
    """``(C, H, W)`` when the body is a CNN (``auto``: for 3-D Box observations)."""
    shape = getattr(observation_space, "shape", None) or ()
    body = config.policy.body
    if body == "mlp" or (body == "auto" and len(shape) != 3):
        return None
    if len(shape) != 3:
        raise PglabError(
            f"policy.body cnn needs image observations (C, H, W); got {observation_space}"
        )
    return tuple(shape)


def build_models(
    config: Config, observation_space: gym.Space, action_space: gym.Space
) -> tuple[Actor, Critic | None]:
    """The actor (and the critic when the algorithm uses one) for these spaces."""
    obs_dim = ObsEncoder(observation_space).dim
    p = config.policy
    image_shape = _image_shape(config, observation_space)
    try:
        actor = make_actor(
            obs_dim,
            action_space,
            p.hidden,
            activation=p.activation,
            dropout=p.dropout,
            head=p.head,
            log_std_init=p.log_std_init,
            image_shape=image_shape,
        )
    except ValueError as error:
        raise PglabError(f"policy.head: {error}") from None
    critic = None
    if config.algo.uses_critic:
        critic = (
            shared_critic(actor)
            if p.shared
            else make_critic(obs_dim, p.value_hidden, p.activation, image_shape)
        )
    if p.ortho_init:
        orthogonal_init(actor, critic)
    return actor, critic


def build_normalizer(
    config: Config, observation_space: gym.Space, num_envs: int
) -> Normalizer | None:
    """The run's observation/reward normaliser, or None when both are off."""
    env = config.env
    if not (env.normalize_obs or env.normalize_reward):
        return None
    return Normalizer(
        ObsEncoder(observation_space).dim,
        num_envs,
        obs=env.normalize_obs,
        reward=env.normalize_reward,
        reward_method=env.reward_norm,
        clip_obs=env.clip_obs,
        clip_reward=env.clip_reward,
        gamma=config.algo.gamma,
    )


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
        self.encode = ObsEncoder(observation_space)
        self.to_env = ActionAdapter(action_space, squash=isinstance(actor.head, TanhGaussianHead))

    def act(self, obs: Any, deterministic: bool = True) -> Any:
        """The action for ``obs`` (the most likely one unless ``deterministic=False``)."""
        array = np.asarray(obs)
        single_shape = self.observation_space.shape or ()
        single = array.shape == tuple(single_shape)
        batch = array[None] if single else array
        self.actor.eval()
        with torch.inference_mode():
            obs = self.encode(batch)
            if self.normalizer is not None:
                obs = self.normalizer.obs(obs)
            device = next(self.actor.parameters()).device
            actions = self.to_env(self.actor.act(obs.to(device), deterministic).cpu().numpy())
        if not single:
            return actions
        return actions[0].item() if actions[0].ndim == 0 else actions[0]

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Agent:
        """Rebuild the agent stored in a loaded checkpoint dict."""
        config = Config.from_dict(state["config"], source="checkpoint")
        env = config.env
        envs = make_vec_env(
            env.id,
            1,
            env.kwargs,
            env.preprocess,
            max_episode_steps=env.max_episode_steps,
            check=env.check,
        )
        observation_space, action_space = envs.single_observation_space, envs.single_action_space
        envs.close()
        actor, _ = build_models(config, observation_space, action_space)
        actor.load_state_dict(state["actor"])
        normalizer = build_normalizer(config, observation_space, 1)
        if normalizer is not None:
            normalizer.load_state_dict(state["normalizer"])
        return cls(actor, observation_space, action_space, config, normalizer)


def load(path: str | Path) -> Agent:
    """The agent saved in a run folder or a checkpoint file."""
    return Agent.from_checkpoint(load_checkpoint(path))
