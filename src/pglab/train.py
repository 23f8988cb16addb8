"""Training entry points: :func:`train` a new run, :func:`resume` one from its folder.

A run is a population of one (:class:`pglab.population.Population`, the one training
loop); :class:`~pglab.member.Trainer` holds a run's pieces and writes its folder.
"""

from pglab.member import Run, Trainer
from pglab.population import resume, train

__all__ = ["Run", "Trainer", "resume", "train"]
