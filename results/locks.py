"""Waiting for an exclusive ``flock`` without blocking forever.

The archive's lock and the occurrence record's lock are held only for short writes,
but a process stopped with the lock (SIGSTOP, a hung file system) must cost a clear
error after a while, never a run that hangs: so the lock is tried, not waited on.
"""

from __future__ import annotations

import fcntl
import time

POLL = 0.05  # seconds between tries


def take_exclusive(fd: int, wait: float) -> bool:
    """Take the exclusive lock on ``fd``, trying for up to ``wait`` seconds; False when
    another holder kept it that long."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)
