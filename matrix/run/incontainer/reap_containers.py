"""Remove a run's containers from the swarm node this runs on, then this container.

Moby before 24 leaves the containers of a removed job service's tasks on the nodes
that ran them (moby/moby#44312): the manager removes its own, but it has no way into
another node's engine except a job placed there. This is that job: the run starts it
on each other node it used, from the image its cells ran from, with the node's engine
socket bound in, once its cells have ended::

    python3 reap_containers.py --run RUN_ID [--keep RUN_ID ...] [--socket PATH]

It removes every container labelled ``org.dib-matrix.run=RUN_ID`` (force, with their
anonymous volumes); then the stopped containers killed runs left there (made more than
``--stale-after`` seconds ago, their run not one of the ``--keep`` runs alive on the
manager); and, last, its own container, which ends it. Standard library only (it runs
on a host image's python3, 3.9 or later); it talks to the engine's API over the socket
and never runs a shell.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import sys
import time
from typing import Optional
from urllib.parse import quote

RUN_LABEL = "org.dib-matrix.run"
RUN_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{4}")  # results.names' run ids
API_TIMEOUT = 30.0
# A stopped container of another run this old, its run not alive: left by a killed run.
STALE_SECONDS = 6 * 3600.0
OWN_MOUNT = re.compile(r"/containers/([0-9a-f]{64})/(?:hostname|resolv\.conf|hosts)\s")


class UnixConnection(http.client.HTTPConnection):
    """HTTP to the engine's unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=API_TIMEOUT)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(API_TIMEOUT)
        sock.connect(self.path)
        self.sock = sock


def call(path: str, method: str, url: str) -> tuple[int, bytes]:
    connection = UnixConnection(path)
    try:
        connection.request(method, url)
        answer = connection.getresponse()
        return answer.status, answer.read(1 << 22)
    finally:
        connection.close()


def run_containers(path: str, run_id: str) -> list[str]:
    filters = quote(json.dumps({"label": [f"{RUN_LABEL}={run_id}"]}))
    status, body = call(path, "GET", f"/containers/json?all=1&filters={filters}")
    if status != 200:
        raise OSError(f"listing containers: HTTP {status}")
    return [str(c["Id"]) for c in json.loads(body)]


def own_id(mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """This container's id: the engine bind-mounts the container's own ``hostname`` and
    ``resolv.conf`` from ``<data-root>/containers/<id>/`` (a swarm task's host name is
    not always its id)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as lines:
            found = OWN_MOUNT.search(lines.read(1 << 20))
    except OSError:
        found = None
    if found:
        return found.group(1)
    name = os.environ.get("HOSTNAME", "")
    return name if re.fullmatch(r"[0-9a-f]{12,64}", name) else None


def stale_containers(path: str, keep: set[str], older_than: float, now: float) -> list[str]:
    """Stopped containers of other runs, made before ``now - older_than``, whose run is
    not in ``keep``: a run killed before its clean-up left them."""
    filters = quote(json.dumps({"label": [RUN_LABEL], "status": ["created", "exited", "dead"]}))
    status, body = call(path, "GET", f"/containers/json?all=1&filters={filters}")
    if status != 200:
        raise OSError(f"listing containers: HTTP {status}")
    stale = []
    for container in json.loads(body):
        run = str((container.get("Labels") or {}).get(RUN_LABEL, ""))
        created = container.get("Created")
        if (RUN_ID.fullmatch(run) and run not in keep and isinstance(created, (int, float))
                and now - created > older_than):
            stale.append(str(container["Id"]))
    return stale


def remove(path: str, container: str) -> int:
    status, _ = call(path, "DELETE", f"/containers/{quote(container)}?force=1&v=1")
    return status


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="reap_containers.py")
    parser.add_argument("--run", required=True)
    parser.add_argument("--keep", action="append", default=[],
                        help="a run still alive: its containers stay")
    parser.add_argument("--stale-after", type=float, default=STALE_SECONDS)
    parser.add_argument("--socket", default="/var/run/docker.sock")
    options = parser.parse_args(argv)
    if not RUN_ID.fullmatch(options.run):
        parser.error(f"not a run id: {options.run!r}")
    me = own_id()
    try:
        found = run_containers(options.socket, options.run)
        found += stale_containers(options.socket, {options.run, *options.keep},
                                  options.stale_after, time.time())
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"dib-matrix reap: {err}", file=sys.stderr)
        return 1
    others = [c for c in dict.fromkeys(found) if not (me and c.startswith(me))]
    for container in others:
        print(f"dib-matrix reap: {container[:12]}: HTTP {remove(options.socket, container)}")
    sys.stdout.flush()
    if me:
        remove(options.socket, me)  # ends this process: nothing runs after it
    return 0


if __name__ == "__main__":
    sys.exit(main())
