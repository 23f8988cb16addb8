"""``pglab export``: ONNX and TorchScript policies act exactly as ``Agent.act(obs,
deterministic=True)``, observation normalisation and action mapping included; a missing
checkpoint or package, or a target that is a checkpoint, fails in one line."""

import json
import shutil
import sys

import gymnasium as gym
import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import pglab
from cli_run import run_cli
from space_envs import MaskedEnv, SpacesEnv

TINY = {
    "progress": "off",
    "eval_episodes": 2,
    "checkpoint_every": 0,
    "preset": "none",
    "policy": {"hidden": [16], "value_hidden": [16]},
    "num_envs": 2,
    "batch_size": 64,
    "epochs": 2,
    "minibatches": 2,
}
BATCH = 64
# torch 2.13 marks TorchScript deprecated; loading the file is what a user of it does.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def act_onnx(path, obs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"obs": obs})[0]


def act_torchscript(path, obs):
    return torch.jit.load(str(path))(torch.from_numpy(obs)).numpy()


ACT = {"onnx": act_onnx, "torchscript": act_torchscript}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny PPO run per env, both normalising their observations."""
    out = tmp_path_factory.mktemp("runs")
    return {
        env: pglab.train(
            env, "ppo", seed=0, out=str(out), total_steps=256, normalize_obs=True, **TINY
        ).path
        for env in ("CartPole-v1", "Pendulum-v1")
    }


def observations(env_id):
    """A batch of observations around and far beyond what training saw (the far ones
    reach the normaliser's clipping)."""
    rng = np.random.default_rng(1)
    scale = {"CartPole-v1": [1.0, 2.0, 0.2, 2.0], "Pendulum-v1": [1.0, 1.0, 8.0]}[env_id]
    obs = rng.normal(size=(BATCH, len(scale))) * scale
    obs[:4] *= 1000.0
    return obs.astype(np.float32)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_an_exported_policy_acts_as_agent_act_with_the_normalisation_inside(
    runs, env_id, fmt, tmp_path, capsys
):
    out = tmp_path / f"policy.{fmt}"
    code, printed, err = run_cli(
        ["export", str(runs[env_id]), "--format", fmt, "--out", str(out)], capsys
    )
    assert code == 0, err
    assert str(out) in printed
    agent = pglab.load(runs[env_id])
    assert agent.normalizer is not None and np.abs(agent.normalizer.obs_stats.mean).max() > 0
    obs = observations(env_id)
    want = agent.act(obs, deterministic=True)
    got = ACT[fmt](out, obs)
    assert got.shape == want.shape and got.dtype == want.dtype
    if env_id == "CartPole-v1":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert np.abs(got).max() <= 2.0  # clipped to Pendulum's torque bounds


def test_an_exported_file_describes_its_input_and_output(runs, tmp_path):
    onnx_file = pglab.export(runs["Pendulum-v1"], tmp_path / "p.onnx", format="onnx")
    model = onnx.load(str(onnx_file))
    described = json.loads({p.key: p.value for p in model.metadata_props}["pglab"])
    assert described["input"]["dim"] == 3 and described["normalizes_observations"] is True
    assert "Box(-2.0, 2.0, (1,)" in described["output"]["action_space"]
    assert [i.name for i in model.graph.input] == ["obs"]
    ts_file = pglab.export(runs["Pendulum-v1"], tmp_path / "p.pt", format="torchscript")
    extra = {"pglab.json": ""}
    torch.jit.load(str(ts_file), _extra_files=extra)
    assert json.loads(extra["pglab.json"]) == described


Box, Discrete = gym.spaces.Box, gym.spaces.Discrete
SPACES = {
    "dict-hwc-image-stack/multidiscrete": (
        lambda: SpacesEnv(
            gym.spaces.Dict({"frames": Box(0, 255, (2, 7, 7, 3), np.uint8), "x": Box(-1, 1, (2,))}),
            gym.spaces.MultiDiscrete([3, 2], start=[1, -1]),
        ),
        {},
    ),
    "large-image/discrete": (  # fed to the convolutions channels last
        lambda: SpacesEnv(Box(0, 255, (40, 36, 3), np.uint8), Discrete(3)),
        {},
    ),
    "discrete-obs/multibinary": (
        lambda: SpacesEnv(Discrete(4, start=1), gym.spaces.MultiBinary(2)),
        {},
    ),
    "box/tanh-gaussian": (
        lambda: SpacesEnv(Box(-1, 1, (3,)), Box(-2.0, 2.0, (2,), np.float32)),
        {"policy": {**TINY["policy"], "head": "tanh_gaussian"}},
    ),
    "box/gsde": (
        lambda: SpacesEnv(Box(-1, 1, (3,)), Box(-2.0, 2.0, (2,), np.float32)),
        {"policy": {**TINY["policy"], "head": "gsde"}},
    ),
    # (env.check off: Gymnasium's env checker steps with random, unmasked actions)
    "mask-in-obs/discrete": (lambda: MaskedEnv(in_obs=True), {"check": False}),
}


@pytest.mark.parametrize("case", list(SPACES))
def test_exported_policies_of_every_space_act_on_the_encoded_observations(case, tmp_path):
    make, options = SPACES[case]
    options = {**TINY, **options}
    run = pglab.train(
        make,
        "ppo",
        seed=1,
        out=str(tmp_path),
        total_steps=128,
        normalize_obs=True,
        max_episode_steps=6,
        **options,
    )
    agent = pglab.load(run.path)
    space = agent.observation_space
    space.seed(0)
    samples = [space.sample() for _ in range(BATCH)]
    batch = gym.vector.utils.concatenate(
        space, samples, gym.vector.utils.create_empty_array(space, BATCH)
    )
    if isinstance(batch, dict) and "action_mask" in batch:
        batch["action_mask"][:, 0] = 1  # at least one legal action
    want = agent.act(batch, deterministic=True)
    encoded = agent.encode.array(batch)  # the input an exported policy takes
    for fmt, act in ACT.items():
        got = act(pglab.export(agent, tmp_path / f"policy.{fmt}", format=fmt), encoded)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_export_of_a_missing_best_checkpoint_says_so_in_one_line(runs, tmp_path, capsys):
    run = shutil.copytree(runs["CartPole-v1"], tmp_path / "run")
    (run / "checkpoints" / "best.pt").unlink(missing_ok=True)
    args = ["export", str(run), "--format", "torchscript", "--checkpoint", "best"]
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert err.startswith("pglab: error:") and err.count("\n") == 1, err
    assert "checkpoints/best.pt" in err and "Traceback" not in err
    assert not list(run.glob("policy*"))
    shutil.copy(run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt")
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert (run / "policy-best.torchscript.pt").is_file()


def test_onnx_export_without_the_onnx_package_names_the_extra(runs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    code, _, err = run_cli(["export", str(runs["CartPole-v1"]), "--format", "onnx"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "pip install 'pglab[export]'" in err


def test_export_never_writes_over_a_checkpoint(runs, tmp_path, capsys):
    run = shutil.copytree(runs["CartPole-v1"], tmp_path / "run")
    folder = run / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for target in (folder / "last.pt", folder / "best.pt", folder):
        args = ["export", str(run), "--format", "torchscript", "--out", str(target)]
        code, _, err = run_cli(args, capsys)
        assert code == 2 and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
