"""The one way dib and dib-matrix start a long-running child process, and end it.

Every child gets its own process group, so ending it ends what it forked too
(debootstrap's chroots, qemu's helpers, apt-cacher-ng's workers), and this module
remembers the children it started until they are reaped: an orchestrator that
stops early ends them all with ``stop_all`` instead of searching /proc for them.

Runs inside host containers too: Python 3.9, standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Iterator, Mapping, Optional, Sequence, Set, Union

GRACE_SECONDS = 5.0
_SWEEP_SECONDS = 5.0

_live: Set[subprocess.Popen] = set()
_live_lock = threading.Lock()

Stream = Union[int, IO, None]


def spawn(
    argv: Sequence[str],
    *,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Union[str, Path]] = None,
    stdout: Stream = subprocess.PIPE,
    stderr: Stream = subprocess.STDOUT,
) -> subprocess.Popen:
    """Start ``argv`` (never through a shell) in a new process group, stdin closed."""
    proc = subprocess.Popen(
        [str(part) for part in argv],
        env=dict(env) if env is not None else None,
        cwd=str(cwd) if cwd is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        # Its own group: a timeout or stop ends its whole tree, and a terminal's
        # Ctrl-C reaches only the orchestrator, which then stops it in order.
        start_new_session=True,
    )
    with _live_lock:
        _live.difference_update({p for p in _live if p.returncode is not None})
        _live.add(proc)
    return proc


def stop(proc: subprocess.Popen, grace: float = GRACE_SECONDS,
         first: signal.Signals = signal.SIGTERM) -> None:
    """Send ``first`` (SIGTERM; SIGINT for a child that cleans up on Ctrl-C) to the
    child's group, SIGKILL it after ``grace``, reap the child, and sweep the group
    once more: a process forked while the group was being signalled outlives its leader."""
    for sig, wait in ((first, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:  # the group is gone and its id was reused
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()
    deadline = time.monotonic() + _SWEEP_SECONDS
    while group_running(proc.pid) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.05)
    forget(proc)


def forget(proc: subprocess.Popen) -> None:
    """Drop a reaped child from the live set (``stop`` does it itself)."""
    with _live_lock:
        _live.discard(proc)


def stop_all(grace: float = GRACE_SECONDS) -> int:
    """Stop every child this process started that still runs; how many there were."""
    with _live_lock:
        running = [p for p in _live if p.poll() is None]
        _live.clear()
    threads = [threading.Thread(target=stop, args=(p, grace), daemon=True) for p in running]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(running)


def live() -> int:
    """How many children started here still run."""
    with _live_lock:
        return sum(1 for p in _live if p.poll() is None)


@contextlib.contextmanager
def running(argv: Sequence[str], *, grace: float = GRACE_SECONDS,
            **kwargs) -> Iterator[subprocess.Popen]:
    """``spawn`` for the length of a ``with`` block: the child is stopped when it ends."""
    proc = spawn(argv, **kwargs)
    try:
        yield proc
    finally:
        stop(proc, grace)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies only wait for a reaper)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False
