"""What a run writes while it trains: ``metrics.csv``, TensorBoard events, progress."""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

from pglab.paths import no_links_below
from pglab.safety import atomic_write, remove_stale_temps

METRICS_FILE = "metrics.csv"


def _tag(key: str) -> str:
    if key.startswith("eval_"):
        return f"eval/{key[5:]}"
    if key.startswith("episode_") or key in ("steps_per_second", "episodes"):
        return f"charts/{key}"
    return f"train/{key}"


class MetricsLogger:
    """One row per update to ``metrics.csv`` and the same scalars to TensorBoard.

    On resume the CSV keeps only rows up to the checkpoint's step (rows written
    after the last checkpoint by a killed process are dropped, as they will be
    produced again) and TensorBoard purges events past that step. The CSV is never
    rewritten in place: the kept rows replace it atomically.
    """

    def __init__(self, run_dir: Path, columns: list[str], resume_step: int | None = None) -> None:
        self.path = no_links_below(run_dir, run_dir / METRICS_FILE)  # never written through
        self.columns = columns
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Keep the rows up to ``step``: the kept rows go to a new file that replaces
        the old one whole (:func:`~pglab.safety.atomic_write`), so a kill at any moment
        leaves every row of the old file or the kept ones, never fewer."""
        remove_stale_temps(self.path.parent, METRICS_FILE)
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        kept = [  # a row cut short by a kill has missing fields (None): dropped
            row
            for row in rows
            if None not in row.values() and row.get("step") and int(row["step"]) <= step
        ]
        with atomic_write(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)

    def log(self, row: dict[str, Any]) -> None:
        self._csv.writerow({k: _format(v) for k, v in row.items()})
        self._file.flush()
        # One event per row: SummaryWriter.add_scalar builds and queues an event per
        # scalar, which costs more than the update itself on small problems.
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [
            Summary.Value(tag=_tag(key), simple_value=value)
            for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)
        ]
        self._tb._get_file_writer().add_summary(Summary(value=values), int(row["step"]))

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def _format(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


class Progress:
    """A progress bar on a terminal, plain lines otherwise (``mode``: auto|bar|plain|off)."""

    def __init__(self, mode: str, total: int, title: str, start: int = 0) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.total = total
        self._last_line = 0.0
        self._bar = None
        if mode == "bar":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task(title, total=total, completed=start, info="")
            self._bar.start()
        elif mode == "plain":
            print(f"{title}: training for {total:,} steps", file=sys.stderr, flush=True)

    def update(self, step: int, info: dict[str, float | None], force: bool = False) -> None:
        text = "  ".join(
            f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in info.items()
            if v is not None
        )
        if self._bar is not None:
            self._bar.update(self._task, completed=min(step, self.total), info=text)
        elif self.mode == "plain":
            now = time.monotonic()
            if force or now - self._last_line >= 5.0:
                self._last_line = now
                print(f"step {step:,}/{self.total:,}  {text}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """One warning line on stderr (above the bar when there is one), in every mode."""
        if self._bar is not None:
            self._bar.console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
        else:
            print(f"pglab: warning: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
