"""metrics.csv and TensorBoard carry the same scalars, under CleanRL-style tags."""

from __future__ import annotations

import csv

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pglab.logs import MetricsLogger


def test_each_row_reaches_csv_and_tensorboard(tmp_path):
    columns = ["step", "policy_loss", "eval_return_mean", "episode_return_mean", "note"]
    logger = MetricsLogger(tmp_path, columns)
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
