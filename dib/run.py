"""Commands dib runs: logged line by line, time-limited, ended as a group (``dib.spawn``)."""

from __future__ import annotations

import collections
import logging
import subprocess
import threading
import time
from typing import Mapping, Optional, Sequence

from dib import spawn
from dib.errors import CommandFailed

LOG = logging.getLogger("dib")
TAIL_LINES = 40
KILL_GRACE_SECONDS = 5.0


def run(
    cmd: Sequence[str],
    *,
    tag: str,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    timeout: Optional[float] = None,
    check: bool = True,
) -> int:
    """Run ``cmd``, streaming each output line to the log prefixed with ``tag``.

    Never goes through a shell. On timeout, error or interruption the whole
    process group is terminated before the exception propagates.
    """
    LOG.debug("%s | exec: %s", tag, " ".join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    proc = spawn.spawn(cmd, env=env, cwd=cwd)
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        spawn.stop(proc, KILL_GRACE_SECONDS)

    timer = threading.Timer(timeout, on_timeout) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            tail.append(line)
            LOG.info("%s | %s", tag, line)
        returncode = proc.wait()
    except BaseException:
        spawn.stop(proc, KILL_GRACE_SECONDS)
        raise
    finally:
        if timer:
            timer.cancel()
        if proc.stdout:
            proc.stdout.close()
        spawn.forget(proc)
    if timed_out.is_set():
        raise CommandFailed(tag, returncode, tail, timed_out=True, command=cmd)
    if check and returncode != 0:
        raise CommandFailed(tag, returncode, tail, command=cmd)
    return returncode


def capture(
    cmd: Sequence[str], *, timeout: float = 60, env: Optional[Mapping[str, str]] = None
) -> str:
    """Run a short command and return its stdout; raise CommandFailed with stderr's tail."""
    LOG.debug("capture: %s", " ".join(cmd))
    proc = spawn.spawn(cmd, env=env, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        spawn.stop(proc, KILL_GRACE_SECONDS)
        raise CommandFailed(cmd[0], -1, timed_out=True, command=cmd) from None
    except BaseException:
        spawn.stop(proc, KILL_GRACE_SECONDS)
        raise
    spawn.forget(proc)
    if proc.returncode != 0:
        lines = err.decode("utf-8", errors="replace").splitlines()
        raise CommandFailed(" ".join(cmd[:2]), proc.returncode, lines[-TAIL_LINES:], command=cmd)
    return out.decode("utf-8", errors="replace")


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start
