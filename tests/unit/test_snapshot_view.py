"""The repository view (matrix.snapshot.view) against a real local mirror.

The mirror is an ``http.server`` serving an archive laid out in memory; it answers
origin-form requests (the view fetching directly) and absolute-form ones (the view
using it as its upstream proxy, for archives on hosts that do not exist). Clients are
urllib with a ProxyHandler, as dib's are (it sends the token as Proxy-Authorization),
and a raw socket where a client must misbehave or pipeline as apt does.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import lzma
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest

from matrix.hostgen.pkgcache import NO_PROXY
from matrix.snapshot import server as server_module
from matrix.snapshot.manifest import ArchiveState, FileRef
from matrix.snapshot.store import Store
from matrix.snapshot.view import NOT_IN_SNAPSHOT, RepositoryView

SUITE = "bookworm"
INDEX = "main/binary-amd64/Packages.xz"
DEB = "pool/main/h/hello/hello_2.10-3_amd64.deb"
DATE = "Sat, 01 Jun 2024 08:00:00 UTC"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- a mirror


@dataclass
class Mirror:
    """An archive served over http; ``files`` maps URL paths to bytes and may change."""

    files: dict[str, bytes] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)  # paths asked for, in order
    hosts: list[str] = field(default_factory=list)  # hosts of absolute-form requests
    slow: set[str] = field(default_factory=set)  # streamed in small pieces with pauses
    short: set[str] = field(default_factory=set)  # Content-Length promises more than sent
    stall: float = 0.0  # seconds to wait before any answer
    answers: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)  # path -> status
    url: str = ""

    def serve(self, handler: http.server.BaseHTTPRequestHandler, head: bool) -> None:
        path = handler.path
        if path.startswith("http://"):
            parts = urllib.parse.urlsplit(path)
            self.hosts.append(parts.netloc)
            path = parts.path
        path = urllib.parse.unquote(path.partition("?")[0])
        self.seen.append(path)
        if self.stall:
            time.sleep(self.stall)
        if path in self.answers:
            status, headers = self.answers[path]
            handler.send_response(status)
            for name, value in {"Content-Length": "0", **headers}.items():
                handler.send_header(name, value)
            handler.end_headers()
            return
        data = self.files.get(path)
        if data is None:
            handler.send_error(404)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain" if path.endswith(".txt")
                            else "application/octet-stream")
        handler.send_header("Content-Length", str(len(data) + (1000 if path in self.short else 0)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        if head:
            return
        try:
            if path in self.slow:
                for at in range(0, len(data), 16 << 10):
                    handler.wfile.write(data[at:at + (16 << 10)])
                    time.sleep(0.01)
            else:
                handler.wfile.write(data)
        except OSError:
            pass  # the view went away: the test looks at what it kept


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    served = Mirror()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.serve(self, head=False)

        def do_HEAD(self) -> None:
            served.serve(self, head=True)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def clearsign(text: bytes) -> bytes:
    """An InRelease's frame around ``text`` (the view reads it, it never checks it)."""
    body = b"".join((b"- " + line if line.startswith(b"-") else line) + b"\n"
                    for line in text.splitlines())
    return (b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + body
            + b"-----BEGIN PGP SIGNATURE-----\n\nZmFrZQ==\n-----END PGP SIGNATURE-----\n")


@dataclass
class Published:
    inrelease: bytes
    release: bytes
    index: bytes


def publish(mirror: Mirror, version: str = "2.10-3", prefix: str = "/debian",
            by_hash: bool = True) -> Published:
    """dists/bookworm with one Packages.xz (also under by-hash/), and one .deb."""
    stanza = f"Package: hello\nVersion: {version}\nFilename: {DEB}\n\n".encode()
    index = lzma.compress(stanza)
    plain = stanza
    release = (
        f"Origin: Debian\nSuite: stable\nCodename: {SUITE}\nDate: {DATE}\n"
        "Valid-Until: Sat, 08 Jun 2024 08:00:00 UTC\nArchitectures: amd64\nComponents: main\n"
        + ("Acquire-By-Hash: yes\n" if by_hash else "")
        + f"SHA256:\n {sha(index)} {len(index)} {INDEX}\n"
        f" {sha(plain)} {len(plain)} main/binary-amd64/Packages\n").encode()
    dists = f"{prefix}/dists/{SUITE}"
    mirror.files.update({
        f"{dists}/InRelease": clearsign(release), f"{dists}/Release": release,
        f"{dists}/Release.gpg": b"-----BEGIN PGP SIGNATURE-----\n",
        f"{dists}/{INDEX}": index,
        f"{dists}/main/binary-amd64/by-hash/SHA256/{sha(index)}": index,
        f"{dists}/main/binary-amd64/Packages": plain,
        f"{prefix}/{DEB}": b"!<arch>\n" + bytes(range(256)) * 1200,
    })
    return Published(clearsign(release), release, index)


# ---------------------------------------------------------------- clients


def opener(view: RepositoryView, label: str) -> urllib.request.OpenerDirector:
    """A client as dib's urllib is one: the view's proxy variables, the token sent."""
    proxy = view.client_env(label)["http_proxy"]
    return urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))


def get(client: urllib.request.OpenerDirector, url: str) -> bytes:
    with client.open(url, timeout=10) as response:
        return response.read()


def refused(client: urllib.request.OpenerDirector, url: str) -> urllib.error.HTTPError:
    """The HTTP error ``url`` is answered with; its body read into ``.text``."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        get(client, url)
    error = caught.value
    error.text = error.read().decode()  # type: ignore[attr-defined]
    error.close()
    return error


def read_response(stream: BinaryIO, head: bool = False
                  ) -> tuple[int, str, dict[str, str], bytes]:
    """One response off a kept-alive connection: status, reason, headers, body (none
    for a HEAD, whatever its Content-Length says)."""
    status_line = stream.readline().decode("latin-1").rstrip("\r\n")
    _, code, reason = status_line.split(" ", 2)
    headers: dict[str, str] = {}
    while (line := stream.readline().decode("latin-1").rstrip("\r\n")):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b"" if head else stream.read(int(headers.get("content-length", "0")))
    return int(code), reason, headers, body


def raw(view: RepositoryView, request: bytes) -> tuple[int, str, dict[str, str], bytes]:
    """Send ``request`` as it is on a new connection; the first response."""
    with socket.create_connection(("127.0.0.1", view.port), timeout=10) as sock:
        sock.sendall(request)
        return read_response(sock.makefile("rb"))


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return check()


def still_serves(view: RepositoryView, url: str) -> None:
    """The server answers a good request after whatever came before."""
    assert raw(view, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())[0] == 200


def served_files(view: RepositoryView) -> dict[str, FileRef]:
    return view.state().get(ARCHIVE, ArchiveState(ARCHIVE)).files


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def live(store: Store, mirror: Mirror, tmp_path: Path) -> Iterator[RepositoryView]:
    """A live view whose upstream proxy is the mirror (archives on made-up hosts)."""
    with RepositoryView.start(store, upstream_proxy=mirror.url,
                              log_path=tmp_path / "view.log") as view:
        yield view


ARCHIVE = "http://mirror.test/debian"
DISTS = f"{ARCHIVE}/dists/{SUITE}"


# ---------------------------------------------------------------- live mode


def test_a_run_sees_the_suite_as_it_was_pinned_and_indices_come_by_hash(
        live: RepositoryView, mirror: Mirror) -> None:
    first = publish(mirror)
    cell_a, cell_b = opener(live, "host.target-a"), opener(live, "host.target-b")
    assert get(cell_a, f"{DISTS}/InRelease") == first.inrelease
    publish(mirror, version="2.10-4")  # the mirror moves on; old by-hash files stay
    mirror.files[f"/debian/dists/{SUITE}/main/binary-amd64/by-hash/SHA256/{sha(first.index)}"] \
        = first.index

    assert get(cell_b, f"{DISTS}/InRelease") == first.inrelease
    assert get(cell_b, f"{DISTS}/Release") == first.release
    assert get(cell_b, f"{DISTS}/{INDEX}") == first.index
    by_hash = f"main/binary-amd64/by-hash/SHA256/{sha(first.index)}"
    assert get(cell_a, f"{DISTS}/{by_hash}") == first.index

    assert mirror.seen.count(f"/debian/dists/{SUITE}/InRelease") == 1
    assert f"/debian/dists/{SUITE}/{by_hash}" in mirror.seen
    assert f"/debian/dists/{SUITE}/{INDEX}" not in mirror.seen  # never by name
    assert set(mirror.hosts) == {"mirror.test"}
    index_path = f"dists/{SUITE}/{INDEX}"
    assert live.usage("host.target-b").suites == {ARCHIVE: {SUITE: {index_path: sha(first.index)}}}
    assert live.usage("host.target-a").suites[ARCHIVE][SUITE] == {index_path: sha(first.index)}
    state = live.state()[ARCHIVE]
    assert state.suites[SUITE].inrelease == sha(first.inrelease)
    assert state.suites[SUITE].date == DATE
    assert state.suites[SUITE].components == ["main"]
    assert state.files[index_path] == FileRef(sha(first.index), len(first.index))


def test_index_with_other_bytes_than_pinned_is_502_and_not_kept(
        live: RepositoryView, mirror: Mirror, store: Store) -> None:
    first = publish(mirror)
    cell = opener(live, "cell")
    get(cell, f"{DISTS}/InRelease")
    wrong = b"not the index"
    for path in list(mirror.files):
        if "binary-amd64" in path:
            mirror.files[path] = wrong
    error = refused(cell, f"{DISTS}/{INDEX}")
    assert (error.code, error.reason) == (502, "Index changed upstream")
    assert not store.has(sha(first.index)) and not store.has(sha(wrong))
    assert f"dists/{SUITE}/{INDEX}" not in live.state()[ARCHIVE].files


def test_dists_file_the_release_does_not_list_is_404(live: RepositoryView, mirror: Mirror) -> None:
    publish(mirror)
    mirror.files[f"/debian/dists/{SUITE}/main/binary-arm64/Packages.xz"] = b"x"
    error = refused(opener(live, "cell"), f"{DISTS}/main/binary-arm64/Packages.xz")
    assert (error.code, error.reason) == (404, "Not in release")
    error = refused(opener(live, "cell"), f"{DISTS}/main/by-hash/SHA256/{'0' * 64}")
    assert error.code == 404


def test_release_that_is_not_the_signed_text_is_not_served(
        live: RepositoryView, mirror: Mirror, tmp_path: Path) -> None:
    first = publish(mirror)
    mirror.files[f"/debian/dists/{SUITE}/Release"] = first.release + b"Extra: field\n"
    cell = opener(live, "cell")
    assert get(cell, f"{DISTS}/InRelease") == first.inrelease
    assert refused(cell, f"{DISTS}/Release").code == 404
    assert refused(cell, f"{DISTS}/Release.gpg").code == 404
    assert mirror.seen.count(f"/debian/dists/{SUITE}/Release") == 2  # read again once
    assert "is not InRelease's signed text" in (tmp_path / "view.log").read_text()
    assert live.state()[ARCHIVE].suites[SUITE].release is None


def test_pool_file_is_teed_into_the_store_and_booked_per_client(
        live: RepositoryView, mirror: Mirror, store: Store) -> None:
    publish(mirror)
    deb = mirror.files[f"/debian/{DEB}"]
    cell = opener(live, "cell-1")
    assert get(cell, f"{ARCHIVE}/{DEB}") == deb
    assert store.has(sha(deb))
    assert live.state()[ARCHIVE].files[DEB] == FileRef(sha(deb), len(deb))
    assert get(opener(live, "cell-2"), f"{ARCHIVE}/{DEB}") == deb
    assert mirror.seen.count(f"/debian/{DEB}") == 1  # the second from the store
    assert live.usage("cell-1").pool_files == 1 and live.usage("cell-2").pool_files == 1
    assert live.usage("nobody").pool_files == 0
    # The view counts a chunk once it is sent, which may be just after the client has it.
    assert eventually(lambda: live.stats()["bytes_served"] == 2 * len(deb))
    assert live.stats()["requests"] == 2
    assert live.stats()["bytes_from_upstream"] == len(deb)


def test_pool_file_missing_upstream_is_404_and_not_booked(
        live: RepositoryView, mirror: Mirror) -> None:
    publish(mirror)
    assert refused(opener(live, "cell"), f"{ARCHIVE}/pool/main/n/no/no_1_all.deb").code == 404
    assert "pool/main/n/no/no_1_all.deb" not in served_files(live)


def test_client_leaving_mid_stream_leaves_no_blob(
        live: RepositoryView, mirror: Mirror, store: Store, tmp_path: Path) -> None:
    publish(mirror)
    big = bytes(range(256)) * (16 << 10)  # 4 MiB, sent slowly by the mirror
    path = "pool/main/b/big/big_1_amd64.deb"
    mirror.files[f"/debian/{path}"] = big
    mirror.slow.add(f"/debian/{path}")
    proxy_auth = base64.b64encode(
        live.client_env("cell")["http_proxy"].split("//")[1].split("@")[0].encode()).decode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(f"GET {ARCHIVE}/{path} HTTP/1.1\r\nHost: mirror.test\r\n"
                     f"Proxy-Authorization: Basic {proxy_auth}\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    log = tmp_path / "view.log"
    assert eventually(lambda: "client gone" in log.read_text(), 15)
    assert not store.has(sha(big))
    assert list(store.tmp_dir.iterdir()) == []
    assert path not in served_files(live)
    still_serves(live, f"{ARCHIVE}/{DEB}")


def test_mirror_cutting_a_pool_file_short_leaves_no_blob(
        live: RepositoryView, mirror: Mirror, store: Store) -> None:
    publish(mirror)
    deb = mirror.files[f"/debian/{DEB}"]
    mirror.short.add(f"/debian/{DEB}")  # promises 1000 bytes more than it sends
    with pytest.raises((urllib.error.URLError, OSError, http.client.HTTPException)):
        get(opener(live, "cell"), f"{ARCHIVE}/{DEB}")
    assert not store.has(sha(deb))
    assert live.stats()["errors"] == 1
    mirror.short.clear()
    assert get(opener(live, "cell"), f"{ARCHIVE}/{DEB}") == deb


def test_not_an_archive_path_is_forwarded_and_not_kept(
        live: RepositoryView, mirror: Mirror, store: Store) -> None:
    mirror.files["/robots.txt"] = b"User-agent: *\n"
    with opener(live, "cell").open("http://mirror.test/robots.txt?x=1", timeout=10) as response:
        assert response.read() == b"User-agent: *\n"
        assert response.headers["Content-Type"] == "text/plain"
    assert live.state() == {} and not store.has(sha(b"User-agent: *\n"))


def test_apt_like_pipelined_requests_on_one_kept_alive_connection(
        live: RepositoryView, mirror: Mirror) -> None:
    first = publish(mirror)
    deb = mirror.files[f"/debian/{DEB}"]
    requests = [("GET", f"{DISTS}/InRelease"), ("HEAD", f"{DISTS}/{INDEX}"),
                ("GET", f"{DISTS}/{INDEX}"), ("GET", f"{ARCHIVE}/{DEB}"),
                ("GET", f"{ARCHIVE}/pool/main/n/no/no_1_all.deb"), ("GET", f"{ARCHIVE}/{DEB}")]
    wire = b"".join(f"{method} {url} HTTP/1.1\r\nHost: mirror.test\r\n\r\n".encode()
                    for method, url in requests)
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(wire)  # all at once, as apt's pipeline does
        stream = sock.makefile("rb")
        answers = []
        for method, _ in requests:
            status, _, headers, body = read_response(stream, head=method == "HEAD")
            answers.append((status, body, headers))
    assert [a[0] for a in answers] == [200, 200, 200, 200, 404, 200]
    assert answers[0][1] == first.inrelease
    assert answers[0][2]["last-modified"] == "Sat, 01 Jun 2024 08:00:00 GMT"
    assert answers[1][2]["content-length"] == str(len(first.index)) and answers[1][1] == b""
    assert answers[2][1] == first.index and answers[3][1] == deb == answers[5][1]


def test_direct_upstream_without_a_proxy(store: Store, mirror: Mirror) -> None:
    first = publish(mirror, by_hash=False)
    archive = f"{mirror.url}/debian"
    with RepositoryView.start(store) as view:
        cell = opener(view, "cell")
        assert get(cell, f"{archive}/dists/{SUITE}/{INDEX}") == first.index
    assert mirror.hosts == []  # origin-form requests: no proxy on the way
    assert f"/debian/dists/{SUITE}/{INDEX}" in mirror.seen  # no by-hash: by name


def test_prefetch_pins_in_parallel_and_reports_each_failure(
        live: RepositoryView, mirror: Mirror, store: Store) -> None:
    first = publish(mirror)
    mirror.stall = 0.5  # each pin waits: in parallel they take one wait, not five
    began = time.monotonic()
    errors = live.prefetch([(ARCHIVE + "/", SUITE), (ARCHIVE, "trixie"), (ARCHIVE, "sid"),
                            ("http://mirror.test/nowhere", SUITE),
                            ("ftp://mirror.test/debian", SUITE), (ARCHIVE, "../x")])
    assert time.monotonic() - began < 2.5
    assert set(errors) == {(ARCHIVE, "trixie"), (ARCHIVE, "sid"),
                           ("http://mirror.test/nowhere", SUITE),
                           ("ftp://mirror.test/debian", SUITE), (ARCHIVE, "../x")}
    assert "not found" in errors[(ARCHIVE, "trixie")]
    assert "not an http:// archive URL" in errors[("ftp://mirror.test/debian", SUITE)]
    assert list(live.state()) == [ARCHIVE]
    assert live.state()[ARCHIVE].suites[SUITE].inrelease == sha(first.inrelease)
    assert store.has(sha(first.inrelease))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_mirror_is_502_mirror_unreachable_quickly(store: Store) -> None:
    port = _closed_port()
    with RepositoryView.start(store) as view:
        began = time.monotonic()
        error = refused(opener(view, "cell"), f"http://127.0.0.1:{port}/debian/dists/{SUITE}/InRelease")
        assert time.monotonic() - began < 5
        assert (error.code, error.reason) == (502, "Mirror unreachable")
        assert error.text.startswith(f"mirror http://127.0.0.1:{port}/debian unreachable:")
    with RepositoryView.start(store, upstream_proxy=f"http://127.0.0.1:{port}") as view:
        error = refused(opener(view, "cell"), f"{ARCHIVE}/{DEB}")
        assert (error.code, error.reason) == (502, "Mirror unreachable")
        assert view.stats()["errors"] == 1


def test_stalled_mirror_is_504(store: Store, mirror: Mirror) -> None:
    publish(mirror)
    mirror.stall = 2.0
    with RepositoryView.start(store, upstream_proxy=mirror.url, upstream_timeout=0.5) as view:
        error = refused(opener(view, "cell"), f"{DISTS}/InRelease")
    assert error.code == 504


# ---------------------------------------------------------------- pinned mode


def _recorded(store: Store, mirror: Mirror, name: str = "night-1") -> None:
    """A snapshot of a live run that read InRelease, the index and one .deb."""
    publish(mirror)
    with RepositoryView.start(store, upstream_proxy=mirror.url) as view:
        cell = opener(view, "cell")
        for path in ("InRelease", "Release", "Release.gpg", INDEX):
            get(cell, f"{DISTS}/{path}")
        index = mirror.files[f"/debian/dists/{SUITE}/{INDEX}"]
        get(cell, f"{DISTS}/main/binary-amd64/by-hash/SHA256/{sha(index)}")  # kept by that path too
        get(cell, f"{ARCHIVE}/{DEB}")
        store.save(view.snapshot(name, "20240601T080000Z-abc123", "run"))


def test_pinned_view_serves_the_snapshot_with_the_mirror_gone(
        store: Store, mirror: Mirror, tmp_path: Path) -> None:
    _recorded(store, mirror)
    served = dict(mirror.files)
    mirror.files.clear()  # as good as stopped: and the pinned view never asks it
    mirror.seen.clear()
    elsewhere = "http://elsewhere.test:8080/debian"  # the same archive on another host
    with RepositoryView.start(store, snapshot=store.load("night-1"),
                              log_path=tmp_path / "pinned.log") as view:
        cell = opener(view, "cell")
        assert view.pinned
        inrelease = get(cell, f"{elsewhere}/dists/{SUITE}/InRelease")
        assert inrelease == served[f"/debian/dists/{SUITE}/InRelease"]
        index = served[f"/debian/dists/{SUITE}/{INDEX}"]
        assert get(cell, f"{elsewhere}/dists/{SUITE}/main/binary-amd64/by-hash/SHA256/"
                         f"{sha(index)}") == index
        assert get(cell, f"{ARCHIVE}/{DEB}") == served[f"/debian/{DEB}"]
        assert raw(view, f"GET /debian/dists/{SUITE}/{INDEX} HTTP/1.1\r\n"
                         "Host: x\r\n\r\n".encode())[3] == index  # origin form too

        missing = f"{ARCHIVE}/pool/main/n/new/new_1_all.deb"
        error = refused(cell, missing)
        assert (error.code, error.reason) == (404, NOT_IN_SNAPSHOT)
        assert refused(cell, f"{ARCHIVE}/dists/trixie/InRelease").reason == NOT_IN_SNAPSHOT
        assert refused(cell, "http://mirror.test/robots.txt").reason == NOT_IN_SNAPSHOT
        usage = view.usage("cell")
        assert usage.misses == [missing, f"{ARCHIVE}/dists/trixie/InRelease",
                                "http://mirror.test/robots.txt"]
        assert usage.suites == {ARCHIVE: {SUITE: {f"dists/{SUITE}/{INDEX}": sha(index)}}}
        assert usage.pool_files == 1
        assert view.prefetch([(elsewhere, SUITE), (ARCHIVE, "trixie")]) == {
            (ARCHIVE, "trixie"): f"the snapshot has no suite trixie of {ARCHIVE}"}
        assert view.state()[ARCHIVE].suites[SUITE].inrelease == sha(inrelease)
        assert view.stats()["misses"] == 3
    assert mirror.seen == []


def test_pinned_file_whose_blob_is_gone_is_not_in_snapshot(
        store: Store, mirror: Mirror, tmp_path: Path) -> None:
    _recorded(store, mirror)
    deb = mirror.files[f"/debian/{DEB}"]
    store.blob_path(sha(deb)).unlink()
    log = tmp_path / "pinned.log"
    with RepositoryView.start(store, snapshot=store.load("night-1"), log_path=log) as view:
        error = refused(opener(view, "cell"), f"{ARCHIVE}/{DEB}")
        assert (error.code, error.reason) == (404, NOT_IN_SNAPSHOT)
    assert f"blob {sha(deb)} is missing" in log.read_text()


# ---------------------------------------------------------------- clients and hostile requests


def test_client_env_names_each_client_with_its_own_token(live: RepositoryView) -> None:
    first = live.client_env("debian-bookworm.debian-bookworm:boot")
    again = live.client_env("debian-bookworm.debian-bookworm:boot")
    other = live.client_env("centos.centos-9")
    assert first == again and first["no_proxy"] == NO_PROXY
    token = urllib.parse.urlsplit(first["http_proxy"]).username
    assert token and re.fullmatch(r"[a-z0-9]+", token)
    assert urllib.parse.urlsplit(other["http_proxy"]).username != token
    assert first["http_proxy"].endswith(f"@127.0.0.1:{live.port}")


def test_unknown_token_and_no_token_are_booked_under_the_empty_label(
        live: RepositoryView, mirror: Mirror) -> None:
    publish(mirror)
    auth = base64.b64encode(b"stranger:x").decode()
    for extra in ("", f"Proxy-Authorization: Basic {auth}\r\n"):
        status = raw(live, f"GET {ARCHIVE}/{DEB} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())[0]
        assert status == 200
    assert live.usage("").pool_files == 2


HOSTILE = {
    "dot-dot": b"GET http://mirror.test/debian/../etc/passwd HTTP/1.1\r\n\r\n",
    "encoded dot-dot": b"GET http://mirror.test/debian/pool/%2e%2e/%2E%2E/x HTTP/1.1\r\n\r\n",
    "encoded slash dot-dot": b"GET http://mirror.test/debian/pool%2f..%2fx HTTP/1.1\r\n\r\n",
    "NUL": b"GET http://mirror.test/debian/pool/a%00b HTTP/1.1\r\n\r\n",
    "backslash": b"GET http://mirror.test/debian/pool/a\\..\\b HTTP/1.1\r\n\r\n",
    "empty segment": b"GET http://mirror.test/debian//pool/x HTTP/1.1\r\n\r\n",
    "not UTF-8": b"GET http://mirror.test/debian/pool/%ff%fe HTTP/1.1\r\n\r\n",
    "control character": b"GET http://mirror.test/debian/pool/a%0d%0aX:y HTTP/1.1\r\n\r\n",
    "bad port": b"GET http://mirror.test:99999/debian/pool/x HTTP/1.1\r\n\r\n",
    "user in URL": b"GET http://u:p@mirror.test/debian/pool/x HTTP/1.1\r\n\r\n",
    "https URL": b"GET https://mirror.test/debian/pool/x HTTP/1.1\r\n\r\n",
    "origin form in live mode": b"GET /debian/pool/x HTTP/1.1\r\n\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\n\r\n",
    "CONNECT": b"CONNECT mirror.test:443 HTTP/1.1\r\nHost: mirror.test:443\r\n\r\n",
    "POST with a body": b"POST http://mirror.test/x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    "DELETE": b"DELETE http://mirror.test/debian/pool/x HTTP/1.1\r\n\r\n",
    "made-up method": b"BREW http://mirror.test/pot HTTP/1.1\r\n\r\n",
    "two Content-Length": b"GET http://mirror.test/x HTTP/1.1\r\nContent-Length: 0\r\n"
                          b"Content-Length: 5\r\n\r\nhello",
    "GET with a body": b"GET http://mirror.test/x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "chunked GET": b"GET http://mirror.test/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"0\r\n\r\n",
    "many headers": b"GET http://mirror.test/x HTTP/1.1\r\n"
                    + b"".join(b"X-%d: y\r\n" % n for n in range(80)) + b"\r\n",
    "very many headers": b"GET http://mirror.test/x HTTP/1.1\r\n"
                         + b"".join(b"X-%d: y\r\n" % n for n in range(500)) + b"\r\n",
    "long header line": b"GET http://mirror.test/x HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n",
    "long target": b"GET http://mirror.test/" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n",
    "garbage request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "garbage Proxy-Authorization": b"GET http://mirror.test/debian/pool/x HTTP/1.1\r\n"
                                   b"Proxy-Authorization: Basic !!!not-base64\r\n\r\n",
    "Proxy-Authorization not ascii": b"GET http://mirror.test/debian/pool/x HTTP/1.1\r\n"
                                     b"Proxy-Authorization: Basic " + base64.b64encode(b"\xff:x")
                                     + b"\r\n\r\n",
    "Proxy-Authorization not Basic": b"GET http://mirror.test/debian/pool/x HTTP/1.1\r\n"
                                     b"Proxy-Authorization: Digest x=y\r\n\r\n",
    "two Proxy-Authorization": b"GET http://mirror.test/debian/pool/x HTTP/1.1\r\n"
                               b"Proxy-Authorization: Basic eDp4\r\n"
                               b"Proxy-Authorization: Basic eDp4\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_request_gets_a_4xx_and_the_server_carries_on(
        live: RepositoryView, mirror: Mirror, tmp_path: Path, request_bytes: bytes) -> None:
    publish(mirror)
    status, reason, headers, body = raw(live, request_bytes)
    assert 400 <= status < 500, (status, reason, body)
    assert b"Traceback" not in body and b"\n" not in body.rstrip(b"\n")
    assert "content-length" in headers
    assert mirror.seen == [] and live.state() == {}
    still_serves(live, f"{ARCHIVE}/{DEB}")
    assert "Traceback" not in (tmp_path / "view.log").read_text()


def test_origin_form_unknown_archive_in_pinned_mode_is_not_in_snapshot(
        store: Store, mirror: Mirror) -> None:
    _recorded(store, mirror)
    with RepositoryView.start(store, snapshot=store.load("night-1")) as view:
        status, reason, _, _ = raw(view, b"GET /ubuntu/dists/jammy/InRelease HTTP/1.1\r\n\r\n")
        assert (status, reason) == (404, NOT_IN_SNAPSHOT)
        status, _, _, _ = raw(view, b"GET /debian/../x HTTP/1.1\r\n\r\n")
        assert status == 400


def test_silent_client_does_not_hold_the_server(live: RepositoryView, mirror: Mirror) -> None:
    publish(mirror)
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as idle:
        idle.sendall(b"GET http://mirror.test/x HTTP/1.1\r\n")  # and never finishes
        still_serves(live, f"{ARCHIVE}/{DEB}")


def test_stop_joins_the_server_and_closes_kept_alive_connections(
        store: Store, mirror: Mirror) -> None:
    publish(mirror)
    view = RepositoryView.start(store, upstream_proxy=mirror.url)
    with socket.create_connection(("127.0.0.1", view.port), timeout=10) as kept:
        kept.sendall(f"GET {ARCHIVE}/{DEB} HTTP/1.1\r\n\r\n".encode())
        assert read_response(kept.makefile("rb"))[0] == 200
        began = time.monotonic()
        view.stop()
        view.stop()  # idempotent
        assert time.monotonic() - began < 5
        assert kept.recv(10) == b""  # the view closed it
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", view.port), timeout=2).close()


def test_many_cells_at_once_pin_once_and_fetch_each_index_once(
        live: RepositoryView, mirror: Mirror, store: Store) -> None:
    first = publish(mirror)
    mirror.stall = 0.05  # long enough for the cells to meet at every step
    deb = mirror.files[f"/debian/{DEB}"]
    results: dict[str, list[bytes]] = {}

    def cell(name: str) -> None:
        client = opener(live, name)
        results[name] = [get(client, f"{DISTS}/InRelease"), get(client, f"{DISTS}/{INDEX}"),
                         get(client, f"{ARCHIVE}/{DEB}")]

    threads = [threading.Thread(target=cell, args=(f"cell-{n}",)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(r == [first.inrelease, first.index, deb] for r in results.values())
    assert len(results) == 12
    assert mirror.seen.count(f"/debian/dists/{SUITE}/InRelease") == 1
    assert sum("by-hash" in seen for seen in mirror.seen) == 1
    assert store.has(sha(deb)) and list(store.tmp_dir.iterdir()) == []
    assert all(live.usage(f"cell-{n}").pool_files == 1 for n in range(12))


def test_connections_beyond_the_bound_are_told_503(
        live: RepositoryView, mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(mirror)
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 2)
    idle = [socket.create_connection(("127.0.0.1", live.port), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.2)  # both accepted
        assert raw(live, f"GET {ARCHIVE}/{DEB} HTTP/1.1\r\n\r\n".encode())[0] == 503
    finally:
        for sock in idle:
            sock.close()
    assert eventually(lambda: raw(live, f"GET {ARCHIVE}/{DEB} HTTP/1.1\r\n\r\n".encode())[0]
                      == 200)


def test_a_suite_that_failed_to_pin_is_tried_again_and_leaves_no_lock(
        live: RepositoryView, mirror: Mirror) -> None:
    cell = opener(live, "cell")
    for suite in ("nosuch-1", "nosuch-2", SUITE):
        assert refused(cell, f"{ARCHIVE}/dists/{suite}/InRelease").code == 404
    first = publish(mirror)  # the mirror has it now
    assert get(cell, f"{DISTS}/InRelease") == first.inrelease
    assert list(live._pin_locks) == [(ARCHIVE, SUITE)]


MIRROR_FAULTS = {
    "garbage InRelease": ({"InRelease": b"\x00garbage\n" * 10}, {}, 502),
    "InRelease without fields": ({"InRelease": clearsign(b"")}, {}, 502),
    "redirect loop": ({}, {"InRelease": (302, {"Location": "InRelease"})}, 502),
    "upstream proxy wants credentials": ({}, {"InRelease": (407, {})}, 502),
    "server error passed on": ({}, {"InRelease": (503, {})}, 503),
    "forbidden passed on": ({}, {"InRelease": (403, {})}, 403),
}


@pytest.mark.parametrize("files, answers, status", MIRROR_FAULTS.values(),
                         ids=MIRROR_FAULTS.keys())
def test_a_mirror_misbehaving_is_an_http_error_not_a_crash(
        live: RepositoryView, mirror: Mirror, tmp_path: Path, files: dict[str, bytes],
        answers: dict[str, tuple[int, dict[str, str]]], status: int) -> None:
    publish(mirror)
    dists = f"/debian/dists/{SUITE}/"
    mirror.files.update({dists + name: data for name, data in files.items()})
    mirror.answers.update({dists + name: answer for name, answer in answers.items()})
    error = refused(opener(live, "cell"), f"{DISTS}/InRelease")
    assert error.code == status and "\n" not in error.text.rstrip("\n")
    assert live.state() == {}  # nothing pinned: the next request tries again
    still_serves(live, f"{ARCHIVE}/{DEB}")
    assert "Traceback" not in (tmp_path / "view.log").read_text()
