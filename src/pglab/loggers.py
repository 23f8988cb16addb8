"""Where a run's metrics go besides ``metrics.csv`` (``run.loggers``).

Each logger gets the run's config once, as hyperparameters, then every row of
``metrics.csv`` at its step:

- ``tensorboard``: event files in the run folder (``tensorboard --logdir runs``), the
  config in the HPARAMS tab;
- ``wandb``: a Weights & Biases run (``pip install 'pglab[wandb]'``), offline by
  default (``run.wandb_mode``): its files stay in ``<run>/wandb/`` until you
  ``wandb sync`` them (W&B keeps its own debug logs in ``~/.cache/wandb``); the run's id
  follows the folder, so a resumed run continues it; console capture is off;
- ``mlflow``: an MLflow run (``pip install 'pglab[mlflow]'``), in MLflow's file store
  inside the run folder (``<run>/mlruns/``, allowed with ``MLFLOW_ALLOW_FILE_STORE``)
  unless ``run.mlflow_uri`` names another store or a tracking server; a resumed run
  continues its MLflow run (its id is kept in ``<run>/mlflow-run-id``).

Nothing is sent anywhere unless the user asks (``wandb_mode = "online"``, an
``mlflow_uri``); nothing is written outside the run folder otherwise.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, Protocol

#: The file in a run folder that keeps its MLflow run's id (to continue it on resume).
MLFLOW_RUN_FILE = "mlflow-run-id"


class Logger(Protocol):
    """A place metrics go: one row at a time, then closed."""

    def log(self, row: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def flat_config(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"algo.lr": 3e-4, ...}``: each option as a number, bool or string (lists and
    tables as their text), as trackers take hyperparameters."""
    flat = {}
    for section, options in config.items():
        for key, value in options.items():
            plain = isinstance(value, (int, float, bool, str))
            flat[f"{section}.{key}"] = value if plain else str(value)
    return flat


def tag(key: str) -> str:
    """A metric's name in TensorBoard: ``eval/...``, ``charts/...`` or ``train/...``."""
    if key.startswith("eval_"):
        return f"eval/{key[5:]}"
    if key.startswith("episode_") or key in ("steps_per_second", "episodes"):
        return f"charts/{key}"
    return f"train/{key}"


def masked_crc32c(data: bytes) -> int:
    r"""The checksum of a TensorBoard record: CRC-32C (Castagnoli), rotated right by 15
    bits and offset, :math:`((c \gg 15) \mid (c \ll 17)) + \mathtt{0xa282ead8}` mod
    :math:`2^{32}`. ``google-crc32c`` computes the CRC in C; TensorBoard's own is a
    Python loop of about 50 us per row, more than a CartPole update."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventFile:
    """A TensorBoard event file written in this thread, buffered, flushed at most every
    :attr:`FLUSH_SECONDS` and on close. Each record is the TFRecord frame of one
    ``Event``: its length (8 bytes, little-endian), the length's checksum, the event,
    the event's checksum (4 bytes each, :func:`masked_crc32c`)."""

    FLUSH_SECONDS = 5.0
    _count = itertools.count()

    def __init__(self, folder: Path) -> None:
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(self._count)}"
        )
        self._file = open(folder / name, "wb")
        self._flushed = time.monotonic()
        from tensorboard.compat.proto.event_pb2 import Event

        self.write(Event(file_version="brain.Event:2"))

    def write(self, event: Any) -> None:
        """Append ``event`` (stamped with the wall time now)."""
        event.wall_time = time.time()
        data = event.SerializeToString()
        length = struct.pack("<Q", len(data))
        self._file.write(
            length
            + struct.pack("<I", masked_crc32c(length))
            + data
            + struct.pack("<I", masked_crc32c(data))
        )
        if time.monotonic() - self._flushed > self.FLUSH_SECONDS:
            self._file.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    """Event files in the run folder; the config as hyperparameters (HPARAMS tab). A
    resumed run starts a new file that purges the events past its checkpoint's step."""

    def __init__(self, run_dir: Path, hparams: dict[str, Any], resume_step: int | None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from torch.utils.tensorboard.summary import hparams as hparam_summaries

        self._file = EventFile(run_dir)
        if resume_step is None:  # once per run: the events of a resumed run already hold it
            for summary in hparam_summaries(hparams, {"eval/return_mean": math.nan}):
                self._file.write(Event(summary=summary))
        else:  # TensorBoard drops the events at or past a restart's step
            start = SessionLog(status=SessionLog.START)
            self._file.write(Event(step=resume_step, session_log=start))

    def log(self, row: dict[str, float], step: int) -> None:
        # One event per row (not one per scalar).
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag(key), simple_value=value) for key, value in row.items()]
        self._file.write(Event(step=step, summary=Summary(value=values)))

    def close(self) -> None:
        self._file.close()


class WandbLogger:
    """A W&B run whose files live in ``<run>/wandb/``; its id is derived from the run
    folder, so resuming the run continues the same W&B run."""

    def __init__(self, run_dir: Path, hparams: dict[str, Any], project: str, mode: str) -> None:
        import wandb

        identity = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self._run = wandb.init(
            settings=wandb.Settings(console="off", save_code=False, disable_git=True),
            project=project,
            name=run_dir.name,
            id=identity,
            resume="allow",
            dir=str(run_dir),
            mode=mode,
            config=hparams,
            reinit="create_new",  # a population holds several runs at once
        )

    def log(self, row: dict[str, float], step: int) -> None:
        self._run.log(row, step=step)

    def close(self) -> None:
        self._run.finish()


class MlflowLogger:
    """An MLflow run: params from the config, every metric at its step."""

    def __init__(self, run_dir: Path, hparams: dict[str, Any], uri: str) -> None:
        if not uri:  # MLflow's file store, which it now keeps for offline use on request
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=uri)
        kept = run_dir / MLFLOW_RUN_FILE
        if kept.is_file():  # a resumed run continues its MLflow run
            self._id = kept.read_text().strip()
            self._client.update_run(self._id, status="RUNNING")
            return
        name = "pglab"
        experiment = self._client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self._client.create_experiment(name)
        )
        run = self._client.create_run(experiment_id, run_name=run_dir.name)
        self._id = run.info.run_id
        kept.write_text(self._id + "\n")
        from mlflow.entities import Param

        params = [Param(key, str(value)[:500]) for key, value in hparams.items()]
        self._client.log_batch(self._id, params=params)

    def log(self, row: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in row.items()]
        self._client.log_batch(self._id, metrics=metrics)

    def close(self) -> None:
        self._client.set_terminated(self._id)


def open_loggers(
    names: list[str],
    run_dir: Path,
    config: dict[str, dict[str, Any]],
    resume_step: int | None = None,
) -> list[Logger]:
    """The loggers ``names`` (``run.loggers``) of the run in ``run_dir``; ``config`` is
    the run's config as a dict (its ``run`` section holds the W&B and MLflow options)."""
    hparams = flat_config(config)
    run = config["run"]
    loggers: list[Logger] = []
    for name in names:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir, hparams, resume_step))
        elif name == "wandb":
            loggers.append(WandbLogger(run_dir, hparams, run["wandb_project"], run["wandb_mode"]))
        elif name == "mlflow":
            loggers.append(MlflowLogger(run_dir, hparams, run["mlflow_uri"]))
    return loggers
