"""Read files that may be hostile: only regular files, never more than a bound, never a hang.

A path given on the command line or found in a run directory may name a FIFO (an
``open`` that blocks forever), a device (``/dev/zero``: endless), a directory, or a
file far larger than any we write. Everything the orchestrator reads from such
places goes through here. The checks themselves are dib's (``dib/safefile.py``: the
file is opened without blocking, checked to be a regular file on the open descriptor,
read up to a limit), since dib must run on its own inside host containers; this
module names the path in every refusal, as the orchestrator's messages do, and
streams lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from dib import safefile as core

MiB = core.MiB


class UnsafeFile(core.UnsafeFile):
    """Not a regular file, or larger than the reader accepts: ``<path>: <which>``."""


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for binary reading, refused unless it is a regular file
    (symlinks to one are fine: the check is on what was opened)."""
    try:
        return core.open_regular(path)
    except core.UnsafeFile as err:
        raise UnsafeFile(f"{path}: {err}") from None


def read_regular(path: Path, limit: int) -> bytes:
    """The whole content of the regular file ``path``; UnsafeFile when over ``limit`` bytes."""
    try:
        return core.read_regular(path, limit)
    except core.UnsafeFile as err:
        raise UnsafeFile(f"{path}: {err}") from None


def read_text(path: Path, limit: int) -> str:
    """:func:`read_regular` decoded as UTF-8 (UnicodeDecodeError is a ValueError)."""
    return read_regular(path, limit).decode("utf-8")


def count_newlines(stream: BinaryIO, length: int) -> int:
    """Newlines in the next ``length`` bytes of ``stream`` (read a block at a time): the
    line number where a window into a long log starts, without decoding what precedes."""
    count = 0
    while length > 0:
        block = stream.read(min(MiB, length))
        if not block:
            break
        count += block.count(b"\n")
        length -= len(block)
    return count


def iter_lines(path: Path, limit: int, line_limit: int = 64 * 1024) -> Iterator[bytes]:
    """The lines of a regular file, streamed: at most ``limit`` bytes in all (the rest is
    not read) and each line cut at ``line_limit`` bytes, so memory stays bounded."""
    left = limit
    with open_regular(path) as stream:
        while left > 0:
            line = stream.readline(min(line_limit, left))
            if not line:
                return
            left -= len(line)
            while not line.endswith(b"\n") and left > 0:  # skip an overlong line's rest
                rest = stream.readline(min(line_limit, left))
                left -= len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield line
