"""What keeps a run's files true through faults and concurrent use.

* :func:`atomic_write`: a file is replaced whole or not at all (a temporary file in the
  same folder, flushed to disk, renamed over the old one), so a kill -9 at any moment
  leaves the old content or the new, never a mix or an empty file.
* :func:`remove_stale_temps`: the temporary files that a killed write leaves behind
  (``.<name>.<8 characters>``, the only names :func:`atomic_write` uses) are removed by
  the next writer of the folder; no other file is touched.
* :func:`hold_lock`: one writer per folder. An exclusive ``flock`` on ``<folder>/.lock``
  held for as long as the writer works; the kernel releases it when the process ends,
  however it ends (kill -9 included), so a lock is never stale. A second writer stops at
  once with one line naming the holder's process id.

(What a folder name may be, and that writes stay inside their folder and never follow
a link, is :mod:`pglab.paths`.)
* :func:`die_with_parent`: a worker process that outlives its parent (killed with
  kill -9) is killed too, instead of training on with nobody to report to.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pglab.errors import PglabError

#: The lock file in a folder that one process at a time may write.
LOCK_FILE = ".lock"
#: Names of :func:`atomic_write`'s temporary files: ``.<target name>.<mkstemp's 8 characters>``.
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}")
_PR_SET_PDEATHSIG = 1


class FolderInUseError(PglabError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_args: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it is flushed to
    disk and renamed over ``path`` (and the folder synced), on an exception it is removed
    and ``path`` is left as it was."""
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, mode, **open_args) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the OS allows opening a folder)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def remove_stale_temps(folder: str | Path, targets: str) -> list[Path]:
    """Remove the temporary files that interrupted :func:`atomic_write` calls left in
    ``folder`` for files named like ``targets`` (a glob, e.g. ``*.pt``); returns them.

    Only plain files named ``.<target>.<8 characters>`` are removed. Call it only while
    holding the folder's lock (:func:`hold_lock`): another writer's temporary file is
    not stale.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            match = _TEMP_NAME.fullmatch(entry.name)
            if (
                match
                and fnmatch.fnmatchcase(match["target"], targets)
                and entry.is_file(follow_symlinks=False)
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def hold_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (an existing folder) for the ``with`` block.

    Raises :class:`FolderInUseError` (``<what> '<folder>' is in use by process <pid>``)
    at once when another process holds it. The lock file records the holder's process
    id; the lock itself is the kernel's, released when the block ends or the process
    dies, so it is never left stale.
    """
    folder = Path(folder)
    path = folder / LOCK_FILE
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(path, flags, 0o644)
    try:
        if not _try_lock(descriptor):
            holder = _holder(descriptor)
            who = f"process {holder}" if holder else "another process"
            raise FolderInUseError(f"{what} {str(folder)!r} is in use by {who}")
        record = f"{os.getpid()}\n".encode()
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.write(descriptor, record)
        os.ftruncate(descriptor, len(record))
        yield path
    finally:
        os.close(descriptor)  # releases the lock


def _holder(descriptor: int) -> str:
    """The PID in a lock file, waiting briefly for a holder that has just taken the lock
    to write it; empty when none shows."""
    for _ in range(20):
        os.lseek(descriptor, 0, os.SEEK_SET)
        text = os.read(descriptor, 32).decode(errors="replace")
        if text.strip().isdigit():
            return text.strip()
        time.sleep(0.01)
    return ""


def _try_lock(descriptor: int) -> bool:
    """Take the descriptor's exclusive lock without waiting; False when another holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def die_with_parent(parent: int) -> None:
    """Make this (worker) process die when process ``parent`` does.

    On Linux the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``);
    elsewhere a daemon thread checks once a second whether the parent is gone. Meant as
    a process pool's ``initializer``, with the pool owner's ``os.getpid()``.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before the call
                    os._exit(1)
                return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
