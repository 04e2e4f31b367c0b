"""The in-container upload wrapper (matrix/run/incontainer/upload_results.py), run as a
real process against a real results endpoint on 127.0.0.1."""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from matrix.containers.upload import ResultsEndpoint
from matrix.run.incontainer import upload_results
from matrix.run.incontainer.upload_results import TOKEN_ENV, UPLOAD_FAILED_EXIT, URL_ENV
from tests.hostile import REPO, TreeWatch

CLIENT = REPO / "matrix" / "run" / "incontainer" / "upload_results.py"
RUN_TIMEOUT = 60.0
MiB = 1 << 20


def client_args(out: Path, *command: str, retry_delay: float = 0.05) -> list[str]:
    # -I -S: no site-packages and no PYTHONPATH, as on a host image's bare python3.
    return [sys.executable, "-I", "-S", str(CLIENT), "--dir", str(out),
            "--retry-delay", str(retry_delay), "--", *command]


def environment(url: str | None, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (URL_ENV, TOKEN_ENV)}
    env.update({URL_ENV: url} if url is not None else {})
    env.update({TOKEN_ENV: token} if token is not None else {})
    return env


def run(out: Path, url: str | None, token: str | None, *command: str,
        retry_delay: float = 0.05) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(client_args(out, *command, retry_delay=retry_delay),
                          env=environment(url, token), capture_output=True, text=True,
                          errors="replace", timeout=RUN_TIMEOUT, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def sh(script: str, *args: str) -> tuple[str, ...]:
    return ("sh", "-c", script, "sh", *args)


def requests(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The requests the endpoint answered (its debug lines, one per request)."""
    return [r.getMessage() for r in caplog.records if '"PUT ' in r.getMessage()]


@pytest.fixture
def endpoint():
    with ResultsEndpoint.start("127.0.0.1", idle_timeout=5) as ep:
        yield ep


@pytest.fixture
def cell(endpoint, tmp_path):
    """(out, dest, token): the cell's /out, its destination and its token."""
    out, dest = tmp_path / "out", tmp_path / "run" / "images" / "debian"
    out.mkdir()
    return out, dest, endpoint.expect("debian:debian-bookworm", dest)


def lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return done.stderr.splitlines()


# ------------------------------------------------------------------ the happy path


@pytest.mark.parametrize(("script", "status"), [
    ("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 128 + signal.SIGTERM),
    ("kill -KILL $$", 128 + signal.SIGKILL)])
def test_the_files_land_and_the_status_is_the_commands(endpoint, cell, script, status):
    out, dest, token = cell
    image = os.urandom(20 * MiB)
    (out / "debian-bookworm.qcow2").write_bytes(image)
    (out / "debian-bookworm.packages").write_bytes(b"")
    done = run(out, endpoint.url, token,
               *sh('head -c 1000 /dev/urandom > "$1/debian-bookworm.failure.json"; ' + script,
                   str(out)))
    assert done.returncode == status, done.stderr
    names = sorted(os.listdir(out))
    assert sorted(os.listdir(dest)) == names
    for name in names:
        assert (dest / name).read_bytes() == (out / name).read_bytes()
    assert [r.name for r in endpoint.received(token)] == names  # sorted by name
    assert lines(done)[0] == ("dib-matrix upload: debian-bookworm.failure.json 1000 bytes "
                              f"sha256:{endpoint.received(token)[0].sha256[:12]}... ok")
    assert sum(line.endswith(" ok") for line in lines(done)) == 3


def test_a_second_run_finds_its_files_there_already(endpoint, cell):
    out, _, token = cell
    (out / "a.raw").write_bytes(b"a")
    assert run(out, endpoint.url, token, "true").returncode == 0
    again = run(out, endpoint.url, token, "true")
    assert again.returncode == 0
    assert lines(again) == ["dib-matrix upload: a.raw 1 bytes sha256:ca978112ca1b... ok "
                            "(was there already)"]


@pytest.mark.parametrize("make", ["missing", "empty", "a file"])
def test_no_directory_or_an_empty_one_is_nothing_to_upload(endpoint, cell, make):
    out, dest, token = cell
    out.rmdir()
    if make == "empty":
        out.mkdir()
    elif make == "a file":
        out.write_bytes(b"not a directory")
    for status in (0, 5):
        done = run(out, endpoint.url, token, *sh(f"exit {status}"))
        assert (done.returncode, done.stderr) == (status, "")
    assert endpoint.received(token) == []


def test_a_command_that_cannot_start_is_127_and_its_outputs_still_go(endpoint, cell):
    out, _, token = cell
    (out / "a.raw").write_bytes(b"a")
    done = run(out, endpoint.url, token, "/nonexistent/command")
    assert done.returncode == 127
    assert "cannot run /nonexistent/command" in done.stderr
    assert [r.name for r in endpoint.received(token)] == ["a.raw"]


# ------------------------------------------------------------------ what is skipped


def test_links_and_special_files_are_skipped_never_followed(endpoint, cell, tmp_path):
    out, dest, token = cell
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"secret")
    (out / "image.raw").write_bytes(b"image")
    (out / "to-file").symlink_to(outside / "victim")
    (out / "to-dir").symlink_to(outside)
    (out / "dangling").symlink_to(outside / "nothing")
    (out / "subdir").mkdir()
    (out / "subdir" / "nested.raw").write_bytes(b"not uploaded: not recursive")
    os.mkfifo(out / "fifo")  # opening it to read would block forever
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(out / "socket"))
    watch = TreeWatch(tmp_path, dest)
    done = run(out, endpoint.url, token, "true")
    listener.close()
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(dest)) == ["image.raw"]
    skipped = sorted(line.split(":")[1].split()[-1] for line in lines(done) if "skipped" in line)
    assert skipped == ["dangling", "fifo", "socket", "subdir", "to-dir", "to-file"]
    watch.assert_untouched()


# ------------------------------------------------------------------ failures


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(("script", "status"), [("exit 0", UPLOAD_FAILED_EXIT), ("exit 4", 4)])
def test_a_server_that_is_down_fails_the_upload_but_not_the_commands_status(tmp_path, script,
                                                                              status):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.raw", "b.raw", "c.raw"):
        (out / name).write_bytes(b"x")
    started = time.monotonic()
    done = run(out, _closed_port_url(), "token", *sh(script))
    assert done.returncode == status
    assert lines(done)[-1].startswith("dib-matrix upload failed: a.raw: no answer from http")
    assert "2 more entries not tried" in lines(done)[-1]
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("missing", [URL_ENV, TOKEN_ENV])
def test_without_the_endpoint_the_command_is_not_run(endpoint, cell, missing):
    out, _, token = cell
    url = None if missing == URL_ENV else endpoint.url
    done = run(out, url, None if missing == TOKEN_ENV else token,
               *sh('touch "$1/ran"', str(out)))
    assert done.returncode == UPLOAD_FAILED_EXIT
    assert done.stderr == f"dib-matrix upload failed: {missing} is not set\n"
    assert not (out / "ran").exists()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "http://127.0.0.1:1/other/path",
                                 "http://127.0.0.1:99999", "http://", "127.0.0.1:80",
                                 "http://127.0.0.1:1?x=1"])
def test_a_malformed_url_is_an_upload_failure(tmp_path, url):
    done = run(tmp_path, url, "token", "true")
    assert done.returncode == UPLOAD_FAILED_EXIT
    assert done.stderr.startswith(f"dib-matrix upload failed: {URL_ENV} is not ")


def test_the_upload_variables_are_not_in_the_commands_environment(endpoint, cell):
    out, _, token = cell
    done = run(out, endpoint.url, token, "env")
    assert done.returncode == 0
    for secret in (URL_ENV, TOKEN_ENV, token, endpoint.url):
        assert secret not in done.stdout
    assert "PATH=" in done.stdout  # the rest of the environment is passed on


def test_a_refusal_is_not_tried_again_and_fails_the_upload(endpoint, cell, caplog):
    out, dest, _ = cell
    (out / "a.raw").write_bytes(b"a")
    with caplog.at_level(logging.DEBUG, logger="dib-matrix"):
        done = run(out, endpoint.url, "not-the-token", "true", retry_delay=5)
    assert done.returncode == UPLOAD_FAILED_EXIT
    assert lines(done)[-1] == "dib-matrix upload failed: a.raw: 403 forbidden"
    assert len(requests(caplog)) == 1
    assert not dest.exists() or os.listdir(dest) == []


def test_a_server_error_is_tried_again_a_bounded_number_of_times(endpoint, cell, caplog):
    out, dest, token = cell
    (out / "a.raw").write_bytes(b"a")
    dest.rmdir()
    dest.write_bytes(b"the destination is not a directory")
    with caplog.at_level(logging.DEBUG, logger="dib-matrix"):
        done = run(out, endpoint.url, token, "true")
    assert done.returncode == UPLOAD_FAILED_EXIT
    assert "a.raw: 500 the destination is not there" in lines(done)[-1]
    assert len(requests(caplog)) == upload_results.ATTEMPTS


def test_a_file_over_the_limit_is_refused_at_once_not_sent_whole(tmp_path, caplog):
    out, dest = tmp_path / "out", tmp_path / "dest"
    out.mkdir()
    (out / "big.qcow2").write_bytes(os.urandom(32 * MiB))
    (out / "small.raw").write_bytes(b"s")
    with ResultsEndpoint.start("127.0.0.1", cell_limit=MiB) as endpoint, \
            caplog.at_level(logging.DEBUG, logger="dib-matrix"):
        token = endpoint.expect("c", dest)
        done = run(out, endpoint.url, token, "true", retry_delay=5)
        assert [r.name for r in endpoint.received(token)] == ["small.raw"]
    assert done.returncode == UPLOAD_FAILED_EXIT
    assert "big.qcow2 33554432 bytes" in done.stderr
    assert "FAILED: 413 33554432 bytes, 1048576 left of the cell's 1048576" in done.stderr
    assert len(requests(caplog)) == 2  # the refusal was read, not taken for a lost connection


def _answer_early_then_stall(listener: socket.socket, stall: float) -> None:
    """A server that refuses after the headers and then reads nothing for ``stall`` s."""
    conn, _ = listener.accept()
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(1)
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n"
                     b"Connection: close\r\n\r\ntoo large")
        time.sleep(stall)


def test_an_early_answer_stops_the_sending(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.qcow2").write_bytes(os.urandom(64 * MiB))  # more than the socket buffers
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=_answer_early_then_stall, args=(listener, 4.0))
        server.start()
        started = time.monotonic()
        done = run(out, f"http://127.0.0.1:{listener.getsockname()[1]}", "t", "true")
        took = time.monotonic() - started
        server.join()
    assert done.returncode == UPLOAD_FAILED_EXIT
    assert lines(done)[-1] == "dib-matrix upload failed: big.qcow2: 413 too large"
    assert took < 3  # it read the answer, rather than wait to push the whole file


# Names a cell may write but not upload: refused by the server, never a path outside.
ODD_NAMES = ["a\nb.raw", "..x", ".hidden", "-rf", "x?y=1", "%2e%2e", "é.raw", "a b", "a\x1b[2J",
             os.fsdecode(b"\xff.raw"), "a#b", "a%2fb"]


@pytest.mark.parametrize("name", ODD_NAMES, ids=repr)
def test_a_file_with_an_odd_name_is_refused_and_said_safely(endpoint, cell, tmp_path, name):
    out, dest, token = cell
    (out / name).write_bytes(b"odd")
    watch = TreeWatch(tmp_path, dest)
    done = run(out, endpoint.url, token, "true")
    assert done.returncode == UPLOAD_FAILED_EXIT
    assert "400 not a file name a cell may upload" in done.stderr
    assert all(line.startswith("dib-matrix upload") for line in lines(done))
    assert "\x1b" not in done.stderr
    assert endpoint.received(token) == []
    watch.assert_untouched()


# ------------------------------------------------------------------ signals


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 7), (signal.SIGINT, 8)])
def test_a_signal_is_passed_on_to_the_command(endpoint, cell, signum, status):
    out, _, token = cell
    (out / "a.raw").write_bytes(b"a")
    script = 'trap "exit 7" TERM; trap "exit 8" INT; echo ready; while :; do sleep 0.05; done'
    # Its own session: a wrapper that dies without passing the signal on must not leave
    # the looping command behind (holding the pipes: the test would wait forever).
    child = subprocess.Popen(client_args(out, *sh(script)), env=environment(endpoint.url, token),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        child.send_signal(signum)
        assert child.wait(RUN_TIMEOUT) == status
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate(timeout=RUN_TIMEOUT)
    assert [r.name for r in endpoint.received(token)] == ["a.raw"]  # evidence still sent


# ------------------------------------------------------------------ the file itself


def test_the_client_is_python_3_9_and_standard_library_only():
    tree = ast.parse(CLIENT.read_text(encoding="utf-8"), feature_version=(3, 9))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


@pytest.mark.parametrize("args", [[], ["--dir", "/out"], ["--dir", "/out", "--"], ["--"],
                                  ["--dir", "/out", "--retry-delay", "-1", "--", "true"],
                                  ["--dir", "/out", "--retry-delay", "nan", "--", "true"]])
def test_a_bad_command_line_is_a_usage_error(args):
    done = subprocess.run([sys.executable, "-I", "-S", str(CLIENT), *args], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, check=False)
    assert done.returncode == 2
    assert "usage:" in done.stderr
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------ the run stops the cell


def test_a_revoked_token_stops_the_command_and_uploads_nothing(endpoint, cell):
    out, dest, token = cell
    started = time.monotonic()
    client = subprocess.Popen(client_args(out, *sh("echo x > a.raw; exec sleep 60")),
                              env=environment(endpoint.url, token), cwd=out, text=True,
                              stderr=subprocess.PIPE)
    time.sleep(1)
    endpoint.revoke(token)
    _, err = client.communicate(timeout=RUN_TIMEOUT)
    assert client.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - started < upload_results.LOOK_SECONDS * 2 + 5
    assert "revoked this cell's token: stopping the command" in err
    assert not dest.exists() or list(dest.iterdir()) == []


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(endpoint, cell):
    _, _, token = cell
    child = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60"])
    watch = upload_results.Watch(upload_results.Endpoint.from_environment(endpoint.url, token),
                                 look=0.1, orphan=5, grace=0.5)
    watch.follow(child)
    endpoint.revoke(token)
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert watch.stopped == "the run revoked this cell's token"


def test_a_run_that_stops_answering_stops_the_command_after_the_orphan_time(tmp_path):
    child = subprocess.Popen(["sleep", "60"])
    watch = upload_results.Watch(upload_results.Endpoint.from_environment(
        _closed_port_url(), "t"), look=0.1, orphan=0.6, grace=1)
    started = time.monotonic()
    watch.follow(child)
    assert child.wait(timeout=10) == -signal.SIGTERM
    assert 0.6 <= time.monotonic() - started < 5
    assert "did not answer" in (watch.stopped or "")


def test_a_live_token_lets_the_command_finish(endpoint, cell):
    _, _, token = cell
    child = subprocess.Popen(["sleep", "1"])
    watch = upload_results.Watch(upload_results.Endpoint.from_environment(endpoint.url, token),
                                 look=0.1, orphan=0.3, grace=0.5)
    watch.follow(child)
    assert child.wait(timeout=10) == 0
    watch.end()
    assert watch.stopped is None


def test_without_a_directory_the_wrapper_only_watches(endpoint, tmp_path):
    token = endpoint.expect("debian.tox", None)
    done = subprocess.run([sys.executable, "-I", "-S", str(CLIENT), "--", "sh", "-c", "exit 4"],
                          env=environment(endpoint.url, token), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)
    assert done.returncode == 4 and "Traceback" not in done.stderr
    assert "upload" not in done.stderr
