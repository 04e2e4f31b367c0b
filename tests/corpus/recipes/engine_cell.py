"""Run one command as a matrix cell through the real engine code (matrix.containers.engine
run_cell), with a memory limit or a kill from outside, as a host's cell meets them.

    python engine_cell.py IMAGE LOG --memory 40m -- bash -c '...'
    python engine_cell.py IMAGE LOG --kill-after 5 -- bash -c '...'

The cell's container gets the limit the engine itself does not set (a CI runner's or a
cgroup's); ``--kill-after`` kills it the way another job cleaning the engine would.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from pathlib import Path

import docker
from docker.models.containers import ContainerCollection

from matrix.containers import engine


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("image")
    parser.add_argument("log", type=Path)
    parser.add_argument("--memory", help="the container's memory (and swap) limit")
    parser.add_argument("--kill-after", type=float, help="seconds, then docker kill")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    client = engine.connect()
    limits = {"mem_limit": args.memory, "memswap_limit": args.memory} if args.memory else {}
    create = ContainerCollection.create  # client.containers is a new collection each time

    def create_limited(self: ContainerCollection, *a: object, **kw: object) -> object:
        container = create(self, *a, **{**kw, **limits})
        if args.kill_after:
            timer = threading.Timer(args.kill_after, _kill, (container,))
            timer.daemon = True
            timer.start()
        return container

    ContainerCollection.create = create_limited  # type: ignore[method-assign]
    spec = engine.CellSpec(run_id="20261207-000000-corp", cell_id="corpus/cell", host="corpus",
                           image=args.image, command=tuple(args.command), log_path=args.log,
                           timeout=600, dib_tree=None, out_dir=None, cache_volume=None)
    result = engine.run_cell(client, spec)
    print(f"exit code {result.exit_code}")
    return 0


def _kill(container: object) -> None:
    with contextlib.suppress(docker.errors.DockerException):
        container.kill()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
