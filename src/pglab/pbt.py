r"""Population-based training inside one process (Jaderberg et al. 2017).

A population's members already train side by side in one process, each with its own
hyperparameters (:data:`pglab.population.VARYING`). PBT adds, every ``every`` steps
(a *round*, at an evaluation):

1. **rank** the members by their evaluation mean at this step;
2. **exploit**: each member of the bottom ``quantile`` takes a member of the top
   ``quantile`` (drawn at random) as its donor and copies its actor and critic weights,
   its optimizer state (moments and step counts) and its normalisation statistics; it
   keeps its own envs, episodes in progress and random streams;
3. **explore**: the exploiting member's hyperparameters become the donor's, each
   resampled from the search space with probability ``resample_probability``, else
   multiplied by one of ``factors`` drawn at random and kept within the space's
   bounds (a choice moves to a neighbouring value).

Every round's events are written to each changed member's ``pbt_schedule.json``
(its starting hyperparameters, then per event the step, the new values, the donor
and the donor's state as ``pbt/step-<N>.pt``). That file replays the member's run as
a single run: ``pglab train --config MEMBER/config.toml --set
run.schedule=MEMBER/pbt_schedule.json`` trains from the same seed, sets the starting
values, and at each event's step loads the donor's state and the new values, which
reproduces the member's numbers exactly (a member's run does not depend on the
population around it; ``tests/test_pbt.py`` pins it).

Every member is checkpointed when it starts and after each round, and its checkpoint
records the step of the last event applied, so a population interrupted (Ctrl-C,
kill -9), even within a round, resumes with schedules and checkpoints that agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pglab.checkpoint import load_checkpoint, save_checkpoint
from pglab.errors import ConfigError
from pglab.paths import write_text_atomic

#: A member's hyperparameter schedule, in its run folder.
SCHEDULE_FILE = "pbt_schedule.json"
#: The donors' states a member took, in its run folder.
DONOR_DIR = "pbt"
#: The hyperparameters PBT may change (``algo.<name>``): those a population's members may differ in.
TUNABLE = ("lr", "entropy_coef", "vf_coef", "gamma", "lam", "clip_range")


@dataclass
class Schedule:
    """A run's hyperparameter schedule: the values it starts with, then events."""

    start: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"start": self.start, "events": self.events}, indent=1) + "\n"


def read_schedule(path: str | Path) -> Schedule:
    """A schedule file; a missing or malformed one is one :class:`ConfigError` line."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        schedule = Schedule(dict(data["start"]), [dict(e) for e in data["events"]])
        for event in schedule.events:
            int(event["step"]), dict(event["hyperparameters"])
    except FileNotFoundError:
        raise ConfigError(f"run.schedule: no such file {str(path)!r}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"run.schedule: {str(path)!r} is not a PBT schedule file ({error})"
        ) from None
    unknown = sorted({*schedule.start, *(k for e in schedule.events for k in e["hyperparameters"])}
                     - set(TUNABLE))  # fmt: skip
    if unknown:
        raise ConfigError(
            f"run.schedule: {str(path)!r} changes {unknown[0]}; a schedule may change only "
            f"{', '.join(TUNABLE)}"
        )
    return schedule


def donor_state(trainer: Any) -> dict[str, Any]:
    """What a member takes from its donor: weights, optimizer state, normalisation."""
    state = trainer.learned()
    # the optimizers' states, not the donor's random streams (its minibatch sampler, its
    # critic's draws): a member keeps drawing from its own
    own = ("sampler", "value_samplers")
    state["algo"] = {key: value for key, value in state["algo"].items() if key not in own}
    return state


def apply_event(trainer: Any, event: dict[str, Any], folder: Path) -> None:
    """Apply one schedule event to ``trainer``: the donor's state (a file under
    ``folder``), then the new hyperparameters."""
    if event.get("state"):
        trainer.adopt(load_checkpoint(folder / event["state"]))
    trainer.set_hyperparameters(event["hyperparameters"])


def clamp(kind: str, args: list, value: Any) -> Any:
    """``value`` moved into the bounds of its search space (``kind``, ``args``) and, for
    an ``int_uniform`` space, rounded; a ``choice`` passes unchanged."""
    if kind == "choice":
        return value
    moved = min(max(value, args[0]), args[1])
    return round(moved) if kind == "int_uniform" else float(moved)


@dataclass
class Explorer:
    """Draws a member's new hyperparameters from its donor's (step 3 of the module text)."""

    search: dict[str, tuple[str, list]]
    resample_probability: float = 0.25
    factors: tuple[float, float] = (0.8, 1.2)

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """Values drawn from the search space (a member's start, or a resample)."""
        return {key: self._draw(kind, args, rng) for key, (kind, args) in self.search.items()}

    def explore(self, values: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        new = {}
        for key, (kind, args) in self.search.items():
            if rng.random() < self.resample_probability:
                new[key] = self._draw(kind, args, rng)
                continue
            factor = self.factors[int(rng.integers(2))]
            if kind == "choice":
                index = args.index(values[key]) + (1 if factor > 1 else -1)
                new[key] = args[min(max(index, 0), len(args) - 1)]
            else:
                new[key] = clamp(kind, args, values[key] * factor)
        return new

    @staticmethod
    def _draw(kind: str, args: list, rng: np.random.Generator) -> Any:
        if kind == "choice":
            return args[int(rng.integers(len(args)))]
        if kind == "int_uniform":
            return int(rng.integers(args[0], args[1] + 1))
        if kind == "log_uniform":
            return float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
        return float(rng.uniform(args[0], args[1]))


class PBT:
    """The rounds of in-process PBT over a :class:`~pglab.population.Population`
    (see the module text); ``seed`` seeds the draws of donors and new values."""

    def __init__(
        self,
        explorer: Explorer,
        every: int,
        quantile: float = 0.25,
        seed: int = 0,
    ) -> None:
        if not 0 < quantile <= 0.5:
            raise ConfigError(f"pbt quantile must be in (0, 0.5]; got {quantile!r}")
        self.explorer, self.every, self.quantile, self.seed = explorer, every, quantile, seed
        self.rng = np.random.default_rng(seed)
        #: Every event of every round: (step, member, donor, old values, new values, score).
        self.log: list[dict[str, Any]] = []

    def begin(self, population: Any) -> None:
        """Before training: a new member's schedule file holds its starting values and
        its checkpoint its starting state (so a population stopped before or within its
        first round resumes: a member the round did not reach restarts from step 0); a
        resumed member's schedule loses the events its checkpoint does not include, and
        a round that an interruption cut short runs now."""
        for m, trainer in enumerate(population.trainers):
            path = trainer.run_dir / SCHEDULE_FILE
            new = not path.is_file()
            if new:
                schedule = Schedule(trainer.hyperparameters(TUNABLE))
            else:
                schedule = read_schedule(path)
                schedule.events = [
                    e for e in schedule.events if int(e["step"]) <= trainer.schedule_step
                ]
            write_text_atomic(path, schedule.to_json(), trainer.run_dir)
            if new:
                with population.member_rng(m):
                    trainer.save(trainer.run_dir)
        live = [m for m, t in enumerate(population.trainers) if not t.finished()]
        if live and self._due([population.trainers[m] for m in live]):
            self.round(population, live)

    def _due(self, trainers: list[Any]) -> bool:
        """Whether every member has passed a multiple of ``every`` steps since the last
        round (members count their own steps, which differ by a few)."""
        passed = min(t.steps for t in trainers) // self.every
        return passed > max(t.schedule_step for t in trainers) // self.every

    def after_iteration(self, population: Any, live: list[int]) -> None:
        """A round, at the first iteration where :meth:`_due` holds (not after the last:
        a finished member has nothing to gain)."""
        trainers = [population.trainers[m] for m in live]
        if not any(t.finished() for t in trainers) and self._due(trainers):
            self.round(population, live)

    def round(self, population: Any, live: list[int]) -> None:
        """Rank, exploit and explore (see the module text); then checkpoint every member.
        Each event is stamped with its member's own step, where a replay applies it."""
        trainers = [population.trainers[m] for m in live]
        index = min(t.steps for t in trainers) // self.every
        self.rng = np.random.default_rng([self.seed, index])  # the same draws after a resume
        if len(trainers) >= 2:
            self._exploit(population, live, trainers)
        for m, trainer in zip(live, trainers):
            trainer.schedule_step = trainer.steps
            with population.member_rng(m):
                trainer.save(trainer.run_dir)

    def _exploit(self, population: Any, live: list[int], trainers: list[Any]) -> None:
        """Ranked by their latest evaluation (a member without one ranks last)."""
        scores = [t.last_eval["mean"] if t.last_eval is not None else -math.inf for t in trainers]
        order = sorted(range(len(trainers)), key=lambda i: scores[i])
        n = max(1, int(len(trainers) * self.quantile))
        bottom, top = order[:n], order[-n:]
        states: dict[int, dict[str, Any]] = {}
        for i in bottom:
            donor = top[int(self.rng.integers(len(top)))]
            if donor not in states:
                with population.member_rng(live[donor]):
                    states[donor] = donor_state(trainers[donor])
            old = trainers[i].hyperparameters(TUNABLE)
            new = {
                **old,
                **self.explorer.explore(trainers[donor].hyperparameters(TUNABLE), self.rng),
            }
            step = trainers[i].steps
            relative = f"{DONOR_DIR}/step-{step}.pt"
            save_checkpoint(trainers[i].run_dir / relative, states[donor])
            event = {
                "step": step,
                "hyperparameters": new,
                "from": trainers[donor].run_dir.name,
                "state": relative,
            }
            self._record(trainers[i], event)
            apply_event(trainers[i], event, trainers[i].run_dir)
            self.log.append(
                {
                    "step": step,
                    "member": trainers[i].run_dir.name,
                    "score": scores[i],
                    "donor": trainers[donor].run_dir.name,
                    "donor_score": scores[donor],
                    "old": old,
                    "new": new,
                }
            )

    @staticmethod
    def _record(trainer: Any, event: dict[str, Any]) -> None:
        path = trainer.run_dir / SCHEDULE_FILE
        schedule = read_schedule(path)
        schedule.events.append(event)
        write_text_atomic(path, schedule.to_json(), trainer.run_dir)
