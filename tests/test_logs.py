"""metrics.csv and TensorBoard carry the same scalars, under CleanRL-style tags."""

from __future__ import annotations

import csv

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pglab.loggers import TensorBoardLogger
from pglab.logs import MetricsLogger


def test_each_row_reaches_csv_and_tensorboard(tmp_path):
    columns = ["step", "policy_loss", "eval_return_mean", "episode_return_mean", "note"]
    logger = MetricsLogger(tmp_path, columns, loggers=[TensorBoardLogger(tmp_path, {}, None)])
    logger.log({"step": 100, "policy_loss": 0.5, "eval_return_mean": 9.0, "note": "x"})
    logger.log({"step": 200, "policy_loss": float("nan"), "episode_return_mean": 3})
    logger.close()

    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [row["step"] for row in rows] == ["100", "200"]
    assert rows[0]["policy_loss"] == "0.5" and rows[1]["episode_return_mean"] == "3"

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
    assert scalars == {  # non-finite values and text are left out of TensorBoard
        "train/policy_loss": [(100, 0.5)],
        "eval/return_mean": [(100, 9.0)],
        "charts/episode_return_mean": [(200, 3.0)],
    }


def test_a_resumed_runs_events_replace_those_past_its_checkpoint(tmp_path):
    first = TensorBoardLogger(tmp_path, {}, None)
    for step in (100, 200, 300):
        first.log({"policy_loss": float(step)}, step)
    first.close()
    resumed = TensorBoardLogger(tmp_path, {}, resume_step=200)
    for step in (200, 300):
        resumed.log({"policy_loss": -float(step)}, step)
    resumed.close()

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/policy_loss")]
    assert logged == [(100, 100.0), (200, -200.0), (300, -300.0)]


def test_event_records_carry_tensorflows_checksums(tmp_path):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import (
        masked_crc32c as reference,
    )

    from pglab.loggers import masked_crc32c

    for data in (b"", b"123456789", bytes(range(256)) * 3):
        assert masked_crc32c(data) == reference(data)


def test_the_bar_keeps_its_counter_and_one_time_left_at_80_columns():
    import io
    import re

    from rich.console import Console

    from pglab.logs import Progress

    screen = io.StringIO()
    console = Console(file=screen, width=80, force_terminal=True, color_system=None)
    bar = Progress("bar", 200_000, "ppo CartPole-v1 x16 with a long title", console=console)
    info = {"return": 123.4, "eval": 456.7, "steps/s": 12_345.6, "solved": "3/16"}
    bar.update(12_345, info, force=True)
    bar.close()
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen.getvalue())  # no cursor codes
    last = [line for line in re.split(r"[\r\n]", shown) if line.strip()][-1]
    assert "12,345/200,000" in last and len(last) <= 80
    assert last.count(":") <= 2  # one time left (h:mm:ss), not two


def test_plain_lines_say_the_unit_and_the_time_left(capsys):
    from pglab.logs import Progress

    lines = Progress("plain", 10, "sweep runs/grid", unit="runs")
    lines._started -= 10.0  # ten seconds ago
    lines.update(4, {"failed": 0}, force=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "sweep runs/grid: 10 runs"
    assert err[1].startswith("runs 4/10  failed 0  eta 15s")


def test_a_long_run_is_told_once_how_long_it_will_take(capsys):
    from pglab.logs import Progress

    long = Progress("plain", 10_000_000, "ppo ALE/Pong-v5")
    long._started -= 10.0  # the first update took ten seconds
    long.update(1024, {}, force=True)
    long.update(2048, {}, force=True)
    err = capsys.readouterr().err
    assert err.count("pglab: note:") == 1
    assert "at 102 steps/s so far, the 10,000,000 steps take about 27.1 h" in err
    short = Progress("plain", 4096, "ppo CartPole-v1")
    short._started -= 1.0
    short.update(1024, {}, force=True)
    assert "note" not in capsys.readouterr().err


def test_durations_read_in_the_unit_that_fits():
    from pglab.logs import duration

    assert [duration(s) for s in (42, 1020, 12240, 190080)] == [
        "42 s", "17 min", "3.4 h", "2.2 days",
    ]  # fmt: skip
