"""The one place dib starts processes: logged, streamed, time-limited, cleanly killed."""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Mapping, Optional, Sequence

from dib.errors import CommandFailed

LOG = logging.getLogger("dib")
TAIL_LINES = 40
KILL_GRACE_SECONDS = 5.0


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


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
    proc = subprocess.Popen(
        list(cmd),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        _kill_group(proc)

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
        _kill_group(proc)
        raise
    finally:
        if timer:
            timer.cancel()
        if proc.stdout:
            proc.stdout.close()
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
    try:
        done = subprocess.run(
            list(cmd),
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CommandFailed(cmd[0], -1, timed_out=True, command=cmd) from None
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", errors="replace").splitlines()
        raise CommandFailed(" ".join(cmd[:2]), done.returncode, err[-TAIL_LINES:], command=cmd)
    return done.stdout.decode("utf-8", errors="replace")


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start
