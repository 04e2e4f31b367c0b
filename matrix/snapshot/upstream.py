"""The live side of the repository view: request URLs read as archive paths, and
everything fetched from the mirror.

A request URL ``http://HOST[:PORT]/<prefix>/dists/<suite>/<rest>`` or
``.../<prefix>/pool/<rest>`` is an apt archive path (:func:`parse_target`); the archive
is ``http://HOST[:PORT]/<prefix>``. Every fetch goes through ``urllib`` with the view's
own upstream proxy (the run's package cache) or none: never this process's environment
proxies, which may point at the view itself. Each failure becomes an :class:`Answer`,
the status line and one-line body the client gets, so apt, wget and urllib in a cell
print a cause the catalogue can name (``502 Mirror unreachable``, ``504 Gateway
Timeout``, ``502 Index changed upstream``) instead of hanging or keeping half a file.

A suite is pinned once (:func:`pin_suite`: its InRelease, Release, Release.gpg); an
index (:func:`fetch_index`) is fetched by hash when the Release allows it and verified
against the pinned SHA256; a pool file (:func:`stream_pool`) reaches the client as it
arrives while the store keeps a copy.
"""

from __future__ import annotations

import http.client
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Protocol

from matrix.snapshot.manifest import FileRef
from matrix.snapshot.release import ReleaseError, ReleaseFile, parse_release, signed_text
from matrix.snapshot.store import Blob, BlobTooLarge, HashMismatch, Store

UPSTREAM_TIMEOUT = 30.0  # seconds for the connect and for each read
RELEASE_MAX_BYTES = 16 << 20
CHUNK = 64 << 10
USER_AGENT = "dib-matrix-repository-view"
REASON_MAX = 80
MAX_TARGET = 2048  # request target characters; a Debian pool path is far shorter
TOP_FILES = ("InRelease", "Release", "Release.gpg")
RELAYED_HEADERS = ("Content-Type", "Last-Modified", "ETag")
SAFE_IN_URL = "/+~:@"

ARCHIVE_PATH = re.compile(
    r"(?P<prefix>.*?)/(?:dists/(?P<suite>[^/]+)/(?P<rest>.+)|(?P<pool>pool/.+))")
BY_HASH = re.compile(r"(?:(?P<dir>.+)/)?by-hash/SHA256/(?P<hex>[0-9a-f]{64})")
HOST = re.compile(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]")


class Answer(Exception):
    """A request the view answers with an error: status, reason phrase, one-line body."""

    def __init__(self, status: int, reason: str, line: str) -> None:
        super().__init__(line)
        self.status = status
        self.reason = reason
        self.line = line


def bad_request(line: str) -> Answer:
    return Answer(400, "Bad Request", line)


def not_found(url: str) -> Answer:
    return Answer(404, "Not Found", f"{url}: not found on the mirror")


def unreachable(origin: str, reason: object) -> Answer:
    return Answer(502, "Mirror unreachable", f"mirror {origin} unreachable: {reason}")


def printable(text: object, limit: int) -> str:
    """``text`` cut to ``limit`` characters, control characters escaped: one line."""
    cleaned = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text)[:limit])
    return cleaned[:limit]


# ---------------------------------------------------------------- request targets


@dataclass(frozen=True)
class Target:
    """One request's URL, read as an archive path where it is one."""

    url: str  # the URL as forwarded (query kept for a non-archive path)
    origin: str  # "http://host[:port]"; '' for an origin-form request ("GET /debian/...")
    prefix: str = ""  # the archive's path ("/debian"), decoded
    path: str = ""  # relative to the archive: "dists/bookworm/InRelease", "pool/..."; '' if none
    suite: str = ""  # '' for a pool file
    rest: str = ""  # the part under dists/<suite>/

    @property
    def archive(self) -> str:
        return f"{self.origin}{self.prefix}" if self.path else ""


def _origin(parts: urllib.parse.SplitResult) -> str:
    """``http://host[:port]`` in one spelling (lower case, no :80); 400 for anything odd."""
    try:
        port = parts.port
    except ValueError:
        raise bad_request("bad port in the URL") from None
    if parts.username is not None or parts.password is not None:
        raise bad_request("user information in the URL")
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    if not HOST.fullmatch(host):
        raise bad_request("bad host in the URL")
    return f"http://{host}" + (f":{port}" if port not in (None, 80) else "")


def _decoded(raw_path: str) -> str:
    """The path percent-decoded; 400 for NUL, control characters, backslashes, ``.``,
    ``..`` and empty segments, however they were spelled."""
    try:
        path = urllib.parse.unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("the path is not UTF-8") from None
    path = path if path.startswith("/") else "/" + path
    if any(ord(c) < 0x20 or c in "\x7f\\" for c in path):
        raise bad_request("control character or backslash in the path")
    segments = path.split("/")[1:]
    if any(s in (".", "..") for s in segments) or "" in segments[:-1]:
        raise bad_request("'.', '..' or an empty segment in the path")
    return path


def parse_target(raw: str) -> Target:
    """A request target: proxy form ``http://host/path`` or origin form ``/path``.
    An archive path drops its query; 400 or 414 for a target the view will not read."""
    if len(raw) > MAX_TARGET:
        raise Answer(414, "URI Too Long", f"request target longer than {MAX_TARGET}")
    if raw.startswith("/"):
        origin, (raw_path, _, query) = "", raw.partition("#")[0].partition("?")
    elif raw[:7].lower() == "http://":
        parts = urllib.parse.urlsplit(raw)
        origin, raw_path, query = _origin(parts), parts.path, parts.query
    else:
        raise bad_request("only http:// URLs and /paths are served here")
    path = _decoded(raw_path)
    found = None if path.endswith("/") else ARCHIVE_PATH.fullmatch(path)
    if found is None:
        return Target(origin + raw_path + (f"?{query}" if query else ""), origin)
    relative = found["pool"] or f"dists/{found['suite']}/{found['rest']}"
    return Target(origin + urllib.parse.quote(path, safe=SAFE_IN_URL), origin,
                  found["prefix"], relative, found["suite"] or "", found["rest"] or "")


def normalize_archive(uri: str) -> str:
    """An archive URI as the view spells it (``http://host/debian``); ValueError unless
    it is a plain http URL."""
    if uri[:7].lower() != "http://" or len(uri) > MAX_TARGET:
        raise ValueError(f"{printable(uri, 200)!r} is not an http:// archive URL")
    parts = urllib.parse.urlsplit(uri)
    try:
        return _origin(parts) + _decoded(parts.path).rstrip("/")
    except Answer as answer:
        raise ValueError(f"{printable(uri, 200)!r}: {answer.line}") from None


def archive_url(archive: str, path: str = "") -> str:
    """The URL of ``path`` (relative) in ``archive``, quoted for the wire."""
    parts = urllib.parse.urlsplit(archive)
    quoted = urllib.parse.quote(f"{parts.path}/{path}" if path else parts.path, safe=SAFE_IN_URL)
    return f"{parts.scheme}://{parts.netloc}{quoted}"


def named_index(listed: Iterable[tuple[str, str]], wanted: str) -> Optional[str]:
    """The listed path ``wanted`` stands for: for ``<dir>/by-hash/SHA256/<hex>`` the file
    of ``<dir>`` with that hash (the name apt knows it by), else ``wanted`` itself when
    listed. ``listed``: (path, sha256) pairs; None when nothing fits."""
    pairs = list(listed)
    found = BY_HASH.fullmatch(wanted)
    if found is not None:
        directory = found["dir"] or ""
        named = next((path for path, sha in sorted(pairs)
                      if sha == found["hex"] and path.rpartition("/")[0] == directory
                      and "/by-hash/" not in f"/{path}"), None)
        if named is not None:
            return named
    return wanted if any(path == wanted for path, _ in pairs) else None


# ---------------------------------------------------------------- fetching


class Reply(Protocol):
    """Where an answer goes: begun once (status, headers), then written."""

    head: bool  # a HEAD request: begin, no body
    started: bool  # begun: a failure now can only cut the connection

    def begin(self, status: int, reason: str, length: Optional[int],
              headers: dict[str, str]) -> None: ...

    def write(self, chunk: bytes) -> None: ...


class Upstream:
    """GETs from the mirror, through ``proxy`` when given (never the environment's)."""

    def __init__(self, proxy: Optional[str], timeout: float = UPSTREAM_TIMEOUT) -> None:
        proxies = {"http": proxy} if proxy else {}
        self._proxied = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.timeout = timeout
        self.bytes_read = 0  # body bytes received, all requests together
        self._lock = threading.Lock()

    def failure(self, origin: str, err: BaseException) -> Answer:
        """The answer for a fetch that broke without a status from the mirror."""
        if isinstance(err, TimeoutError) or isinstance(getattr(err, "reason", None),
                                                       TimeoutError):
            return Answer(504, "Gateway Timeout",
                          f"mirror {origin} did not answer in {self.timeout:.0f} s")
        reason = getattr(err, "reason", None) or err or type(err).__name__
        return unreachable(origin, printable(reason, 200))

    def _opener_for(self, url: str) -> urllib.request.OpenerDirector:
        """The package cache for a mirror on the default port; direct for another port,
        which apt-cacher-ng drops from the URL (it would ask port 80): a mirror on a
        port of its own is a local one (a test mirror, a publish on a workstation)."""
        port = urllib.parse.urlsplit(url).port
        return self._direct if port not in (None, 80) else self._proxied

    @contextmanager
    def open(self, url: str, origin: str, method: str = "GET"
             ) -> Iterator[http.client.HTTPResponse]:
        """The mirror's 2xx answer to ``url``; another status is an :class:`Answer` passing
        it on, a failed connection one naming ``origin`` (502, or 504 on a timeout)."""
        request = urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT})
        try:
            response = self._opener_for(url).open(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 404:
                raise not_found(url) from None
            if err.code == 407 or err.code < 400:  # a proxy's credentials, a redirect loop:
                raise Answer(502, "Bad Gateway",  # the mirror's business, not the client's
                             f"{url}: the mirror answered {err.code} {err.reason}") from None
            reason = printable(err.reason, REASON_MAX) or "Upstream error"
            raise Answer(err.code, reason, f"{url}: {err.code} {reason}") from None
        except (OSError, http.client.HTTPException, ValueError) as err:
            raise self.failure(origin, err) from None
        with response:
            yield response

    def chunks(self, response: http.client.HTTPResponse, origin: str,
               limit: Optional[int] = None) -> Iterator[bytes]:
        """The body as it arrives. A body cut short (fewer bytes than its Content-Length)
        is a failure, never an end, so no half file is kept as a whole one; more than
        ``limit`` bytes is BlobTooLarge."""
        declared = response.length
        total = 0
        while True:
            try:
                chunk = response.read1(CHUNK)
            except (OSError, http.client.HTTPException) as err:
                raise self.failure(origin, err) from None
            if not chunk:
                break
            total += len(chunk)
            with self._lock:
                self.bytes_read += len(chunk)
            if limit is not None and total > limit:
                raise BlobTooLarge(f"{origin}: more than {limit} bytes")
            yield chunk
        if declared is not None and total < declared:
            raise unreachable(origin, f"connection closed after {total} of {declared} bytes")

    def read(self, url: str, origin: str, limit: int) -> Optional[bytes]:
        """The whole body of ``url``, or None when the mirror has no such file."""
        try:
            with self.open(url, origin) as response:
                return b"".join(self.chunks(response, origin, limit))
        except BlobTooLarge:
            raise Answer(502, "Bad Gateway", f"{url} is larger than {limit} bytes") from None
        except Answer as answer:
            if answer.status == 404:
                return None
            raise


@dataclass(frozen=True)
class PinnedRelease:
    """One suite's release files as the view serves them for the whole run."""

    release: ReleaseFile  # parsed from InRelease, else from Release
    files: dict[str, FileRef]  # "InRelease", "Release", "Release.gpg": those kept
    notes: list[str] = field(default_factory=list)  # what was left out, and why


def _same_release(release: bytes, inrelease: bytes) -> bool:
    try:
        signed = signed_text(inrelease)
    except ReleaseError:
        return False
    return signed.rstrip(b"\n") == release.replace(b"\r\n", b"\n").rstrip(b"\n")


def _read_tops(upstream: Upstream, base: str, archive: str
               ) -> tuple[Optional[bytes], Optional[bytes]]:
    return (upstream.read(base + "InRelease", archive, RELEASE_MAX_BYTES),
            upstream.read(base + "Release", archive, RELEASE_MAX_BYTES))


def pin_suite(upstream: Upstream, store: Store, archive: str, suite: str) -> PinnedRelease:
    """Read ``dists/<suite>/``'s release files once and keep them in the store.

    A Release that is not InRelease's signed text (a mirror caught mid-update) is read
    again with InRelease; still different, InRelease alone is kept and served.
    """
    base = archive_url(archive, f"dists/{suite}/")
    inrelease, release = _read_tops(upstream, base, archive)
    notes: list[str] = []
    if inrelease is not None and release is not None and not _same_release(release, inrelease):
        inrelease, release = _read_tops(upstream, base, archive)
        if inrelease is not None and release is not None \
                and not _same_release(release, inrelease):
            notes.append(f"{base}Release is not InRelease's signed text (read twice): "
                         "serving InRelease, no Release")
            release = None
    if inrelease is None and release is None:
        raise not_found(base + "InRelease")
    signature = None
    if release is not None:
        signature = upstream.read(base + "Release.gpg", archive, RELEASE_MAX_BYTES)
    try:
        parsed = parse_release(inrelease if inrelease is not None else release or b"")
    except ReleaseError as err:
        raise Answer(502, "Bad Release", f"{base}: {printable(err, 200)}") from None
    files: dict[str, FileRef] = {}
    for name, data in zip(TOP_FILES, (inrelease, release, signature)):
        if data is not None:
            blob = store.put_bytes(data)
            files[name] = FileRef(blob.sha256, blob.size)
    return PinnedRelease(parsed, files, notes)


def fetch_index(upstream: Upstream, store: Store, archive: str, suite: str, path: str,
                pinned: PinnedRelease) -> Blob:
    """The index ``dists/<suite>/<path>`` the pinned Release lists, verified and kept.

    By hash first when the Release allows it (a mirror update leaves the old file
    there), then by name. Other bytes than the pinned ones on both: 502.
    """
    sha256, size = pinned.release.sha256[path]
    directory = path.rpartition("/")[0]
    by_hash = f"{directory}/by-hash/SHA256/{sha256}" if directory else f"by-hash/SHA256/{sha256}"
    names = [by_hash, path] if pinned.release.acquire_by_hash else [path]
    changed = False
    for name in names:
        url = archive_url(archive, f"dists/{suite}/{name}")
        try:
            with upstream.open(url, archive) as response:
                return store.put_stream(upstream.chunks(response, archive, size),
                                        expected_sha256=sha256)
        except (HashMismatch, BlobTooLarge):
            changed = True
        except Answer as answer:
            if answer.status != 404:
                raise
    url = archive_url(archive, f"dists/{suite}/{path}")
    if changed:
        raise Answer(502, "Index changed upstream",
                     f"{url}: the mirror's file is not the one its pinned Release lists")
    raise not_found(url)


def relayed(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream headers that matter to a client, when they are plain one-liners."""
    kept: dict[str, str] = {}
    for name in RELAYED_HEADERS:
        value = headers.get(name)
        if isinstance(value, str) and len(value) <= 200 and value.isascii() \
                and value.isprintable():
            kept[name] = value
    return kept


def _tee(chunks: Iterator[bytes], reply: Reply, held: list[bytes]) -> Iterator[bytes]:
    """Each chunk to the store, and to the client one chunk behind (``held``)."""
    for chunk in chunks:
        if held:
            reply.write(held.pop())
        held.append(chunk)
        yield chunk


def stream_pool(upstream: Upstream, store: Store, archive: str, path: str, reply: Reply,
                kept: Callable[[Blob], None]) -> None:
    """A pool file from the mirror, to the client as it arrives and into the store.

    The last chunk reaches the client only after the store has the file and ``kept``
    has booked it: a client that has the whole file knows the run has it too. A mirror
    that gives no length: the file is kept whole first and the client gets nothing
    (the caller serves it from the store). HEAD: the mirror's headers only, nothing
    kept. A client or a mirror that stops midway leaves no blob.
    """
    with upstream.open(archive_url(archive, path), archive,
                       "HEAD" if reply.head else "GET") as response:
        headers, length = relayed(response.headers), response.length
        if reply.head:
            reply.begin(200, "OK", length, headers)
            return
        held: list[bytes] = []
        if length is None:
            chunks = upstream.chunks(response, archive)
        else:
            reply.begin(200, "OK", length, headers)
            chunks = _tee(upstream.chunks(response, archive, length), reply, held)
        kept(store.put_stream(chunks))
        for chunk in held:
            reply.write(chunk)


def forward(upstream: Upstream, url: str, origin: str, reply: Reply) -> None:
    """Not an archive path: passed on as it is, neither recorded nor kept."""
    with upstream.open(url, origin, "HEAD" if reply.head else "GET") as response:
        reply.begin(response.status, response.reason or "OK", response.length,
                    relayed(response.headers))
        if not reply.head:
            for chunk in upstream.chunks(response, origin):
                reply.write(chunk)
