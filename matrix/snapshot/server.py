"""The repository view's HTTP side: a threaded loopback proxy server and its handler.

:class:`ProxyServer` (the stdlib's ``ThreadingHTTPServer``) holds at most
MAX_CONNECTIONS open at once, and cuts every open one when the view stops.
:class:`ProxyHandler` reads each request under the view's limits (GET and HEAD only, no
body, a bounded number of headers), takes the client's token from
``Proxy-Authorization`` (:func:`proxy_token`), hands the parsed target to the view it
serves (:class:`Service`, the :class:`~matrix.snapshot.view.RepositoryView`) and is the
:class:`~matrix.snapshot.upstream.Reply` the view answers through.

Every answer has a Content-Length (but a non-archive file the mirror sends without
one); a failure is a status line and one line of text, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.server
import socket
import threading
import time
import traceback
from http import HTTPStatus
from pathlib import Path
from typing import Optional, Protocol

from matrix.snapshot.upstream import (
    CHUNK,
    Answer,
    Reply,
    Target,
    bad_request,
    parse_target,
    printable,
)

MAX_HEADERS = 64
MAX_CONNECTIONS = 512  # open at once; cells use one or two each
LINGER_SECONDS = 1.0  # reading what a refused client still sends, before the close
LINGER_BYTES = 1 << 20
IDLE_TIMEOUT = 120.0  # a kept-alive connection that says nothing is closed after this


class ClientGone(Exception):
    """The client closed its connection while the view was answering."""


class Service(Protocol):
    """What the server asks of the view it serves."""

    def log(self, *fields: object) -> None: ...

    def count(self, name: str, amount: int = 1) -> None: ...

    def label_of(self, authorization: Optional[str]) -> str: ...

    def serve(self, target: Target, label: str, reply: Reply) -> str: ...


def proxy_token(authorization: str) -> str:
    """The user name a ``Proxy-Authorization: Basic`` value carries: the client's token
    (400 for another scheme, or a value that is not base64 of ASCII)."""
    scheme, _, value = authorization.strip().partition(" ")
    try:
        if scheme.lower() != "basic":
            raise ValueError(scheme)
        user = base64.b64decode(value.strip(), validate=True).decode("ascii")
    except (ValueError, binascii.Error):
        raise bad_request("Proxy-Authorization is not Basic base64 of ascii") from None
    return user.partition(":")[0]


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """One connection's requests, each answered through the view; the handler is the
    :class:`~matrix.snapshot.upstream.Reply` the view writes its answer to."""

    protocol_version = "HTTP/1.1"  # keep-alive: apt pipelines and reuses connections
    timeout = IDLE_TIMEOUT
    server: ProxyServer
    head = started = False
    sent = 0

    def version_string(self) -> str:
        return "dib-matrix-view"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's)
        self.server.view.log("http", self.client_address[0], format % args)

    def log_request(self, code: object = "-", size: object = "-") -> None:
        pass  # _handle writes one line per request when it is done

    def parse_request(self) -> bool:
        """The stdlib's parsing, then the view's limits; False when answered already."""
        if not super().parse_request():
            return False
        refusal = self._refusal()
        if refusal is None:
            return True
        self._refuse(refusal)
        return False

    def send_error(self, code: int, message: Optional[str] = None,
                   explain: Optional[str] = None) -> None:
        """The stdlib's own refusals (a bad request line, too many headers): one line too."""
        reason = message or HTTPStatus(code).phrase
        self._refuse(Answer(code, reason, explain or reason))

    def _refuse(self, refusal: Answer) -> None:
        """Answer a request the view will not read further, then close the connection."""
        self.close_connection = True  # a body or more headers may follow that nobody reads
        self.head, self.started, self.sent = self.command == "HEAD", False, 0
        status = self._fail(refusal)
        target = getattr(self, "path", None) or self.requestline  # unset before a parse
        self.server.view.log(repr(""), self.command, printable(target, 400), status, 0, "-")
        self._linger()

    def _linger(self) -> None:
        """Read (bounded) what the client still sends before the close: closing with
        input unread resets the connection, and the client may lose the answer."""
        deadline = time.monotonic() + LINGER_SECONDS
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            left = LINGER_BYTES
            while left > 0 and time.monotonic() < deadline:
                self.connection.settimeout(max(0.01, deadline - time.monotonic()))
                data = self.connection.recv(min(CHUNK, left))
                if not data:
                    break
                left -= len(data)

    def _refusal(self) -> Optional[Answer]:
        if self.request_version == "HTTP/0.9":
            return bad_request("HTTP/0.9 is not served")
        if len(self.headers) > MAX_HEADERS:
            return Answer(431, "Request Header Fields Too Large",
                          f"more than {MAX_HEADERS} header fields")
        if self.command not in ("GET", "HEAD"):
            return Answer(405, "Method Not Allowed", "only GET and HEAD are served")
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") or len(lengths) > 1 \
                or any(length.strip() not in ("", "0") for length in lengths):
            return bad_request("a GET or HEAD with a body")
        return None

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _handle(self, head: bool) -> None:
        """One request, answered whatever happens; one line in the view's log."""
        self.head, self.started, self.sent = head, False, 0
        view = self.server.view
        view.count("requests")
        label, status, source = "", "-", "-"
        try:
            authorizations = self.headers.get_all("Proxy-Authorization") or []
            if len(authorizations) > 1:
                raise bad_request("more than one Proxy-Authorization")
            label = view.label_of(authorizations[0] if authorizations else None)
            source = view.serve(parse_target(self.path), label, self)
            status = "200"
        except Answer as answer:
            status = self._fail(answer)
        except ClientGone as gone:
            status = self._cut(f"client gone: {gone}")
        except Exception as err:  # the one boundary: a line in the log, 500 to the client
            where = traceback.extract_tb(err.__traceback__)[-1]
            view.log("error", f"{type(err).__name__}: {err}",
                     f"({Path(where.filename).name}:{where.lineno})")
            status = self._fail(Answer(500, "Internal Server Error",
                                       f"repository view error: {type(err).__name__}"))
        finally:
            # The client's address names the swarm node a cell ran on.
            view.log(repr(label), self.client_address[0], self.command,
                     printable(self.path, 400), status, self.sent, source)

    def _fail(self, answer: Answer) -> str:
        """Send ``answer``, or cut the connection if an answer began already."""
        if answer.status >= 500:
            self.server.view.count("errors")
        if self.started:  # the status line went out: stopping is all that is left
            return self._cut(f"{answer.status} after the answer began: {answer.line}")
        body = (printable(answer.line, 1000) + "\n").encode("utf-8")
        reason = answer.reason.encode("ascii", "replace").decode("ascii")
        try:
            self.begin(answer.status, reason, len(body), {"Content-Type": "text/plain"})
            self.write(body)
        except ClientGone:
            return self._cut("client gone")
        return str(answer.status)

    def _cut(self, why: str) -> str:
        self.close_connection = True
        self.server.view.log("cut", printable(self.path, 300), why)
        return "cut"

    def begin(self, status: int, reason: str, length: Optional[int],
              headers: dict[str, str]) -> None:
        if self.request_version == "HTTP/0.9":  # refused: but with a status line
            self.request_version = "HTTP/1.0"
        self.send_response(status, reason)
        for name, value in headers.items():
            self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if length is None or self.close_connection:  # else the body ends with the connection
            self.send_header("Connection", "close")
        self.started = True
        try:
            self.end_headers()
        except OSError as err:
            raise ClientGone(type(err).__name__) from None

    def write(self, chunk: bytes) -> None:
        if self.head:
            return
        try:
            self.wfile.write(chunk)
        except OSError as err:
            raise ClientGone(type(err).__name__) from None
        self.sent += len(chunk)
        self.server.view.count("bytes_served", len(chunk))


class ProxyServer(http.server.ThreadingHTTPServer):
    """The listening socket and a thread per connection, for the view it serves."""

    daemon_threads = True

    def __init__(self, bind: str, view: Service) -> None:
        self.view = view
        self._open: dict[socket.socket, threading.Thread] = {}  # connection -> its thread
        self._open_lock = threading.Lock()
        if ":" in bind:
            self.address_family = socket.AF_INET6
        super().__init__((bind, 0), ProxyHandler)

    def process_request(self, request: socket.socket, client_address: object) -> None:
        """ThreadingMixIn's, with each connection's thread kept for :meth:`end_connections`
        and their number bounded: one more is told 503 and closed."""
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=True)
        with self._open_lock:
            crowded = len(self._open) >= MAX_CONNECTIONS
            if not crowded:
                self._open[request] = thread
        if crowded:
            self.view.log("view", f"more than {MAX_CONNECTIONS} connections: one refused")
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Too many connections\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            self.shutdown_request(request)
            return
        thread.start()

    def shutdown_request(self, request: socket.socket) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def end_connections(self, grace: float) -> int:
        """Cut every open connection (a kept-alive one would wait out its idle timeout),
        then wait up to ``grace`` seconds for their threads; how many still run."""
        with self._open_lock:
            open_now = list(self._open.items())
        for sock, _ in open_now:
            with contextlib.suppress(OSError):  # closed by its client meanwhile
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + grace
        for _, thread in open_now:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for _, thread in open_now)

    def handle_error(self, request: object, client_address: object) -> None:
        """An error outside a request's handler: a line in the log, not the terminal."""
        self.view.log("error", "connection", printable(traceback.format_exc(limit=-1), 400))
