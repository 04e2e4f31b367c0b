"""Which swarm node runs a cell, when a run spans more than one.

The run places each job itself (a ``node.id==`` constraint) instead of leaving it to
the swarm: so that a per-node limit holds (the swarm's own ``max_replicas`` counts one
service's tasks, and every cell is a service of its own), so that each cell can record
its node, and so that a node that leaves is noticed while its cells wait on it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import docker

from matrix.containers.engine import EngineError

WAIT_SECONDS = 1.0  # how often a cell that waits for a free node looks again


class NodeLost(EngineError):
    """The node a cell ran on left the swarm: the cell has no verdict (it stays pending)."""

    def __init__(self, hostname: str, why: str):
        super().__init__(f"swarm node {hostname} left: {why}")
        self.hostname = hostname


@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    address: str  # where the manager reaches it (its swarm address)
    manager: bool
    arch: str


def node_of(attrs: dict[str, Any]) -> Node:
    """A ``Node`` from the engine's node inspection."""
    description = attrs.get("Description") or {}
    return Node(
        id=attrs["ID"],
        hostname=description.get("Hostname") or attrs["ID"][:12],
        address=(attrs.get("Status") or {}).get("Addr", ""),
        manager=(attrs.get("Spec") or {}).get("Role") == "manager",
        arch=(description.get("Platform") or {}).get("Architecture", ""),
    )


def is_usable(attrs: dict[str, Any]) -> bool:
    """Ready and active: the swarm would start a task there."""
    return ((attrs.get("Status") or {}).get("State") == "ready"
            and (attrs.get("Spec") or {}).get("Availability") == "active")


def swarm_nodes(client: docker.DockerClient) -> list[Node]:
    """The nodes a cell can run on, by hostname (a stable order)."""
    return sorted((node_of(n.attrs) for n in client.nodes.list() if is_usable(n.attrs)),
                  key=lambda n: (n.hostname, n.id))


def node_down(client: docker.DockerClient, node_id: str) -> str | None:
    """Why the node cannot finish its task (down, drained, removed), or None."""
    try:
        attrs = client.nodes.get(node_id).attrs
    except docker.errors.NotFound:
        return "removed from the swarm"
    state = (attrs.get("Status") or {}).get("State")
    if state != "ready":
        return f"its state is {state}"
    return None


def per_node_default(max_parallel: int, nodes: int) -> int:
    """Cells at once on one node when the matrix does not say: an even share of
    max-parallel, so one node never takes every cell."""
    return max(1, math.ceil(max_parallel / max(1, nodes)))


class NodePool:
    """The run's nodes and how many cells each runs now, at most ``per_node`` each.

    ``acquire`` gives the node with the fewest running cells (then the one the cell
    prefers, then the fewest run so far), waiting while every node is full; a lost node
    takes no more cells.
    """

    def __init__(self, nodes: Iterable[Node], per_node: int):
        self.nodes = list(nodes)
        if not self.nodes:
            raise EngineError("the swarm has no ready, active node")
        self.per_node = per_node
        self.running = {n.id: 0 for n in self.nodes}
        self.started = {n.id: 0 for n in self.nodes}
        self.lost: dict[str, str] = {}  # node id -> why
        self._changed = threading.Condition()

    @property
    def multi_node(self) -> bool:
        return len(self.nodes) > 1

    def manager(self) -> Node | None:
        return next((n for n in self.nodes if n.manager), None)

    def acquire(self, stop: threading.Event, *, manager_only: bool = False,
                prefer: str | None = None) -> Node:
        """A node with a free slot; EngineError once none is left or ``stop`` is set.
        Among the least busy, the node named ``prefer`` (hostname) if it is free."""
        with self._changed:
            while True:
                if stop.is_set():
                    raise EngineError("the run is stopping")
                candidates = [n for n in self.nodes if n.id not in self.lost
                              and (n.manager or not manager_only)]
                if not candidates:
                    lost = ", ".join(self.lost.values()) or "none"
                    raise NodeLost("(any)", f"no node left to run the cell ({lost})")
                free = [n for n in candidates if self.running[n.id] < self.per_node]
                if free:
                    node = min(free, key=lambda n: (self.running[n.id], n.hostname != prefer,
                                                    self.started[n.id]))
                    self.running[node.id] += 1
                    self.started[node.id] += 1
                    return node
                self._changed.wait(WAIT_SECONDS)

    def release(self, node: Node) -> None:
        with self._changed:
            self.running[node.id] -= 1
            self._changed.notify_all()

    def lose(self, node: Node, why: str) -> None:
        with self._changed:
            self.lost.setdefault(node.id, f"{node.hostname} ({why})")
            self._changed.notify_all()
