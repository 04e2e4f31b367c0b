"""Container engine access and cell containers.

A cell container is a fresh container of a host image that runs one command
(normally dib) with:

- the dib tree at ``/opt/dib-matrix``: inside the image when the cell runs from a
  dib layer baked on top of the host image (see ``matrix.hostgen.diblayer``, the
  default), or a read-only bind mount of the local tree (``--dib-mount``);
- an output directory bind-mounted at ``/out``;
- a per-host image-cache volume at ``/cache``;
- for a target with ``diskimage-builder-elements``, that release's element tree as a
  read-only bind mount at ``/opt/dib-upstream/elements``;
- host networking and a few named capabilities, never ``privileged``.

It is removed after success, failure, timeout and KeyboardInterrupt.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import docker
import docker.errors
import requests.exceptions
from docker.types import Mount

from matrix.config.matrixfile import Network
from matrix.containers.labels import (
    LABEL_CACHE,
    LABEL_CELL,
    LABEL_HOST,
    LABEL_RUN,
    cache_volume_name,
)

# Swarm puts it on a service's task containers.
SERVICE_LABEL = "com.docker.swarm.service.name"
DIB_MOUNT = "/opt/dib-matrix"
OUT_MOUNT = "/out"
CACHE_MOUNT = "/cache"
UPSTREAM_ELEMENTS_MOUNT = "/opt/dib-upstream/elements"  # diskimage-builder's element tree
# Socket read timeout of API calls (image builds stream with it too).
API_TIMEOUT = 600
# How the engine says a cell's container was killed: the catalogue names these lines.
OOM_KILLED_LINE = "engine: container OOMKilled"
SIGNAL_EXIT_BASE = 128  # an exit status above this is 128 + the number of the killing signal

# Found by running dib (debian-minimal, tar) in a cell with cap_drop=ALL and
# dropping one capability at a time. A build fails without: SYS_ADMIN (mount of
# proc/sysfs/tmpfs/bind; also unlocks the engine's seccomp rules for mount),
# SYS_CHROOT, MKNOD (debootstrap's device nodes), CHOWN and DAC_OVERRIDE
# (dpkg unpacking), SETUID and SETGID (apt drops to its _apt user). FOWNER
# stops apt's chmod warnings on _apt-owned files; AUDIT_WRITE lets runuser/su
# pass PAM as root on kernels with audit on. Not needed: FSETID, KILL,
# SETFCAP, SETPCAP, NET_RAW, NET_BIND_SERVICE. Everything not listed is
# dropped, so the set does not depend on the engine's defaults.
CELL_CAPABILITIES: tuple[str, ...] = (
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "MKNOD",
    "SETGID",
    "SETUID",
    "SYS_ADMIN",
    "SYS_CHROOT",
)


class EngineError(Exception):
    """The engine could not run a cell (not a failure of the command inside it)."""


def connect(timeout: int = API_TIMEOUT) -> docker.DockerClient:
    """A client for the local engine, or ``DOCKER_HOST``'s; EngineError if none answers."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineError(f"no container engine answers: {exc}") from exc
    return client


@dataclass(frozen=True)
class CellSpec:
    """Everything needed to run one command in a fresh container of a host image."""

    run_id: str
    cell_id: str  # unique within the run, e.g. "debian-bookworm/debian-bookworm-tar"
    host: str
    image: str  # host image (or a baked dib layer on top of it)
    command: tuple[str, ...]
    log_path: Path
    timeout: float
    environment: Mapping[str, str] = field(default_factory=dict)
    dib_tree: Path | None = None  # bind-mounted read-only at DIB_MOUNT; None: baked/absent
    out_dir: Path | None = None  # bind-mounted at OUT_MOUNT
    cache_volume: str | None = None  # named volume mounted at CACHE_MOUNT
    upstream_elements: Path | None = None  # bind-mounted read-only at UPSTREAM_ELEMENTS_MOUNT
    network: Network = Network.HOST
    capabilities: tuple[str, ...] = CELL_CAPABILITIES
    workdir: str | None = None


@dataclass(frozen=True)
class CellResult:
    cell_id: str
    container: str
    exit_code: int | None  # the container's exit status (137 after a timeout kill)
    timed_out: bool
    log_path: Path
    duration: float
    node: str | None = None  # the swarm node it ran on (a swarm job's only)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def container_name(run_id: str, cell_id: str) -> str:
    slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", f"{run_id}-{cell_id}").strip("-.")
    # Long ids keep a short hash so two cells never share a name.
    if len(slug) > 100:
        slug = slug[:80] + "-" + hashlib.sha256(slug.encode()).hexdigest()[:12]
    return f"dib-matrix-{slug}"


def ensure_volume(client: docker.DockerClient, name: str, run_id: str, host: str) -> None:
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        client.volumes.create(name, labels=volume_labels(name, run_id, host))


def volume_labels(name: str, run_id: str, host: str) -> dict[str, str]:
    if name == cache_volume_name(host):
        # The host's image cache outlives runs (warm builds), so it carries no run
        # label: cleaning up a run never drops it; `dib-matrix clean --caches` does.
        return {LABEL_CACHE: host, LABEL_HOST: host}
    return {LABEL_RUN: run_id, LABEL_HOST: host}  # scratch space of this run


def cell_mounts(spec: CellSpec) -> list[Mount]:
    mounts = []
    if spec.dib_tree is not None:
        mounts.append(Mount(DIB_MOUNT, str(spec.dib_tree.resolve()), type="bind", read_only=True))
    if spec.out_dir is not None:
        mounts.append(Mount(OUT_MOUNT, str(spec.out_dir.resolve()), type="bind"))
    if spec.cache_volume is not None:
        # Labelled as ensure_volume labels it here: another swarm node makes it on first use.
        mounts.append(Mount(CACHE_MOUNT, spec.cache_volume, type="volume",
                            labels=volume_labels(spec.cache_volume, spec.run_id, spec.host)))
    if spec.upstream_elements is not None:
        mounts.append(Mount(UPSTREAM_ELEMENTS_MOUNT, str(spec.upstream_elements.resolve()),
                            type="bind", read_only=True))
    return mounts


@contextmanager
def cell_log(
    client: docker.DockerClient,
    spec: CellSpec,
    name: str,
    remove: Callable[[docker.DockerClient, str], None],
) -> Iterator[tuple[ExitStack, BinaryIO]]:
    """The cell's log, open with its header, and its cache volume, for a runner of ``name``.

    ``remove`` (of the container or service ``name``) is registered before it
    exists, so a create that succeeds but returns late (or a Ctrl-C in between)
    still leaves nothing behind; more clean-up can go on the yielded stack.
    """
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    if spec.out_dir is not None:
        spec.out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as undo, spec.log_path.open("ab") as log:
        undo.callback(remove, client, name)
        log.write(log_header(spec, name))
        log.flush()
        if spec.cache_volume is not None:
            try:
                ensure_volume(client, spec.cache_volume, spec.run_id, spec.host)
            except docker.errors.DockerException as exc:
                raise engine_error(spec, log, exc) from exc
        yield undo, log


def engine_error(spec: CellSpec, log: BinaryIO, exc: Exception) -> EngineError:
    """The engine failed the cell: say so in its log; the error to raise."""
    log.write(f"dib-matrix: engine error: {exc}\n".encode())
    return EngineError(f"cell {spec.cell_id}: {exc}")


def cell_labels(spec: CellSpec) -> dict[str, str]:
    return {LABEL_RUN: spec.run_id, LABEL_HOST: spec.host, LABEL_CELL: spec.cell_id}


def _remove_container(client: docker.DockerClient, name: str) -> None:
    with suppress(docker.errors.NotFound):
        client.api.remove_container(name, force=True, v=True)


def remove_service(client: docker.DockerClient, name: str) -> None:
    """Remove the swarm service ``name``, and its task's container on this node.

    Removing a replicated-job service does not stop a task that still runs on
    Moby before 24 (moby/moby#44312), so the container goes by hand, as a local
    cell's container does at its timeout.
    """
    with suppress(docker.errors.NotFound):
        client.api.remove_service(name)
    selector = {"label": f"{SERVICE_LABEL}={name}"}
    for container in client.containers.list(all=True, filters=selector):
        with suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True, v=True)


def _kill(container: Any, expired: threading.Event) -> None:
    expired.set()
    with suppress(docker.errors.APIError):  # already gone
        container.kill()


def log_header(spec: CellSpec, name: str) -> bytes:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(spec.environment.items()))
    lines = [
        f"# dib-matrix cell {spec.cell_id} (run {spec.run_id}) in container {name}",
        f"# image: {spec.image}",
        f"# command: {env + ' ' if env else ''}{shlex.join(spec.command)}",
    ]
    return ("\n".join(lines) + "\n").encode()


def run_cell(client: docker.DockerClient, spec: CellSpec) -> CellResult:
    """Run ``spec`` to completion or timeout, output streamed to ``spec.log_path``.

    Raises ``EngineError`` when the engine cannot create or start the container.
    The container is gone when this returns or raises (KeyboardInterrupt too).
    """
    name = container_name(spec.run_id, spec.cell_id)
    expired = threading.Event()
    start = time.monotonic()
    with cell_log(client, spec, name, _remove_container) as (undo, log):
        try:
            container = client.containers.create(
                spec.image,
                list(spec.command),
                name=name,
                environment=dict(spec.environment),
                labels=cell_labels(spec),
                mounts=cell_mounts(spec),
                network_mode=spec.network.value,
                cap_drop=["ALL"],
                cap_add=list(spec.capabilities),
                working_dir=spec.workdir,
            )
            watchdog = threading.Timer(spec.timeout, _kill, args=(container, expired))
            watchdog.daemon = True
            undo.callback(watchdog.cancel)
            container.start()
            watchdog.start()
        except docker.errors.DockerException as exc:
            raise engine_error(spec, log, exc) from exc
        _copy_output(container, log)
        exit_code = int(container.wait().get("StatusCode", -1))
        watchdog.cancel()
        if expired.is_set():
            log.write(
                f"\ndib-matrix: killed after the {spec.timeout:.0f} s cell timeout\n".encode()
            )
        else:
            log.write(exit_evidence(container, exit_code).encode())
    return CellResult(
        spec.cell_id, name, exit_code, expired.is_set(), spec.log_path, time.monotonic() - start
    )


def exit_evidence(container: Any, exit_code: int) -> str:
    """The engine's own words on how the cell's container ended, for the verdict stage (the
    log of a killed build just stops): the kernel's OOM kill for the memory limit, or a
    signal's exit status (128 + N). Empty for an ordinary exit."""
    try:
        container.reload()
        state = (getattr(container, "attrs", None) or {}).get("State") or {}
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        state = {}
    if state.get("OOMKilled") is True:
        return f"\n{OOM_KILLED_LINE}\n"
    if exit_code > SIGNAL_EXIT_BASE:
        return f"\nengine: container exited with status {exit_code}\n"
    return ""


def _copy_output(container: Any, log: BinaryIO) -> None:
    # The SDK's follow stream is not subject to the client's read timeout, so a
    # long-silent build does not break it; it ends when the container stops.
    for chunk in container.logs(stream=True, follow=True):
        log.write(chunk)
        log.flush()


@dataclass(frozen=True)
class Removed:
    containers: int
    services: int
    volumes: int


def remove_run_objects(client: docker.DockerClient, run_id: str) -> Removed:
    """Remove every container, swarm service and volume labelled with ``run_id``."""
    selector = {"label": f"{LABEL_RUN}={run_id}"}
    containers = client.containers.list(all=True, filters=selector)
    for container in containers:
        _remove_container(client, container.id)
    try:
        services = client.services.list(filters=selector)
    except docker.errors.APIError:  # not a swarm manager: no services can be ours
        services = []
    for service in services:
        remove_service(client, service.name)
    volumes = client.volumes.list(filters=selector)
    for volume in volumes:
        volume.remove(force=True)
    return Removed(len(containers), len(services), len(volumes))


def runs_with_objects(client: docker.DockerClient) -> set[str]:
    """Run ids that still have a container, swarm service or volume."""
    selector = {"label": LABEL_RUN}
    labels = [c.labels for c in client.containers.list(all=True, filters=selector)]
    labels += [v.attrs.get("Labels") or {} for v in client.volumes.list(filters=selector)]
    with suppress(docker.errors.APIError):  # not a swarm manager
        labels += [s.attrs["Spec"].get("Labels") or {}
                   for s in client.services.list(filters=selector)]
    return {found[LABEL_RUN] for found in labels if found.get(LABEL_RUN)}


# -- the dib invocation contract ------------------------------------------------


def dib_command(
    elements: Sequence[str],
    output_name: str,
    output_types: Sequence[str] = ("tar",),
    extra_args: Sequence[str] = (),
) -> tuple[str, ...]:
    """dib's command line inside a cell container (dib tree at DIB_MOUNT)."""
    return (
        "python3",
        "-m",
        "dib",
        "-o",
        f"{OUT_MOUNT}/{output_name}",
        "-t",
        ",".join(output_types),
        "--image-cache",
        CACHE_MOUNT,
        *extra_args,
        *elements,
    )


def dib_environment(env: Mapping[str, str], mirror: str | None) -> dict[str, str]:
    """The cell's environment: the target's variables, dib on PYTHONPATH, the mirror."""
    result = dict(env)
    result["PYTHONPATH"] = DIB_MOUNT
    if mirror and "DIB_DISTRIBUTION_MIRROR" not in result:
        result["DIB_DISTRIBUTION_MIRROR"] = mirror
    return result


@dataclass(frozen=True)
class Captured:
    exit_code: int | None  # None: killed for the timeout
    stdout: str
    stderr: str


def run_captured(
    client: docker.DockerClient,
    image: str,
    command: Sequence[str],
    *,
    labels: Mapping[str, str],
    timeout: float,
) -> Captured:
    """Run a short command without network in a throw-away container; capture its output."""
    container = None
    try:
        container = client.containers.create(
            image, list(command), labels=dict(labels), network_mode=Network.NONE.value
        )
        container.start()
        try:
            status = container.wait(timeout=timeout)
        except requests.exceptions.ConnectionError:
            container.kill()
            status = {"StatusCode": None}
        stdout = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        stderr = container.logs(stdout=False, stderr=True).decode("utf-8", "replace")
        return Captured(status.get("StatusCode"), stdout, stderr)
    finally:
        if container is not None:
            _remove_container(client, container.id)
