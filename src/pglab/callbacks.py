"""Callbacks: your code after each update and each evaluation of a run.

``pglab.train(..., callbacks=[...])`` takes :class:`Callback` objects or plain
functions. A function is called with every :class:`Event`; a :class:`Callback` has one
method per kind of event (:meth:`Callback.on_update`, :meth:`Callback.on_evaluation`).
An event carries the step, the metrics row just written to ``metrics.csv``, the agent
(acting with the current weights) and the run folder; ``event.stop("why")`` ends the run
cleanly after this update: the last checkpoint and ``summary.json`` are written, with
``stopped = "callback: why"``.

Callbacks never change a run's numbers: they run with the torch random state saved and
restored around them, and with several seeds (a population) each run gets its own copy
of every callback object. Built-ins: :class:`EarlyStopping` (no improvement of the
evaluation mean for a number of evaluations), :class:`CheckpointEvery` (keep a
checkpoint every N steps), :class:`EvaluateEvery` (evaluate on an env of your choice
every N steps, into ``evaluations.csv``).

Example::

    def stop_at_50k(event):
        if event.step >= 50_000:
            event.stop("enough")

    pglab.train("CartPole-v1", "ppo", callbacks=[stop_at_50k, pglab.EarlyStopping(5)])
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pglab.errors import ConfigError

if TYPE_CHECKING:
    from pglab.agent import Agent
    from pglab.config import Config

#: The kinds of event: after each update, after each periodic evaluation.
KINDS: tuple[str, ...] = ("update", "evaluation")


@dataclass
class Event:
    """What a callback is told: one update (``kind = "update"``) or evaluation
    (``"evaluation"``: ``metrics`` then holds ``eval_return_mean`` and its kin) of one run."""

    kind: str
    step: int
    updates: int
    metrics: dict[str, Any]
    agent: Agent
    run_dir: Path
    config: Config
    save: Callable[[Path], None] = field(repr=False)
    stop_reason: str | None = None

    def stop(self, reason: str = "stopped") -> None:
        """End the run after this update (checkpoint and summary written)."""
        self.stop_reason = reason

    def save_checkpoint(self, name: str) -> Path:
        """Write the run's full checkpoint as ``checkpoints/<name>.pt`` (resumable,
        loadable with ``pglab.load``); returns its path."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ConfigError(f"a checkpoint name is a plain file name; got {name!r}")
        path = self.run_dir / "checkpoints" / f"{name}.pt"
        self.save(path)
        return path


class Callback:
    """Base class: override the methods for the events you want."""

    def on_update(self, event: Event) -> None:
        """After every update (the metrics row of the update is written)."""

    def on_evaluation(self, event: Event) -> None:
        """After every periodic evaluation (``event.metrics["eval_return_mean"]``)."""


class EarlyStopping(Callback):
    """Stop when the evaluation mean has not improved by more than ``min_delta`` for
    ``patience`` evaluations in a row.

    The best so far is :math:`b_k = \\max_{j \\le k} \\bar R_j`; evaluation :math:`k`
    improves when :math:`\\bar R_k > b_{k-1} + \\delta`.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"EarlyStopping patience must be an integer >= 1; got {patience!r}")
        self.patience, self.min_delta = patience, float(min_delta)
        self.best = -math.inf
        self.waited = 0

    def on_evaluation(self, event: Event) -> None:
        mean = float(event.metrics["eval_return_mean"])
        if mean > self.best + self.min_delta:
            self.best, self.waited = max(mean, self.best), 0
            return
        self.best = max(mean, self.best)
        self.waited += 1
        if self.waited >= self.patience:
            event.stop(f"no improvement over {self.best:.4g} in {self.patience} evaluations")


class CheckpointEvery(Callback):
    """Keep a checkpoint every ``steps`` steps, as ``checkpoints/step-<N>.pt``."""

    def __init__(self, steps: int) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"CheckpointEvery steps must be an integer >= 1; got {steps!r}")
        self.steps = steps
        self.next = steps

    def on_update(self, event: Event) -> None:
        if event.step >= self.next:
            event.save_checkpoint(f"step-{event.step}")
            self.next = (event.step // self.steps + 1) * self.steps


class EvaluateEvery(Callback):
    """Evaluate every ``steps`` steps on ``env`` (any form :func:`pglab.evaluate` takes;
    default: the run's own env), ``episodes`` episodes from seed ``seed``, appending
    ``step, mean, std, success_rate`` to ``evaluations.csv`` in the run folder (or
    ``file``, a name inside it)."""

    def __init__(
        self,
        steps: int,
        env: Any = None,
        episodes: int = 10,
        seed: int = 10_000,
        deterministic: bool = True,
        file: str = "evaluations.csv",
    ) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"EvaluateEvery steps must be an integer >= 1; got {steps!r}")
        if Path(file).name != file or not file:
            raise ConfigError(f"EvaluateEvery file is a file name in the run folder; got {file!r}")
        self.steps, self.env, self.episodes, self.seed = steps, env, episodes, seed
        self.deterministic, self.file = deterministic, file
        self.next = steps

    def on_update(self, event: Event) -> None:
        from pglab.evaluate import evaluate

        if event.step < self.next:
            return
        self.next = (event.step // self.steps + 1) * self.steps
        result = evaluate(
            event.agent,
            self.env,
            episodes=self.episodes,
            seed=self.seed,
            deterministic=self.deterministic,
        )
        path = event.run_dir / self.file
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "mean", "std", "success_rate"])
            writer.writerow([event.step, result.mean, result.std, result.success_rate])


CallbackLike = Callback | Callable[[Event], Any]


def check_callbacks(callbacks: Sequence[CallbackLike] | None) -> list[CallbackLike]:
    """The callbacks as a list; one line (a :class:`ConfigError`) for anything else."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]  # type: ignore[list-item]
    for callback in callbacks:
        if not (isinstance(callback, Callback) or callable(callback)):
            raise ConfigError(
                f"callbacks are pglab.Callback objects or functions of an event; got {callback!r}"
            )
    return list(callbacks)


def copies(callbacks: Sequence[CallbackLike], members: int) -> list[list[CallbackLike]]:
    """Each member's own callbacks: the objects themselves for one run, deep copies
    for several (so that an early stop's patience counts one run's evaluations)."""
    if members == 1:
        return [list(callbacks)]
    return [[copy.deepcopy(c) for c in callbacks] for _ in range(members)]


def fire(callbacks: Sequence[CallbackLike], event: Event) -> str | None:
    """Call every callback for ``event`` (torch's random state restored after them);
    returns the stop reason when one asked the run to stop."""
    with torch.random.fork_rng(devices=[]):
        for callback in callbacks:
            if isinstance(callback, Callback):
                method = callback.on_update if event.kind == "update" else callback.on_evaluation
                method(event)
            else:
                callback(event)
    return event.stop_reason
