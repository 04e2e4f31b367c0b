"""What a run needs when its swarm has more than one node.

On one machine a cell's container sees the run directory and the dib layer the run
baked. On a swarm of several machines neither is true, so the run, once it sees
more than one usable node:

- pushes each host's dib layer to a registry (the one the matrix names, or Debian's
  ``docker-registry`` it starts on the manager's swarm address) and gives the cells
  that reference pinned by digest;
- serves an upload endpoint on the same address: a build cell writes its outputs
  inside its container and sends them back (``matrix/run/incontainer/
  upload_results.py``), checksums verified on arrival; with ``shared-results`` the
  run directory is declared mounted at the same path on every node and bound as on
  one machine;
- places every cell on a node itself (``matrix.containers.placement``), at most
  ``max-per-node`` at once per node; a node that leaves leaves its cells pending.

The repository view listens on that address too (``matrix.run.runner``), so the
package cache serves every node. A single-node swarm gets none of this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

import docker
from docker.types import Mount, RestartPolicy, ServiceMode

from matrix.config.registryname import RegistryName
from matrix.containers import engine, leases, swarm
from matrix.containers.placement import (
    Node,
    NodeLost,
    NodePool,
    per_node_default,
    swarm_nodes,
)
from matrix.containers.registry import DEFAULT_REGISTRY_DIR, RunRegistry
from matrix.containers.registrypush import push_pinned
from matrix.containers.upload import ResultsEndpoint
from matrix.run.incontainer import upload_results

LOG = logging.getLogger("dib-matrix")
UPLOADER = f"{engine.DIB_MOUNT}/matrix/run/incontainer/upload_results.py"
LAYER_REPOSITORY = "dib-matrix/dib-{host}"
# A cell's wrapper looks at its token every few seconds and stops its command (terminate,
# then kill) when it is revoked: this is how long a stopping run waits for that.
STOP_GRACE_SECONDS = 30.0
REAPER = f"{engine.DIB_MOUNT}/matrix/run/incontainer/reap_containers.py"
REAPED_ITSELF_EXIT = 137  # a clean-up job's task ends killed by its own removal
REAP_LINES = 200  # of a clean-up job's output in the run log
REAP_SECONDS = 60.0  # for every node's clean-up job at the end of a run
ENGINE_SOCKET = "/var/run/docker.sock"  # a node's engine, where its clean-up job asks it


class ClusterError(engine.EngineError):
    """The services a multi-node run needs (registry, upload endpoint) did not start."""


def swarm_address(client: docker.DockerClient) -> str:
    """The manager's address on the swarm: where the other nodes reach it."""
    address = (client.info().get("Swarm") or {}).get("NodeAddr")
    if not address:
        raise engine.EngineError("the swarm manager has no node address")
    return address


@dataclasses.dataclass
class Cluster:
    """The services a multi-node run adds; ``launch`` runs one cell on a node."""

    pool: NodePool
    address: str
    registry: RegistryName
    endpoint: ResultsEndpoint
    stop: threading.Event
    shared_results: bool = False  # every node mounts the results directory: bind it
    pinned: dict[str, str] = dataclasses.field(default_factory=dict)  # layer -> pinned
    images: dict[str, str] = dataclasses.field(default_factory=dict)  # node id -> an image
    # cell id -> the node it ran on last time (its cached tree is in that node's volume)
    previous_nodes: dict[str, str] = dataclasses.field(default_factory=dict)
    _push_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @classmethod
    def start(cls, client: docker.DockerClient, *, run_id: str, max_parallel: int,
              max_per_node: int | None, registry: RegistryName | None, shared_results: bool,
              work: Path, stop: threading.Event, stack: contextlib.ExitStack,
              registry_dir: Path = DEFAULT_REGISTRY_DIR) -> Cluster | None:
        """The run's cluster services until ``stack`` closes; None for a single node."""
        nodes = swarm_nodes(client)
        if len(nodes) < 2:
            return None
        address = swarm_address(client)
        manager = next((n for n in nodes if n.manager), nodes[0])
        own = [n for n in nodes if n.arch == manager.arch]
        for other in sorted(set(nodes) - set(own), key=lambda n: n.hostname):
            LOG.warning("swarm node %s (%s) is left out: host images are built for the "
                        "manager's architecture", other.hostname, other.arch)
        pool = NodePool(own, max_per_node or per_node_default(max_parallel, len(own)))
        if registry is None:
            work.mkdir(parents=True, exist_ok=True)
            started = stack.enter_context(RunRegistry.start(
                address, registry_dir / "storage", work, registry_dir / "ca"))
            registry = started.name
        # Also with shared results: every cell's token is how a stopping run reaches it.
        endpoint = stack.enter_context(ResultsEndpoint.start(address))
        LOG.info("swarm of %d nodes (%s), at most %d cells on each; dib layers through %s; "
                 "results %s", len(own), ", ".join(n.hostname for n in own), pool.per_node,
                 registry.host, "on a shared filesystem" if shared_results else
                 f"uploaded to {endpoint.url}")
        cluster = cls(pool, address, registry, endpoint, stop, shared_results)
        stack.callback(cluster.unpin, client)
        stack.callback(cluster.reap, client, run_id)  # before the registry stops
        return cluster

    def layer(self, client: docker.DockerClient, host: str, local_ref: str,
              log: BinaryIO) -> str:
        """``local_ref`` pushed (once per run) and pinned by digest."""
        with self._push_lock:
            if local_ref not in self.pinned:
                log.write(f"# dib-matrix: pushing {local_ref} to {self.registry.host}\n"
                          .encode())
                self.pinned[local_ref] = push_pinned(client, local_ref, self.registry,
                                                     LAYER_REPOSITORY.format(host=host), log)
                log.write(f"# dib-matrix: cells use {self.pinned[local_ref]}\n".encode())
            return self.pinned[local_ref]

    def for_nodes(self, spec: engine.CellSpec) -> engine.CellSpec:
        """``spec`` as a job any node can run: outputs uploaded instead of bound (unless
        shared), and the run's stop reaching it through its token (every cell is wrapped)."""
        upload = spec.out_dir if not self.shared_results else None
        token = self.endpoint.expect(spec.cell_id, upload)  # None: nothing to upload
        wrapper = ("python3", UPLOADER, *(("--dir", engine.OUT_MOUNT) if upload else ()), "--")
        return dataclasses.replace(
            spec, out_dir=spec.out_dir if self.shared_results else None,
            command=(*wrapper, *spec.command),
            environment={**spec.environment, upload_results.URL_ENV: self.endpoint.url,
                         upload_results.TOKEN_ENV: token})

    def launch(self, client: docker.DockerClient, spec: engine.CellSpec) -> engine.CellResult:
        """Run ``spec`` on the least busy node; the manager for a cell that binds this
        machine's paths (``--dib-mount``, diskimage-builder's element trees)."""
        local_only = spec.dib_tree is not None or spec.upstream_elements is not None
        node = self.pool.acquire(self.stop, manager_only=local_only,
                                 prefer=self.previous_nodes.get(spec.cell_id))
        self.images.setdefault(node.id, spec.image)  # what reap runs there
        token = spec.environment.get(upload_results.TOKEN_ENV)
        try:
            return swarm.run_cell(client, spec, node)
        except NodeLost as lost:
            self.pool.lose(node, str(lost))
            raise
        finally:
            self.pool.release(node)
            if token is not None:
                self.endpoint.revoke(token)

    def stop_cells(self, client: docker.DockerClient, run_id: str,
                   grace: float = STOP_GRACE_SECONDS) -> None:
        """Ctrl-C, fail-fast: every cell's token revoked, so a cell on another node stops
        itself at its next look (removing a job's service does not stop its task there
        before Moby 24); then a bounded wait for their tasks to end."""
        self.endpoint.revoke_all()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _running_tasks(client, run_id):
            time.sleep(1.0)

    def unpin(self, client: docker.DockerClient) -> None:
        """The manager's names for the pushed layers removed (the image keeps its local
        tag): a name in a registry that is gone with the run would be left for good."""
        for pinned in self.pinned.values():
            try:
                client.images.remove(pinned, noprune=True)
            except docker.errors.DockerException as err:
                LOG.info("left the image name %s: %s", pinned, err)

    def reap(self, client: docker.DockerClient, run_id: str,
             timeout: float = REAP_SECONDS) -> None:
        """The run's containers removed from every other node its cells ran on (Moby
        before 24 leaves a removed job's containers there): one job per node, from the
        image its cells used, with that node's engine socket bound in. The manager's
        own are removed by the service removal."""
        jobs = []
        keep = _keep_live_runs()
        for node in self.pool.nodes:
            if node.manager or node.id in self.pool.lost or node.id not in self.images:
                continue
            spec = engine.CellSpec(
                run_id=run_id, cell_id=f"reap-{node.hostname}", host="reap",
                image=self.images[node.id], timeout=timeout, log_path=Path(os.devnull),
                command=("python3", REAPER, "--run", run_id, *keep),
                capabilities=())
            try:
                jobs.append(_start_reaper(client, spec, node))
            except docker.errors.DockerException as err:
                LOG.warning("containers of the run may be left on %s: %s", node.hostname, err)
        deadline = time.monotonic() + timeout
        for name, node in jobs:
            while time.monotonic() < deadline and not _ended(client, name):
                time.sleep(1.0)
            if not _ended(client, name):
                LOG.warning("containers of the run may be left on %s: its clean-up job did "
                            "not end within %.0f s", node.hostname, timeout)
            _say_what_reap_did(client, name, node)
            engine.remove_service(client, name)


def _keep_live_runs() -> list[str]:
    """``--keep`` for each run alive on this machine: the clean-up job also removes what
    killed runs left on its node, never a live run's containers."""
    try:
        live = leases.Registry().live_runs()
    except OSError as err:
        LOG.info("live runs unknown (%s): only this run's containers are removed", err)
        return ["--stale-after", "inf"]
    return [arg for run_id in sorted(live) for arg in ("--keep", run_id)]


def _start_reaper(client: docker.DockerClient, spec: engine.CellSpec, node: Node
                  ) -> tuple[str, Node]:
    name = swarm.service_name(spec.run_id, spec.cell_id)
    labels = engine.cell_labels(spec)
    client.services.create(
        spec.image, list(spec.command), name=name, labels=labels, container_labels=labels,
        mounts=[Mount(ENGINE_SOCKET, ENGINE_SOCKET, type="bind")],
        networks=["host"], cap_drop=["ALL"], constraints=[f"node.id=={node.id}"],
        mode=ServiceMode("replicated-job", replicas=1, concurrency=1),
        restart_policy=RestartPolicy(condition="none"))
    return name, node


def _say_what_reap_did(client: docker.DockerClient, name: str, node: Node) -> None:
    """The clean-up job's own lines in the run log (bounded), and why its task ended."""
    try:
        service = client.services.get(name)
        said = swarm.ordered_log(service).decode("utf-8", "replace").splitlines()
        tasks = service.tasks()
    except docker.errors.DockerException as err:
        LOG.warning("clean-up on %s: %s", node.hostname, err)
        return
    for line in said[:REAP_LINES]:
        LOG.info("clean-up on %s: %s", node.hostname, line.encode("unicode_escape")
                 .decode("ascii")[:300])
    for task in tasks:
        status = task["Status"]
        exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
        # 137: it removed its own container last, as it should (its lines went with it).
        if status.get("Err") and exit_code != REAPED_ITSELF_EXIT:
            LOG.warning("clean-up on %s: %s", node.hostname, status["Err"][:300])


def _ended(client: docker.DockerClient, name: str) -> bool:
    try:
        tasks = client.services.get(name).tasks()
    except docker.errors.NotFound:
        return True
    return bool(tasks) and all(t["Status"].get("State") in swarm.ENDED for t in tasks)


def _running_tasks(client: docker.DockerClient, run_id: str) -> int:
    """Tasks of the run's services that have not ended yet."""
    try:
        services = client.services.list(filters={"label": f"{engine.LABEL_RUN}={run_id}"})
        return sum(1 for s in services for t in s.tasks()
                   if t["Status"].get("State") not in swarm.ENDED)
    except docker.errors.DockerException:
        return 0
