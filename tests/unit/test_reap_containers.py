"""matrix/run/incontainer/reap_containers.py: a node's clean-up job, against a fake
engine on a unix socket (no Docker)."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest

from matrix.run.incontainer import reap_containers

OWN = "a" * 64
CELL = "b" * 64
OTHER_RUN = "c" * 64
RUN = "20261207-130204-a89d"


class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path, containers):
        self.containers = containers  # id -> run label
        self.removed: list[str] = []
        super().__init__(str(path), Handler)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def address_string(self):
        return "unix"

    def do_GET(self):
        query = parse_qs(urlsplit(self.path).query)
        filters = json.loads(query["filters"][0])
        key, _, wanted = filters["label"][0].partition("=")
        assert key == reap_containers.RUN_LABEL
        stopped = set(filters.get("status", ())) >= {"exited", "dead", "created"}
        found = [{"Id": cid, "Labels": {key: run}, "Created": created}
                 for cid, (run, created, state) in self.server.containers.items()
                 if (run == wanted if wanted else True) and (not stopped or state != "running")]
        body = json.dumps(found).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_DELETE(self):
        container = urlsplit(self.path).path.rsplit("/", 1)[1]
        self.server.removed.append(container)
        self.send_response(204)
        self.end_headers()


NOW = time.time()
LEFT = "d" * 64  # a killed run's cell, stopped a day ago
LIVE = "e" * 64  # a live run's stopped cell
RUNNING = "f" * 64  # an old run's container still running: not this job's to stop
RECENT = "0" * 64  # a stopped cell of a run not known here, made a minute ago
KILLED_RUN = "20261206-010000-dead"
LIVE_RUN = "20261206-020000-0001"


@pytest.fixture
def engine(tmp_path):
    server = FakeEngine(tmp_path / "docker.sock", {
        OWN: (RUN, NOW, "running"), CELL: (RUN, NOW, "exited"),
        OTHER_RUN: ("other", NOW - 86400, "exited"),
        LEFT: (KILLED_RUN, NOW - 86400, "exited"), LIVE: (LIVE_RUN, NOW - 86400, "exited"),
        RUNNING: (KILLED_RUN, NOW - 86400, "running"), RECENT: (KILLED_RUN, NOW - 60, "exited"),
    })
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_runs_containers_go_and_its_own_last(engine, tmp_path, monkeypatch):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"1 2 0:1 /data/containers/{OWN}/hostname /etc/hostname rw - x x\n")
    read_own_id = reap_containers.own_id
    monkeypatch.setattr(reap_containers, "own_id", lambda: read_own_id(str(mountinfo)))
    assert reap_containers.main(["--run", RUN, "--keep", LIVE_RUN,
                                 "--socket", engine.server_address]) == 0
    # This run's, then a killed run's stopped one, its own last. A live run's, a running
    # one, a recent one and one whose label is not a run id stay.
    assert engine.removed == [CELL, LEFT, OWN]


def test_without_live_runs_known_nothing_of_other_runs_is_removed(engine, monkeypatch):
    monkeypatch.setattr(reap_containers, "own_id", lambda: None)
    assert reap_containers.main(["--run", RUN, "--stale-after", "inf",
                                 "--socket", engine.server_address]) == 0
    assert sorted(engine.removed) == sorted([CELL, OWN])  # OWN: not known as its own here


def test_its_own_id_is_read_from_the_mounts_the_engine_made(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("36 35 98:0 / / rw - ext4 /dev/root rw\n"
                         f"40 35 8:1 /var/lib/x/containers/{OWN}/resolv.conf /etc/resolv.conf "
                         "rw - ext4 /dev/sda1 rw\n")
    assert reap_containers.own_id(str(mountinfo)) == OWN


@pytest.mark.parametrize("run", ["", "../x", "20261207-130204-a89d/../..", "latest", "*"])
def test_anything_but_a_run_id_is_refused(run, engine):
    with pytest.raises(SystemExit):
        reap_containers.main(["--run", run, "--socket", engine.server_address])
    assert engine.removed == []
