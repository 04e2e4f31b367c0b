"""Paths that come from outside: names proven to stay inside their root, outputs that
only ever replace a regular file.

A run directory may come from another machine (a shard part is a CI artifact), and
the names in its results.json (hosts, rows) become paths such as
``logs/<host>/<row>.log``. The validating reader rejects bad names at load;
:func:`inside` is the second line of defence and holds on its own: a name that is
not one plain path component, or a path whose directories lead out of the root
through a symlink, is refused wherever a path is built. The last component is
checked as a name but not followed: whether it may be a symlink (never, for merge)
is the caller's decision, made with ``lstat``.

An output path given on the command line (``report -o``, ``merge -o``) is made
absolute and normalised once (:func:`absolute`), before any check looks at it, and
an output file is written by replacing it, which must never turn a FIFO, a device,
a symlink or a directory into a regular file (:func:`check_replaceable`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafePath(ValueError):
    """A name that is not one plain path component, or a path that leaves its root."""


class UnsafeOutput(OSError):
    """An output path that names something other than a regular file: never replaced."""


def inside(root: Path, *names: object) -> Path:
    """``root/names...``, refused (UnsafePath) unless every name is one plain component
    (no separator, not ``.`` or ``..``, not empty, no NUL) and the directories of the
    result, symlinks resolved, are ``root`` or below it."""
    for name in names:
        check_component(name)
    path = root.joinpath(*names)  # type: ignore[arg-type]  # each is a str, checked above
    if not names:
        return path
    base = resolved(root)
    parent = resolved(path.parent)
    if parent != base and base not in parent.parents:
        raise UnsafePath(f"{path}: leads outside {root} (through a symlinked directory)")
    return path


def resolved(path: Path) -> Path:
    """``path.resolve()``, with a symlink loop an UnsafePath (pathlib raises RuntimeError
    for one before Python 3.13, not an OSError)."""
    try:
        return path.resolve()
    except RuntimeError as err:
        raise UnsafePath(f"{path}: a symlink loop") from err


def check_component(name: object) -> str:
    """``name`` when it is one plain path component; UnsafePath saying why not."""
    if not isinstance(name, str):
        raise UnsafePath(f"{name!r}: a path name must be a string")
    if name in ("", ".", ".."):
        raise UnsafePath(f"{name!r}: not a name of its own (empty, '.' or '..')")
    if os.sep in name or "\0" in name or (os.altsep and os.altsep in name):
        raise UnsafePath(f"{name!r}: holds a path separator or NUL")
    return name


def absolute(path: Path) -> Path:
    """``path`` absolute with ``.`` and ``..`` removed by the text alone (``DIR/absent/..``
    is ``DIR``), so every later check and the name it ends in see the path that is used."""
    return Path(os.path.abspath(path))


def check_replaceable(path: Path) -> None:
    """Nothing, when ``path`` is absent or a regular file (not followed: a symlink to
    one is refused too); UnsafeOutput naming what it is otherwise."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise UnsafeOutput(f"{path}: is {kind(mode)}, not a regular file: refused to "
                           "replace it")


def output_file(path: Path) -> Path:
    """``path`` made absolute (:func:`absolute`), refused (UnsafeOutput) unless its
    directory exists and it is absent or a regular file: checked before any work, and
    checked again by the writer that replaces it."""
    path = absolute(path)
    if not path.parent.is_dir():
        raise UnsafeOutput(f"{path}: its directory {path.parent} does not exist (or is "
                           "not a directory)")
    check_replaceable(path)
    return path


def kind(mode: int) -> str:
    """What an ``lstat`` mode is, in words: "a FIFO", "a symlink", ..."""
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a file"
