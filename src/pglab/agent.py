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
from pglab.envs.spaces import ActionAdapter, ObsEncoder
from pglab.policies import Actor, Critic, make_actor


def build_models(
    config: Config, observation_space: gym.Space, action_space: gym.Space
) -> tuple[Actor, Critic | None]:
    """The actor (and the critic when the algorithm uses one) for these spaces."""
    obs_dim = ObsEncoder(observation_space).dim
    p = config.policy
    actor = make_actor(
        obs_dim,
        action_space,
        p.hidden,
        activation=p.activation,
        dropout=p.dropout,
        head=p.head,
        log_std_init=p.log_std_init,
    )
    critic = Critic(obs_dim, p.value_hidden, p.activation) if config.algo.uses_critic else None
    return actor, critic


class Agent:
    """Acts in an environment: ``agent.act(obs)`` for one observation or a batch.

    Observations are the env's raw ones; actions come back in the env's format
    (an ``int`` for a Discrete space, a clipped array for a Box).
    """

    def __init__(
        self,
        actor: Actor,
        observation_space: gym.Space,
        action_space: gym.Space,
        config: Config,
    ) -> None:
        self.actor = actor
        self.observation_space = observation_space
        self.action_space = action_space
        self.config = config
        self.encode = ObsEncoder(observation_space)
        self.to_env = ActionAdapter(action_space)

    def act(self, obs: Any, deterministic: bool = True) -> Any:
        """The action for ``obs`` (the most likely one unless ``deterministic=False``)."""
        array = np.asarray(obs)
        single_shape = self.observation_space.shape or ()
        single = array.shape == tuple(single_shape)
        batch = array[None] if single else array
        self.actor.eval()
        with torch.inference_mode():
            actions = self.to_env(self.actor.act(self.encode(batch), deterministic).numpy())
        if not single:
            return actions
        return actions[0].item() if actions[0].ndim == 0 else actions[0]

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Agent:
        """Rebuild the agent stored in a loaded checkpoint dict."""
        config = Config.from_dict(state["config"], source="checkpoint")
        envs = make_vec_env(config.env.id, 1, config.env.kwargs)
        observation_space, action_space = envs.single_observation_space, envs.single_action_space
        envs.close()
        actor, _ = build_models(config, observation_space, action_space)
        actor.load_state_dict(state["actor"])
        return cls(actor, observation_space, action_space, config)


def load(path: str | Path) -> Agent:
    """The agent saved in a run folder or a checkpoint file."""
    return Agent.from_checkpoint(load_checkpoint(path))
