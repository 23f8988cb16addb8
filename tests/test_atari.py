"""Pong from pixels: the classic preprocessing on hand-made frames, and short runs end to end."""

import csv
import math

import gymnasium as gym
import numpy as np
import pytest

import pglab
from pglab.envs.atari import PONG_ACTIONS, PongDifference, pong_frame


def blank_frame():
    frame = np.zeros((210, 160, 3), dtype=np.uint8)
    frame[..., 0] = 144  # the background colour
    return frame


def test_pong_frame_crops_downsamples_and_binarises():
    frame = blank_frame()
    frame[99:101, 80:82, 0] = 236  # the ball, inside the field
    frame[10, 50, 0] = 236  # the score, above the field: cropped away
    frame[150, 20, 0] = 109  # the other background shade
    image = pong_frame(frame)
    assert image.shape == (80, 80) and image.dtype == np.float32
    assert image.sum() == 1.0 and image[32, 40] == 1.0  # row (99 - 35) / 2, column 80 / 2


class FakePong(gym.Env):
    """Frames with a ball one step further right at each step; records the actions."""

    observation_space = gym.spaces.Box(0, 255, (210, 160, 3), np.uint8)
    action_space = gym.spaces.Discrete(6)

    def __init__(self):
        self.actions, self.x = [], 40

    def frame(self):
        frame = blank_frame()
        frame[101, self.x, 0] = 236
        return frame

    def reset(self, **kwargs):
        self.x = 40
        return self.frame(), {}

    def step(self, action):
        self.actions.append(action)
        self.x += 2
        return self.frame(), 0.0, False, False, {}


def test_pong_difference_frames_and_up_down_actions():
    base = FakePong()
    env = PongDifference(base)
    first, _ = env.reset()
    assert first.shape == (6400,) and not first.any()  # nothing has moved yet
    moved, *_ = env.step(0)
    image = moved.reshape(80, 80)
    assert image[33, 21] == 1.0 and image[33, 20] == -1.0  # new position +1, old -1
    assert image.sum() == 0.0
    env.step(1)
    assert base.actions == list(PONG_ACTIONS)  # 0 = UP, 1 = DOWN


def _metrics(run):
    with open(run.path / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_reinforce_pong_preset_trains_end_to_end(tmp_path):
    pytest.importorskip("ale_py")
    run = pglab.train(
        "ALE/Pong-v5",
        "reinforce",
        total_steps=1,
        batch_size=2,
        num_envs=2,
        eval_episodes=1,
        max_episode_steps=400,  # two games of a few points each (full ones last minutes)
        out=str(tmp_path),
        progress="off",
    )
    assert run.summary["preset"] == "reinforce/ALE/Pong-v5"
    assert run.summary["updates"] == 1 and run.summary["episodes"] == 2
    (row,) = _metrics(run)
    assert float(row["episode_return_mean"]) < 0  # a random policy loses
    assert float(row["grad_norm"]) > 0 and math.isfinite(float(row["policy_loss"]))
    assert run.agent.actor.head.__class__.__name__ == "BernoulliHead"


def _tiny_cnn_run(env_id, algo, tmp_path, **options):
    """Two updates of 64 steps on 2 copies of an Atari game, one evaluation episode."""
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    return pglab.train(
        env_id, algo, total_steps=128, batch_size=64, num_envs=2, minibatches=2,
        eval_episodes=1, out=str(tmp_path), progress="off", **options,
    )  # fmt: skip


def test_ppo_pong_preset_trains_a_cnn_end_to_end(tmp_path):
    run = _tiny_cnn_run("ALE/Pong-v5", "ppo", tmp_path, epochs=1)
    assert run.summary["preset"] == "ppo/ALE/Pong-v5" and run.summary["updates"] == 2
    assert type(run.agent.actor.body).__name__ == "ImageCNN"
    assert all(float(row["grad_norm"]) > 0 for row in _metrics(run))


def test_trpo_trains_the_atari_cnn_on_breakout(tmp_path):
    run = _tiny_cnn_run(
        "ALE/Breakout-v5", "trpo", tmp_path, preprocess="atari", body="cnn", hidden=[64],
        value_epochs=1, max_episode_steps=100,
    )  # fmt: skip
    assert run.summary["updates"] >= 2
    assert type(run.agent.actor.body).__name__ == "ImageCNN"
    for row in _metrics(run):  # a step inside the trust region, from finite losses
        assert 0 < float(row["approx_kl"]) <= 0.01 * 1.5 and math.isfinite(float(row["value_loss"]))
