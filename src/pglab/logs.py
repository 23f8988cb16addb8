"""What a run writes while it trains: ``metrics.csv`` (and the same rows to the run's
loggers, see :mod:`pglab.loggers`), and its progress."""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pglab.loggers import Logger
from pglab.paths import no_links_below
from pglab.safety import atomic_write, remove_stale_temps

METRICS_FILE = "metrics.csv"


class MetricsLogger:
    """One row per update to ``metrics.csv``, and its finite numbers to ``loggers``
    (TensorBoard, W&B, MLflow: :func:`pglab.loggers.open_loggers`).

    On resume the CSV keeps only rows up to the checkpoint's step (rows written
    after the last checkpoint by a killed process are dropped, as they will be
    produced again) and TensorBoard purges events past that step. The CSV is never
    rewritten in place: the kept rows replace it atomically.
    """

    def __init__(
        self,
        run_dir: Path,
        columns: list[str],
        resume_step: int | None = None,
        loggers: Sequence[Logger] = (),
    ) -> None:
        self.path = no_links_below(run_dir, run_dir / METRICS_FILE)  # never written through
        self.columns = columns
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        self.loggers = list(loggers)

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
        if self.loggers:
            numbers = {
                key: float(value)
                for key, value in row.items()
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)
            }
            for logger in self.loggers:
                logger.log(numbers, int(row["step"]))

    def close(self) -> None:
        self._file.close()
        for logger in self.loggers:
            logger.close()


#: A run projected to take longer than this many seconds is told how long, once.
LONG_RUN = 600.0


def duration(seconds: float) -> str:
    """``seconds`` for a person: ``42 s``, ``17 min``, ``3.4 h``, ``2.1 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _format(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


class Progress:
    """A progress bar on a terminal, plain lines otherwise (``mode``: auto|bar|plain|off).

    ``total`` counts ``unit`` (steps of a run, runs of a sweep). The bar keeps its counter
    and time left whole at any width (80 columns included): only the title and the info
    text are cut, with an ellipsis. Plain lines (one every 5 seconds at most) carry the
    time left, estimated from the rate since the start.
    """

    def __init__(
        self,
        mode: str,
        total: int,
        title: str,
        start: int = 0,
        *,
        unit: str = "steps",
        console: Any = None,
    ) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode
        self.total = total
        self.unit = unit
        self._start, self._started = start, time.monotonic()
        self._last_line = 0.0
        self._estimated = False
        self._bar = None
        if mode == "bar":
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress
            from rich.table import Column

            def cut(ratio: int) -> Column:
                return Column(no_wrap=True, overflow="ellipsis", ratio=ratio)

            whole = Column(no_wrap=True)
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}", table_column=cut(1)),
                BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=6)),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f}", table_column=whole),
                TextColumn("{task.fields[info]}", table_column=cut(2)),
                TimeRemainingColumn(table_column=whole),
                transient=False,
                expand=True,
                console=console,
            )
            self._task = self._bar.add_task(title, total=total, completed=start, info="")
            self._bar.start()
        elif mode == "plain":
            print(f"{title}: {total:,} {unit}", file=sys.stderr, flush=True)

    def eta(self, done: int) -> float | None:
        """Seconds left at the rate since the start (None before any progress)."""
        elapsed, progressed = time.monotonic() - self._started, done - self._start
        if progressed <= 0 or elapsed <= 0:
            return None
        return max(0, self.total - done) * elapsed / progressed

    def update(self, done: int, info: dict[str, Any], force: bool = False) -> None:
        """Show ``done`` of the total with ``info`` (``None`` values left out); once, as
        soon as the rate is known, say how long a run of more than :data:`LONG_RUN`
        seconds will take at it."""
        if not self._estimated and self.mode != "off" and done > self._start:
            self._estimated = True
            left = self.eta(done)
            if left is not None and left > LONG_RUN:
                rate = (done - self._start) / (time.monotonic() - self._started)
                self.note(
                    f"at {rate:,.0f} {self.unit}/s so far, the {self.total:,} {self.unit} take "
                    f"about {duration(left + time.monotonic() - self._started)} on this machine"
                )
        text = "  ".join(
            f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in info.items()
            if v is not None
        )
        if self._bar is not None:
            self._bar.update(self._task, completed=min(done, self.total), info=text)
        elif self.mode == "plain":
            now = time.monotonic()
            if force or now - self._last_line >= 5.0:
                self._last_line = now
                left = self.eta(done)
                eta = "" if left is None or done >= self.total else f"  eta {left:,.0f}s"
                line = f"{self.unit} {done:,}/{self.total:,}  {text}".rstrip()
                print(line + eta, file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        """One line of information on stderr (above the bar when there is one)."""
        if self._bar is not None:
            self._bar.console.print(f"[cyan]note:[/cyan] {message}", highlight=False)
        else:
            print(f"pglab: note: {message}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        """One warning line on stderr (above the bar when there is one), in every mode."""
        if self._bar is not None:
            self._bar.console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
        else:
            print(f"pglab: warning: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
