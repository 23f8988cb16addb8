"""Paths built from names, and writes that stay inside the folder they were given.

pglab writes only inside a folder the user gave it (``run.out``, a run group, a run
folder, ``--out``). Three rules hold every write to that:

* a name that becomes one path component (``run.name``, ``run.group``) is one plain
  folder name: :func:`safe_name` refuses separators, ``.`` and ``..``, control
  characters, the empty name and names over :data:`MAX_NAME` characters;
* a path built under a root is checked to stay under it once resolved
  (:func:`inside`), and no folder between the root and the file may be a symbolic
  link (:func:`make_dirs`), so a planted link cannot send a write elsewhere;
* files are written to a temporary file in their own folder and renamed over the
  target (:func:`write_atomic`): a symbolic link at the target is replaced, never
  followed, and an interrupted write leaves the old file or the new one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from pglab.errors import ConfigError, PglabError, StorageError

#: The longest name accepted for one path component.
MAX_NAME = 100


def safe_name(value: str, what: str) -> str:
    """``value`` when it is one plain folder name, else a :class:`ConfigError` naming ``what``.

    Refused: the empty name, ``.`` and ``..``, ``/`` and ``\\``, control characters
    (newline, tab, ...) and names longer than :data:`MAX_NAME` characters.
    """
    bad = ""
    if not isinstance(value, str) or not value:
        bad = "it is empty"
    elif value in (".", ".."):
        bad = f"{value!r} is not a folder name"
    elif "/" in value or "\\" in value:
        bad = "it holds a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        bad = "it holds a control character"
    elif len(value) > MAX_NAME:
        bad = f"it has {len(value)} characters"
    if bad:
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "..."
        raise ConfigError(
            f"{what} must be one folder name of 1-{MAX_NAME} characters without / \\ or "
            f"control characters, and not . or .. ({bad}); got {shown!r}"
        )
    return value


def check_text(value: str, what: str) -> str:
    """``value`` when it holds no control characters (a newline, say), else a ConfigError."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{what} must not hold control characters (a newline); got {value!r}")
    return value


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, when it lies under ``root`` (resolved); else a :class:`PglabError`."""
    base = Path(root).resolve()
    target = Path(path).resolve()
    if target != base and base not in target.parents:
        raise PglabError(f"{str(path)!r} lies outside {str(root)!r}; pglab writes only inside it")
    return target


def no_links_below(root: str | Path, path: str | Path) -> Path:
    """``path`` made absolute, when it lies under ``root`` and no component of it below
    ``root`` (``path`` included) is a symbolic link; else a :class:`PglabError`."""
    base = Path(os.path.abspath(root))
    target = Path(os.path.abspath(path))
    if target != base and base not in target.parents:
        raise PglabError(f"{str(path)!r} lies outside {str(root)!r}; pglab writes only inside it")
    current = base
    for part in target.relative_to(base).parts:
        current = current / part
        if current.is_symlink():
            raise PglabError(
                f"{str(current)!r} is a symbolic link; pglab does not write through links"
            )
    return target


def make_dirs(path: str | Path, root: str | Path) -> Path:
    """Create the folder ``path`` (and its parents) under ``root``, which is created
    when missing; a symbolic link below ``root`` or a path that leaves it is refused,
    and an OS error (a read-only folder, a file in the way) is a :class:`StorageError`
    naming the folder. Returns ``path`` made absolute."""
    target = no_links_below(root, path)
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(
            f"cannot create folder {str(path)!r}: {error.strerror or error}"
        ) from None
    no_links_below(root, target)  # nothing became a link meanwhile
    inside(root, target)
    return target


def write_atomic(
    path: str | Path, write: Callable[[Path], None], root: str | Path, mode: int = 0o666
) -> Path:
    """Write ``path`` (under ``root``) by calling ``write`` on a temporary file in the
    same folder and renaming it over ``path``: a link at ``path`` is replaced, never
    followed, and a folder link on the way is refused. An OS error (a read-only
    folder, a full disk) becomes a :class:`StorageError` naming the file; no partial
    file is left. Returns ``path`` made absolute."""
    if Path(path).name in ("", ".", ".."):
        raise PglabError(f"{str(path)!r} names no file")
    folder = make_dirs(Path(path).parent, root)
    target = folder / Path(path).name
    temp = None
    try:
        handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=folder)
        os.close(handle)
        temp = Path(name)
        write(temp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, mode & ~umask)
        os.replace(temp, target)
        temp = None
    except OSError as error:
        raise StorageError(f"cannot write {str(path)!r}: {error.strerror or error}") from None
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)
    return target


def write_text_atomic(path: str | Path, text: str, root: str | Path) -> Path:
    """Write ``text`` to ``path`` under ``root`` atomically, never through a link."""
    return write_atomic(path, lambda temp: temp.write_text(text), root)
