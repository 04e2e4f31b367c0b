"""A three-node Docker Swarm on this one machine, for integration tests.

The machine's own engine (``/var/run/docker.sock``) is the MANAGER. Two more ``dockerd``s
are the WORKERS, each as isolated as a second machine would be where it matters to a run:

- its own network namespace, reached only through a veth pair made for it: root side
  ``10.231.N.1/24`` (``dm-swN``), worker side ``10.231.N.2/24`` (``dm-swN-w``). The
  manager advertises the first pair's root side, ``10.231.1.1``; each worker has a host
  route to that address over its own pair and no default route, so it sends nothing
  anywhere else (nor to the other worker). Host-network containers on a worker see the
  worker's interfaces, because the worker has its own containerd (below);
- its own mount namespace, a slave of the machine's (mounts made there never reach the
  machine), where three directories are empty tmpfs: the parent of the caller's ``hidden``
  directory (so ``hidden`` does not exist there, as the manager's results directory does
  not exist on another machine), ``/run`` (the machine's containerd socket, docker socket
  and engine state are not there, so dockerd starts a containerd of its own instead of
  taking ``/run/containerd/containerd.sock`` for a system containerd, and that containerd,
  its shims and its state live in the worker's namespaces) and ``/etc/docker`` (a fresh
  engine identity and no ``daemon.json`` of the machine's);
- its own UTS namespace: the swarm lists the worker under its own hostname (its name);
- its own ``--data-root`` (under the caller's work directory), ``--exec-root`` (``/run/<name>``
  on its own ``/run``), ``--pidfile`` and API socket (``-H unix://...``; no TCP API). The only other
  flag is ``--insecure-registry <manager address>/32``, what a real user is told to set to
  pull from the registry a run serves on the manager's swarm address. iptables is left on
  (dockerd's default): it writes its rules into the worker's namespace only.

Every piece registers its undo as it is acquired (``contextlib.ExitStack``), so a setup
that fails half way, and the end of the ``with`` block, undo exactly what was made, in
reverse: workers leave and their nodes are removed, the manager leaves the swarm it was
put in (and ``docker_gwbridge`` goes if the swarm made it), each worker's dockerd gets
SIGTERM (SIGKILL after a grace) and every process left in its namespaces SIGKILL, the
namespace files are unmounted and removed, the veths deleted, and the work directory is
left as it was given. An engine that is already in a swarm is refused: the workers could
not reach its advertised address, and leaving it afterwards would break someone's swarm.

Measured on a 2-core VM: setup 1.6 s, a stopped worker is ``down`` 4.5-5.5 s later (the
heartbeat the library sets is 2 s), teardown 2.5 s. Needs root, ``nsenter``/``unshare``/
``mount`` (util-linux), ``ip`` (iproute2) and a ``dockerd`` on PATH. One swarm per machine
at a time (fixed addresses and link names); a test process killed outright leaves its
swarm behind (the messages of the next attempt say what to remove).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import docker
import docker.errors
import pytest
import requests

from dib import spawn

LOG = logging.getLogger(__name__)

NETWORK = ipaddress.IPv4Network("10.231.0.0/16")  # every pair's /24 lies in it
WORKER_COUNT = 2
LINK_PREFIX = "dm-sw"
LOCAL_ENGINE = "unix:///var/run/docker.sock"
SWARM_PORT = 2377
SWARM_BRIDGE = "docker_gwbridge"
# The heartbeat the library sets on the swarm it makes (Docker's default is 5 s). The
# manager marks a silent node down after about three periods (measured: 4.5-5.5 s at 2 s);
# a shorter period makes flaps of busy but healthy workers likelier.
HEARTBEAT_SECONDS = 2.0
DOWN_MARGIN_SECONDS = 4.0
TOOL_SECONDS = 30.0
DOCKERD_START_SECONDS = 60.0
DOCKERD_STOP_SECONDS = 20.0  # SIGTERM grace: dockerd stops its containers, then containerd
NODES_READY_SECONDS = 60.0
SWEEP_SECONDS = 10.0
POLL_SECONDS = 0.2
CGROUP_ROOT = Path("/sys/fs/cgroup")
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes with its NUL
TOOLS = ("dockerd", "containerd", "nsenter", "unshare", "mount", "umount", "ip", "ldd")
WORK_PARENT = Path("/var/tmp")  # on disk (overlay2 needs it), outside the pytest base temp
SHELLS = (Path("/bin/busybox"), Path("/bin/dash"))  # what a shell image is made of
PROGRAMS = (Path("/bin/sleep"),)  # a test job that waits without burning a core
SHELL_IMAGE = "dib-matrix-test/swarmnodes-shell"


NODE_ENGINE_SOCKET = "/var/run/docker.sock"  # inside a worker: its own /run

class SwarmNodesError(Exception):
    """The swarm cannot be made (or unmade) here; the message says why and what to do."""


@dataclass(frozen=True)
class Namespaces:
    """A worker's namespaces, each held by a bind-mounted file in the work directory."""

    net: Path
    mount: Path
    uts: Path

    def enter(self, *argv: str) -> list[str]:
        """``argv`` run inside these namespaces (what the worker's dockerd sees)."""
        return ["nsenter", f"--net={self.net}", f"--mount={self.mount}", f"--uts={self.uts}",
                "--", *argv]

    def files(self) -> tuple[Path, ...]:
        return (self.net, self.uts, self.mount)


@dataclass
class Worker:
    name: str  # also its hostname: what ``docker node ls`` shows
    address: str  # its swarm address, on the worker side of its veth pair
    socket: Path  # its dockerd's API socket
    client: docker.DockerClient
    node_id: str
    namespaces: Namespaces
    link: str  # the worker side of its veth pair, as its containers see it


@dataclass
class ThreeNodeSwarm:
    manager: docker.DockerClient
    manager_address: str
    workers: list[Worker]
    heartbeat: float = HEARTBEAT_SECONDS
    _daemons: dict[str, _Daemon] = field(default_factory=dict, repr=False)

    @property
    def down_within(self) -> float:
        """Seconds after ``stop_worker`` by which the manager lists that node ``down``."""
        return 3 * self.heartbeat + DOWN_MARGIN_SECONDS

    def stop_worker(self, worker: Worker) -> None:
        """The worker's node dies at once, as a machine that loses power: its dockerd, its
        containerd, the shims and every container get SIGKILL; nothing leaves the swarm.
        The manager lists the node ``down`` within ``down_within`` seconds."""
        self._daemons[worker.name].kill()

    def node_state(self, worker: Worker) -> str:
        """The worker's node as the manager sees it: ``ready``, ``down``, ``unknown``..."""
        return str(self.manager.nodes.get(worker.node_id).attrs["Status"]["State"])

    def wait_for_node(self, worker: Worker, state: str, timeout: float) -> float:
        """Seconds until the manager lists the worker's node in ``state``."""
        started = time.monotonic()
        while (seen := self.node_state(worker)) != state:
            if time.monotonic() - started > timeout:
                raise SwarmNodesError(f"node {worker.name} is still {seen}, not {state}, "
                                      f"after {timeout:.0f} s")
            time.sleep(POLL_SECONDS)
        return time.monotonic() - started

    def load_image(self, worker: Worker, ref: str) -> None:
        """Copy image ``ref`` from the manager's engine to the worker's (save | load, streamed)."""
        archive = self.manager.api.get_image(ref)
        for message in worker.client.api.load_image(archive):
            if "error" in message:
                raise SwarmNodesError(f"loading {ref} into {worker.name}: {message['error']}")
        worker.client.images.get(ref)  # raises ImageNotFound if the load said nothing useful


@contextlib.contextmanager
def three_node_swarm(work: Path, hidden: Path, *, heartbeat: float = HEARTBEAT_SECONDS,
                     manager: Optional[docker.DockerClient] = None) -> Iterator[ThreeNodeSwarm]:
    """The local engine as manager plus two isolated worker dockerds, all ``ready``.

    ``work`` (an existing directory, not under ``hidden``'s parent) holds the workers'
    data roots, sockets and namespace files; it is left empty as it was. ``hidden`` (e.g.
    the test session's results directory) does not exist inside the workers. ``manager``
    defaults to the engine at ``/var/run/docker.sock``; it must be this machine's engine,
    in its root network namespace (the workers reach it over veths), not ``DOCKER_HOST``'s.
    """
    work = work.resolve()
    if any(work.iterdir()):
        raise SwarmNodesError(f"the work directory {work} is not empty")
    cover = hidden_cover(Path(hidden), work)
    started = time.monotonic()
    with contextlib.ExitStack() as undo:
        if manager is None:
            manager = docker.DockerClient(base_url=LOCAL_ENGINE)
            undo.callback(manager.close)
        # Before anything is made: a test swarm of another session shows as links first.
        check_free(_ip_json("-4", "addr"), _ip_json("-4", "route", "show", "table", "all"),
                   _ip_json("link"))
        check_outside_swarm(manager)  # again right before the init
        ns_dir = _private_dir(work / "ns", undo)
        pairs = [_Pair(index) for index in range(1, WORKER_COUNT + 1)]
        manager_address = pairs[0].root_address
        daemons = [_start_worker(work, ns_dir, pair, cover, manager_address, undo)
                   for pair in pairs]
        token = _init_swarm(manager, manager_address, heartbeat, undo)
        workers = [_join(manager, daemon, manager_address, token, undo) for daemon in daemons]
        _wait_ready(manager, [w.node_id for w in workers], NODES_READY_SECONDS)
        LOG.info("three-node swarm ready in %.1f s", time.monotonic() - started)
        yield ThreeNodeSwarm(manager, manager_address, workers, heartbeat,
                             {d.name: d for d in daemons})


# --- addresses and links -------------------------------------------------------------------


@dataclass(frozen=True)
class _Pair:
    """Worker ``index``'s veth pair and addresses."""

    index: int

    @property
    def name(self) -> str:
        return f"dm-worker-{self.index}"

    @property
    def root_link(self) -> str:
        return f"{LINK_PREFIX}{self.index}"

    @property
    def node_link(self) -> str:
        return f"{LINK_PREFIX}{self.index}-w"

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{NETWORK.network_address + (self.index << 8)}/24")

    @property
    def root_address(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def node_address(self) -> str:
        return str(self.network.network_address + 2)


def check_free(addresses: list[dict[str, Any]], routes: list[dict[str, Any]],
               links: list[dict[str, Any]]) -> None:
    """SwarmNodesError when the machine already uses part of NETWORK or a link named like
    ours (``ip -j`` output of ``-4 addr``, ``-4 route show table all`` and ``link``)."""
    clashes = []
    for link in addresses:
        for info in link.get("addr_info", []):
            net = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network
            if net.overlaps(NETWORK):
                clashes.append(f"address {info['local']}/{info['prefixlen']} on {link['ifname']}")
    for route in routes:
        if route.get("dst", "default") == "default":
            continue
        if ipaddress.ip_network(route["dst"], strict=False).overlaps(NETWORK):
            clashes.append(f"route {route['dst']} dev {route.get('dev', '?')}")
    clashes += [f"link {link['ifname']}" for link in links
                if link["ifname"].startswith(LINK_PREFIX)]
    if clashes:
        raise SwarmNodesError(
            f"the test swarm's network {NETWORK} (links {LINK_PREFIX}*) is in use on this "
            f"machine: {'; '.join(sorted(set(clashes)))}. Another test swarm runs, or one was "
            "killed before its teardown: delete those links (ip link del ...) and retry")


def _ip_json(*args: str) -> list[dict[str, Any]]:
    return list(json.loads(_tool("ip", "-j", *args) or "[]"))


def _make_pair(pair: _Pair, spaces: Namespaces, manager_address: str,
               undo: contextlib.ExitStack) -> None:
    undo.callback(_delete_link, pair.root_link)
    _tool("ip", "link", "add", pair.root_link, "type", "veth", "peer", "name", pair.node_link,
          "netns", str(spaces.net))
    _tool("ip", "address", "add", f"{pair.root_address}/24", "dev", pair.root_link)
    _tool("ip", "link", "set", pair.root_link, "up")
    inside = ["nsenter", f"--net={spaces.net}", "--", "ip"]
    _tool(*inside, "address", "add", f"{pair.node_address}/24", "dev", pair.node_link)
    _tool(*inside, "link", "set", pair.node_link, "up")
    _tool(*inside, "link", "set", "lo", "up")
    # The only route out: to the manager's address (the first pair's /24 holds it already).
    if ipaddress.ip_address(manager_address) not in pair.network:
        _tool(*inside, "route", "add", f"{manager_address}/32", "dev", pair.node_link,
              "src", pair.node_address)


def _delete_link(name: str) -> None:
    if any(link["ifname"] == name for link in _ip_json("link")):
        _tool("ip", "link", "delete", name)


# --- namespaces and mounts -----------------------------------------------------------------


def hidden_cover(hidden: Path, work: Path) -> Path:
    """The directory a worker sees as an empty tmpfs so that ``hidden`` does not exist
    there: its parent. Refused when that would hide the worker's own files (it and ``work``
    overlap), a whole top-level directory or the root."""
    hidden = hidden.resolve()
    cover = hidden.parent
    if len(cover.parts) < 3:
        raise SwarmNodesError(f"cannot hide {hidden} from the workers: that would hide all of "
                              f"{cover} there; give a directory at least two levels deep")
    if work == cover or cover in work.parents or work in cover.parents:
        raise SwarmNodesError(f"the work directory {work} and {cover}, which the workers see "
                              f"empty (to hide {hidden}), overlap: put one elsewhere")
    if not cover.is_dir():
        raise SwarmNodesError(f"cannot hide {hidden} from the workers: {cover} is no directory")
    return cover


def _private_dir(path: Path, undo: contextlib.ExitStack) -> Path:
    """``path`` as a private bind mount of itself: a mount namespace can be bound to a file
    only where mount events do not propagate (else the namespace would contain itself)."""
    path.mkdir()
    undo.callback(path.rmdir)
    undo.callback(_unmount, path)
    _tool("mount", "--bind", str(path), str(path))
    _tool("mount", "--make-private", str(path))
    return path


def _make_namespaces(ns_dir: Path, name: str, undo: contextlib.ExitStack) -> Namespaces:
    spaces = Namespaces(net=ns_dir / f"{name}.net", mount=ns_dir / f"{name}.mnt",
                        uts=ns_dir / f"{name}.uts")
    for path in spaces.files():
        path.touch()
        undo.callback(_release_namespace, path)
    _tool("unshare", f"--net={spaces.net}", "true")
    _tool("unshare", f"--uts={spaces.uts}", "hostname", name)
    # The new mount namespace starts as a copy of this one: its copy of ns_dir would pin
    # the namespaces bound there (a worker's netns outliving its teardown), so it goes.
    # Slave: the machine's unmounts reach it, its own mounts never reach the machine.
    _tool("unshare", f"--mount={spaces.mount}", "--propagation", "slave",
          "umount", "--lazy", str(ns_dir))
    return spaces


def _hide(spaces: Namespaces, name: str, cover: Path) -> None:
    """Empty tmpfs over ``cover``, ``/run`` and ``/etc/docker`` (where the machine has
    one) in the worker's mount namespace."""
    targets = [(cover, "1m"), (Path("/run"), "64m")]
    if Path("/etc/docker").is_dir():
        targets.append((Path("/etc/docker"), "1m"))
    for target, size in targets:
        _tool("nsenter", f"--mount={spaces.mount}", "--", "mount", "-t", "tmpfs",
              "-o", f"mode=0755,size={size}", f"dm-{name}", str(target))


def _release_namespace(path: Path) -> None:
    _unmount(path)
    path.unlink(missing_ok=True)


def _unmount(path: Path) -> None:
    if path in mount_points():
        _tool("umount", str(path))


def mount_points() -> set[Path]:
    """Where something is mounted in this process's mount namespace (bind mounts too,
    which ``os.path.ismount`` does not see when they stay on one filesystem)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return {Path(_unescape(line.split()[4])) for line in lines}


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


# --- processes -----------------------------------------------------------------------------


def _ns_key(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _process_table() -> dict[int, tuple[int, set[tuple[int, int]]]]:
    """Every process: its parent and its net, mount and uts namespaces."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            spaces = {_ns_key(f"{entry.path}/ns/{kind}") for kind in ("net", "mnt", "uts")}
        except OSError:  # gone meanwhile, or a zombie
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (ppid, spaces)
    return table


def processes_in(spaces: Namespaces) -> set[int]:
    """The processes in any of a worker's namespaces and all their descendants (containers
    have namespaces of their own, under a shim that is in the worker's)."""
    mounted = mount_points()
    keys = {_ns_key(path) for path in spaces.files() if path in mounted}
    table = _process_table()
    found = {pid for pid, (_, own) in table.items() if own & keys}
    grown = True
    while grown:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= more
        grown = bool(more)
    found.discard(os.getpid())
    return found


def _kill_all_in(spaces: Namespaces, name: str) -> None:
    deadline = time.monotonic() + SWEEP_SECONDS
    while pids := processes_in(spaces):
        if time.monotonic() > deadline:
            raise SwarmNodesError(f"processes of {name} survive SIGKILL: {sorted(pids)}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(POLL_SECONDS)


def container_cgroups(container_id: str) -> list[Path]:
    """The cgroup directories of a container (cgroupfs driver, parent ``docker``: one per
    v1 hierarchy, or one in a v2 tree); cgroups live outside any mount namespace."""
    return sorted([*CGROUP_ROOT.glob(f"*/docker/{container_id}"),
                   *CGROUP_ROOT.glob(f"docker/{container_id}")])


def remove_container_cgroups(container_ids: Iterable[str]) -> None:
    """runc removes a container's cgroups when it is deleted; a container killed together
    with its runtime is never deleted, and its (empty) cgroups would stay."""
    for container_id in container_ids:
        for path in container_cgroups(container_id):
            path.rmdir()


@dataclass
class _Daemon:
    """A worker's dockerd, started in its namespaces."""

    pair: _Pair
    spaces: Namespaces
    socket: Path
    data_root: Path
    log: Path
    proc: subprocess.Popen[bytes]
    client: Optional[docker.DockerClient] = None

    @property
    def name(self) -> str:
        return self.pair.name

    def stop(self) -> None:
        """SIGTERM (dockerd stops its containers and its containerd), SIGKILL after a grace,
        then SIGKILL to whatever is left in the worker's namespaces, and the cgroups of
        containers killed that way go too."""
        if self.client is not None:
            self.client.close()
        if self.proc.returncode is None:  # once reaped, its group id may be someone else's
            spawn.stop(self.proc, grace=DOCKERD_STOP_SECONDS)
        _kill_all_in(self.spaces, self.name)
        containers = self.data_root / "containers"
        if containers.is_dir():
            remove_container_cgroups(entry.name for entry in containers.iterdir())

    def kill(self) -> None:
        _kill_all_in(self.spaces, self.name)
        self.proc.wait()
        spawn.forget(self.proc)

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _dockerd_argv(data_root: Path, exec_root: Path, pidfile: Path, socket: Path,
                  manager_address: str) -> list[str]:
    # Two sockets: one the tests reach from here, and the usual path inside the worker's
    # own /run, where a job on that node finds its engine (the run's clean-up job does).
    return ["dockerd", "--data-root", str(data_root), "--exec-root", str(exec_root),
            "--pidfile", str(pidfile), "-H", f"unix://{socket}",
            "-H", f"unix://{NODE_ENGINE_SOCKET}",
            "--insecure-registry", f"{manager_address}/32"]


def _start_worker(work: Path, ns_dir: Path, pair: _Pair, cover: Path, manager_address: str,
                  undo: contextlib.ExitStack) -> _Daemon:
    home = work / pair.name
    home.mkdir()
    undo.callback(_remove_tree, home)
    socket = home / "docker.sock"
    if len(str(socket)) > SOCKET_PATH_MAX:
        raise SwarmNodesError(f"{socket} is too long for a unix socket: use a shorter work dir")
    spaces = _make_namespaces(ns_dir, pair.name, undo)
    _hide(spaces, pair.name, cover)
    _make_pair(pair, spaces, manager_address, undo)
    log, data_root = home / "dockerd.log", home / "data-root"
    # The exec root is on the worker's own /run, and named unlike the machine's anyway.
    argv = spaces.enter(*_dockerd_argv(data_root, Path("/run", pair.name),
                                       home / "dockerd.pid", socket, manager_address))
    with log.open("ab") as sink:
        proc = spawn.spawn(argv, stdout=sink, stderr=subprocess.STDOUT)
    daemon = _Daemon(pair, spaces, socket, data_root, log, proc)
    undo.callback(daemon.stop)
    daemon.client = _wait_for_engine(daemon)
    _check_own_containerd(daemon)
    return daemon


def _wait_for_engine(daemon: _Daemon) -> docker.DockerClient:
    deadline = time.monotonic() + DOCKERD_START_SECONDS
    while True:
        if daemon.proc.poll() is not None:
            raise SwarmNodesError(f"dockerd of {daemon.name} exited ({daemon.proc.returncode}):"
                                  f"\n{daemon.log_tail()}")
        if daemon.socket.exists():
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                return docker.DockerClient(base_url=f"unix://{daemon.socket}")
        if time.monotonic() > deadline:
            raise SwarmNodesError(f"dockerd of {daemon.name} did not answer within "
                                  f"{DOCKERD_START_SECONDS:.0f} s:\n{daemon.log_tail()}")
        time.sleep(POLL_SECONDS)


def _check_own_containerd(daemon: _Daemon) -> None:
    """A dockerd that found a containerd socket would use it, and its host-network
    containers would run in that containerd's (the machine's) network namespace."""
    children = [pid for pid, (ppid, _) in _process_table().items() if ppid == daemon.proc.pid]
    names = {_comm(pid) for pid in children}
    if "containerd" not in names:
        raise SwarmNodesError(f"dockerd of {daemon.name} did not start a containerd of its own "
                              f"(children: {sorted(names)}):\n{daemon.log_tail()}")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# --- the swarm -----------------------------------------------------------------------------


def _swarm_state(client: docker.DockerClient) -> str:
    return str(client.info().get("Swarm", {}).get("LocalNodeState", ""))


def _init_swarm(manager: docker.DockerClient, address: str, heartbeat: float,
                undo: contextlib.ExitStack) -> str:
    """Make the manager's swarm and return the workers' join token."""
    check_outside_swarm(manager)
    had_bridge = _has_network(manager, SWARM_BRIDGE)
    undo.callback(_leave_as_manager, manager, had_bridge)
    manager.swarm.init(advertise_addr=address, listen_addr=f"{address}:{SWARM_PORT}",
                       dispatcher_heartbeat_period=int(heartbeat * 1e9))
    manager.swarm.reload()
    return str(manager.swarm.attrs["JoinTokens"]["Worker"])


def check_outside_swarm(manager: docker.DockerClient) -> None:
    """SwarmNodesError unless the engine is in no swarm: the workers could reach no other
    swarm's address, and leaving it afterwards would break someone's swarm."""
    info = manager.info().get("Swarm", {})
    if info.get("LocalNodeState") != "inactive":
        raise SwarmNodesError(
            f"the local engine is already in a swarm (state {info.get('LocalNodeState')!r}, "
            f"advertising {info.get('NodeAddr')!r}): the test swarm makes its own and leaves "
            "it afterwards. If that swarm is a leftover of a killed test run, `docker swarm "
            "leave --force` ends it; else run these tests on an engine outside any swarm")


def _has_network(client: docker.DockerClient, name: str) -> bool:
    return any(n.name == name for n in client.networks.list(names=[name]))


def _leave_as_manager(manager: docker.DockerClient, had_bridge: bool) -> None:
    if _swarm_state(manager) != "inactive":
        manager.swarm.leave(force=True)
    if not had_bridge:  # made by swarm init, left behind by leave
        for network in manager.networks.list(names=[SWARM_BRIDGE]):
            if network.name == SWARM_BRIDGE:
                network.remove()


def _join(manager: docker.DockerClient, daemon: _Daemon, manager_address: str, token: str,
          undo: contextlib.ExitStack) -> Worker:
    assert daemon.client is not None
    address = daemon.pair.node_address
    undo.callback(_leave_as_worker, manager, daemon, address)
    daemon.client.swarm.join(remote_addrs=[f"{manager_address}:{SWARM_PORT}"], join_token=token,
                             listen_addr=f"{address}:{SWARM_PORT}", advertise_addr=address)
    node_id = str(daemon.client.info()["Swarm"]["NodeID"])
    return Worker(daemon.name, address, daemon.socket, daemon.client, node_id, daemon.spaces,
                  daemon.pair.node_link)


def _leave_as_worker(manager: docker.DockerClient, daemon: _Daemon, address: str) -> None:
    if daemon.proc.poll() is None and daemon.client is not None:
        with contextlib.suppress(docker.errors.APIError):  # "not part of a swarm"
            daemon.client.swarm.leave(force=True)
    if _swarm_state(manager) != "active":
        return
    for node in manager.nodes.list():
        if node.attrs.get("Status", {}).get("Addr") == address:
            node.remove(force=True)


def _wait_ready(manager: docker.DockerClient, worker_ids: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {n.id: n.attrs["Status"]["State"] for n in manager.nodes.list()}
        if len(states) == 1 + len(worker_ids) and set(states.values()) == {"ready"}:
            return
        if time.monotonic() > deadline:
            raise SwarmNodesError(f"swarm nodes not all ready after {timeout:.0f} s: {states}")
        time.sleep(POLL_SECONDS)


# --- for pytest ----------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_work_dir(parent: Path = WORK_PARENT) -> Iterator[Path]:
    """An empty directory for ``three_node_swarm``, removed afterwards when it was left
    empty (a directory with leftovers stays, for a look)."""
    work = Path(tempfile.mkdtemp(prefix="dm-swarmnodes-", dir=parent))
    try:
        yield work
    finally:
        if not any(work.iterdir()):
            work.rmdir()


def swarm_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreeNodeSwarm]:
    """The body of a fixture of any scope: ``yield from swarm_fixture(tmp_path_factory)``.
    The workers do not see the session's base temporary directory (where the tests'
    results are); skipped without root or without the tools."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"a three-node swarm needs root and {', '.join(TOOLS)} (missing: "
                    f"{', '.join(missing) or 'none'}; uid {os.geteuid()})")
    with fresh_work_dir() as work, three_node_swarm(work, tmp_path_factory.getbasetemp()) as swarm:
        yield swarm


# --- a tiny image for tests ----------------------------------------------------------------


def shell_image_tar(shells: Sequence[Path] = SHELLS,
                    programs: Sequence[Path] = PROGRAMS) -> bytes:
    """A root filesystem holding ``/bin/sh`` (busybox, else dash) and ``programs`` that
    exist here, with the shared libraries they load, as a tar for ``docker import``: a
    shell to run a test script with, made of this machine's own files (no registry)."""
    shell = next((path for path in shells if path.is_file()), None)
    if shell is None:
        raise SwarmNodesError(f"no shell to make an image of: none of {[str(s) for s in shells]}")
    files = {Path("/bin/sh"): shell}
    files.update({Path("/bin", p.name): p for p in programs if p.is_file()})
    for binary in list(files.values()):
        files.update({lib: lib for lib in _libraries(binary)})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as tar:
        for target, source in sorted(files.items()):
            tar.add(str(source), arcname=str(target).lstrip("/"))
    return buffer.getvalue()


def _libraries(binary: Path) -> list[Path]:
    """The shared objects ``binary`` loads (none for a static binary), from ldd."""
    done = spawn.run(["ldd", str(binary)], timeout=TOOL_SECONDS, errors_apart=True)
    if not done.ok:  # "not a dynamic executable"
        return []
    found = []
    for line in done.text.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else (words[0] if words else "")
        if path.startswith("/"):
            found.append(Path(path))
    return found


@contextlib.contextmanager
def shell_image(client: docker.DockerClient) -> Iterator[str]:
    """``shell_image_tar`` imported into ``client``'s engine; the image goes at the end."""
    ref = f"{SHELL_IMAGE}:{uuid.uuid4().hex[:12]}"
    repository, tag = ref.split(":")
    client.api.import_image_from_data(shell_image_tar(), repository=repository, tag=tag)
    try:
        yield ref
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(ref, force=True)


# --- commands ------------------------------------------------------------------------------


def _tool(*argv: str) -> str:
    """Run a short system command (no shell); its stdout, or SwarmNodesError."""
    done = spawn.run(argv, timeout=TOOL_SECONDS, errors_apart=True)
    if not done.ok:
        why = (done.errors or done.text).strip() or f"exit status {done.returncode}"
        raise SwarmNodesError(f"{shlex.join(argv)}: {why}")
    return done.text
