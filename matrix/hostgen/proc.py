"""The one place where hostgen runs a process on the orchestrating machine.

Logs the command line, runs it with a curated environment, streams its output
into a log, keeps the last lines for classification, and enforces a timeout
with terminate-then-kill of its process group (``dib.spawn``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from dib import spawn

# Variables passed through to tools; everything else is dropped.
PASSED_ENV = (
    "PATH",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)
TAIL_LINES = 200
KILL_GRACE = 10.0


@dataclass(frozen=True)
class ProcResult:
    argv: tuple[str, ...]
    returncode: int | None  # None when it was killed for the timeout
    timed_out: bool
    tail: tuple[str, ...]  # last lines of its output
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def curated_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env.update({"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
    env.update(extra or {})
    return env


def run_logged(
    argv: Sequence[str],
    log: BinaryIO,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> ProcResult:
    """Run ``argv`` (no shell) with stdout+stderr appended to ``log``."""
    log.write(f"$ {shlex.join(argv)}\n".encode())
    log.flush()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    start = time.monotonic()
    expired = threading.Event()
    proc = spawn.spawn(argv, env=curated_env(env))
    with proc:
        assert proc.stdout is not None
        try:
            # readline blocks, so a watchdog thread enforces the deadline.
            watchdog = threading.Timer(timeout, _expire, args=(proc, expired))
            watchdog.daemon = True
            watchdog.start()
            try:
                for raw in iter(proc.stdout.readline, b""):
                    log.write(raw)
                    tail.append(raw.decode("utf-8", "replace").rstrip())
                log.flush()
                proc.wait()
            finally:
                watchdog.cancel()
        except BaseException:
            spawn.stop(proc, KILL_GRACE)
            raise
    spawn.forget(proc)
    timed_out = expired.is_set()
    returncode = None if timed_out else proc.returncode
    if timed_out:
        log.write(f"dib-matrix: killed after {timeout:.0f} s timeout\n".encode())
        log.flush()
    return ProcResult(tuple(argv), returncode, timed_out, tuple(tail), time.monotonic() - start)


def _expire(proc: subprocess.Popen[bytes], expired: threading.Event) -> None:
    expired.set()
    spawn.stop(proc, KILL_GRACE)
