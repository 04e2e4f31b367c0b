"""The one way dib and dib-matrix start a child process, and end it.

``run`` runs a command to completion: no shell, stdin closed, its output read as it
comes (copied to a log file, handed line by line to a callback, and kept in memory up
to a limit), a timeout, and one ``Result`` (exit status, output, timed out, seconds,
peak memory and CPU time from ``wait4``). ``spawn`` starts a child that the caller
watches itself (qemu's console, a package cache serving a run).

Every child gets its own process group, so ending it ends what it forked too
(debootstrap's chroots, qemu's helpers, apt-cacher-ng's workers): a timeout or
Ctrl-C sends SIGTERM (or the caller's signal) to the group, SIGKILL after a grace,
and sweeps the group once more (``stop``). This module remembers the children it
started until they are reaped: an orchestrator that stops early ends them all with
``stop_all`` instead of searching /proc for them.

The environment policy, one for every child: a child gets exactly the environment its
caller passes, and without one ``child_env()``: PATH, HOME and TMPDIR, the proxy
variables in both spellings, the Docker engine's address and TLS settings, and
LANG=LC_ALL=C.UTF-8 (tools answer in English and UTF-8, which the log classifier and
the parsers of their output read); nothing else of the caller's environment (no
secrets, no locale or tool settings that change what a tool prints). ``child_env(extra)``
is that plus the caller's own variables. A caller that hands over a whole environment
does so on purpose and says why: dib hands its hooks the build environment
``dib.environment`` made, and dib's own commands get dib's environment, because dib
already runs inside the environment its caller curated.

Runs inside host containers too: Python 3.9, standard library only.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import os
import resource
import selectors
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import (
    IO,
    Callable,
    Deque,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

LOG = logging.getLogger("dib.spawn")

GRACE_SECONDS = 5.0
_SWEEP_SECONDS = 5.0
OUTPUT_LIMIT = 1 << 20  # bytes of output a Result keeps, unless the call says otherwise
ERRORS_LIMIT = 64 << 10  # bytes of stderr kept when it is read apart: its messages
LINE_LIMIT = 64 << 10  # a longer line without a newline is handed on in pieces
LINGER_SECONDS = 2.0  # after the child exited, what it left holding its output may write on
_CHUNK = 64 << 10
_POLL_SECONDS = 0.25  # how often a quiet child is asked whether it exited

PROXY_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
PASSED_ENV = ("PATH", "HOME", "TMPDIR", *PROXY_ENV,
              "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOCALE = "C.UTF-8"

_live: Set[subprocess.Popen] = set()
_live_lock = threading.Lock()

Stream = Union[int, IO, None]


def child_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The curated environment of a child (see the module's docstring), plus ``extra``."""
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update({"LANG": LOCALE, "LC_ALL": LOCALE})
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Result:
    """How a command ended. ``returncode`` is negative when a signal ended it (also after a
    timeout or an overflow); ``peak_rss`` and ``cpu`` are 0 when the child was killed."""

    argv: Tuple[str, ...]
    returncode: int
    output: bytes  # stdout, with stderr unless it was read apart; bounded (see ``run``)
    seconds: float
    timed_out: bool = False
    overflowed: bool = False  # stopped for writing more than the limit (``whole_output``)
    errors: str = ""  # stderr read apart: its last ERRORS_LIMIT bytes
    peak_rss: int = 0  # bytes: the largest single process of the tree (wait4's ru_maxrss)
    cpu: float = 0.0  # user + system seconds of the whole reaped tree: load-independent

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.overflowed

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def tail(self, count: int) -> List[str]:
        """The last ``count`` lines of the output (trailing blank lines left out)."""
        text = self.text.rstrip()
        if not text or count <= 0:
            return []
        return [line.rstrip("\r") for line in text.split("\n")[-count:]]


def spawn(
    argv: Sequence[str],
    *,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Union[str, Path]] = None,
    stdout: Stream = subprocess.PIPE,
    stderr: Stream = subprocess.STDOUT,
) -> subprocess.Popen:
    """Start ``argv`` (never through a shell) in a new process group, stdin closed; the
    caller watches and ends it (``stop``, ``running``). ``env``: see the module's docstring."""
    proc = subprocess.Popen(
        [str(part) for part in argv],
        env=dict(env) if env is not None else child_env(),
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


def run(
    argv: Sequence[str],
    *,
    timeout: Optional[float],
    log: Optional[IO[bytes]] = None,
    limit: int = OUTPUT_LIMIT,
    whole_output: bool = False,
    on_line: Optional[Callable[[str], None]] = None,
    errors_apart: bool = False,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Union[str, Path]] = None,
    grace: float = GRACE_SECONDS,
    first: signal.Signals = signal.SIGTERM,
    linger: float = LINGER_SECONDS,
) -> Result:
    """Run ``argv`` (never through a shell) to its end or ``timeout`` seconds (None: no limit).

    Its output (stderr too, unless ``errors_apart``) is written to ``log`` after a
    ``$ command`` line and handed to ``on_line`` line by line as it comes. The result
    keeps the last ``limit`` bytes of it; with ``whole_output`` the output *is* the
    result (JSON to parse, a file read through a tool), so a child that writes more
    than ``limit`` bytes is stopped and the result says ``overflowed``.

    At the timeout, when ``on_line`` or the log raises, or on Ctrl-C, the child's group
    gets ``first`` and SIGKILL after ``grace`` (``stop``). When the child exited but
    something it started still holds its output, that is ended after ``linger`` seconds.
    A program that cannot be started raises OSError, as ``subprocess`` does.
    """
    argv = tuple(str(part) for part in argv)
    LOG.debug("exec: %s", shlex.join(argv))
    if log is not None:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    proc = spawn(argv, env=env, cwd=cwd,
                 stderr=subprocess.PIPE if errors_apart else subprocess.STDOUT)
    output = _Sink(limit, whole_output, log, on_line)
    errors = _Sink(ERRORS_LIMIT)
    try:
        ending, usage = _follow(proc, output, errors, deadline, linger)
    except BaseException:
        _end(proc, grace, first)
        raise
    if ending is _Ending.EXITED:
        _close(proc)
        forget(proc)
    else:
        _end(proc, grace, first)
    output.finish()
    return Result(
        argv,
        proc.returncode,
        output.kept(),
        time.monotonic() - started,
        timed_out=ending is _Ending.TIMED_OUT,
        overflowed=ending is _Ending.OVERFLOWED,
        errors=errors.kept().decode("utf-8", "replace"),
        peak_rss=usage.ru_maxrss * 1024 if usage else 0,  # ru_maxrss is in KiB on Linux
        cpu=usage.ru_utime + usage.ru_stime if usage else 0.0,
    )


class _Ending(enum.Enum):
    EXITED = "exited"  # the child exited and its output ended
    TIMED_OUT = "timed out"
    OVERFLOWED = "overflowed"  # more output than a ``whole_output`` limit
    LEFT_RUNNING = "left running"  # the child exited; what holds its output is ended


class _Sink:
    """One pipe of the child: copied to ``log`` and ``on_line`` as it comes, and kept up
    to ``limit`` bytes (the last ones; with ``whole`` all of them, or it overflows)."""

    def __init__(self, limit: int, whole: bool = False, log: Optional[IO[bytes]] = None,
                 on_line: Optional[Callable[[str], None]] = None) -> None:
        self.limit = limit
        self.whole = whole
        self.log = log
        self.on_line = on_line
        self.chunks: Deque[bytes] = collections.deque()
        self.size = 0
        self.partial = b""

    def feed(self, chunk: bytes) -> bool:
        """Take ``chunk``; False when the output went over a ``whole`` limit."""
        if self.log is not None:
            self.log.write(chunk)
            self.log.flush()  # the log is read while the command runs
        if self.on_line is not None:
            self._split(chunk)
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.whole:
            return self.size <= self.limit
        while len(self.chunks) > 1 and self.size - len(self.chunks[0]) >= self.limit:
            self.size -= len(self.chunks.popleft())
        return True

    def _split(self, chunk: bytes) -> None:
        assert self.on_line is not None
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            self.on_line(_decode(line))
        while len(self.partial) > LINE_LIMIT:  # a flood without newlines: in pieces
            self.on_line(_decode(self.partial[:LINE_LIMIT]))
            self.partial = self.partial[LINE_LIMIT:]

    def finish(self) -> None:
        """Hand on the last line when it had no newline."""
        if self.on_line is not None and self.partial:
            self.on_line(_decode(self.partial))
        self.partial = b""

    def kept(self) -> bytes:
        data = b"".join(self.chunks)
        return data[: self.limit] if self.whole else data[max(len(data) - self.limit, 0):]


def _decode(line: bytes) -> str:
    return line.decode("utf-8", "replace")


def _follow(
    proc: subprocess.Popen, output: _Sink, errors: _Sink, deadline: Optional[float],
    linger: float,
) -> Tuple[_Ending, Optional[resource.struct_rusage]]:
    """Read the child's pipes until they close, then reap it: how it ended, its usage."""
    assert proc.stdout is not None
    sinks = {proc.stdout.fileno(): output}
    if proc.stderr is not None:
        sinks[proc.stderr.fileno()] = errors
    ending, usage = _pump(proc, sinks, deadline, linger)
    if ending is _Ending.EXITED and proc.returncode is None:
        usage = _wait(proc, deadline)
        if proc.returncode is None:
            return _Ending.TIMED_OUT, None
    return ending, usage


def _pump(
    proc: subprocess.Popen, sinks: Dict[int, _Sink], deadline: Optional[float],
    linger: float,
) -> Tuple[_Ending, Optional[resource.struct_rusage]]:
    usage = None
    linger_end: Optional[float] = None
    next_poll = time.monotonic() + _POLL_SECONDS
    with selectors.DefaultSelector() as selector:
        for fd in sinks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return _Ending.TIMED_OUT, usage
            if linger_end is not None and now >= linger_end:
                return _Ending.LEFT_RUNNING, usage
            ends = [end for end in (deadline, linger_end, next_poll) if end is not None]
            for key, _ in selector.select(max(min(ends) - now, 0.0)):
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(key.fd)
                elif not sinks[key.fd].feed(chunk):
                    return _Ending.OVERFLOWED, usage
            if proc.returncode is None and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + _POLL_SECONDS
                usage = _try_reap(proc)
            if linger_end is None and proc.returncode is not None:
                linger_end = time.monotonic() + linger
    return _Ending.EXITED, usage


def _wait(proc: subprocess.Popen, deadline: Optional[float]) -> Optional[resource.struct_rusage]:
    """Reap the child (its output has ended) by ``deadline``: its usage; the child's
    ``returncode`` stays None when it still runs then."""
    delay = 0.0005
    while True:
        usage = _try_reap(proc)
        if proc.returncode is not None:
            return usage
        if deadline is not None and time.monotonic() >= deadline:
            return None
        pause = delay if deadline is None else min(delay, max(deadline - time.monotonic(), 0))
        time.sleep(pause)
        delay = min(delay * 2, 0.05)


def _try_reap(proc: subprocess.Popen) -> Optional[resource.struct_rusage]:
    """Reap the child if it exited (``proc.returncode`` is set then): its resource usage.
    ``wait4`` rather than ``Popen.wait``: it also says what the child's tree used."""
    try:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere (``stop_all`` of an orchestrator ending)
        proc.wait()
        return None
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


def _end(proc: subprocess.Popen, grace: float, first: signal.Signals) -> None:
    stop(proc, grace, first)
    _close(proc)


def _close(proc: subprocess.Popen) -> None:
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
