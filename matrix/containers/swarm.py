"""Cells as Docker Swarm ``replicated-job`` services, for runs beyond one machine.

The same ``CellSpec`` as a local container becomes a one-shot job: one task, no
restarts, host networking, the same named capabilities, mounts and labels. On a
single-node swarm the task runs here with the cell's image and bind mounts. On a
multi-node swarm the run places each job on a node itself (``matrix.containers.
placement``), the image is a registry reference pinned by digest, and the cell's
outputs come back through the run's upload endpoint (``matrix.run.cluster``). The
task's output is copied live when it runs on this node, else from the service log
once it ends; a timeout or Ctrl-C removes the service and its task's container here,
and a cell on another node stops itself once the run revokes its upload token.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, BinaryIO

import docker
from docker.types import RestartPolicy, ServiceMode

from matrix.containers.engine import (
    CellResult,
    CellSpec,
    EngineError,
    cell_labels,
    cell_log,
    cell_mounts,
    container_name,
    engine_error,
    remove_service,
)
from matrix.containers.placement import Node, NodeLost, node_down

POLL_SECONDS = 0.5
# A task in one of these states will not run (again): the job is over.
ENDED = {"complete", "failed", "rejected", "shutdown", "orphaned", "remove"}
# The task never ran its command: the swarm could not place or start it.
NOT_RUN = {"rejected", "orphaned"}
COPY_JOIN_SECONDS = 30.0  # a stopped container's log stream ends at once; this is a bound
TIMED_OUT_EXIT = 137  # what a local container killed at the timeout reports
TIMESTAMP = re.compile(rb"^(\S+) ")
NODE_CHECK_SECONDS = 5.0  # how often a running cell looks whether its node is still there


def check_manager(client: docker.DockerClient) -> None:
    """EngineError unless ``client`` talks to a swarm manager (services need one)."""
    info = client.info().get("Swarm", {})
    if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
        raise EngineError(
            "--engine swarm: this engine is not a swarm manager (state "
            f"{info.get('LocalNodeState', 'unknown')}); run `docker swarm init` or point "
            "DOCKER_HOST at a manager"
        )


def _task(service: Any) -> dict[str, Any] | None:
    tasks = service.tasks()
    return tasks[0] if tasks else None


def ordered_log(service: Any) -> bytes:
    """The service log with stdout and stderr merged in time order, timestamps dropped."""
    raw = b"".join(service.logs(stdout=True, stderr=True, timestamps=True, follow=False))
    stamped = []
    for line in raw.splitlines(keepends=True):
        match = TIMESTAMP.match(line)
        stamped.append((match.group(1), line[match.end():]) if match else (b"", line))
    stamped.sort(key=lambda pair: pair[0])  # stable: one stream's own order is kept
    return b"".join(text for _, text in stamped)


class _TaskOutput:
    """Copies the task's output into the cell log.

    Live, like a local cell, when the task's container is on this node (the
    copy ends when the container stops); otherwise from the service log once
    the task has ended (a followed service log never ends by itself).
    """

    def __init__(self, client: docker.DockerClient, service: Any, log: BinaryIO) -> None:
        self.client, self.service, self.log = client, service, log
        self.copier: threading.Thread | None = None
        self.elsewhere = False

    def watch(self, status: dict[str, Any] | None) -> None:
        """Start the live copy once the task's container exists on this node."""
        if self.copier is not None or self.elsewhere or not status:
            return
        container_id = status.get("ContainerStatus", {}).get("ContainerID")
        if not container_id:
            return
        try:
            container = self.client.containers.get(container_id)
        except docker.errors.NotFound:
            self.elsewhere = True  # placed on another node
            return
        self.copier = threading.Thread(target=self._copy, args=(container,), daemon=True)
        self.copier.start()

    def _copy(self, container: Any) -> None:
        with suppress(docker.errors.DockerException):  # the container went away mid-copy
            for chunk in container.logs(stream=True, follow=True):
                self.log.write(chunk)
                self.log.flush()

    def finish(self) -> None:
        if self.copier is not None:
            self.copier.join(COPY_JOIN_SECONDS)
        else:
            self.log.write(ordered_log(self.service))
            self.log.flush()


def service_name(run_id: str, cell_id: str) -> str:
    """A service name for the cell: swarm wants a DNS label (63 of [a-z0-9-]).

    The readable part loses case and punctuation, so a hash of the exact ids
    keeps two cells apart.
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", container_name(run_id, cell_id).lower())
    digest = hashlib.sha256(f"{run_id}/{cell_id}".encode()).hexdigest()[:8]
    return f"{slug[:54].strip('-')}-{digest}"


def run_cell(client: docker.DockerClient, spec: CellSpec, node: Node | None = None,
             clock: Callable[[], float] = time.monotonic) -> CellResult:
    """Run ``spec`` as a one-task job to completion or timeout, output to ``spec.log_path``;
    on ``node`` when given (then ``NodeLost`` if that node leaves before the task ends).

    Raises ``EngineError`` when the swarm cannot create the service or place its task.
    The service is gone when this returns or raises (KeyboardInterrupt too).
    """
    name = service_name(spec.run_id, spec.cell_id)
    start = clock()
    with cell_log(client, spec, name, remove_service) as (_, log):
        try:
            service = _create(client, spec, name, node)
            task, timed_out = _follow(client, service, name, log, spec, node, start, clock)
        except NodeLost as lost:
            remove_service(client, name)
            log.write(f"\ndib-matrix: {lost}: the cell has no verdict\n".encode())
            raise
        except docker.errors.DockerException as exc:
            raise engine_error(spec, log, exc) from exc
        ran_on = _hostname(client, task, node)
        if timed_out:
            exit_code: int | None = TIMED_OUT_EXIT
            log.write(
                f"\ndib-matrix: service removed after the {spec.timeout:.0f} s cell timeout\n"
                .encode()
            )
        else:
            assert task is not None
            status = task["Status"]
            if status["State"] in NOT_RUN or "ContainerStatus" not in status:
                message = status.get("Err") or status.get("Message") or status["State"]
                log.write(f"dib-matrix: swarm did not run the task: {message}\n".encode())
                raise EngineError(f"cell {spec.cell_id}: swarm did not run the task: {message}")
            exit_code = int(status["ContainerStatus"].get("ExitCode", -1))
    return CellResult(spec.cell_id, name, exit_code, timed_out, spec.log_path, clock() - start,
                      node=ran_on)


def _create(client: docker.DockerClient, spec: CellSpec, name: str, node: Node | None) -> Any:
    labels = cell_labels(spec)
    return client.services.create(
        spec.image,
        list(spec.command),
        name=name,
        env=[f"{key}={value}" for key, value in spec.environment.items()],
        labels=labels,
        container_labels=labels,
        mounts=cell_mounts(spec),
        networks=[spec.network.value],
        cap_drop=["ALL"],
        cap_add=list(spec.capabilities),
        workdir=spec.workdir,
        constraints=[f"node.id=={node.id}"] if node is not None else None,
        mode=ServiceMode("replicated-job", replicas=1, concurrency=1),
        restart_policy=RestartPolicy(condition="none"),
    )


def _follow(client: docker.DockerClient, service: Any, name: str, log: BinaryIO,
            spec: CellSpec, node: Node | None, start: float, clock: Callable[[], float]
            ) -> tuple[dict[str, Any] | None, bool]:
    """Wait for the task to end (its output copied to ``log``): (the task, timed out)."""
    output = _TaskOutput(client, service, log)
    task = _task(service)
    checked = start
    while task is None or task["Status"].get("State") not in ENDED:
        output.watch(task and task["Status"])
        if clock() - start > spec.timeout:
            remove_service(client, name)  # ends a live copy of its output
            return task, True
        if node is not None and clock() - checked > NODE_CHECK_SECONDS:
            checked = clock()
            why = node_down(client, node.id)
            if why is not None:
                raise NodeLost(node.hostname, why)
        time.sleep(POLL_SECONDS)
        task = _task(service)
    output.watch(task["Status"])
    output.finish()
    return task, False


def _hostname(client: docker.DockerClient, task: dict[str, Any] | None,
              node: Node | None) -> str | None:
    """The name of the node the task ran on."""
    if node is not None:
        return node.hostname
    node_id = (task or {}).get("NodeID")
    if not node_id:
        return None
    try:
        return client.nodes.get(node_id).attrs["Description"]["Hostname"]
    except (docker.errors.DockerException, KeyError):
        return node_id[:12]
