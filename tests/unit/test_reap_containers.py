"""matrix/run/incontainer/reap_containers.py: a node's clean-up job, against a fake
engine on a unix socket (no Docker)."""

from __future__ import annotations

import json
import socketserver
import threading
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
        wanted = json.loads(query["filters"][0])["label"][0].split("=", 1)[1]
        found = [{"Id": cid} for cid, run in self.server.containers.items() if run == wanted]
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


@pytest.fixture
def engine(tmp_path):
    server = FakeEngine(tmp_path / "docker.sock", {OWN: RUN, CELL: RUN, OTHER_RUN: "other"})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_runs_containers_go_and_its_own_last(engine, tmp_path, monkeypatch):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"1 2 0:1 /data/containers/{OWN}/hostname /etc/hostname rw - x x\n")
    read_own_id = reap_containers.own_id
    monkeypatch.setattr(reap_containers, "own_id", lambda: read_own_id(str(mountinfo)))
    assert reap_containers.main(["--run", RUN, "--socket", engine.server_address]) == 0
    assert engine.removed == [CELL, OWN]  # another run's container stays


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
