"""A package cache shared by every cell of a run: apt-cacher-ng on loopback.

The orchestrator starts Debian's ``apt-cacher-ng`` as its own child process
(foreground mode, never the system service), with its configuration, cache and
logs under a directory the caller owns, listening on 127.0.0.1 only. Cells and
hostgen run with host networking, so they reach it through ``http_proxy``:
debootstrap (wget), apt and dib's mirror probe (urllib) all honour it. Only
plain-http traffic goes through it; https is never routed there.

Figures come from its transfer log, not from guesses: every line is
``time|I|bytes|client|path`` for bytes fetched from upstream, or ``time|O|...``
for bytes sent to a client.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dib import spawn

EXECUTABLE = "apt-cacher-ng"
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")  # not on every user's PATH
SUPPORT_DIR = Path("/usr/lib/apt-cacher-ng")  # the package's mirror lists
LOOPBACK = "127.0.0.1"
# apt-cacher-ng 3.7 formats ports >= 32768 as negative numbers and then fails
# with "Error resolving address for binding" while staying alive, so pick below.
PORT_RANGE = (20000, 32767)
PORT_ATTEMPTS = 5
START_TIMEOUT = 15.0
STOP_GRACE = 10.0
TRANSFER_LOG = "apt-cacher.log"
NO_PROXY = "localhost,127.0.0.1,::1"
REPORT_PAGE = "acng-report.html"


class PackageCacheError(Exception):
    """The package cache could not start (one line, says what to do)."""


@dataclass(frozen=True)
class CacheStats:
    bytes_from_upstream: int = 0
    bytes_served: int = 0

    def __sub__(self, earlier: CacheStats) -> CacheStats:
        return CacheStats(self.bytes_from_upstream - earlier.bytes_from_upstream,
                          self.bytes_served - earlier.bytes_served)


def parse_transfer_log(lines: Iterable[str]) -> CacheStats:
    """Sum apt-cacher-ng's transfer log; error (E) and malformed lines are ignored."""
    upstream = served = 0
    for line in lines:
        fields = line.split("|")
        if len(fields) < 3 or not fields[2].strip().isdigit():
            continue
        if fields[1] == "I":
            upstream += int(fields[2])
        elif fields[1] == "O":
            served += int(fields[2])
    return CacheStats(upstream, served)


def proxy_environment(proxy_url: str) -> dict[str, str]:
    """Variables that route a process's plain-http downloads through the cache.

    Lower case only: apt, wget and curl read no upper-case ``HTTP_PROXY``, and
    Python prefers the lower-case one. No ``https_proxy``: https stays direct.
    """
    return {"http_proxy": proxy_url, "no_proxy": NO_PROXY}


@dataclass(frozen=True)
class Layout:
    """Where one cache keeps its files, all under the caller's directory."""

    root: Path

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def transfer_log(self) -> Path:
        return self.log_dir / TRANSFER_LOG

    @property
    def output(self) -> Path:
        return self.log_dir / "apt-cacher-ng.out"

    def make(self) -> None:
        for path in (self.conf_dir, self.cache_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)


def render_config(layout: Layout, port: int, upstream_proxy: str | None = None) -> str:
    """acng.conf for a private instance: nothing under /etc, /var or /run is used."""
    lines = [
        f"CacheDir: {layout.cache_dir}",
        f"LogDir: {layout.log_dir}",
        f"SupportDir: {SUPPORT_DIR}",
        # The default socket is the system service's (/run/apt-cacher-ng/socket).
        f"SocketPath: {layout.root / 'socket'}",
        f"Port: {port}",
        f"BindAddress: {LOOPBACK}",
        "ForeGround: 1",
        "UnbufferLogs: 1",  # transfer lines reach the log as they happen
        "VerboseLog: 1",
        f"ReportPage: {REPORT_PAGE}",
        "AllowUserPorts: 0",  # mirrors on any port (only loopback clients exist)
        # Every known mirror of an archive shares one cache namespace.
        "Remap-debrep: file:deb_mirror*.gz /debian",
        "Remap-uburep: file:ubuntu_mirrors /ubuntu",
    ]
    if upstream_proxy:
        if not re.fullmatch(r"https?://\S+", upstream_proxy):
            raise PackageCacheError(f"upstream proxy {upstream_proxy!r} is not an http(s) URL")
        lines.append(f"Proxy: {upstream_proxy}")
    return "\n".join(lines) + "\n"


def find_executable(name: str = EXECUTABLE) -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    found = shutil.which(name, path=search)
    if found is None:
        raise PackageCacheError(f"{name} not found: install the apt-cacher-ng package "
                                "(it is listed in bindep.txt)")
    return found


def _free_port(rng: random.Random) -> int:
    for _ in range(50):
        port = rng.randint(*PORT_RANGE)
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise PackageCacheError(f"no free port in {PORT_RANGE[0]}-{PORT_RANGE[1]} on {LOOPBACK}")


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _lock(path: Path) -> IO[str]:
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise PackageCacheError(f"{path.parent} is in use by another package cache") from None
    return handle


def hold_idle(cache_dir: Path) -> IO[str]:
    """The lock a running cache holds on ``cache_dir``, taken without waiting (close the
    handle to let go): PackageCacheError while a run's apt-cacher-ng uses the directory.
    Whoever trims the cache holds it, so no cache starts on files being removed."""
    return _lock(Layout(cache_dir).root / "lock")


class PackageCache:
    """A running apt-cacher-ng; use as a context manager so it is always reaped."""

    def __init__(self, layout: Layout, port: int, process: subprocess.Popen[bytes],
                 log_offset: int, undo: ExitStack) -> None:
        self.layout = layout
        self.port = port
        self.process = process
        self.log_offset = log_offset  # stats count only this instance's transfers
        self._undo = undo

    @classmethod
    def start(cls, cache_dir: Path, *, upstream_proxy: str | None = None,
              executable: str = EXECUTABLE, timeout: float = START_TIMEOUT) -> PackageCache:
        """Start it and wait until it answers; PackageCacheError (one line) if it cannot.

        Call from the thread that outlives the cache (the main one): the child
        gets SIGTERM when the thread that started it ends, so a killed
        orchestrator leaves no apt-cacher-ng behind.
        """
        program = find_executable(executable)
        layout = Layout(cache_dir.resolve())
        layout.make()
        with ExitStack() as undo:
            undo.enter_context(_lock(layout.root / "lock"))
            log = layout.transfer_log
            offset = log.stat().st_size if log.exists() else 0
            port, process = _launch(program, layout, upstream_proxy, timeout)
            undo.callback(_stop, process)
            return cls(layout, port, process, offset, undo.pop_all())

    @property
    def proxy_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def environment(self) -> dict[str, str]:
        return proxy_environment(self.proxy_url)

    def stats(self) -> CacheStats:
        """Bytes this instance fetched from upstream and served, from its transfer log."""
        try:
            with self.layout.transfer_log.open("rb") as log:
                log.seek(self.log_offset)
                text = log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return CacheStats()
        complete = text[: text.rfind("\n") + 1]  # a line being written is not counted yet
        return parse_transfer_log(complete.splitlines())

    def stop(self) -> None:
        """Terminate and reap it, release its directory; idempotent."""
        self._undo.close()

    def __enter__(self) -> PackageCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# Lines apt-cacher-ng prints when it runs on but cannot listen on its port.
LISTEN_FAILURES = ("is busy", "Error resolving address", "No socket(s)", "Couldn't bind")


def _launch(program: str, layout: Layout, upstream_proxy: str | None,
            timeout: float) -> tuple[int, subprocess.Popen[bytes]]:
    """Start it on a free loopback port (another one if that was taken meanwhile)."""
    rng = random.Random()
    reason = ""
    for _ in range(PORT_ATTEMPTS):
        port = _free_port(rng)
        (layout.conf_dir / "acng.conf").write_text(render_config(layout, port, upstream_proxy))
        process = _spawn(program, layout)
        try:
            reason = _wait_ready(process, port, layout.output, timeout)
        except BaseException:  # Ctrl-C while waiting: leave nothing running
            _stop(process)
            raise
        if not reason:
            return port, process
        _stop(process)
        if "busy" not in reason:
            break
    raise PackageCacheError(f"apt-cacher-ng did not start: {reason} (see {layout.output})")


def _wait_ready(process: subprocess.Popen[bytes], port: int, output: Path,
                timeout: float) -> str:
    """'' once it answers; else why it will not (its own words when it has some)."""
    deadline = time.monotonic() + timeout
    url = f"http://{LOOPBACK}:{port}/{REPORT_PAGE}"
    while time.monotonic() < deadline:
        if _answers(url):
            return ""
        said = _output_lines(output)
        failure = next((line for line in said if any(m in line for m in LISTEN_FAILURES)), "")
        if failure:
            return failure
        if process.poll() is not None:
            return said[-1] if said else f"exited with status {process.returncode}"
        time.sleep(0.1)
    return f"no answer on port {port} after {timeout:.0f} s"


def _output_lines(output: Path) -> list[str]:
    try:
        text = output.read_text(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def _spawn(program: str, layout: Layout) -> subprocess.Popen[bytes]:
    argv = [program, "-c", str(layout.conf_dir)]
    setpriv = shutil.which("setpriv", path=os.pathsep.join(["/usr/bin", "/bin"]))
    if setpriv:  # util-linux: the child gets SIGTERM when its parent thread ends
        argv = [setpriv, "--pdeathsig", "TERM", *argv]
    # Its own process group (dib.spawn): a terminal's Ctrl-C reaches the orchestrator,
    # which then stops the cache itself, after reading its stats if it likes.
    with layout.output.open("wb") as output:
        return spawn.spawn(argv, stdout=output)  # the curated environment (dib.spawn)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a grace; always reaped."""
    spawn.stop(process, STOP_GRACE)
