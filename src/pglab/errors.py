"""Exceptions that carry a one-line message meant for the user.

Every mistake a user can make (a bad option, an unknown env, a broken checkpoint)
raises a subclass of :class:`PglabError`. The command line prints its message on one
line and exits with code 2; the Python API lets it propagate. A :class:`StorageError`
(a folder that cannot be written) is a fault of the machine rather than a mistake: one
line too, exit code 1.
"""


class PglabError(Exception):
    """A problem the user can fix; ``str(error)`` is a complete one-line message."""


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
