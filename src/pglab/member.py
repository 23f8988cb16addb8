"""One run's pieces and its folder: :class:`Trainer` builds a run (envs, networks,
collectors, normaliser, its learning rule unless a population gives one), keeps its
counters, evaluates, and writes what a run writes::

    runs/<group>/<name>/
        config.toml       every resolved option
        metrics.csv       one row per update (and the evaluations)
        events.out.*      TensorBoard events
        checkpoints/last.pt   model, optimizers, counters, RNG state
        summary.json      the outcome

The training loop that drives one or many runs is :class:`pglab.population.Population`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pglab.agent import Agent, build_models, build_normalizer
from pglab.algos import chooses_weights
from pglab.callbacks import CallbackLike, Event, fire
from pglab.checkpoint import BEST, CHECKPOINT_DIR, LAST, save_checkpoint
from pglab.config import Config, resolve_device
from pglab.diagnostics import HealthMonitor
from pglab.envs import EnvObject, eval_num_envs, make_configured_env, reward_threshold
from pglab.envs.spaces import space_to_data
from pglab.errors import ConfigError, PglabError
from pglab.evaluate import EvalResult
from pglab.loggers import open_loggers
from pglab.logs import MetricsLogger, Progress
from pglab.nets import has_unkeyed_dropout
from pglab.paths import make_dirs, write_text_atomic
from pglab.pbt import apply_event, read_schedule
from pglab.rollout import Batch, Collector, EpisodeStats

CONFIG_FILE = "config.toml"
SUMMARY_FILE = "summary.json"
#: Written when an environment broke the run: the one-line error, then the details.
ERROR_FILE = "error.txt"
_EVAL_SEED_OFFSET = 1_000_000
_RESUME_SEED_STRIDE = 7919


def all_finite(*tensors: Tensor) -> bool:
    """Whether every value of ``tensors`` is finite. An inf or nan anywhere makes a
    tensor's sum inf or nan, so one sum each answers, without a copy (an Atari batch
    holds 100 MB of observations); a sum that overflowed is checked value by value."""
    if math.isfinite(sum(float(t.sum()) for t in tensors)):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@dataclass
class Run:
    """A finished (or interrupted) run: its folder, its agent and its summary."""

    path: Path
    agent: Agent
    summary: dict[str, Any]


def _auto_num_envs(config: Config) -> int:
    if config.env.num_envs:
        return config.env.num_envs
    if config.algo.batch_mode == "episodes":
        return min(config.algo.batch_size, 32)
    return 8


def run_label(config: Config) -> str:
    """``ppo``, ``a2c``, ``trpo``, or ``reinforce-<weights>`` (a function of the user's
    by its name alone: ``package.module:name`` gives ``reinforce-name``)."""
    algo = config.algo
    if not chooses_weights(algo.name):
        return algo.name
    return f"{algo.name}-{re.split('[:.]', algo.weights)[-1]}"


def new_run_dir(config: Config) -> Path:
    group = Path(config.run.out) / config.run.group
    if config.run.name:
        path = group / config.run.name
        if path.exists():
            raise PglabError(
                f"run folder {str(path)!r} already exists; choose another --name "
                f"or continue it with --resume {path}"
            )
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = f"{run_label(config)}-seed{config.run.seed}-{stamp}"
        path, n = group / base, 1
        while path.exists():
            n += 1
            path = group / f"{base}-{n}"
    make_dirs(path, config.run.out)  # no write outside run.out, nor through a link
    return path


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag, checked between updates and before
    every step of a training batch; a second one stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _own_tensors(module: torch.nn.Module) -> dict[str, Tensor]:
    """``module``'s state dict with tensors of their own: its parameters are views of
    a larger vector (an optimizer's, or a population's stack), which ``torch.save``
    would write whole into every checkpoint."""
    return {key: value.clone() for key, value in module.state_dict().items()}


class Trainer:
    """One run: builds everything it needs (no files yet), counts, evaluates and
    records into its run folder. Its learning rule is attached by the loop that
    trains it (:meth:`attach`): its own, or a population's shared stacked rule."""

    def __init__(
        self,
        config: Config,
        state: dict[str, Any] | None = None,
        given: EnvObject | None = None,
    ) -> None:
        """``given``: the env when it was passed as a Python object (see
        :mod:`pglab.envs.objects`; its config's ``env.object`` says so)."""
        self.config = config
        cfg = config
        torch.set_num_threads(cfg.run.threads)
        torch.manual_seed(cfg.run.seed)
        counters = (state or {}).get("counters", {})
        self.steps = int(counters.get("steps", 0))
        self.env_steps = self.env_steps_before = int(counters.get("env_steps", 0))
        self.updates = int(counters.get("updates", 0))
        self.episodes = int(counters.get("episodes", 0))
        self.wall_before = float(counters.get("wall_seconds", 0.0))
        self.solved_at_step = counters.get("solved_at_step")
        self.last_eval: dict[str, Any] | None = counters.get("last_eval")
        #: The evaluation with the highest mean so far (``checkpoints/best.pt`` holds it).
        self.best_eval: dict[str, Any] | None = counters.get("best_eval")
        #: The step of the last hyperparameter-schedule event applied (see :mod:`pglab.pbt`).
        self.schedule_step = int(counters.get("schedule_step", 0))

        seed_shift = _RESUME_SEED_STRIDE * self.updates
        env = cfg.env
        self.envs = make_configured_env(env, _auto_num_envs(cfg), given)
        eval_envs = eval_num_envs(cfg.run.eval_episodes, env.eval_num_envs)
        self.eval_envs = make_configured_env(env, eval_envs, given, evaluation=True)
        obs_space = self.envs.single_observation_space
        action_space = self.envs.single_action_space
        self.device = resolve_device(cfg.run.device)
        self.actor, self.critic = build_models(cfg, obs_space, action_space)
        self.actor.to(self.device)
        if self.critic is not None:
            self.critic.to(self.device)
        self.normalizer = build_normalizer(cfg, obs_space, action_space, self.envs.num_envs)
        if state is not None:
            self.actor.load_state_dict(state["actor"])
            if self.critic is not None:
                self.critic.load_state_dict(state["critic"])
            if self.normalizer is not None:
                self.normalizer.load_state_dict(state["normalizer"])
            torch.set_rng_state(state["rng"]["torch"])
        self.collector = Collector(
            self.envs,
            self.actor,
            self.critic,
            seed=cfg.run.seed + seed_shift,
            normalizer=self.normalizer,
        )
        self.evaluator = Collector(
            self.eval_envs,
            self.actor,
            seed=cfg.run.seed + _EVAL_SEED_OFFSET + seed_shift,
            normalizer=self.normalizer,
            update_normalizer=False,
        )
        self.agent = Agent(self.actor, obs_space, action_space, cfg, self.normalizer)
        self.monitor = HealthMonitor(cfg.algo.target_kl, cfg.algo.max_grad_norm)
        stop = cfg.run.stop_at_return
        self.stop_at = None if stop == "none" else float(stop)
        self.target = self.stop_at if self.stop_at is not None else reward_threshold(cfg.env.id)
        self.recent_returns: collections.deque[float] = collections.deque(maxlen=100)
        self._saved_rule_state = None if state is None else state["algo"]
        #: The learning rule (see :meth:`attach`) and this run's member index in it.
        self.algo: Any = None
        self.member = 0
        #: Put before warnings (a population names the member).
        self.warn_prefix = ""
        #: This run's callbacks (see :mod:`pglab.callbacks`) and why one stopped it.
        self.callbacks: list[CallbackLike] = []
        self.stop_reason: str | None = None

    def attach(self, rule: Any, member: int = 0) -> None:
        """Train with ``rule`` (a learning rule of :mod:`pglab.algos`), as its member
        ``member``; a resumed run's saved state goes into it."""
        self.algo, self.member = rule, member
        if self._saved_rule_state is not None:
            rule.load_state_dict(self._saved_rule_state, member)
            self._saved_rule_state = None
        self._schedule: list[dict[str, Any]] = []
        if self.config.run.schedule:
            self._follow(Path(self.config.run.schedule))

    # ------------------------------------------------------------------ hyperparameters

    def hyperparameters(self, keys: Sequence[str]) -> dict[str, Any]:
        """The run's current values of these ``algo`` options."""
        return {key: getattr(self.config.algo, key) for key in keys}

    def set_hyperparameters(self, values: dict[str, Any]) -> None:
        """Train on with new values of ``algo`` options that population members may
        differ in (:data:`pglab.population.VARYING`), from the next update."""
        try:
            algo = dataclasses.replace(self.config.algo, **values)
        except (TypeError, ConfigError) as error:
            raise ConfigError(f"hyperparameters {values}: {error}") from None
        self.config = dataclasses.replace(self.config, algo=algo)
        self.algo.configs[self.member] = algo  # a stacking rule reads them at every update
        if self.normalizer is not None:
            self.normalizer.gamma = algo.gamma

    def adopt(self, state: dict[str, Any]) -> None:
        """Continue from another run's weights, optimizer state and normalisation
        statistics (``state`` as :func:`pglab.pbt.donor_state` gives them), keeping this
        run's envs, episodes (the discounted returns of its envs' episodes in progress
        among them), counters and random streams."""
        self.actor.load_state_dict(state["actor"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
        self.algo.load_state_dict(state["algo"], self.member)
        if self.normalizer is not None:
            own = self.normalizer.state_dict()["returns"]
            self.normalizer.load_state_dict({**state["normalizer"], "returns": own})

    def _follow(self, path: Path) -> None:
        """Replay a hyperparameter schedule (``run.schedule``): its starting values now
        (a new run), its events at their steps (:meth:`log_update`)."""
        if not hasattr(self.algo, "configs"):
            raise ConfigError(
                "run.schedule needs a rule whose members train as one population "
                f"(a2c, ppo, reinforce); got {self.config.algo.name}"
            )
        schedule = read_schedule(path)
        self._schedule_dir = path.parent
        if self.steps == 0:
            self.set_hyperparameters(schedule.start)
        self._schedule = [e for e in schedule.events if int(e["step"]) > self.schedule_step]

    # ------------------------------------------------------------------ pieces

    @property
    def steps_per_env(self) -> int:
        """Steps each env takes for a batch of ``batch_size`` steps (``batch_mode`` steps)."""
        return max(1, -(-self.config.algo.batch_size // self.envs.num_envs))

    def collect(self) -> Batch:
        algo = self.config.algo
        if algo.batch_mode == "episodes":
            return self.collector.collect_episodes(algo.batch_size)
        return self.collector.collect_steps(self.steps_per_env)

    def evaluate(self, played: EpisodeStats | None = None) -> EvalResult:
        """Evaluate the actor (``run.eval_episodes`` episodes), or take the episodes
        already ``played`` by :attr:`evaluator` for this evaluation."""
        run = self.config.run
        if played is None:
            played = self.evaluator.run_episodes(run.eval_episodes, run.eval_deterministic)
        result = EvalResult.from_stats(played)
        self.last_eval = {
            "step": self.steps,
            "mean": result.mean,
            "std": result.std,
            "success_rate": result.success_rate,
        }
        if self.target is not None and self.solved_at_step is None and result.mean >= self.target:
            self.solved_at_step = self.steps
        return result

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self._start

    def learned(self) -> dict[str, Any]:
        """What the run has learned: weights, the rule's state (optimizer moments and step
        counts, minibatch sampler) and normalisation statistics (copies)."""
        return {
            "actor": _own_tensors(self.actor),
            "critic": _own_tensors(self.critic) if self.critic is not None else {},
            "algo": self.algo.state_dict(self.member),
            "normalizer": self.normalizer.state_dict() if self.normalizer is not None else {},
        }

    def state(self) -> dict[str, Any]:
        """The checkpoint: :meth:`learned`, the config, spaces, counters and torch's random state."""
        return {
            "config": self.config.to_dict(),
            "spaces": {
                "observation": space_to_data(self.envs.single_observation_space),
                "action": space_to_data(self.envs.single_action_space),
            },
            **self.learned(),
            "counters": {
                "steps": self.steps,
                "env_steps": self.env_steps,
                "updates": self.updates,
                "episodes": self.episodes,
                "wall_seconds": self.wall_seconds(),
                "solved_at_step": self.solved_at_step,
                "last_eval": self.last_eval,
                "best_eval": self.best_eval,
                "schedule_step": self.schedule_step,
            },
            "rng": {"torch": torch.get_rng_state()},
        }

    def save(self, run_dir: Path) -> None:
        save_checkpoint(run_dir / CHECKPOINT_DIR / LAST, self.state())

    def _keep_if_best(self) -> None:
        """After an evaluation: when its mean beats every earlier one, remember it and
        write ``checkpoints/best.pt`` (the weights that scored it)."""
        last = self.last_eval
        if last is None or (self.best_eval is not None and last["mean"] <= self.best_eval["mean"]):
            return
        self.best_eval = dict(last)
        save_checkpoint(self.run_dir / CHECKPOINT_DIR / BEST, self.state())

    def summary(self, stopped: str) -> dict[str, Any]:
        cfg = self.config
        last = self.last_eval or {}
        return {
            "env": cfg.env.id,
            "algo": cfg.algo.name,
            "weights": cfg.algo.weights,
            "preset": cfg.run.preset,
            "seed": cfg.run.seed,
            "total_steps": self.steps,
            "budget_steps": cfg.run.total_steps,
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episodes": self.episodes,
            "wall_seconds": round(self.wall_seconds(), 3),
            "eval_return_mean": last.get("mean"),
            "eval_return_std": last.get("std"),
            "eval_success_rate": last.get("success_rate"),
            "eval_step": last.get("step"),
            "best_eval_return_mean": (self.best_eval or {}).get("mean"),
            "best_eval_step": (self.best_eval or {}).get("step"),
            "solved_at_step": self.solved_at_step,
            "solved_threshold": self.target,
            "stopped": stopped,
            "warnings": sorted(self.monitor.reported),
            "paths": self.paths(),
        }

    def paths(self) -> dict[str, str]:
        """Which implementation runs each part of this run: acting (``numpy`` mirror or
        ``torch``) and the loss's gradient (``written`` out or ``autograd``)."""
        paths = {"acting": "numpy" if self.collector.acts_in_numpy else "torch"}
        gradient = getattr(self.algo, "gradient_path", None)
        if gradient is not None:
            paths["gradient"] = gradient
        return paths

    # ------------------------------------------------------------------ loop

    def finished(self) -> bool:
        solved = (
            self.stop_at is not None
            and self.last_eval is not None
            and (self.last_eval["mean"] >= self.stop_at)
        )
        return self.budget_spent() or solved or self.stop_reason is not None

    def budget_spent(self) -> bool:
        """``run.total_steps`` steps or ``run.total_updates`` updates (when set) are done."""
        run = self.config.run
        return self.steps >= run.total_steps or 0 < run.total_updates <= self.updates

    def open(self, run_dir: Path, resumed: bool = False, progress: str | None = None) -> None:
        """Start the clock, the metrics files and the progress display of a run in ``run_dir``."""
        cfg = self.config.run
        self.run_dir = run_dir
        columns = [
            "step",
            "env_steps",
            "updates",
            "episodes",
            "wall_seconds",
            "steps_per_second",
            "episode_return_mean",
            "episode_length_mean",
            "episode_success_rate",
            *self.algo.METRICS,
            "eval_return_mean",
            "eval_return_std",
            "eval_success_rate",
        ]
        self._start = time.perf_counter()
        resume_step = self.steps if resumed else None
        loggers = open_loggers(cfg.loggers, run_dir, self.config.to_dict(), resume_step)
        self.logger = MetricsLogger(run_dir, columns, resume_step, loggers)
        title = f"{run_label(self.config)} {self.config.env.id}"
        self.progress = Progress(progress or cfg.progress, cfg.total_steps, title, start=self.steps)
        if has_unkeyed_dropout(self.actor):
            self.progress.warn(
                f"{self.warn_prefix}the actor holds torch's own dropout, which acts without "
                "masks while collecting and draws fresh ones in the update (a biased "
                "gradient); use pglab.nets.KeyedDropout in a network of your own"
            )
        self._next_eval = self._next_multiple(cfg.eval_every)
        self._next_checkpoint = self._next_multiple(cfg.checkpoint_every)

    def count(self, batch: Batch) -> None:
        """Add ``batch``'s steps, episodes and update to the counters."""
        self.steps += batch.num_steps
        self.env_steps = self.env_steps_before + self.collector.env_steps
        self.updates += 1
        self.episodes += len(batch.episodes.returns)
        self.recent_returns.extend(batch.episodes.returns)

    def evaluation_due(self) -> bool:
        """Whether the update just counted evaluates: every ``run.eval_every`` steps,
        and always the last update."""
        every = self.config.run.eval_every
        return bool(every and self.steps >= self._next_eval) or self.budget_spent()

    def log_update(
        self,
        batch: Batch,
        metrics: dict[str, float],
        seconds: float,
        played: EpisodeStats | None = None,
    ) -> None:
        """Log the row of the update just counted, evaluating (or taking the episodes
        already ``played`` for it) and checkpointing when due."""
        cfg = self.config.run
        row = self._row(batch, metrics)
        evaluated = self.evaluation_due()
        if evaluated:
            row.update(self._eval_row(played))
            self._keep_if_best()
            self._next_eval = self._next_multiple(cfg.eval_every)
        row["steps_per_second"] = batch.num_steps / max(seconds, 1e-9)
        row["wall_seconds"] = self.wall_seconds()
        self.logger.log(row)
        for warning in self.monitor.check(self._health(batch, metrics), self.steps):
            self.progress.warn(self.warn_prefix + warning)
        if cfg.checkpoint_every and self.steps >= self._next_checkpoint:
            self.save(self.run_dir)
            if cfg.keep_checkpoints:
                save_checkpoint(
                    self.run_dir / CHECKPOINT_DIR / f"step-{self.steps}.pt", self.state()
                )
            self._next_checkpoint = self._next_multiple(cfg.checkpoint_every)
        if self.callbacks:
            for kind in ("update", "evaluation") if evaluated else ("update",):
                self._call_back(kind, row)
        while self._schedule and int(self._schedule[0]["step"]) <= self.steps:
            event = self._schedule.pop(0)
            apply_event(self, event, self._schedule_dir)
            self.schedule_step = int(event["step"])  # a resumed replay skips it
        self.progress.update(self.steps, self._progress_info(row))

    def _call_back(self, kind: str, row: dict[str, Any]) -> None:
        """Tell the callbacks of this ``kind`` of event; one may stop the run."""
        event = Event(
            kind=kind,
            step=self.steps,
            updates=self.updates,
            metrics=dict(row),
            agent=self.agent,
            run_dir=self.run_dir,
            config=self.config,
            save=lambda path: save_checkpoint(path, self.state()),
        )
        reason = fire(self.callbacks, event)
        if reason is not None and self.stop_reason is None:
            self.stop_reason = reason

    def close_logs(self) -> None:
        """Flush and close the metrics files, the progress display and the envs."""
        self.progress.update(self.steps, self._progress_info({}), force=True)
        self.progress.close()
        self.logger.close()
        self.envs.close()
        self.eval_envs.close()

    def close(self, stopped: str) -> Run:
        """Checkpoint and write ``summary.json``; ``stopped`` is ``budget`` or
        ``interrupted`` (a budget run that reached ``stop_at_return`` becomes ``solved``,
        one a callback stopped ``callback: <its reason>``)."""
        if stopped != "interrupted" and self.stop_reason is not None:
            stopped = f"callback: {self.stop_reason}"
        elif stopped != "interrupted" and self.stop_at is not None:
            stopped = "solved" if self.last_eval["mean"] >= self.stop_at else "budget"
        self.save(self.run_dir)
        summary = self.summary(stopped)
        write_text_atomic(
            self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n", self.run_dir
        )
        return Run(self.run_dir, self.agent, summary)

    def _health(self, batch: Batch, metrics: dict[str, float]) -> dict[str, float]:
        """The update's metrics, plus a check that the batch itself is finite."""
        finite = all_finite(batch.rewards, batch.obs)
        return {**metrics, "batch_values": 0.0 if finite else math.nan}

    def _next_multiple(self, every: int) -> int:
        return (self.steps // every + 1) * every if every else 0

    def _row(self, batch: Batch, metrics: dict[str, float]) -> dict[str, Any]:
        episodes = batch.episodes
        return {
            "step": self.steps,
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episodes": self.episodes,
            "episode_return_mean": float(np.mean(episodes.returns)) if episodes.returns else None,
            "episode_length_mean": float(np.mean(episodes.lengths)) if episodes.lengths else None,
            "episode_success_rate": float(np.mean(episodes.successes))
            if episodes.successes
            else None,
            **metrics,
        }

    def _eval_row(self, played: EpisodeStats | None = None) -> dict[str, Any]:
        result = self.evaluate(played)
        return {
            "eval_return_mean": result.mean,
            "eval_return_std": result.std,
            "eval_success_rate": result.success_rate,
        }

    def _progress_info(self, row: dict[str, Any]) -> dict[str, Any]:
        recent = float(np.mean(self.recent_returns)) if self.recent_returns else None
        sps = row.get("steps_per_second")
        return {
            "return": recent,
            "eval": None if self.last_eval is None else float(self.last_eval["mean"]),
            "steps/s": None if sps is None else float(sps),
        }
