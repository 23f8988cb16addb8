"""``run.device``: CPU by default, CUDA when asked for and present, a clear error otherwise."""

import pytest
import torch

import pglab
from pglab.cli import main
from pglab.config import resolve_device
from pglab.errors import ConfigError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cpu_is_the_default(tmp_path):
    run = pglab.train("CartPole-v1", total_steps=300, out=str(tmp_path), progress="off")
    assert run.agent.actor.head.linear.weight.device.type == "cpu"
    assert run.summary["total_steps"] >= 300


def test_a_bad_device_name_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path), "--set", "run.device=gpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "pglab: error: run.device must be cpu, cuda or cuda:N; got 'gpu'"
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_a_gpu_says_so(tmp_path, capsys):
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path), "--set", "run.device=cuda"])
    assert "run.device is 'cuda'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@cuda
@pytest.mark.parametrize("algo", ["reinforce", "a2c", "ppo", "trpo"])
def test_training_on_cuda(algo, tmp_path):
    run = pglab.train(
        "CartPole-v1", algo=algo, total_steps=2000, out=str(tmp_path), progress="off", device="cuda"
    )
    assert run.summary["total_steps"] >= 2000
    agent = pglab.load(run.path)  # checkpoints load on the CPU
    assert agent.actor.head.linear.weight.device.type == "cpu"
    assert run.agent.act([0.0, 0.0, 0.0, 0.0]) in (0, 1)


@cuda
def test_population_on_cuda(tmp_path):
    runs = pglab.train(
        "Pendulum-v1",
        algo="ppo",
        seeds=[0, 1],
        total_steps=4096,
        out=str(tmp_path),
        progress="off",
        device="cuda",
    )
    assert [r.summary["seed"] for r in runs] == [0, 1]
