"""Exceptions that carry a one-line message meant for the user.

Every mistake a user can make (a bad option, an unknown env, a broken checkpoint)
raises a subclass of :class:`PglabError`. The command line prints its message on one
line and exits with the error's :attr:`~PglabError.exit_code`: 2 for a user mistake, 1
for a fault met while running (a folder that cannot be written, an environment that
misbehaves); the Python API lets it propagate.
"""


class PglabError(Exception):
    """A problem the user can fix; ``str(error)`` is a complete one-line message."""

    #: The command line's exit status for this error.
    exit_code: int = 2


class ConfigError(PglabError):
    """An option has a value outside what is allowed."""


class EnvError(PglabError):
    """An environment id cannot be made, or its spaces are not supported."""


class CheckpointError(PglabError):
    """A file is not a readable pglab checkpoint."""


class TrainingError(PglabError):
    """Training cannot go on (for example the loss became non-finite)."""


class Interrupted(KeyboardInterrupt):
    """Training stopped at a request (Ctrl-C, SIGTERM) after checkpointing every run:
    :attr:`run_dirs` are the folders that ``pglab train --resume`` continues."""

    def __init__(self, run_dirs: list[str]) -> None:
        super().__init__(" ".join(run_dirs))
        self.run_dirs = list(run_dirs)


class StorageError(PglabError):
    """A file or folder cannot be written (read-only, full disk, a file in the way)."""

    exit_code = 1


class EnvFaultError(PglabError):
    """An environment misbehaved while running: its ``reset`` or ``step`` raised, or
    returned something that is not a valid Gymnasium result (a wrong arity, shape or
    dtype, or a non-finite or absurd observation or reward).

    ``str(error)`` names the env, the call and the env step; :attr:`details` holds the
    longer story (the original traceback, or the offending values in full), for a
    run's ``error.txt``.
    """

    exit_code = 1

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        #: The original traceback or the full offending values (several lines).
        self.details = details

    def __reduce__(self) -> tuple:  # keep ``details`` across processes (sweeps, --jobs)
        return type(self), (str(self), self.details)
