"""Run a cell's command, then upload what it wrote to the run's results endpoint.

A Swarm cell may run on a machine without the run directory, so it cannot bind-mount
``<run>/images/<host>/`` at ``/out``: it writes into its own ``/out`` and this wrapper
sends every file there to the endpoint the orchestrator serves for the run
(``matrix.containers.upload`` documents the protocol)::

    python3 upload_results.py --dir /out -- <command> [args...]

It runs inside host containers on the host's own python3 (3.9 or later), from the dib
tree copied to ``/opt/dib-matrix``: standard library only.

1. ``<command>`` runs without a shell, with this process's stdin, stdout and stderr, and
   without the two upload variables (:data:`URL_ENV`, :data:`TOKEN_ENV`) in its
   environment; SIGTERM and SIGINT are passed on to it (as PID 1 of a container this
   process would otherwise ignore them).
2. Every regular file directly in ``--dir`` is uploaded, by name: its sha256 first,
   then one ``PUT`` streamed from the file. Links, directories and other special files
   are skipped with one line each and never followed or opened as what they point at.
   A connection error or a 5xx answer is retried (:data:`ATTEMPTS` in all), a 4xx never.
3. One line per file on stderr:
   ``dib-matrix upload: debian.qcow2 524288000 bytes sha256:ab12cd34ef56... ok``.
4. The exit status is the command's (128+N when a signal N killed it), also when an
   upload failed: a failed build's ``.failure.json`` and partial outputs are evidence,
   so they are sent too. When the command succeeded and an upload did not, the status
   is :data:`UPLOAD_FAILED_EXIT` after ``dib-matrix upload failed: <reason>``.
   A missing ``--dir``, or an empty one, is nothing to upload.
5. Without the two variables the command is not run at all (status
   :data:`UPLOAD_FAILED_EXIT`): its results could not go anywhere. A file the endpoint
   never answered for ends the uploads (the server is gone), and so does SIGTERM or
   SIGINT once the command has ended.
6. While the command runs, its token is looked at every :data:`LOOK_SECONDS`
   (``GET /v1/<token>``). Once it is revoked (the run is stopping: Ctrl-C, fail-fast,
   its service removed) or the endpoint has not answered for :data:`ORPHAN_SECONDS`
   (the run was killed), the command gets SIGTERM, then SIGKILL after
   :data:`STOP_GRACE_SECONDS`, nothing is uploaded, and the status is the command's.
   This is how a cell on another swarm node stops: before Moby 24, removing a job's
   service does not stop its task there. Without ``--dir`` nothing is uploaded at all;
   the wrapper only does this.

The orchestrator imports the names below (it is ``matrix.run.incontainer.upload_results``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Optional
from urllib.parse import quote, urlsplit

URL_ENV = "DIB_MATRIX_UPLOAD_URL"  # the endpoint, http://<address>:<port>
TOKEN_ENV = "DIB_MATRIX_UPLOAD_TOKEN"  # this cell's secret (ResultsEndpoint.expect)
UPLOAD_FAILED_EXIT = 75  # EX_TEMPFAIL: the command succeeded, its results did not arrive
FAILED = "dib-matrix upload failed"  # begins the last line when a file did not arrive
# The protocol, shared with the server (matrix.containers.upload imports them).
API_PREFIX = "/v1"
SHA256_HEADER = "X-Content-Sha256"

CHUNK = 1 << 20
ATTEMPTS = 3  # tries per file: a connection error or a 5xx is tried again, a 4xx never
RETRY_DELAY = 1.0  # seconds before the second try, doubled before each later one
SOCKET_TIMEOUT = 60.0  # seconds without progress on the connection
ANSWER_LIMIT = 4096  # bytes of an answer's text read (it is one line)
FORWARDED = (signal.SIGTERM, signal.SIGINT)
LOOK_SECONDS = 3.0  # how often the token is looked at while the command runs
ORPHAN_SECONDS = 90.0  # no answer for this long: the run is gone, the command stops
STOP_GRACE_SECONDS = 10.0  # between SIGTERM and SIGKILL of a command the run stopped
EXIT_NOT_FOUND, EXIT_NOT_EXECUTABLE = 127, 126  # as a shell says it
SAY = "dib-matrix upload"
SHOWN_DIGEST = 12  # hex digits of a sha256 in a line
SUMMED = 3  # failures named in the last line


class UploadFailed(Exception):
    """A file did not arrive; the message says why."""


class Unreachable(UploadFailed):
    """No answer from the endpoint at all: the other files are not tried."""


class Interrupted(UploadFailed):
    """A signal came while uploading."""


class FileChanged(Exception):
    """The file is not what was hashed any more (something still writes it)."""


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def shown(name: str) -> str:
    """A file name fit for one log line (control characters and odd bytes escaped)."""
    return name if name.isprintable() and name.isascii() else ascii(name)[1:-1]


# ------------------------------------------------------------------ the endpoint


@dataclass(frozen=True)
class Endpoint:
    """Where this cell's files go: the server and the cell's token."""

    host: str
    port: int
    token: str = field(repr=False)  # a secret: never in a line or a traceback
    url: str = ""

    @classmethod
    def from_environment(cls, url: Optional[str], token: Optional[str]) -> Endpoint:
        if not url:
            raise UploadFailed(f"{URL_ENV} is not set")
        if not token:
            raise UploadFailed(f"{TOKEN_ENV} is not set")
        try:
            parts = urlsplit(url)
            port = parts.port or 80
        except ValueError as err:
            raise UploadFailed(f"{URL_ENV} is not a URL: {err}") from None
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.fragment or parts.username:
            raise UploadFailed(f"{URL_ENV} is not http://<address>:<port>")
        return cls(parts.hostname, port, token, f"http://{parts.netloc}")

    def token_path(self) -> str:
        """The token's own path: ``GET`` it to learn whether the cell goes on."""
        return f"{API_PREFIX}/{quote(self.token.encode('utf-8', 'surrogateescape'), safe='')}"

    def path_for(self, name: str) -> str:
        """The request path of one file: every byte that is not plainly allowed is
        escaped, so no name can add a path segment, a query or a header."""
        return f"{self.token_path()}/{quote(os.fsencode(name), safe='+')}"


# ------------------------------------------------------------------ the command


class Forwarder:
    """Passes SIGTERM and SIGINT on to the command while it runs; while the files are
    uploaded, one of them stops the upload instead."""

    def __init__(self) -> None:
        self.child: Optional[subprocess.Popen[bytes]] = None
        self.pending: list[int] = []  # came before the command started
        self.uploading = False

    def __call__(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.uploading:
            raise Interrupted(f"interrupted by {signal.Signals(signum).name}")
        if self.child is None:
            self.pending.append(signum)
        elif self.child.returncode is None:
            self.child.send_signal(signum)

    @contextmanager
    def installed(self) -> Iterator[Forwarder]:
        previous = {signum: signal.signal(signum, self) for signum in FORWARDED}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def started(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        for signum in self.pending:
            child.send_signal(signum)


class Watch:
    """Looks at the cell's token while the command runs; stops the command once the run
    revoked it or has not answered for ``orphan`` seconds."""

    def __init__(self, endpoint: Endpoint, look: float = LOOK_SECONDS,
                 orphan: float = ORPHAN_SECONDS, grace: float = STOP_GRACE_SECONDS) -> None:
        self.endpoint, self.look, self.orphan, self.grace = endpoint, look, orphan, grace
        self.stopped: Optional[str] = None  # why the command was stopped
        self._done = threading.Event()

    def follow(self, child: subprocess.Popen[bytes]) -> None:
        threading.Thread(target=self._watch, args=(child,), daemon=True).start()

    def end(self) -> None:
        self._done.set()

    def _watch(self, child: subprocess.Popen[bytes]) -> None:
        answered = time.monotonic()
        while not self._done.wait(self.look):
            live = self._live()
            if live:
                answered = time.monotonic()
                continue
            if live is None and time.monotonic() - answered < self.orphan:
                continue
            self.stopped = ("the run revoked this cell's token" if live is False else
                            f"the run did not answer for {self.orphan:.0f} s")
            say(f"{SAY}: {self.stopped}: stopping the command")
            _stop(child, self.grace, self._done)
            return

    def _live(self) -> Optional[bool]:
        """True: go on; False: revoked; None: no answer."""
        connection = http.client.HTTPConnection(self.endpoint.host, self.endpoint.port,
                                                timeout=self.look * 2)
        try:
            connection.request("GET", self.endpoint.token_path(),
                               headers={"Connection": "close"})
            status = connection.getresponse().status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()
        return True if status == 204 else False if status == 403 else None


def _stop(child: subprocess.Popen[bytes], grace: float, done: threading.Event) -> None:
    if child.poll() is None:
        child.terminate()
    if not done.wait(grace) and child.poll() is None:
        child.kill()


def run_command(command: Sequence[str], environment: dict[str, str],
                forwarder: Forwarder, watch: Optional[Watch] = None) -> int:
    """The command's exit status, 128+N when signal N killed it."""
    try:
        child = subprocess.Popen(list(command), env=environment)
    except OSError as err:
        say(f"{SAY}: cannot run {shown(command[0])}: {err.strerror or err}")
        missing = isinstance(err, FileNotFoundError)
        return EXIT_NOT_FOUND if missing else EXIT_NOT_EXECUTABLE
    forwarder.started(child)
    if watch is not None:
        watch.follow(child)
    try:
        status = child.wait()
    finally:
        if watch is not None:
            watch.end()
    return 128 - status if status < 0 else status


# ------------------------------------------------------------------ the files


def _kind(mode: int) -> Optional[str]:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return next((word for test, word in kinds if test(mode)), "not a regular file")


def _open_regular(name: str, directory: int) -> Optional[int]:
    """A read descriptor on the regular file ``name``, or None (said why). The mode is
    checked before opening (a FIFO or a device is never opened) and again on what was
    opened, never following a link: a file swapped meanwhile is not read either."""
    try:
        kind = _kind(os.lstat(name, dir_fd=directory).st_mode)
        if kind is None:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(name, flags, dir_fd=directory)
            kind = _kind(os.fstat(fd).st_mode)
            if kind is None:
                return fd
            os.close(fd)
    except OSError as err:
        kind = f"cannot be read: {err.strerror or err}"
    say(f"{SAY}: skipped {shown(name)}: {kind}, not followed")
    return None


def listed(directory: str) -> tuple[Optional[int], list[str]]:
    """A descriptor on ``directory`` and its names, sorted; (None, []) when there is no
    such directory (nothing to upload)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None, []
    except OSError as err:
        raise UploadFailed(f"cannot read {shown(directory)}: {err.strerror or err}") from None
    try:
        return fd, sorted(os.listdir(fd))
    except OSError as err:
        os.close(fd)
        raise UploadFailed(f"cannot list {shown(directory)}: {err.strerror or err}") from None


def sha256_of(fd: int) -> tuple[str, int]:
    """The hex sha256 and the size of what the file holds now."""
    digest, size = hashlib.sha256(), 0
    os.lseek(fd, 0, os.SEEK_SET)
    for block in iter(lambda: os.read(fd, CHUNK), b""):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


# ------------------------------------------------------------------ one PUT


def _send_body(connection: http.client.HTTPConnection, fd: int, size: int) -> None:
    """``size`` bytes of the file from its start; stops early when the server has
    answered already (a refusal before the body: it will not read the rest)."""
    os.lseek(fd, 0, os.SEEK_SET)
    sock = connection.sock
    assert sock is not None  # the request's headers went through it
    left = size
    while left:
        block = memoryview(os.read(fd, min(CHUNK, left)))
        if not block:
            raise FileChanged("the file got shorter while it was sent")
        left -= len(block)
        while block:
            # Never block in a send: a server that answered and stopped reading would
            # hold a full socket buffer until its timeout.
            readable, writable, _ = select.select([sock], [sock], [], SOCKET_TIMEOUT)
            if readable:
                return
            if not writable:
                raise socket.timeout("the server took nothing for the socket timeout")
            block = block[_send_some(sock, block):]


def _send_some(sock: socket.socket, block: memoryview) -> int:
    """What one send of ``block`` took, without waiting for room."""
    try:
        return sock.send(block, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return 0


def put(endpoint: Endpoint, name: str, fd: int, size: int, digest: str) -> tuple[int, str]:
    """One try: the server's status and its answer's text."""
    connection = http.client.HTTPConnection(endpoint.host, endpoint.port,
                                            timeout=SOCKET_TIMEOUT)
    try:
        connection.connect()
        connection.putrequest("PUT", endpoint.path_for(name), skip_accept_encoding=True)
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Content-Length", str(size))
        connection.putheader(SHA256_HEADER, digest)
        connection.endheaders()
        try:
            _send_body(connection, fd, size)
        except OSError as err:
            # A server that refused early closes the connection: its answer may be there.
            return _answer(connection, failed_send=err)
        return _answer(connection)
    finally:
        connection.close()


def _answer(connection: http.client.HTTPConnection,
            failed_send: Optional[OSError] = None) -> tuple[int, str]:
    try:
        response = connection.getresponse()
        text = response.read(ANSWER_LIMIT).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        if failed_send is not None:
            raise failed_send from None
        raise
    return response.status, " ".join(text.split())[:200]


def upload(endpoint: Endpoint, name: str, fd: int, retry_delay: float) -> None:
    """Sends one file (tried again on a connection error or a 5xx) and says how it went.
    UploadFailed (Unreachable when no try got an answer) says why it did not arrive."""
    try:
        digest, size = sha256_of(fd)
    except OSError as err:
        say(f"{SAY}: {shown(name)} FAILED: cannot read it: {err.strerror or err}")
        raise UploadFailed(f"{shown(name)}: cannot read it: {err.strerror or err}") from None
    head = f"{SAY}: {shown(name)} {size} bytes sha256:{digest[:SHOWN_DIGEST]}..."
    problem, answered = "", False
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(retry_delay * 2 ** (attempt - 1))
        try:
            status, text = put(endpoint, name, fd, size, digest)
        except (OSError, http.client.HTTPException) as err:
            problem = f"no answer from {endpoint.url}: {err}"
            continue
        except FileChanged as err:
            problem, answered = str(err), True
            break
        answered = True
        if status in (http.client.OK, http.client.CREATED):
            say(f"{head} ok" + (" (was there already)" if status == http.client.OK else ""))
            return
        problem = f"{status} {text}".strip()
        if status < 500:
            break
    say(f"{head} FAILED: {problem}")
    raise (UploadFailed if answered else Unreachable)(f"{shown(name)}: {problem}")


def upload_all(directory: str, endpoint: Endpoint, retry_delay: float) -> list[str]:
    """Every regular file of ``directory`` uploaded; the reasons of those that were not."""
    dir_fd, names = listed(directory)
    if dir_fd is None:
        return []
    failures: list[str] = []
    try:
        for position, name in enumerate(names):
            fd = _open_regular(name, dir_fd)
            if fd is None:
                continue
            try:
                upload(endpoint, name, fd, retry_delay)
            except UploadFailed as err:
                failures.append(str(err))
                if isinstance(err, (Unreachable, Interrupted)):
                    left = len(names) - position - 1
                    failures += [f"{left} more entries not tried"] if left else []
                    break
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)
    return failures


# ------------------------------------------------------------------ the command line


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 3600:  # NaN too
        raise argparse.ArgumentTypeError(f"not a number of seconds from 0 to 3600: {text}")
    return value


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The options and the command (everything after ``--``)."""
    parser = argparse.ArgumentParser(
        prog="upload_results.py",
        description="Run a command, then upload the files it wrote to the results endpoint "
                    f"(${URL_ENV}, ${TOKEN_ENV}).")
    parser.add_argument("--dir", help="the directory whose files to upload (none: only "
                        "stop the command when the run revokes the token)")
    parser.add_argument("--retry-delay", type=_seconds, default=RETRY_DELAY,
                        help="seconds before trying a file again (doubled each time)")
    argv = list(argv)
    if "--" not in argv:
        parser.error("no command: give it after --")
    split = argv.index("--")
    options, command = parser.parse_args(argv[:split]), argv[split + 1:]
    if not command:
        parser.error("no command after --")
    return options, command


def main(argv: Optional[Sequence[str]] = None) -> int:
    options, command = parse(sys.argv[1:] if argv is None else argv)
    environment = dict(os.environ)
    url, token = environment.pop(URL_ENV, None), environment.pop(TOKEN_ENV, None)
    try:
        endpoint = Endpoint.from_environment(url, token)
    except UploadFailed as err:  # nowhere to send results: running the command is moot
        say(f"{FAILED}: {err}")
        return UPLOAD_FAILED_EXIT
    forwarder, watch = Forwarder(), Watch(endpoint)
    with forwarder.installed():
        status = run_command(command, environment, forwarder, watch)
        if watch.stopped or not options.dir:  # the run ended the cell: nobody waits
            return status
        forwarder.uploading = True
        try:
            failures = upload_all(options.dir, endpoint, options.retry_delay)
        except UploadFailed as err:  # the directory unreadable, or a signal
            failures = [str(err)]
    if not failures:
        return status
    more = f"; and {len(failures) - SUMMED} more" if len(failures) > SUMMED else ""
    say(f"{FAILED}: {'; '.join(failures[:SUMMED])}{more}")
    return status or UPLOAD_FAILED_EXIT


if __name__ == "__main__":
    sys.exit(main())
