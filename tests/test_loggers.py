"""Metrics and the config reach every logger a run names: TensorBoard (with the config as
hyperparameters), W&B offline and MLflow's store in the run folder."""

import json
import struct

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import pglab
from pglab.errors import ConfigError

TINY = {
    "num_envs": 2,
    "batch_size": 128,
    "total_steps": 512,
    "eval_every": 256,
    "eval_episodes": 2,
    "progress": "off",
    "checkpoint_every": 0,
    "stop_at_return": "none",
    "lr": 0.004,
}


def wandb_records(run_dir):
    """The protobuf records of a W&B offline run file (its log format: 32 KiB blocks of
    chunks, each with a 7-byte header: crc, length, kind)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/*.wandb")
    data, pos, pending, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_holds_the_config_and_every_metric(tmp_path):
    pytest.importorskip("wandb")
    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), loggers=["wandb"], **TINY)
    records = wandb_records(run.path)
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in started.config.update}
    assert config["algo.lr"] == 0.004 and config["env.id"] == "CartPole-v1"
    history = [
        {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    evaluated = [h["eval_return_mean"] for h in history if "eval_return_mean" in h]
    assert evaluated[-1] == run.summary["eval_return_mean"]
    assert len(history) == run.summary["updates"]


def test_mlflow_holds_the_config_and_every_metric_and_a_resume_continues_it(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), loggers=["mlflow"], **TINY)
    run_id = (run.path / "mlflow-run-id").read_text().strip()
    client = MlflowClient(tracking_uri=(run.path / "mlruns").resolve().as_uri())
    assert client.get_run(run_id).data.params["algo.lr"] == "0.004"
    evaluated = client.get_metric_history(run_id, "eval_return_mean")
    assert evaluated[-1].value == run.summary["eval_return_mean"]
    pglab.resume(run.path, total_steps=768)
    history = client.get_metric_history(run_id, "policy_loss")
    assert max(m.step for m in history) >= 768 and client.get_run(run_id).info.status == "FINISHED"


def test_tensorboard_holds_the_config_as_hyperparameters(tmp_path):
    run = pglab.train("CartPole-v1", "ppo", out=str(tmp_path), **TINY)
    events = EventAccumulator(str(run.path))
    events.Reload()
    assert events.PluginTagToContent("hparams")  # the HPARAMS tab's session data
    assert "train/policy_loss" in events.Tags()["scalars"]


def test_a_logger_without_its_package_or_unknown_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'pglab\[wandb\]'"):
        pglab.train("CartPole-v1", "ppo", out=str(tmp_path), loggers=["wandb"], **TINY)
    with pytest.raises(ConfigError, match="run.loggers must be some of"):
        pglab.train("CartPole-v1", "ppo", out=str(tmp_path), loggers=["neptune"], **TINY)
    assert not any(tmp_path.iterdir())  # refused before anything was written
