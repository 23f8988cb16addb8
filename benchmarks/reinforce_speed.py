"""REINFORCE throughput: pglab against a tutorial-style loop, side by side.

Both train the same algorithm on CartPole-v1 from scratch for the same number of
environment steps: REINFORCE with reward-to-go weights (``fr``), 20 complete
episodes per batch, one hidden layer of 8 units, Adam with lr 0.01. The tutorial
loop is how the algorithm is usually first written: one env, one forward pass and
one sample per step, log-probabilities kept with their graph until the batch ends.

    python benchmarks/reinforce_speed.py [--steps 100000] [--seed 0] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import pglab
from machine import command_line, machine


def tutorial_reinforce(total_steps: int, seed: int) -> tuple[float, float]:
    """The textbook loop. Returns (steps per second, mean return of the last batch)."""
    torch.manual_seed(seed)
    env = gym.make("CartPole-v1")
    policy = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.01)
    steps, episode = 0, 0
    start = time.perf_counter()
    last_returns: list[float] = []
    while steps < total_steps:
        log_probs, weights, returns = [], [], []
        for _ in range(20):
            obs, _ = env.reset(seed=seed + episode)
            episode += 1
            rewards = []
            done = False
            while not done:
                logits = policy(torch.as_tensor(obs, dtype=torch.float32))
                dist = torch.distributions.Categorical(logits=logits)
                action = dist.sample()
                log_probs.append(dist.log_prob(action))
                obs, reward, terminated, truncated, _ = env.step(action.item())
                rewards.append(float(reward))
                done = terminated or truncated
            steps += len(rewards)
            to_go = np.cumsum(rewards[::-1])[::-1]
            weights += to_go.tolist()
            returns.append(sum(rewards))
        psi = torch.tensor(weights)
        psi = (psi - psi.mean()) / (psi.std() + 1e-8)
        loss = -(torch.stack(log_probs) * psi).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        last_returns = returns
    return steps / (time.perf_counter() - start), float(np.mean(last_returns))


def pglab_reinforce(total_steps: int, seed: int) -> tuple[float, float]:
    """pglab's REINFORCE with the same settings (its own logging and checkpoints on)."""
    with tempfile.TemporaryDirectory() as out:
        run = pglab.train(
            "CartPole-v1",
            algo="reinforce",
            weights="fr",
            lr=0.01,
            batch_size=20,
            policy={"hidden": [8]},
            seed=seed,
            total_steps=total_steps,
            out=out,
            stop_at_return="none",
            eval_every=0,
            eval_episodes=1,
            progress="off",
        )
        s = run.summary
        recent = float(np.mean(s["eval_return_mean"]))
        return s["total_steps"] / s["wall_seconds"], recent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write a markdown report")
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = command_line()

    fast, fast_return = pglab_reinforce(args.steps, args.seed)
    slow, slow_return = tutorial_reinforce(args.steps, args.seed)
    ratio = fast / slow
    lines = [
        "# REINFORCE throughput on CartPole-v1",
        "",
        f"command: `{command}`",
        f"machine: {machine()}",
        f"settings: fr weights, 20 episodes per batch, hidden [8], Adam lr 0.01, "
        f"{args.steps:,} steps from scratch, seed {args.seed}",
        "",
        "| implementation | steps/s | final return |",
        "|---|---:|---:|",
        f"| pglab (vector env, batched) | {fast:,.0f} | {fast_return:.1f} (deterministic eval) |",
        f"| tutorial loop (one env, one forward per step) | {slow:,.0f} | "
        f"{slow_return:.1f} (last batch) |",
        "",
        f"ratio: pglab is {ratio:.1f}x the tutorial loop",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
