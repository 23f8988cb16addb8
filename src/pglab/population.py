r"""The training loop, for one run or a population of runs in one process.

A population is M >= 1 members that share everything that fixes a tensor's shape
(env, networks, batch, number of envs) and may differ in their seed and in the
hyperparameters listed in :data:`VARYING`. A single run is a population of one: the
same loop, the same collection, the same update. Each member keeps its own envs, its
own normaliser, its own random streams and its own run folder, written exactly as a
run alone writes it, and every computation reduces per member, so a member's run is
bit for bit the same in a population of any size, in any ``--jobs`` process, or alone.

One iteration:

1. every member still training collects a batch with its own actor, envs and random
   streams; where the actors act in numpy (:attr:`~pglab.rollout.Collector.acts_in_numpy`)
   the members step in lockstep (:func:`~pglab.lockstep.collect_steps_together`: one
   call acts for all, envs that declare a joint step take it, and a stacking rule
   scores every batch in one call over its stack);
2. the update: a stacking rule (A2C, PPO: :class:`~pglab.algos.base.JointOptimizer`)
   updates every member in one schedule over their stacked parameters; other rules
   update each member with its own rule, under its own random stream;
3. the members whose evaluation is due play their episodes, in lockstep as in 1;
4. each member logs its row and checkpoints when due.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pglab.agent import Agent
from pglab.algos import make_algo, make_stacked, stacks
from pglab.callbacks import CallbackLike, copies
from pglab.checkpoint import CHECKPOINT_DIR, LAST, load_checkpoint
from pglab.config import Config
from pglab.envs import EnvObject, reward_threshold, validate_env_id
from pglab.errors import ConfigError, EnvFaultError, Interrupted, PglabError
from pglab.lockstep import collect_steps_together, run_episodes_together
from pglab.logs import Progress
from pglab.member import CONFIG_FILE, ERROR_FILE, Run, StopRequest, Trainer, new_run_dir, run_label
from pglab.paths import write_text_atomic
from pglab.rollout import Batch, CollectionStopped, EpisodeStats
from pglab.safety import die_with_parent, hold_lock

#: Options whose values may differ between the members of one population.
VARYING = (
    "run.seed",
    "run.name",
    "algo.lr",
    "algo.entropy_coef",
    "algo.vf_coef",
    "algo.gamma",
    "algo.lam",
    "algo.clip_range",
)


def check_population(configs: Sequence[Config]) -> None:
    """Raise :class:`ConfigError` unless ``configs`` can train as one population."""
    if not configs:
        raise ConfigError("a population needs at least one member; got none")
    first = _flat(configs[0])
    for config in configs[1:]:
        for key, value in _flat(config).items():
            if key not in VARYING and value != first[key]:
                raise ConfigError(
                    f"population members may differ only in {', '.join(VARYING)}; "
                    f"they differ in {key} ({first[key]!r} vs {value!r})"
                )


def _flat(config: Config) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, values in config.to_dict().items()
        for key, value in values.items()
    }


class Population:
    """Trains the members described by ``configs`` together (see the module's text);
    ``states`` are checkpoints to continue from (one per member, or None)."""

    def __init__(
        self,
        configs: Sequence[Config],
        states: Sequence[dict[str, Any] | None] | None = None,
        given: EnvObject | None = None,
        callbacks: Sequence[CallbackLike] = (),
        scheduler: Any = None,
    ) -> None:
        """``given``: the members' env when it was passed as a Python object;
        ``callbacks``: every member's (each its own copies, see :mod:`pglab.callbacks`);
        ``scheduler``: an object whose ``begin(population)`` is called once the run
        folders are open and ``after_iteration(population, live)`` after every
        iteration's logs (:class:`pglab.pbt.PBT`)."""
        check_population(configs)
        self.configs = list(configs)
        self.trainers: list[Trainer] = []
        self._rng: list[Tensor] = []
        for config, state in zip(self.configs, states or [None] * len(self.configs)):
            trainer = Trainer(config, state, given)  # seeds torch with its seed, then builds
            self.trainers.append(trainer)
            self._rng.append(torch.get_rng_state())
        algo = self.configs[0].algo
        #: The stacked rule of every member (None where the rule does not stack).
        self.rule = None
        if stacks(algo.name):
            self.rule = make_stacked(
                [c.algo for c in self.configs],
                [t.actor for t in self.trainers],
                [t.critic for t in self.trainers],
                [c.run.seed for c in self.configs],
            )
            for m, trainer in enumerate(self.trainers):
                trainer.attach(self.rule, m)
        else:
            for trainer in self.trainers:
                trainer.attach(make_algo(trainer.config.algo, trainer.actor, trainer.critic))
        for trainer, own in zip(self.trainers, copies(callbacks, len(self.trainers))):
            trainer.callbacks = own
        self.scheduler = scheduler

    @contextlib.contextmanager
    def member_rng(self, member: int) -> Iterator[None]:
        """Run with the member's own torch random stream."""
        torch.set_rng_state(self._rng[member])
        try:
            yield
        finally:
            self._rng[member] = torch.get_rng_state()

    # ------------------------------------------------------------------ collect

    def collect(self, members: list[int]) -> list[Batch]:
        """The members' batches: in lockstep (:func:`~pglab.lockstep.collect_steps_together`)
        where their actors act in numpy and a batch is a number of steps, else one
        member after another; either way each batch is the member's own."""
        trainers = [self.trainers[m] for m in members]
        collectors = [t.collector for t in trainers]
        steps = trainers[0].config.algo.batch_mode == "steps"
        if steps and all(c.acts_in_numpy for c in collectors):
            scorer = None  # each collector scores its own batch, unless written-out nets do
            if self.rule is not None and self.rule.dense is not None:
                scorer = functools.partial(self.rule.score, members)
            if len(collectors) == 1:  # alone, its own loop draws the same (tested), faster
                return [collectors[0].collect_steps(trainers[0].steps_per_env, scorer=scorer)]
            return collect_steps_together(collectors, trainers[0].steps_per_env, scorer)
        batches = []
        for m, trainer in zip(members, trainers):
            with self.member_rng(m):
                batches.append(trainer.collect())
        return batches

    def evaluate(self, members: list[int]) -> dict[int, EpisodeStats]:
        """The evaluation episodes of ``members`` (whose evaluations are due), played in
        lockstep where their actors act in numpy; members that cannot are left to
        evaluate on their own (absent from the result)."""
        evaluators = [self.trainers[m].evaluator for m in members]
        if len(members) < 2 or not all(e.acts_in_numpy for e in evaluators):
            return {}  # one member plays alone (the same episodes, tested)
        run = self.configs[0].run
        played = run_episodes_together(evaluators, run.eval_episodes, run.eval_deterministic)
        return dict(zip(members, played))

    # ------------------------------------------------------------------ update

    def update(self, members: list[int], batches: list[Batch]) -> list[dict[str, float]]:
        """One update of ``members`` on their ``batches``; returns each member's metrics."""
        trainers = [self.trainers[m] for m in members]
        progress = [t.steps / t.config.run.total_steps for t in trainers]
        if self.rule is not None:
            return self.rule.update_members(members, batches, progress)
        metrics = []
        for m, trainer, batch, done in zip(members, trainers, batches, progress):
            with self.member_rng(m):
                metrics.append(trainer.algo.update(batch, done))
        return metrics

    # ------------------------------------------------------------------ loop

    def train(
        self, progress: str | None = None, run_dirs: Sequence[Path] | None = None
    ) -> list[Run]:
        """Train every member to its own end (budget or solved), each into its own run
        folder: new ones, or ``run_dirs`` to continue (resumed members).

        One progress display (``progress``, by default the members' ``run.progress``):
        a run's own, or one for the whole population whose health warnings name their
        member's folder. A stop request (Ctrl-C, SIGTERM) ends the current iteration,
        checkpoints every member and raises :class:`~pglab.errors.Interrupted`.
        """
        with contextlib.ExitStack() as locks:  # one writer per run folder
            return self._train(progress, run_dirs, locks)

    def _train(
        self,
        progress: str | None,
        run_dirs: Sequence[Path] | None,
        locks: contextlib.ExitStack,
    ) -> list[Run]:
        alone = len(self.trainers) == 1
        for m, trainer in enumerate(self.trainers):
            if run_dirs is None:
                run_dir = new_run_dir(trainer.config)
                locks.enter_context(hold_lock(run_dir, "run folder"))
                (run_dir / CONFIG_FILE).write_text(trainer.config.to_toml())
            else:
                run_dir = Path(run_dirs[m])
                locks.enter_context(hold_lock(run_dir, "run folder"))
                _record_config(run_dir, trainer.config)  # an extended budget
            trainer.open(run_dir, run_dirs is not None, progress if alone else "off")
            if not alone:
                trainer.warn_prefix = f"{run_dir.name}: "
        display = None if alone else self._display(progress)
        if self.scheduler is not None:
            self.scheduler.begin(self)
        stopped = "budget"
        try:
            with StopRequest() as stop:
                for trainer in self.trainers:  # a stop is honoured within a step
                    trainer.collector.stop = lambda: stop.requested
                while live := [m for m, t in enumerate(self.trainers) if not t.finished()]:
                    tick = time.perf_counter()
                    try:
                        batches = self.collect(live)
                    except CollectionStopped:  # the batch is dropped: the last update stays
                        stopped = "interrupted"
                        break
                    metrics = self.update(live, batches)
                    seconds = time.perf_counter() - tick
                    for m, batch in zip(live, batches):
                        self.trainers[m].count(batch)
                    played = self.evaluate([m for m in live if self.trainers[m].evaluation_due()])
                    for m, batch, row in zip(live, batches, metrics):
                        with self.member_rng(m):
                            self.trainers[m].log_update(batch, row, seconds, played.get(m))
                    if self.scheduler is not None:
                        self.scheduler.after_iteration(self, live)
                    if display is not None:
                        display.update(sum(t.steps for t in self.trainers), self._info())
                    if stop.requested:
                        stopped = "interrupted"
                        break
        except EnvFaultError as fault:  # the last good checkpoint stays; the story is kept
            for trainer in self.trainers:
                if not trainer.finished():
                    text = f"{fault}\n\n{fault.details}".rstrip() + "\n"
                    write_text_atomic(trainer.run_dir / ERROR_FILE, text, trainer.run_dir)
            raise
        finally:
            if display is not None:
                display.update(sum(t.steps for t in self.trainers), self._info(), force=True)
                display.close()
            for trainer in self.trainers:
                trainer.close_logs()
        runs = []
        for m, trainer in enumerate(self.trainers):
            with self.member_rng(m):
                runs.append(trainer.close(stopped))
        if stopped == "interrupted":
            raise Interrupted([str(t.run_dir) for t in self.trainers])
        return runs

    def _display(self, progress: str | None) -> Progress:
        first = self.configs[0]
        total = sum(c.run.total_steps for c in self.configs)
        title = f"{run_label(first)} {first.env.id} x{len(self.trainers)}"
        return Progress(progress or first.run.progress, total, title)

    def _info(self) -> dict[str, Any]:
        solved = sum(t.solved_at_step is not None for t in self.trainers)
        evals = [t.last_eval["mean"] for t in self.trainers if t.last_eval is not None]
        return {
            "solved": f"{solved}/{len(self.trainers)}",
            "eval median": float(torch.tensor(evals).median()) if evals else None,
        }


def _record_config(run_dir: Path, config: Config) -> None:
    """Rewrite the run folder's ``config.toml`` when the config trained differs."""
    path = run_dir / CONFIG_FILE
    text = config.to_toml()
    if not path.is_file() or path.read_text() != text:
        write_text_atomic(path, text, run_dir)


def train(
    config: Config, given: EnvObject | None = None, callbacks: Sequence[CallbackLike] = ()
) -> Run:
    """Train a new run described by ``config`` (``auto`` options are resolved here):
    a population of one. ``given``: its env, when that was a Python object;
    ``callbacks``: see :mod:`pglab.callbacks`."""
    return train_many([config], given=given, callbacks=callbacks)[0]


def resume(
    run_dir: str | Path,
    allow_import: Iterable[str] = (),
    on_start: Callable[[], None] | None = None,
    given: EnvObject | None = None,
    callbacks: Sequence[CallbackLike] = (),
    total_steps: int | None = None,
) -> Run:
    """Continue the run in ``run_dir`` from its last checkpoint, in the same folder
    (``allow_import``: the modules its env id may import, as for :func:`pglab.load`;
    ``on_start`` is called once the checkpoint has passed its checks, before training;
    ``given``: the env, for a run whose env was a Python object).

    ``total_steps`` extends the run's budget (a finished run trains on; one that had
    stopped at ``run.stop_at_return`` no longer stops there); ``config.toml`` and the
    checkpoint then record the new budget, and ``metrics.csv`` continues.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PglabError(f"--resume expects a run folder; {str(run_dir)!r} is not a folder")
    state = load_checkpoint(run_dir)
    source = f"{run_dir}/{CHECKPOINT_DIR}/{LAST}"  # checked: config, env import, weights
    config = Agent.from_checkpoint(state, source, allow_import).config
    steps = int(state.get("counters", {}).get("steps", 0))
    if total_steps is not None:
        if total_steps <= steps:
            raise ConfigError(
                f"--steps must exceed the steps run {str(run_dir)!r} has trained "
                f"({steps:,}) to extend it; got {total_steps:,}"
            )
        run = dataclasses.replace(config.run, total_steps=total_steps, total_updates=0)
        last = state.get("counters", {}).get("last_eval") or {}
        stop = config.run.stop_at_return
        if stop != "none" and last.get("mean", -math.inf) >= float(stop):
            run = dataclasses.replace(run, stop_at_return="none")
        config = dataclasses.replace(config, run=run)
    population = Population([config], [state], given, callbacks)
    trainer = population.trainers[0]
    if trainer.finished():
        raise PglabError(
            f"run {str(run_dir)!r} already finished at step {trainer.steps:,} "
            f"(budget {config.run.total_steps:,}); --steps N (more steps) extends it"
        )
    if on_start is not None:
        on_start()
    return population.train(run_dirs=[run_dir])[0]


def parse_seeds(text: str) -> list[int]:
    """``0-15`` (a range, both ends included), ``0,3,7`` or ``5``; raises ConfigError."""
    try:
        if "-" in text.strip().lstrip("-"):
            low, high = text.split("-", 1)
            seeds = list(range(int(low), int(high) + 1))
        else:
            seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be A-B (A <= B), a list A,B,C or one seed; got {text!r}")
    return seeds


def member_configs(config: Config, seeds: Sequence[int]) -> list[Config]:
    """``config`` once per seed; a given run name gets a ``-seedN`` suffix."""
    configs = []
    for seed in seeds:
        run = dataclasses.replace(config.run, seed=seed)
        if config.run.name:
            run = dataclasses.replace(run, name=f"{config.run.name}-seed{seed}")
        configs.append(dataclasses.replace(config, run=run))
    return configs


def supports_population(config: Config) -> bool:
    """Whether ``config``'s rule trains a population in one stacked update (a2c, ppo,
    reinforce);
    other rules' populations share collection and evaluation only."""
    return stacks(config.algo.name)


def train_many(
    configs: Sequence[Config],
    jobs: int = 1,
    progress: str | None = None,
    given: EnvObject | None = None,
    callbacks: Sequence[CallbackLike] = (),
) -> list[Run]:
    """Train every config: as one population where they can form one (else one
    after another), spread over ``jobs`` processes when ``jobs`` > 1. Each run is the
    same experiment whichever way it trains. ``given``: their env, when that was a
    Python object (it stays in this process; a vector env serves one run).

    Ctrl-C stops every run at its next update with a checkpoint, then raises
    :class:`~pglab.errors.Interrupted` naming every interrupted run's folder.
    """
    if callbacks and jobs > 1 and len(configs) > 1:
        raise ConfigError(
            "jobs must be 1 with callbacks (they run in this process, beside the training)"
        )
    if given is not None and jobs > 1 and len(configs) > 1:
        raise ConfigError(
            f"jobs must be 1 for an env given as a Python object ({given.description})"
        )
    if given is not None and given.vector is not None and len(configs) > 1:
        raise ConfigError(
            f"{given.description} serves one run; for several seeds pass a callable that "
            "makes one env (each run makes its own copies)"
        )
    for config in configs:
        if not config.env.object:
            validate_env_id(config.env.id)
    configs = [c.resolve(reward_threshold(c.env.id)) for c in configs]
    if progress is not None:
        configs = [
            dataclasses.replace(c, run=dataclasses.replace(c.run, progress=progress))
            for c in configs
        ]
    if jobs > 1 and len(configs) > 1:
        return _train_in_processes(configs, jobs)
    return _train_together(configs, given, callbacks)


def _train_together(
    configs: list[Config],
    given: EnvObject | None = None,
    callbacks: Sequence[CallbackLike] = (),
) -> list[Run]:
    """``configs`` as one population, or one after another when they cannot form one
    (then each run gets its own copies of the callbacks too)."""
    try:
        check_population(configs)
    except ConfigError:
        own = copies(callbacks, len(configs))
        return [
            run
            for config, mine in zip(configs, own)
            for run in Population([config], given=given, callbacks=mine).train()
        ]
    return Population(configs, given=given, callbacks=callbacks).train()


def _worker(configs: list[Config], progress: str = "off") -> list[tuple[str, dict, bool]]:
    """Train a share of the runs (in a child process, silent; or in the parent, showing
    its share's ``progress``); returns (folder, summary, interrupted) per run."""
    torch.set_num_threads(1)
    try:
        runs = train_many(configs, jobs=1, progress="off" if progress == "off" else None)
    except Interrupted as interrupt:
        return [(path, {}, True) for path in interrupt.run_dirs]
    except KeyboardInterrupt:
        return []
    return [(str(run.path), run.summary, False) for run in runs]


#: How much more the first process trains than each of the others: it starts at once,
#: while the others first import torch anew (about a second). On 16 CartPole seeds in
#: two processes (``benchmarks/speed.py --parts population``), 0.25 (9 and 7 runs)
#: finished in 4.2 s against 4.4 s for 0 (8 and 8), 0.5 and 0.75 in 4.4 s and 4.8 s.
HEAD_START = 0.25


def deal(count: int, jobs: int, head_start: float = HEAD_START) -> list[list[int]]:
    """Which of ``count`` runs each of ``jobs`` processes trains (indices, in order):
    each run in turn goes to the process with the least work per weight, the first
    process weighing ``1 + head_start`` and the others 1 (round-robin at 0)."""
    weights = [1.0 + head_start] + [1.0] * (min(jobs, count) - 1)
    shares: list[list[int]] = [[] for _ in weights]
    for i in range(count):
        least = min(range(len(shares)), key=lambda j: len(shares[j]) / weights[j])
        shares[least].append(i)
    return shares


def _train_in_processes(configs: list[Config], jobs: int) -> list[Run]:
    """Deal ``configs`` over ``jobs`` processes (a population in each, see :func:`deal`):
    this one trains the first share while new processes start (they import torch
    anew) and train the others."""
    from pglab.agent import load, named_modules

    dealt = deal(len(configs), jobs)
    shares = [[configs[i] for i in share] for share in dealt]
    context = multiprocessing.get_context("spawn")  # fork can deadlock once torch has run
    workers = context.Pool(len(shares) - 1, die_with_parent, (os.getpid(),))
    with StopRequest() as stop, workers as pool:
        others = pool.map_async(_worker, shares[1:])
        shown = configs[0].run.progress  # this process's share stands for the whole
        results = [_worker(shares[0], shown), *others.get()]
    interrupted = [path for result in results for path, _, flag in result if flag]
    if stop.requested or interrupted or any(not result for result in results):
        raise Interrupted(interrupted)
    runs: list[Run | None] = [None] * len(configs)
    for share, result in zip(dealt, results):
        for i, (path, summary, _) in zip(share, result):
            # the user configured these runs here: their own modules may load back
            agent = load(path, allow_import=named_modules(configs[i]))
            runs[i] = Run(Path(path), agent, summary)
    return runs
