"""Read files that may be hostile: only regular files, never more than a bound, never a hang.

A path given on the command line or found in a run directory may name a FIFO (an
``open`` that blocks forever), a device (``/dev/zero``: endless), a directory, or a
file far larger than any we write. Everything the tool reads from such places goes
through here: the file is opened without blocking, checked to be a regular file on
the open descriptor (no race with a rename), and read up to a limit.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

MiB = 1 << 20


class UnsafeFile(OSError):
    """Not a regular file, or larger than the reader accepts; the message says which."""


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for binary reading, refused unless it is a regular file
    (symlinks to one are fine: the check is on what was opened)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFile(f"{path}: not a regular file ({_kind(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int) -> bytes:
    """The whole content of the regular file ``path``; UnsafeFile when over ``limit`` bytes."""
    with open_regular(path) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFile(f"{path}: larger than {_size(limit)}: refused")
    return data


def read_text(path: Path, limit: int) -> str:
    """:func:`read_regular` decoded as UTF-8 (UnicodeDecodeError is a ValueError)."""
    return read_regular(path, limit).decode("utf-8")


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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def _size(limit: int) -> str:
    return f"{limit // MiB} MiB" if limit >= MiB else f"{limit} bytes"
