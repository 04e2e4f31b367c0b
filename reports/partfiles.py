"""The files of a part, taken without trusting the part: regular files only, never a link.

Merge (``reports.merge``) reads each part's ``images/<host>`` and ``logs/<host>``
trees and two files. A part is a CI artifact from another machine, so here:

- a symlinked directory where merge reads (``images``, ``logs``, an entry directly in
  them, a host directory or anything below one) is refused with a MergeError naming
  it: a tampered part must be seen, not half merged;
- a symlinked file, a FIFO, a device or a socket is skipped and listed
  (``Survey.skipped``): merge copies only regular files, and one odd entry should not
  cost the whole merge and its gate;
- every path is built with ``results.paths.inside`` (names that are one component,
  directories that stay inside their root), and a file is placed by opening the
  source without following a link or blocking on a FIFO and creating the
  destination new (``O_EXCL``): a part changed between survey and copy is refused.

A survey lists everything before anything is written, so a refusal leaves no half
merged run. MergeError lives here, below ``reports.merge``, so both halves raise it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from reports.sanitize import one_line
from results.paths import UnsafePath, inside, kind


class MergeError(ValueError):
    """Parts that cannot be merged (not shards, another matrix, a duplicate shard, a
    tampered part, ...) or an output that cannot take the merge. The message is one
    line whatever the paths and names in it hold (a newline shows as ``\\n``)."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


def printable(text: str) -> str:
    """``text`` with every character that is not printable escaped, as repr would."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class Placement:
    """One regular file of a part and where it goes in the merged run."""

    source: Path
    dest: tuple[str, ...]  # names below the merged run directory
    link: bool  # hard-link when the filesystem allows (images); else always copied


@dataclass
class Survey:
    """What merge takes from the parts: files to place, entries it leaves out."""

    placements: list[Placement] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path (a symlink)", ...


def shown(value: object, limit: int = 80) -> str:
    """An untrusted value for a one-line message: quoted, escaped, cut."""
    return one_line(repr(value), limit)


# -- the survey -----------------------------------------------------------------------


def check_tree_top(root: Path, tree: str) -> None:
    """``images`` and ``logs`` hold host directories only: a symlink in them, or they
    themselves a symlink, is refused."""
    if not _is_directory(inside(root, tree)):
        return
    for entry in _entries(inside(root, tree)):
        if entry.is_symlink():
            raise _symlinked(Path(entry.path))


def survey_tree(root: Path, top: tuple[str, ...], link: bool, found: Survey) -> None:
    """Every regular file below ``root/top``, to be placed at the same names in the
    merged run, into ``found``; other entries skipped, a symlinked directory refused."""
    if not _is_directory(inside(root, *top)):
        return
    pending = [top]  # a list, not recursion: a deep tree is no RecursionError
    while pending:
        names = pending.pop()
        for entry in _entries(inside(root, *names)):
            here = (*names, entry.name)
            if entry.is_dir(follow_symlinks=False):
                pending.append(here)
            elif entry.is_file(follow_symlinks=False):
                found.placements.append(Placement(inside(root, *here), here, link))
            elif entry.is_symlink() and _points_at_directory(Path(entry.path)):
                raise _symlinked(Path(entry.path))
            else:
                what = kind(entry.stat(follow_symlinks=False).st_mode)
                found.skipped.append(f"{shown(entry.path, 200)} ({what})")


def survey_file(root: Path, names: tuple[str, ...], dest: tuple[str, ...],
                found: Survey) -> None:
    """``root/names`` to be placed at ``dest`` when it is a regular file, else skipped."""
    source = inside(root, *names)
    try:
        mode = os.lstat(source).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        found.placements.append(Placement(source, dest, link=False))
    else:
        found.skipped.append(f"{shown(str(source), 200)} ({kind(mode)})")


def _is_directory(path: Path) -> bool:
    """True for a directory, False when absent; a MergeError for anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode):
        raise _symlinked(path)
    if not stat.S_ISDIR(mode):
        raise MergeError(f"{shown(str(path), 300)}: is {kind(mode)}, not a directory "
                         "(a tampered part?)")
    return True


def _entries(directory: Path) -> Iterator[os.DirEntry[str]]:
    with os.scandir(directory) as listing:
        entries = list(listing)
    return iter(sorted(entries, key=lambda e: e.name))


def _points_at_directory(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:  # dangling, a loop, no access: not a directory merge could enter
        return False


def _symlinked(path: Path) -> MergeError:
    return MergeError(f"{shown(str(path), 300)}: a symlinked directory in a part: refused "
                      "(symlinks in a part are never followed; is the part tampered with?)")


# -- placing files in the merged run ----------------------------------------------------


def place(placements: list[Placement], out: Path) -> set[str]:
    """Hard-link or copy every placement into ``out``; how files came over."""
    how: set[str] = set()
    for item in placements:
        try:
            dest = inside(out, *item.dest)
        except UnsafePath as err:
            raise MergeError(f"-o {out}: refused: {one_line(str(err), 300)}") from err
        dest.parent.mkdir(parents=True, exist_ok=True)
        how.add(_place(item, dest))
    return how


def _place(item: Placement, dest: Path) -> str:
    # Images are linked (large, never written in place: a run that builds one again
    # removes it first); logs are copied, since a resumed cell appends.
    if item.link:
        try:
            _hard_link(item.source, dest)
            return "hardlink"
        except OSError:  # another filesystem, or links not allowed: copy
            pass
        _copy(item.source, dest)
        return "copy"
    _copy(item.source, dest)
    return "copy-meta"


def _hard_link(source: Path, dest: Path) -> None:
    """Link ``source`` itself (never what it points to); if it became something other
    than a regular file since the survey, the link is undone and refused."""
    os.link(source, dest, follow_symlinks=False)
    mode = os.lstat(dest).st_mode
    if not stat.S_ISREG(mode):
        dest.unlink()
        raise MergeError(f"{shown(str(source), 300)}: became {kind(mode)} during the merge")


def _copy(source: Path, dest: Path) -> None:
    """Copy the regular file ``source`` (opened without following a symlink and without
    blocking on a FIFO) to the new file ``dest``, with its permission bits and times."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                     | os.O_NOCTTY)
    except OSError as err:
        if err.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink put there since the survey
            raise MergeError(f"{shown(str(source), 300)}: became a symlink during the merge"
                             ) from err
        raise
    with os.fdopen(fd, "rb") as reader:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MergeError(f"{shown(str(source), 300)}: became {kind(info.st_mode)} "
                             "during the merge")
        os.set_blocking(fd, True)
        with open(dest, "xb") as writer:  # x: a new file, never through what is there
            shutil.copyfileobj(reader, writer, 1 << 20)
            os.fchmod(writer.fileno(), info.st_mode & 0o777)
    os.utime(dest, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)

