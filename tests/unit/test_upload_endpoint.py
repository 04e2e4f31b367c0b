"""The results endpoint (matrix.containers.upload): real sockets on 127.0.0.1, requests
sent byte for byte, so hostile ones are exactly as hostile as written."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from matrix.containers import upload
from matrix.containers.upload import ResultsEndpoint, UploadError
from tests.hostile import TreeWatch

MiB = 1 << 20
ANSWER_WAIT = 10.0  # seconds a test waits for an answer before calling it a hang


@dataclass
class Answer:
    status: int | None  # None: the server closed without answering
    text: str


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def connect(endpoint: ResultsEndpoint) -> socket.socket:
    parts = urlsplit(endpoint.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=ANSWER_WAIT)


def read_answer(conn: socket.socket) -> Answer:
    raw = b""
    try:
        while chunk := conn.recv(65536):
            raw += chunk
    except ConnectionResetError:
        pass
    if not raw:
        return Answer(None, "")
    head, _, body = raw.partition(b"\r\n\r\n")
    return Answer(int(head.split()[1]), body.decode("utf-8", "replace").strip())


def send(endpoint: ResultsEndpoint, path: bytes, body: bytes = b"",
         headers: list[tuple[str, str]] | None = None, *, half_close: bool = True) -> Answer:
    """One request exactly as given (no client library tidies it up)."""
    lines = [b"PUT " + path + b" HTTP/1.1", b"Host: test"]
    lines += [f"{k}: {v}".encode() for k, v in headers or []]
    with connect(endpoint) as conn:
        # A server that closed early (a refusal, a full house) may fail these: its
        # answer, or its silence, is what the test looks at.
        with contextlib.suppress(OSError):
            conn.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            if half_close:
                conn.shutdown(socket.SHUT_WR)
        return read_answer(conn)


def put(endpoint: ResultsEndpoint, token: str, name: str | bytes, data: bytes, *,
        digest: str | None = None, length: int | None = None) -> Answer:
    name = name.encode() if isinstance(name, str) else name
    headers = [("Content-Length", str(len(data) if length is None else length)),
               ("X-Content-Sha256", digest or sha(data))]
    return send(endpoint, b"/v1/" + token.encode() + b"/" + name, data, headers)


@pytest.fixture
def endpoint():
    with ResultsEndpoint.start("127.0.0.1", cell_limit=64 * MiB, idle_timeout=5) as ep:
        yield ep


@pytest.fixture
def area(tmp_path):
    """A destination, and a victim outside it that nothing may touch."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious\n")
    dest = tmp_path / "run" / "images" / "debian"
    return dest, outside


def landed(dest: Path) -> list[str]:
    """Everything in dest, temporary files included."""
    return sorted(os.listdir(dest)) if dest.exists() else []


# ------------------------------------------------------------------ the happy path


def test_files_land_byte_identical_and_are_listed_in_arrival_order(endpoint, area):
    dest, _ = area
    token = endpoint.expect("debian:debian-bookworm", dest)
    files = {"debian-bookworm.qcow2": os.urandom(20 * MiB),
             "debian-bookworm.qcow2.sha256": b"abc  debian-bookworm.qcow2\n",
             "debian-bookworm.packages": b"", "debian-bookworm.failure.json": b"{}\n"}
    for name, data in files.items():
        assert put(endpoint, token, name, data).status == 201
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
        assert (dest / name).stat().st_mode & 0o777 == 0o644
    assert [(r.name, r.size, r.sha256) for r in endpoint.received(token)] == \
        [(n, len(d), sha(d)) for n, d in files.items()]
    assert landed(dest) == sorted(files)  # no temporary file left


def test_a_retried_identical_upload_is_200_and_a_different_one_409(endpoint, area):
    dest, _ = area
    token = endpoint.expect("c", dest)
    assert put(endpoint, token, "a.raw", b"one").status == 201
    assert put(endpoint, token, "a.raw", b"one").status == 200
    assert put(endpoint, token, "a.raw", b"two").status == 409
    assert (dest / "a.raw").read_bytes() == b"one"
    assert len(endpoint.received(token)) == 1


@pytest.mark.parametrize("name", ["debian-12.qcow2.sha256", "x+y.raw", "A_b.failure.json",
                                  "a..b", "9", "n" * 128])
def test_every_name_dib_may_write_is_taken(endpoint, area, name):
    dest, _ = area
    token = endpoint.expect("c", dest)
    assert put(endpoint, token, name, b"data").status == 201
    assert (dest / name).read_bytes() == b"data"


def test_one_log_line_per_file_and_no_request_lines_on_stderr(endpoint, area, caplog,
                                                               capfd):
    token = endpoint.expect("cell-7", area[0])
    with caplog.at_level(logging.INFO, logger="dib-matrix"):
        put(endpoint, token, "a.raw", b"x")
        put(endpoint, token, "../b", b"x")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [f"results of cell-7: a.raw, 1 bytes, sha256 {sha(b'x')[:12]}..."]
    assert capfd.readouterr().err == ""


def _in_parallel(endpoint: ResultsEndpoint, token: str,
                 jobs: list[tuple[str, bytes]]) -> list[int | None]:
    answers: list[int | None] = []
    lock = threading.Lock()

    def go(name: str, data: bytes) -> None:
        status = put(endpoint, token, name, data).status
        with lock:
            answers.append(status)

    threads = [threading.Thread(target=go, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ANSWER_WAIT)
    return sorted(answers, key=str)


def test_parallel_uploads_share_one_budget(area):
    dest, _ = area
    with ResultsEndpoint.start("127.0.0.1", cell_limit=8 * 1000) as endpoint:
        token = endpoint.expect("c", dest)
        jobs = [(f"f{i}.raw", os.urandom(1000)) for i in range(8)]
        assert _in_parallel(endpoint, token, jobs) == [201] * 8
        assert put(endpoint, token, "over.raw", b"x").status == 413  # 8000 of 8000 used
        assert len(endpoint.received(token)) == 8
        for name, data in jobs:
            assert (dest / name).read_bytes() == data


def test_parallel_uploads_of_one_file_land_it_once(endpoint, area):
    dest, _ = area
    token = endpoint.expect("c", dest)
    same = os.urandom(MiB)
    assert _in_parallel(endpoint, token, [("same.raw", same)] * 8) == [200] * 7 + [201]
    assert (dest / "same.raw").read_bytes() == same
    assert landed(dest) == ["same.raw"]


# ------------------------------------------------------------------ names


HOSTILE_NAMES = [
    b"../escape", b"..", b".", b"", b"/etc/passwd", b"a/b", b"../../outside/victim",
    b".hidden", b"-rf", b"a\x00b", b"a\x01b", b"a\x1b[31mred", b"a\x7fb",
    b"n" * 129, "é.qcow2".encode(), "\u202eraw.exe".encode(), "ａ.raw".encode(),
    b"%2e%2e", b"%2e%2e%2fescape", b"..%2fescape", b"a%2fb", b"%2E%2E", b"a%00b",
    b"name?x=1", b"name#frag", b"..\\escape", b"a;b", b"a:b", b"a b",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_a_hostile_name_is_refused_and_nothing_is_written(endpoint, area, name):
    dest, outside = area
    token = endpoint.expect("c", dest)
    watch = TreeWatch(dest.parent.parent.parent)
    answer = put(endpoint, token, name, b"evil")
    assert answer.status == 400, answer
    watch.assert_untouched()
    assert landed(dest) == []
    assert endpoint.received(token) == []


def test_a_very_long_request_line_is_refused_without_a_crash(endpoint, area):
    token = endpoint.expect("c", area[0])
    assert put(endpoint, token, b"a" * 70000, b"x").status == 414
    assert landed(area[0]) == []


# ------------------------------------------------------------------ tokens


@pytest.mark.parametrize("token", ["wrong", "", "x" * 5000, "..", "%2e%2e", "../outside"])
def test_an_unknown_token_gets_403_and_writes_nothing(endpoint, area, token):
    dest, _ = area
    real = endpoint.expect("c", dest)
    watch = TreeWatch(dest.parent.parent.parent)
    assert put(endpoint, token, "a.raw", b"x") == Answer(403, "forbidden")
    assert put(endpoint, real[:-1], "a.raw", b"x") == Answer(403, "forbidden")
    assert put(endpoint, real + "x", "a.raw", b"x") == Answer(403, "forbidden")
    watch.assert_untouched()


def test_a_revoked_token_gets_the_same_403_as_an_unknown_one(endpoint, area):
    dest, _ = area
    token = endpoint.expect("c", dest)
    assert put(endpoint, token, "a.raw", b"x").status == 201
    endpoint.revoke(token)
    assert put(endpoint, token, "b.raw", b"y") == put(endpoint, "unknown", "b.raw", b"y")
    assert put(endpoint, token, "b.raw", b"y") == Answer(403, "forbidden")
    assert landed(dest) == ["a.raw"]
    assert [r.name for r in endpoint.received(token)] == ["a.raw"]


def test_a_cells_token_writes_only_into_its_own_destination(endpoint, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    token_one, token_two = endpoint.expect("one", one), endpoint.expect("two", two)
    assert put(endpoint, token_two, "x.raw", b"two").status == 201
    assert put(endpoint, token_one, "x.raw", b"one").status == 201
    assert (one / "x.raw").read_bytes() == b"one"
    assert (two / "x.raw").read_bytes() == b"two"
    assert [r.sha256 for r in endpoint.received(token_one)] == [sha(b"one")]


def test_an_upload_in_flight_when_its_token_is_revoked_is_not_kept(endpoint, area):
    dest, _ = area
    token = endpoint.expect("c", dest)
    data = b"late" * 1000
    headers = f"Content-Length: {len(data)}\r\nX-Content-Sha256: {sha(data)}\r\n"
    with connect(endpoint) as conn:
        conn.sendall(f"PUT /v1/{token}/late.raw HTTP/1.1\r\n{headers}\r\n".encode()
                     + data[:10])
        time.sleep(0.3)
        endpoint.revoke(token)
        conn.sendall(data[10:])
        assert read_answer(conn).status == 403
    assert landed(dest) == []


def test_the_orchestrator_is_told_about_a_token_it_never_made(endpoint):
    with pytest.raises(UploadError):
        endpoint.received("never-made")
    with pytest.raises(UploadError):
        endpoint.revoke("never-made")


# ------------------------------------------------------------------ sizes


def test_a_declared_length_over_the_limit_is_413_before_any_body_is_read(area):
    dest, _ = area
    with ResultsEndpoint.start("127.0.0.1", cell_limit=1000, idle_timeout=30) as endpoint:
        token = endpoint.expect("c", dest)
        started = time.monotonic()
        answer = send(endpoint, f"/v1/{token}/big.raw".encode(), b"",
                      [("Content-Length", "1001"), ("X-Content-Sha256", "0" * 64)],
                      half_close=False)  # no body at all: an answer cannot wait for it
        assert answer.status == 413
        assert time.monotonic() - started < 5
        assert put(endpoint, token, "fits.raw", b"x" * 1000).status == 201
        assert landed(dest) == ["fits.raw"]


@pytest.mark.parametrize("sent", [0, 1, 99])
def test_a_body_shorter_than_declared_keeps_nothing(endpoint, area, sent):
    dest, _ = area
    token = endpoint.expect("c", dest)
    body = os.urandom(sent)
    # The checksum is the short body's own: a server reading to the end would keep it.
    answer = put(endpoint, token, "short.raw", body, length=100)
    assert answer.status is None
    wait_idle(endpoint)
    assert landed(dest) == []
    assert endpoint.received(token) == []


def test_only_the_declared_bytes_of_a_longer_body_count(endpoint, area):
    dest, _ = area
    token = endpoint.expect("c", dest)
    body = b"declared" + b"smuggled"
    assert put(endpoint, token, "a.raw", body, length=8, digest=sha(body)).status == 422
    assert put(endpoint, token, "a.raw", body, length=8, digest=sha(b"declared")).status == 201
    assert (dest / "a.raw").read_bytes() == b"declared"


def test_the_cell_limit_holds_across_files_and_failures_give_their_share_back(area):
    dest, _ = area
    with ResultsEndpoint.start("127.0.0.1", cell_limit=1000, idle_timeout=5) as endpoint:
        token = endpoint.expect("c", dest)
        assert put(endpoint, token, "a.raw", b"a" * 600).status == 201
        assert put(endpoint, token, "b.raw", b"b" * 401).status == 413
        assert put(endpoint, token, "b.raw", b"b" * 400, digest="0" * 64).status == 422
        assert put(endpoint, token, "b.raw", b"b" * 100, length=400).status is None
        wait_idle(endpoint)
        assert put(endpoint, token, "b.raw", b"b" * 400).status == 201
        assert put(endpoint, token, "c.raw", b"").status == 201
        assert put(endpoint, token, "d.raw", b"d").status == 413
        assert landed(dest) == ["a.raw", "b.raw", "c.raw"]


BAD_LENGTHS = [[], ["-1"], ["+4"], ["4 4"], ["0x4"], ["4e0"], ["４"], ["4_0"], [""], ["4", "4"],
               ["99999999999999999999999"]]


@pytest.mark.parametrize("lengths", BAD_LENGTHS, ids=repr)
def test_a_missing_or_malformed_content_length_is_400(endpoint, area, lengths):
    dest, _ = area
    token = endpoint.expect("c", dest)
    headers = [("Content-Length", value) for value in lengths]
    answer = send(endpoint, f"/v1/{token}/a.raw".encode(), b"data",
                  [*headers, ("X-Content-Sha256", sha(b"data"))])
    assert answer.status == 400
    assert landed(dest) == []


@pytest.mark.parametrize("encoding", ["chunked", "gzip, chunked", "identity"])
def test_transfer_encoding_is_refused(endpoint, area, encoding):
    dest, _ = area
    token = endpoint.expect("c", dest)
    answer = send(endpoint, f"/v1/{token}/a.raw".encode(), b"4\r\ndata\r\n0\r\n\r\n",
                  [("Transfer-Encoding", encoding), ("X-Content-Sha256", sha(b"data"))])
    assert answer.status == 400
    assert landed(dest) == []


# ------------------------------------------------------------------ checksums


def test_a_checksum_mismatch_is_422_and_nothing_is_kept(endpoint, area):
    dest, _ = area
    token = endpoint.expect("c", dest)
    data = os.urandom(3 * MiB)
    wrong = sha(data[:-1] + bytes([data[-1] ^ 1]))
    assert put(endpoint, token, "a.qcow2", data, digest=wrong).status == 422
    assert landed(dest) == []
    assert endpoint.received(token) == []
    assert put(endpoint, token, "a.qcow2", data).status == 201  # the name is still free


@pytest.mark.parametrize("values", [[], ["abc"], ["0" * 63], ["0" * 65], ["g" * 64],
                                    ["sha256:" + "0" * 64], ["0" * 64, "0" * 64],
                                    ["0" * 32 + " " + "0" * 31]], ids=repr)
def test_a_missing_or_malformed_checksum_is_400(endpoint, area, values):
    dest, _ = area
    token = endpoint.expect("c", dest)
    headers = [("Content-Length", "4"), *[("X-Content-Sha256", v) for v in values]]
    assert send(endpoint, f"/v1/{token}/a.raw".encode(), b"data", headers).status == 400
    assert landed(dest) == []


def test_an_upper_case_checksum_is_the_same_checksum(endpoint, area):
    token = endpoint.expect("c", area[0])
    assert put(endpoint, token, "a.raw", b"x", digest=sha(b"x").upper()).status == 201
    assert endpoint.received(token)[0].sha256 == sha(b"x")


# ------------------------------------------------------------------ links


def _plant(kind: str, at: Path, outside: Path) -> None:
    if kind == "symlink":
        at.symlink_to(outside / "victim")
    elif kind == "dangling symlink":
        at.symlink_to(outside / "created-through-a-link")
    elif kind == "symlink to a directory":
        at.symlink_to(outside)
    elif kind == "hard link":
        os.link(outside / "victim", at)
    elif kind == "directory":
        at.mkdir()
    else:
        at.write_bytes(b"left by someone else")


PLANTED = ["symlink", "dangling symlink", "symlink to a directory", "hard link", "directory",
           "file"]


@pytest.mark.parametrize("kind", PLANTED)
def test_something_planted_at_the_final_name_is_not_followed_or_replaced(endpoint, area,
                                                                          kind):
    dest, outside = area
    token = endpoint.expect("c", dest)
    _plant(kind, dest / "a.qcow2", outside)
    watch = TreeWatch(dest.parent.parent.parent)
    assert put(endpoint, token, "a.qcow2", b"evil").status == 409
    watch.assert_untouched()  # the planted entry included: dest is watched too
    assert landed(dest) == ["a.qcow2"]


# Names a server that picks its temporary file by the final name might use.
PREDICTABLE_TEMPS = ["{}.part", "{}.tmp", ".{}.part", ".{}.tmp", ".{}", "{}~", "{}.partial",
                     ".upload-{}", "{}.upload", ".#{}"]


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "symlink to a directory"])
def test_links_planted_at_predictable_temporary_names_are_not_followed(endpoint, area, kind):
    dest, outside = area
    token = endpoint.expect("c", dest)
    for pattern in PREDICTABLE_TEMPS:
        _plant(kind, dest / pattern.format("a.qcow2"), outside)
    watch = TreeWatch(dest.parent.parent.parent, dest / "a.qcow2")
    assert put(endpoint, token, "a.qcow2", b"good").status == 201
    watch.assert_untouched()
    assert (dest / "a.qcow2").read_bytes() == b"good"
    assert not (dest / "a.qcow2").is_symlink()


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "hard link", "file"])
def test_a_link_at_the_very_temporary_name_is_not_opened(endpoint, area, kind, monkeypatch):
    dest, outside = area
    token = endpoint.expect("c", dest)
    names = iter([".upload-guessed.part", ".upload-fresh.part"])
    monkeypatch.setattr(upload, "_temp_name", lambda: next(names))
    _plant(kind, dest / ".upload-guessed.part", outside)
    watch = TreeWatch(dest.parent.parent.parent, dest / "a.qcow2")
    assert put(endpoint, token, "a.qcow2", b"good").status == 201
    watch.assert_untouched()
    assert landed(dest) == [".upload-guessed.part", "a.qcow2"]


def test_a_destination_swapped_for_a_link_is_not_written_through(endpoint, area):
    dest, outside = area
    token = endpoint.expect("c", dest)
    dest.rmdir()
    dest.symlink_to(outside)
    watch = TreeWatch(dest.parent.parent.parent)
    assert put(endpoint, token, "a.qcow2", b"evil").status == 500
    watch.assert_untouched()


# ------------------------------------------------------------------ stalled clients


def wait_idle(endpoint: ResultsEndpoint, seconds: float = ANSWER_WAIT) -> None:
    deadline = time.monotonic() + seconds
    while endpoint.busy and time.monotonic() < deadline:
        time.sleep(0.02)
    assert endpoint.busy == 0, "a connection is still being served"


@pytest.mark.parametrize("sent", [b"", b"PUT /v1/", b"PUT /v1/{token}/a.raw HTTP/1.1\r\n",
                                  b"PUT /v1/{token}/a.raw HTTP/1.1\r\nContent-Length: 100\r\n"
                                  b"X-Content-Sha256: " + b"0" * 64 + b"\r\n\r\n" + b"x" * 50])
def test_a_stalled_client_is_dropped_after_the_idle_timeout(area, sent):
    dest, _ = area
    with ResultsEndpoint.start("127.0.0.1", idle_timeout=0.5) as endpoint:
        token = endpoint.expect("c", dest)
        with connect(endpoint) as conn:
            conn.sendall(sent.replace(b"{token}", token.encode()))
            started = time.monotonic()
            assert read_answer(conn).status is None  # closed by the server, unanswered
            assert time.monotonic() - started < 5
        wait_idle(endpoint)
        assert landed(dest) == []
        assert put(endpoint, token, "a.raw", b"x").status == 201  # still serving


# ------------------------------------------------------------------ the endpoint itself


def test_other_methods_and_paths_get_an_error_not_a_crash(endpoint, area):
    token = endpoint.expect("c", area[0])
    with connect(endpoint) as conn:
        conn.sendall(f"DELETE /v1/{token}/a.raw HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert read_answer(conn).status == 501
    for path in (b"/", b"/v2/" + token.encode() + b"/a.raw", b"/v1/" + token.encode(),
                 b"http://evil/v1/" + token.encode() + b"/a.raw"):
        assert send(endpoint, path, b"", [("Content-Length", "0"),
                                          ("X-Content-Sha256", sha(b""))]).status == 400
    assert landed(area[0]) == []


@pytest.mark.parametrize("bind", ["localhost", "", "127.0.0.1:80", "not an address"])
def test_start_refuses_what_is_not_an_address(bind):
    with pytest.raises(UploadError, match="not an IPv4 or IPv6 address"):
        ResultsEndpoint.start(bind)


def test_start_names_the_address_it_cannot_listen_on():
    with pytest.raises(UploadError, match="cannot listen on 192.0.2.1"):
        ResultsEndpoint.start("192.0.2.1")  # TEST-NET-1: on no interface of this machine


def test_the_url_names_the_address_and_port(area):
    with ResultsEndpoint.start("127.0.0.1") as endpoint:
        port = urlsplit(endpoint.url).port
        assert endpoint.url == f"http://127.0.0.1:{port}"
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        endpoint = ResultsEndpoint.start("::1")
    except UploadError:
        pytest.skip("no IPv6 loopback here")
    with endpoint:
        assert endpoint.url.startswith("http://[::1]:")
        token = endpoint.expect("c", area[0])
        assert put(endpoint, token, "a.raw", b"six").status == 201


def test_stop_is_idempotent_and_ends_every_token(area):
    endpoint = ResultsEndpoint.start("127.0.0.1")
    token = endpoint.expect("c", area[0])
    endpoint.stop()
    endpoint.stop()
    with pytest.raises(UploadError):
        endpoint.expect("d", area[0])
    with pytest.raises(OSError):
        connect(endpoint)
    assert endpoint.received(token) == []


def test_without_hard_links_the_file_is_renamed_but_still_replaces_nothing(endpoint, area,
                                                                          monkeypatch):
    dest, outside = area
    token = endpoint.expect("c", dest)

    def no_hard_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(upload.os, "link", no_hard_links)
    assert put(endpoint, token, "a.raw", b"a").status == 201
    _plant("symlink", dest / "b.raw", outside)
    watch = TreeWatch(dest.parent.parent.parent)
    assert put(endpoint, token, "b.raw", b"b").status == 409
    watch.assert_untouched()
    assert landed(dest) == ["a.raw", "b.raw"]
    assert (dest / "a.raw").read_bytes() == b"a"


def test_the_debug_log_holds_no_token_and_no_raw_control_characters(endpoint, area, caplog):
    token = endpoint.expect("c", area[0])
    with caplog.at_level(logging.DEBUG, logger="dib-matrix"):
        put(endpoint, token, "a.raw", b"x")
        put(endpoint, token, b"a\rforged line\x1b[2J", b"x")
        with connect(endpoint) as conn:
            conn.sendall(f"BREW /v1/{token}/x\x00\x07 HTTP/1.1\r\n\r\n".encode())
            assert read_answer(conn).status == 501
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) >= 3
    assert not any(token in m or token[:16] in m for m in messages)
    assert not any(ch in m for m in messages for ch in "\r\n\x00\x07\x1b")


def test_connections_beyond_the_cap_are_closed_at_once(area, monkeypatch):
    monkeypatch.setattr(upload, "MAX_CONNECTIONS", 2)
    with ResultsEndpoint.start("127.0.0.1", idle_timeout=5) as endpoint:
        token = endpoint.expect("c", area[0])
        held = [connect(endpoint) for _ in range(2)]
        deadline = time.monotonic() + ANSWER_WAIT
        while endpoint.busy < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        assert put(endpoint, token, "a.raw", b"x").status is None  # closed, not queued
        assert time.monotonic() - started < 2
        for conn in held:
            conn.close()
        wait_idle(endpoint)
        assert put(endpoint, token, "a.raw", b"x").status == 201


def test_a_client_that_resets_the_connection_prints_nothing_on_stderr(endpoint, area, capfd):
    dest, _ = area
    token = endpoint.expect("c", dest)
    data = b"x" * 100_000
    for number in range(20):
        conn = connect(endpoint)
        body = data if number % 2 else data[:number * 5000]  # whole, or short
        conn.sendall(f"PUT /v1/{token}/f{number}.raw HTTP/1.1\r\nContent-Length: {len(data)}"
                     f"\r\nX-Content-Sha256: {sha(data)}\r\n\r\n".encode() + body)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # a reset, not a goodbye: answering it fails
    for _ in range(5):  # reset before a word: reading the request fails
        conn = connect(endpoint)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    wait_idle(endpoint)
    assert capfd.readouterr().err == ""
    kept = [r.name for r in endpoint.received(token)]
    assert landed(dest) == sorted(kept)  # no temporary file left
    assert all(int(name[1:-4]) % 2 for name in kept)  # only whole bodies
    assert all((dest / name).read_bytes() == data for name in kept)


def look(endpoint, path: str) -> int:
    with connect(endpoint) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        return read_answer(conn).status


def test_a_live_token_says_go_on_and_a_revoked_one_stop(endpoint, area):
    token = endpoint.expect("c", area[0])
    only_going_on = endpoint.expect("check", None)
    assert look(endpoint, f"/v1/{token}") == 204
    assert look(endpoint, f"/v1/{only_going_on}") == 204
    endpoint.revoke(token)
    assert look(endpoint, f"/v1/{token}") == 403
    assert look(endpoint, f"/v1/{only_going_on}") == 204
    endpoint.revoke_all()
    assert look(endpoint, f"/v1/{only_going_on}") == 403


@pytest.mark.parametrize("path", ["/v1/", "/v1", "/", "/v1/{token}/", "/v1/{token}/a.raw",
                                  "/v1/{token}x", "/v1/x{token}", "/v2/{token}",
                                  "/v1/../v1/{token}", "/v1/%2e%2e"])
def test_a_look_at_anything_but_a_live_token_is_forbidden(endpoint, area, path):
    token = endpoint.expect("c", area[0])
    assert look(endpoint, path.format(token=token)) == 403
    assert landed(area[0]) == []


def test_a_token_without_a_destination_uploads_nothing(endpoint, area):
    token = endpoint.expect("check", None)
    answer = send(endpoint, f"/v1/{token}/a.raw".encode(), b"x",
                  [("Content-Length", "1"), ("X-Content-Sha256", sha(b"x"))])
    assert answer.status == 403
    assert landed(area[0]) == []
