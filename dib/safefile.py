"""Read files dib does not control: only regular files, never more than a bound, never a hang.

An element on ``ELEMENTS_PATH`` may come from anywhere, and its files are parsed by
dib itself (``element-deps``, ``element-provides``, ``package-installs.yaml``,
``pkg-map``, block-device layouts): one of them may be a FIFO (an ``open`` that
blocks forever), a device (``/dev/zero``: endless), a directory, or far larger than
any real element's (a 200 MB ``element-deps`` once cost a build 8 GB). A file is
opened without blocking, checked to be a regular file on the open descriptor (no
race with a rename), and read up to a limit.

The orchestrator reads through these checks too (``results/safefile.py`` wraps them
with the path in each message): dib is the one that cannot import anything of the
orchestrator's (it runs inside host containers on their own Python, standard library
and PyYAML only).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

KiB = 1 << 10
MiB = 1 << 20


class UnsafeFile(OSError):
    """Not a regular file, or larger than the reader accepts; the message says which
    (without the path: the caller names the file as its own errors do)."""


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for binary reading, refused unless it is a regular file
    (a symlink to one is fine: the check is on what was opened)."""
    fd = os.open(str(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFile(f"not a regular file ({_kind(mode)})")
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
        raise UnsafeFile(f"larger than {size_text(limit)}: refused")
    return data


def read_text(path: Path, limit: int) -> str:
    """:func:`read_regular` decoded as UTF-8 (UnicodeDecodeError is a ValueError)."""
    return read_regular(path, limit).decode("utf-8")


def size_text(limit: int) -> str:
    if limit >= MiB:
        return f"{limit // MiB} MiB"
    return f"{limit // KiB} KiB" if limit >= KiB else f"{limit} bytes"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"
