"""Walking and removing directory trees the archive holds, which may be hostile.

A run directory may come from another machine: it may nest thousands of levels deep
(``os.walk`` and ``shutil.rmtree`` recurse once per level before Python 3.12/3.13, and
a path through such a tree is longer than any system call takes), hold symlinks out of
it (never followed: a link is removed or counted as itself), FIFOs and devices (never
opened). So both functions work from directory descriptors, one open at a time:
down into a child by its name (``O_NOFOLLOW``), back up through ``..``, checked to be
the directory they came from (a tree moved meanwhile stops them with an OSError).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class TreeMoved(OSError):
    """A directory's ``..`` is not the directory the walk came from."""


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


class _Cursor:
    """One open directory descriptor that moves down to a child and back up."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, _DIRECTORY)
        self.trail = [_identity(os.fstat(self.fd))]  # from the top down to here

    def down(self, name: str) -> None:
        child = os.open(name, _DIRECTORY, dir_fd=self.fd)
        os.close(self.fd)
        self.fd = child
        self.trail.append(_identity(os.fstat(child)))

    def up(self) -> None:
        parent = os.open("..", _DIRECTORY, dir_fd=self.fd)
        if _identity(os.fstat(parent)) != self.trail[-2]:
            os.close(parent)
            raise TreeMoved("a directory moved while its tree was walked")
        os.close(self.fd)
        self.fd = parent
        self.trail.pop()

    def close(self) -> None:
        os.close(self.fd)


def inodes(top: Path) -> Iterator[os.stat_result]:
    """The ``lstat`` of ``top`` and of everything below it, symlinks not followed."""
    try:
        info = os.lstat(top)
    except FileNotFoundError:
        return
    yield info
    if not stat.S_ISDIR(info.st_mode):
        return
    cursor = _Cursor(top)
    try:
        pending = [_scan(cursor.fd)]  # per level: the subdirectories still to visit
        yield from pending[-1][1]
        while pending:
            if pending[-1][0]:
                cursor.down(pending[-1][0].pop())
                pending.append(_scan(cursor.fd))
                yield from pending[-1][1]
                continue
            pending.pop()
            if pending:
                cursor.up()
    finally:
        cursor.close()


def _scan(fd: int) -> tuple[list[str], list[os.stat_result]]:
    """The subdirectory names and every entry's ``lstat`` of the directory at ``fd``."""
    subdirectories, found = [], []
    with os.scandir(fd) as listing:
        for entry in listing:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found.append(info)
            if stat.S_ISDIR(info.st_mode):
                subdirectories.append(entry.name)
    return subdirectories, found


def remove_tree(path: Path) -> None:
    """Remove ``path`` whatever it is (a directory and all below it, a file, a link),
    never following a symlink; nothing when it is absent."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        path.unlink(missing_ok=True)
        return
    cursor = _Cursor(path)
    names: list[str] = []  # the way down from ``path``
    try:
        while True:
            child = _empty_but_one(cursor.fd)
            if child is not None:
                cursor.down(child)
                names.append(child)
            elif names:
                cursor.up()
                os.rmdir(names.pop(), dir_fd=cursor.fd)
            else:
                break
    finally:
        cursor.close()
    os.rmdir(path)


def _empty_but_one(fd: int) -> str | None:
    """Unlink what is not a directory in the directory at ``fd``, up to its first
    subdirectory; that one's name (None once none is left)."""
    with os.scandir(fd) as listing:
        for entry in listing:
            if entry.is_dir(follow_symlinks=False):
                return entry.name
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                os.unlink(entry.name, dir_fd=fd)
    return None
