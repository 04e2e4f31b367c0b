"""The results endpoint: where Swarm cells upload what they wrote to ``/out``.

A Swarm cell may run on a machine without the run directory, so nothing is
bind-mounted at its ``/out``: when its command ends, the in-container wrapper
(``matrix/run/incontainer/upload_results.py``) sends every file there to this
endpoint, which the orchestrator serves for the run on the manager's swarm address.
The files land in the cell's ``<run>/images/<host>/`` as a local cell's do. Everything
arriving is untrusted: a hostile or broken cell, or anyone on the network.

Protocol, version 1 (one file per request; the server closes the connection after
each answer; the answer's body is one line of text)::

    PUT <url>/v1/<token>/<name> HTTP/1.1
    Content-Length: <bytes>             exactly one, decimal digits only
    X-Content-Sha256: <64 hex digits>   exactly one: the sha256 of the body

    201 Created        the file landed, its length and sha256 checked ("sha256:<hex>")
    200 OK             this very file (name, sha256, length) landed before with this
                       token: a retried upload; the body is not read
    400 Bad Request    the path is not /v1/<token>/<name>; the name fails is_file_name
                       (matched as sent: nothing is percent-decoded); Content-Length or
                       X-Content-Sha256 missing, repeated or malformed;
                       Transfer-Encoding present (chunked bodies are refused)
    403 Forbidden      the token is unknown or revoked: one answer for both, no detail
    409 Conflict       a different file of that name landed with this token, or
                       something this endpoint did not write is at the name (a file, a
                       link, a directory): never replaced, never followed
    413 Too Large      the declared length is more than what is left of the cell's limit
                       (the declared length is checked before any of the body is read)
    422 Unprocessable  the sha256 of the Content-Length bytes read is not the declared
                       one: nothing is kept
    500, 507           the file could not be written here (507: no space left)
    (no answer)        the body ended early or the client was silent for the idle
                       timeout: nothing is kept

    GET <url>/v1/<token>                the wrapper's look at its token, every few seconds
    204 No Content     the token is live: the cell goes on
    403 Forbidden      unknown or revoked (the cell ended, or the run is stopping): the
                       wrapper stops its command

Checked in this order: the path, the token, the name, the headers, then the name
against what is there and the length against the limit. Other methods get 501, a
request line over 64 KiB 414, header lines over 64 KiB or more than 100 headers 431
(http.server's bounds).

Each token is made for one cell by :meth:`ResultsEndpoint.expect` and names the cell's
destination directory; a presented token is compared with every cell's in constant
time. Exactly ``Content-Length`` bytes are read (what follows is never looked at), a
MiB at a time, into a new temporary file in the destination (``O_EXCL|O_NOFOLLOW``
under a random hidden name that no upload may take), hashed as they come, synced, and
linked to the final name only when the digest matches; a link never replaces anything.
The temporary file is removed on every other path. A cell's files add up to at most
``cell_limit`` bytes: each request reserves its declared length before reading and
gives it back when its file is not kept. An answer sent before the body is read is
followed by a short drain, so the client reads it rather than a reset connection.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from http.client import HTTPMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

from matrix.run.incontainer.upload_results import API_PREFIX, SHA256_HEADER
from results.names import MAX_NAME

LOG = logging.getLogger("dib-matrix")
DEFAULT_CELL_LIMIT = 64 << 30  # bytes a cell may upload in all: images are a few GiB
IDLE_TIMEOUT = 60.0  # seconds a connection may stay silent
CHUNK = 1 << 20
MAX_CONNECTIONS = 128  # at once; more are closed at once (a cell's client tries again)
POLL_SECONDS = 0.05  # how soon stop() is noticed
LINGER_SECONDS = 2.0  # draining an unread body after an early answer
TOKEN_BYTES = 32  # of randomness in a token
TEMP_ATTEMPTS = 16  # random temporary names tried before giving up
FILE_MODE = 0o644
NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK)
# The names a cell may upload: what dib writes into /out (<target>.<type>, .sha256,
# .packages, .failure.json, .layout.json). One component, never hidden, never an option.
FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
LENGTH_RE = re.compile(r"[0-9]{1,18}")  # Content-Length as digits only: int() takes more
TOKEN_IN_PATH = re.compile(r"(" + re.escape(API_PREFIX) + r"/)[^/\s]*")


class UploadError(Exception):
    """The endpoint could not start, or was asked about a token it never made."""


@dataclass(frozen=True)
class Received:
    """One file that landed in a cell's destination."""

    name: str
    size: int
    sha256: str


def is_file_name(value: object) -> bool:
    """Whether a cell may upload a file of this name (full match, bounded length)."""
    return (isinstance(value, str) and len(value) <= MAX_NAME
            and FILE_NAME_RE.fullmatch(value) is not None)


class _Refused(Exception):
    """A request answered with ``status`` and a one-line ``text``."""

    def __init__(self, status: HTTPStatus, text: str = "") -> None:
        super().__init__(text or status.phrase)
        self.status = status
        self.text = text or status.phrase.lower()


class _Gone(Exception):
    """The client went away or stalled before its body was complete: nobody to answer."""


def _forbidden() -> _Refused:
    """The one answer to an unknown or a revoked token."""
    return _Refused(HTTPStatus.FORBIDDEN)


# ------------------------------------------------------------------ cells and their tokens


@dataclass(eq=False)
class _Cell:
    """What one token allows: uploads into ``dest`` (None: none), up to ``limit``
    bytes in all; while live, its cell goes on."""

    cell_id: str
    dest: Path | None
    key: bytes  # sha256 of the token: compared, never the token itself
    limit: int
    used: int = 0  # bytes landed plus bytes reserved by requests in flight
    live: bool = True
    files: dict[str, Received] = field(default_factory=dict)  # in arrival order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, name: str, length: int, sha256: str, directory: int) -> bool:
        """Reserve ``length`` bytes for ``name``; True when the very file is there
        already (nothing to read). Refused: revoked, name taken, over the limit."""
        with self.lock:
            if not self.live:
                raise _forbidden()
            if self._already_there(name, length, sha256):
                return True
            if _exists(name, directory):
                raise _Refused(HTTPStatus.CONFLICT, "something else is there")
            left = self.limit - self.used
            if length > left:
                raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"{length} bytes, {left} left of the cell's {self.limit}")
            self.used += length
            return False

    def release(self, length: int) -> None:
        with self.lock:
            self.used -= length

    def commit(self, temp: str, received: Received, directory: int) -> bool:
        """Link the checked temporary file to its name; False when the very file landed
        meanwhile (a retry racing the first try). Refused: revoked, name taken."""
        with self.lock:
            if not self.live:
                raise _forbidden()
            if self._already_there(received.name, received.size, received.sha256):
                return False
            _publish(temp, received.name, directory)
            self.files[received.name] = received
            return True

    def _already_there(self, name: str, length: int, sha256: str) -> bool:
        kept = self.files.get(name)
        if kept is None:
            return False
        if kept.sha256 == sha256 and kept.size == length:
            return True
        raise _Refused(HTTPStatus.CONFLICT, "a different file of that name is there")


def _publish(temp: str, name: str, directory: int) -> None:
    """Give the temporary file its final name, never replacing what is there: a hard
    link does that in one step, and never follows a link; a file system without hard
    links gets a rename after a look (only a local process could slip in between)."""
    try:
        os.link(temp, name, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
        return
    except FileExistsError:
        raise _Refused(HTTPStatus.CONFLICT, "something else is there") from None
    except OSError as err:
        if err.errno not in NO_HARD_LINKS:
            raise
    if _exists(name, directory):
        raise _Refused(HTTPStatus.CONFLICT, "something else is there")
    os.rename(temp, name, src_dir_fd=directory, dst_dir_fd=directory)


def _token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class _Cells:
    """Every token this endpoint made, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: list[_Cell] = []

    def add(self, cell: _Cell) -> None:
        with self._lock:
            self._cells.append(cell)

    def find(self, token: str) -> _Cell | None:
        """The live cell of ``token``: every cell's key is compared, in constant time,
        so how long this takes says nothing about which tokens exist."""
        presented = _token_key(token)
        found = None
        with self._lock:
            cells = list(self._cells)
        for cell in cells:
            if hmac.compare_digest(cell.key, presented) and cell.live:
                found = cell
        return found

    def of(self, token: str) -> _Cell:
        """The cell of a token the orchestrator holds, revoked or not."""
        key = _token_key(token)
        with self._lock:
            for cell in self._cells:
                if cell.key == key:
                    return cell
        raise UploadError("not a token of this results endpoint")

    def revoke_all(self) -> None:
        with self._lock:
            cells = list(self._cells)
        for cell in cells:
            with cell.lock:
                cell.live = False


# ------------------------------------------------------------------ one request


@dataclass(frozen=True)
class _Request:
    """What a PUT declares (not its token: a secret, used up by _parse)."""

    name: str
    length: int
    sha256: str


def _split_path(path: str) -> tuple[str, str]:
    """``/v1/<token>/<name>`` -> (token, name), both as sent (no decoding)."""
    prefix = API_PREFIX + "/"
    if path.startswith(prefix):
        token, slash, name = path[len(prefix):].partition("/")
        if slash:
            return token, name
    raise _Refused(HTTPStatus.BAD_REQUEST, f"not PUT {API_PREFIX}/<token>/<name>")


def _one_header(headers: HTTPMessage, name: str, rule: re.Pattern[str]) -> str:
    values = [str(value).strip(" \t") for value in headers.get_all(name) or []]
    if len(values) != 1 or rule.fullmatch(values[0]) is None:
        raise _Refused(HTTPStatus.BAD_REQUEST, f"{name}: exactly one, well-formed, required")
    return values[0]


def _parse(path: str, headers: HTTPMessage, cells: _Cells) -> tuple[_Cell, _Request]:
    """The request's cell and what it declares; the token is checked first, so a
    stranger learns nothing but 403."""
    token, name = _split_path(path)
    cell = cells.find(token)
    if cell is None:
        raise _forbidden()
    if not is_file_name(name):
        raise _Refused(HTTPStatus.BAD_REQUEST, "not a file name a cell may upload")
    if headers.get_all("Transfer-Encoding"):
        raise _Refused(HTTPStatus.BAD_REQUEST, "Transfer-Encoding: send Content-Length only")
    length = int(_one_header(headers, "Content-Length", LENGTH_RE))
    sha256 = _one_header(headers, SHA256_HEADER, SHA256_RE).lower()
    return cell, _Request(name, length, sha256)


def _exists(name: str, directory: int) -> bool:
    try:
        os.lstat(name, dir_fd=directory)
    except FileNotFoundError:
        return False
    return True


@contextmanager
def _directory(dest: Path) -> Iterator[int]:
    """A descriptor on the cell's destination (itself never reached through a link)."""
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        LOG.warning("results endpoint: cannot open %s: %s", dest, err.strerror or err)
        raise _Refused(HTTPStatus.INTERNAL_SERVER_ERROR, "the destination is not there") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _temp_name() -> str:
    """A temporary name no upload can take (it starts with a dot) and nobody can guess."""
    return f".upload-{secrets.token_hex(8)}.part"


def _create_temp(directory: int) -> tuple[str, int]:
    """A new, empty temporary file in ``directory``: (name, write descriptor). O_EXCL
    with O_NOFOLLOW: a file or link planted at the name is never opened."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(TEMP_ATTEMPTS):
        name = _temp_name()
        try:
            fd = os.open(name, flags, FILE_MODE, dir_fd=directory)
        except FileExistsError:
            continue
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        return name, fd
    raise _Refused(HTTPStatus.INTERNAL_SERVER_ERROR, "no temporary file could be made")


def _copy_body(body: BinaryIO, fd: int, length: int) -> str:
    """Exactly ``length`` bytes of ``body`` into ``fd``, synced; their hex sha256."""
    digest = hashlib.sha256()
    left = length
    with open(fd, "wb", closefd=False) as out:
        while left:
            try:
                block = body.read(min(CHUNK, left))
            except (TimeoutError, OSError) as err:
                raise _Gone(f"the body stalled or broke off: {err}") from None
            if not block:
                raise _Gone(f"the body ended {left} bytes short")
            out.write(block)
            digest.update(block)
            left -= len(block)
    os.fsync(fd)
    return digest.hexdigest()


def _write_failed(err: OSError) -> _Refused:
    status = (HTTPStatus.INSUFFICIENT_STORAGE if err.errno in (errno.ENOSPC, errno.EDQUOT)
              else HTTPStatus.INTERNAL_SERVER_ERROR)
    return _Refused(status, f"cannot write here: {err.strerror or err}")


def _store(cell: _Cell, request: _Request, body: BinaryIO, directory: int) -> bool:
    """The body into a temporary file, checked, then linked to its name: True when it
    landed, False when the very file landed meanwhile. The temporary file never stays."""
    temp, fd = None, -1
    try:
        temp, fd = _create_temp(directory)
        sha256 = _copy_body(body, fd, request.length)
        if not hmac.compare_digest(sha256, request.sha256):
            raise _Refused(HTTPStatus.UNPROCESSABLE_ENTITY,
                           f"sha256 {sha256}, declared {request.sha256}")
        return cell.commit(temp, Received(request.name, request.length, sha256), directory)
    except OSError as err:
        raise _write_failed(err) from None
    finally:
        if fd >= 0:
            os.close(fd)
        if temp is not None:  # once linked, the file has its own name: this one goes
            with suppress(OSError):
                os.unlink(temp, dir_fd=directory)


def _receive(cell: _Cell, request: _Request, body: BinaryIO) -> HTTPStatus:
    """One file of ``cell`` from ``body``: 201 when it landed, 200 when it was there
    already. _Refused or _Gone otherwise, with nothing kept and nothing reserved."""
    if cell.dest is None:
        raise _forbidden()  # a token that only keeps its cell going
    with _directory(cell.dest) as directory:
        if cell.claim(request.name, request.length, request.sha256, directory):
            return HTTPStatus.OK
        try:
            landed = _store(cell, request, body, directory)
        except BaseException:
            cell.release(request.length)
            raise
        if not landed:
            cell.release(request.length)
            return HTTPStatus.OK
        with suppress(OSError):
            os.fsync(directory)  # the new name survives a crash of this machine
    LOG.info("results of %s: %s, %d bytes, sha256 %s...", cell.cell_id, request.name,
             request.length, request.sha256[:12])
    return HTTPStatus.CREATED


# ------------------------------------------------------------------ HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dib-matrix-results"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # StreamRequestHandler sets it on the socket
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """http.server's request and error lines, at debug level only: without the
        token (a secret) and with anything unprintable escaped (they quote the client)."""
        line = TOKEN_IN_PATH.sub(r"\1<token>", format % args)
        LOG.debug("results endpoint %s: %s", self.address_string(),
                  line.encode("unicode_escape").decode("ascii"))

    def do_GET(self) -> None:
        """``GET /v1/<token>``: 204 while the token is live, 403 otherwise."""
        self.close_connection = True
        prefix = API_PREFIX + "/"
        token = self.path[len(prefix):] if self.path.startswith(prefix) else ""
        if token and "/" not in token and self.server.cells.find(token) is not None:
            self.send_response(HTTPStatus.NO_CONTENT)
            self.send_header("Connection", "close")
            self.end_headers()
            return
        refused = _forbidden()
        self._answer(refused.status, refused.text)

    def do_PUT(self) -> None:
        self.close_connection = True
        try:
            cell, request = _parse(self.path, self.headers, self.server.cells)
            status = _receive(cell, request, self.rfile)
            self._answer(status, f"sha256:{request.sha256}")
        except _Gone as gone:
            LOG.debug("results endpoint %s: %s", self.address_string(), gone)
            return  # nobody to answer; the socket closes
        except _Refused as refused:
            self._answer(refused.status, refused.text)
        self._linger()

    def _answer(self, status: HTTPStatus, text: str) -> None:
        body = (text + "\n").encode("utf-8", "replace")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _linger(self) -> None:
        """Read and drop what the client still sends, briefly: closing a socket with
        unread data resets the connection, and the client would lose the answer."""
        deadline = time.monotonic() + LINGER_SECONDS
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(CHUNK):
                    return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily,
                 idle_timeout: float) -> None:
        self.address_family = family
        self.cells = _Cells()
        self.idle_timeout = idle_timeout
        self.busy = 0  # connections being served
        self._busy_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's own asks DNS for the address's name: a stall for nothing here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone while it was answered is no news; anything else is a bug here.
        Either way the run log says so, never a traceback on stderr (socketserver's)."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            LOG.debug("results endpoint %s: %s", client_address[0], error)
        else:
            LOG.warning("results endpoint: a request from %s failed", client_address[0],
                        exc_info=True)

    def _count(self, change: int) -> bool:
        with self._busy_lock:
            if change > 0 and self.busy >= MAX_CONNECTIONS:
                return False
            self.busy += change
            return True

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._count(+1):  # a flood of connections may not take every thread
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._count(-1)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._count(-1)


# ------------------------------------------------------------------ the endpoint


def _url_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if address.version == 4:
        return str(address)
    return "[" + str(address).replace("%", "%25") + "]"  # a zone id's % is escaped in URLs


class ResultsEndpoint:
    """The run's upload endpoint: a thread serving ``url`` until :meth:`stop`.

    ``expect`` makes a cell's token (the cell's wrapper gets it in its environment),
    ``received`` says what landed with it, ``revoke`` ends it (an upload still in
    flight is then refused, and its temporary file removed, when its body ends).
    """

    def __init__(self, server: _Server, url: str, cell_limit: int) -> None:
        self._server = server
        self.url = url
        self.cell_limit = cell_limit
        self._stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": POLL_SECONDS},
                                        name=f"results endpoint {url}", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, bind: str, *, cell_limit: int = DEFAULT_CELL_LIMIT,
              idle_timeout: float = IDLE_TIMEOUT) -> ResultsEndpoint:
        """Listening on ``bind`` (an IPv4 or IPv6 address: the manager's swarm address)
        and a free port. UploadError naming the address when it cannot."""
        if cell_limit <= 0 or idle_timeout <= 0:
            raise ValueError("cell_limit and idle_timeout must be positive")
        try:
            address = ipaddress.ip_address(bind)
        except ValueError:
            raise UploadError(f"results endpoint: {bind!r} is not an IPv4 or IPv6 address") \
                from None
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        try:
            server = _Server((str(address), 0), family, idle_timeout)
        except OSError as err:
            raise UploadError(f"results endpoint: cannot listen on {bind}: "
                              f"{err.strerror or err}") from None
        return cls(server, f"http://{_url_host(address)}:{server.server_port}", cell_limit)

    def expect(self, cell_id: str, dest: Path | None) -> str:
        """A new token for one cell: its uploads land in ``dest`` (made if missing); with
        None it uploads nothing, and only tells its cell to go on."""
        with self._lock:
            if self._stopped:
                raise UploadError("the results endpoint is stopped")
        if dest is not None:
            dest = dest.absolute()  # requests are served whatever the working directory
            dest.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._server.cells.add(_Cell(cell_id, dest, _token_key(token), self.cell_limit))
        return token

    def received(self, token: str) -> list[Received]:
        """What landed with ``token`` so far, in arrival order."""
        cell = self._server.cells.of(token)
        with cell.lock:
            return list(cell.files.values())

    def revoke(self, token: str) -> None:
        """No more uploads with ``token``."""
        cell = self._server.cells.of(token)
        with cell.lock:
            cell.live = False

    def revoke_all(self) -> None:
        """Every token ended: every cell still running stops at its next look."""
        self._server.cells.revoke_all()

    @property
    def busy(self) -> int:
        """Connections being served now."""
        return self._server.busy

    def stop(self) -> None:
        """Every token revoked, the socket closed; again is a no-op."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.cells.revoke_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> ResultsEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
