"""The three-node swarm on one machine (``tests.integration.swarmnodes``).

The integration tests build the swarm for real (the local engine as manager, two worker
dockerds in namespaces of their own): the nodes are ready, a host-network job on a worker
sees the worker's network and not the machine's, the tests' results directory does not
exist on a worker, a stopped worker goes down, and neither a teardown nor a setup that
fails half way leaves anything behind. The first tests need no root: they check the
refusals that protect the machine (an address range in use, a hidden directory that
would hide too much).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.types import RestartPolicy, ServiceMode

from tests.integration import swarmnodes
from tests.integration.swarmnodes import SwarmNodesError, ThreeNodeSwarm, Worker

JOB_SECONDS = 90.0
# Prints the job's network as its kernel shows it, with shell builtins only (the image
# holds nothing but /bin/sh): the interfaces, then the routing trie with local addresses.
NETWORK_SCRIPT = ('for f in /proc/net/dev /proc/net/fib_trie; do echo "== $f"; '
                  'while IFS= read -r line; do echo "$line"; done < "$f"; done')
# Programs of which the machine runs a fixed number (its engine's) while other people's
# containers come and go: a worker's shims and containers are found by namespace instead.
ENGINE_PROGRAMS = {"dockerd", "containerd"}
SWARM_NETWORKS = {swarmnodes.SWARM_BRIDGE, "ingress"}


# --- refusals, no root needed --------------------------------------------------------------


def addr(name: str, local: str, prefix: int) -> dict[str, Any]:
    return {"ifname": name, "addr_info": [{"local": local, "prefixlen": prefix}]}


@pytest.mark.parametrize("addresses, routes, links, named", [
    ([addr("eth1", "10.231.7.4", 24)], [], [], "10.231.7.4/24 on eth1"),
    ([addr("eth1", "10.0.0.5", 8)], [], [], "10.0.0.5/8 on eth1"),  # a wider net covers ours
    ([], [{"dst": "10.231.1.0/24", "dev": "wg0"}], [], "route 10.231.1.0/24 dev wg0"),
    ([], [{"dst": "10.231.200.9", "dev": "tun0"}], [], "route 10.231.200.9 dev tun0"),
    ([], [], [{"ifname": "dm-sw1"}], "link dm-sw1"),
])
def test_a_network_in_use_is_refused_and_named(addresses, routes, links, named):
    with pytest.raises(SwarmNodesError) as refused:
        swarmnodes.check_free(addresses, routes, links)
    assert named in str(refused.value) and "ip link del" in str(refused.value)


def test_the_machines_usual_network_is_free():
    swarmnodes.check_free(
        [addr("lo", "127.0.0.1", 8), addr("eth0", "192.0.2.2", 24),
         addr("docker0", "172.17.0.1", 16)],
        [{"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
         {"dst": "172.17.0.0/16", "dev": "docker0"}, {"dst": "10.232.0.0/16", "dev": "x"}],
        [{"ifname": "lo"}, {"ifname": "eth0"}, {"ifname": "dmz0"}])


@pytest.mark.parametrize("hidden, work, why", [
    ("/tmp/results", "/var/tmp/w", "would hide all of /tmp"),
    ("/results", "/var/tmp/w", "would hide all of /"),
    ("{tmp}/session/results", "{tmp}/session/work", "overlap"),
    ("{tmp}/session/results", "{tmp}/session", "overlap"),
    ("{tmp}/session/results", "{tmp}", "overlap"),
    ("{tmp}/session/w/results", "{tmp}/session", "overlap"),
    ("{tmp}/missing/results", "/var/tmp/w", "is no directory"),
])
def test_a_hidden_directory_that_would_hide_too_much_is_refused(hidden, work, why, tmp_path):
    (tmp_path / "session").mkdir()
    with pytest.raises(SwarmNodesError, match=why):
        swarmnodes.hidden_cover(Path(hidden.format(tmp=tmp_path)),
                                Path(work.format(tmp=tmp_path)))


def test_the_workers_see_an_empty_parent_of_the_hidden_directory(tmp_path):
    hidden = tmp_path / "session" / "results"
    hidden.mkdir(parents=True)
    assert swarmnodes.hidden_cover(hidden, Path("/var/tmp/w")) == hidden.parent


def test_the_fixture_skips_where_a_tool_is_missing(monkeypatch, tmp_path_factory):
    monkeypatch.setattr(swarmnodes, "TOOLS", (*swarmnodes.TOOLS, "no-such-tool-here"))
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-here"):
        next(swarmnodes.swarm_fixture(tmp_path_factory))


# --- what the machine holds of a test swarm ------------------------------------------------


@dataclass(frozen=True)
class MachineState:
    """Everything of a test swarm that could outlive it, as the machine shows it."""

    engine_processes: frozenset[tuple[int, str]]
    links: frozenset[str]
    addresses: frozenset[str]
    mounts: frozenset[Path]  # under the work directory
    files: frozenset[Path]  # in the work directory
    swarm: str
    networks: frozenset[str]
    images: frozenset[str]


def machine_state(manager: docker.DockerClient, work: Path) -> MachineState:
    links = ip_json("link")
    addresses = ip_json("-4", "addr")
    return MachineState(
        engine_processes=frozenset(p for p in processes() if p[1] in ENGINE_PROGRAMS),
        links=frozenset(link["ifname"] for link in links
                        if link["ifname"].startswith(swarmnodes.LINK_PREFIX)),
        addresses=frozenset(info["local"] for link in addresses for info in link["addr_info"]
                            if info["local"].startswith("10.231.")),
        mounts=frozenset(p for p in swarmnodes.mount_points() if work in (p, *p.parents)),
        files=frozenset(work.rglob("*")),
        swarm=manager.info()["Swarm"]["LocalNodeState"],
        networks=frozenset(n.name for n in manager.networks.list()
                           if n.name in SWARM_NETWORKS),
        images=frozenset(tag for image in manager.images.list() for tag in image.tags
                         if tag.startswith(swarmnodes.SHELL_IMAGE)),
    )


def processes() -> set[tuple[int, str]]:
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                found.add((int(proc.name), (proc / "comm").read_text().strip()))
    return found


def namespace_holders(keys: set[tuple[int, int]], started_before: float) -> set[int]:
    """Processes started before ``started_before`` (seconds since boot) that are in any of
    the namespaces ``keys`` ((st_dev, st_ino) of nsfs files). The kernel reuses a freed
    namespace's number at once: a process started later is in someone else's namespace."""
    holders = set()
    for pid, _ in processes():
        for kind in ("net", "mnt", "uts"):
            with contextlib.suppress(OSError):
                st = Path(f"/proc/{pid}/ns/{kind}").stat()
                if (st.st_dev, st.st_ino) in keys and started_at(pid) < started_before:
                    holders.add(pid)
    return holders


def started_at(pid: int) -> float:
    """Seconds since boot when ``pid`` started (/proc/PID/stat field 22, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def ip_json(*args: str) -> list[dict[str, Any]]:
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True,
                          timeout=30)
    return list(json.loads(done.stdout or "[]"))


# --- a job on a worker ---------------------------------------------------------------------


@contextlib.contextmanager
def job(swarm: ThreeNodeSwarm, worker: Worker, image: str, script: str) -> Iterator[Any]:
    """``script`` as a one-task replicated-job with host networking, placed on ``worker``;
    the service is removed at the end."""
    service = swarm.manager.services.create(
        image, command=["/bin/sh", "-c", script], name=f"dm-swarmnodes-{uuid.uuid4().hex[:8]}",
        mode=ServiceMode("replicated-job", replicas=1), networks=["host"],
        constraints=[f"node.id=={worker.node_id}"], restart_policy=RestartPolicy("none"))
    try:
        yield service
    finally:
        service.remove()


def run_job(swarm: ThreeNodeSwarm, worker: Worker, image: str, script: str) -> str:
    """The output of ``script`` run as a job on ``worker`` (read from the worker's engine)."""
    with job(swarm, worker, image, script) as service:
        task = wait_for_task(service, {"complete", "failed", "rejected"})
        assert task["Status"]["State"] == "complete", task["Status"]
        assert task["NodeID"] == worker.node_id
        container = worker.client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        return container.logs().decode()


def wait_for_task(service: Any, states: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_SECONDS
    while time.monotonic() < deadline:
        tasks = service.tasks()
        if tasks and tasks[0]["Status"]["State"] in states:
            return dict(tasks[0])
        time.sleep(0.5)
    raise AssertionError(f"the job reached none of {sorted(states)} within {JOB_SECONDS:.0f} s: "
                         f"{service.tasks()}")


def interfaces(proc_net_dev: str) -> set[str]:
    """Interface names in /proc/net/dev (after its two header lines)."""
    return {line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:] if ":" in line}


def local_addresses(fib_trie: str) -> set[str]:
    """The addresses /proc/net/fib_trie marks ``/32 host LOCAL``: the namespace's own."""
    found, last = set(), ""
    for line in fib_trie.splitlines():
        words = line.split()
        if words[:1] == ["|--"]:
            last = words[1]
        elif words == ["/32", "host", "LOCAL"]:
            found.add(last)
    return found


def in_namespaces(worker: Worker, *argv: str) -> int:
    return subprocess.run(worker.namespaces.enter(*argv), timeout=30).returncode


# --- the swarm, built for real -------------------------------------------------------------


@pytest.fixture
def manager() -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=swarmnodes.LOCAL_ENGINE)
    if client.info()["Swarm"]["LocalNodeState"] != "inactive":
        pytest.skip("this engine was in a swarm before the test: the test swarm refuses it")
    yield client
    client.close()


@pytest.fixture
def work() -> Iterator[Path]:
    with swarmnodes.fresh_work_dir() as path:
        yield path


def names_of(pids: set[int]) -> set[str]:
    return {name for pid, name in processes() if pid in pids}


def check_isolation(swarm: ThreeNodeSwarm, worker: Worker, hidden: Path) -> None:
    """Its own engine identity and containerd; the results directory is not there."""
    assert worker.client.info()["ID"] != swarm.manager.info()["ID"]
    assert {"dockerd", "containerd"} <= names_of(swarmnodes.processes_in(worker.namespaces))
    assert hidden.is_dir()
    assert in_namespaces(worker, "test", "-S", str(worker.socket)) == 0  # nsenter works
    assert in_namespaces(worker, "test", "-e", str(hidden)) == 1


def check_host_network_job(swarm: ThreeNodeSwarm, worker: Worker, image: str) -> None:
    """A host-network job on the worker sees the worker's network, not the machine's."""
    output = run_job(swarm, worker, image, NETWORK_SCRIPT)
    dev, fib = output.split("== /proc/net/fib_trie")
    names, own_addresses = interfaces(dev), local_addresses(fib)
    machine_only = {link["dev"] for link in ip_json("route", "show", "default")}  # eth0 here
    machine_only |= {f"{swarmnodes.LINK_PREFIX}1", f"{swarmnodes.LINK_PREFIX}2"}
    machine_addresses = {info["local"] for link in ip_json("-4", "addr")
                         for info in link["addr_info"] if link["ifname"] in machine_only}
    assert worker.link in names and not names & machine_only, output
    assert worker.address in own_addresses, output
    assert not own_addresses & machine_addresses, output  # the manager's 10.231.1.1 too


def check_a_worker_dying_mid_job(swarm: ThreeNodeSwarm, doomed: Worker,
                                 image: str) -> tuple[float, str]:
    """Its dockerd, containerd, shims and the job's process all die at once, and the
    manager lists the node down within the bound; seconds it took, and the container."""
    swarm.load_image(doomed, image)
    with job(swarm, doomed, image, "exec sleep 600") as service:
        task = wait_for_task(service, {"running"})
        container = task["Status"]["ContainerStatus"]["ContainerID"]
        assert swarmnodes.container_cgroups(container)
        running = names_of(swarmnodes.processes_in(doomed.namespaces))
        # (a process's comm is cut at 15 characters: containerd-shim-runc-v2 is containerd-shim)
        assert {"dockerd", "containerd", "containerd-shim", "sleep"} <= running
        swarm.stop_worker(doomed)
        assert swarmnodes.processes_in(doomed.namespaces) == set()
        return swarm.wait_for_node(doomed, "down", swarm.down_within), container


@pytest.mark.integration
def test_three_isolated_nodes_run_a_host_network_job_and_leave_nothing(
        manager, work, tmp_path_factory, capsys):
    hidden = tmp_path_factory.getbasetemp()
    before = machine_state(manager, work)
    started = time.monotonic()
    with swarmnodes.three_node_swarm(work, hidden) as swarm:
        setup_seconds = time.monotonic() - started
        nodes = manager.nodes.list()
        assert sorted(n.attrs["Status"]["State"] for n in nodes) == ["ready"] * 3
        assert len({n.attrs["Description"]["Hostname"] for n in nodes}) == 3
        worker, doomed = swarm.workers
        namespace_keys = {(path.stat().st_dev, path.stat().st_ino)
                          for w in swarm.workers for path in w.namespaces.files()}
        check_isolation(swarm, worker, hidden)
        with swarmnodes.shell_image(manager) as image:
            swarm.load_image(worker, image)
            check_host_network_job(swarm, worker, image)
            down_seconds, killed = check_a_worker_dying_mid_job(swarm, doomed, image)
        assert swarm.node_state(worker) == "ready"
        started = time.monotonic()
    teardown_seconds = time.monotonic() - started

    assert machine_state(manager, work) == before
    assert namespace_holders(namespace_keys, started_before=uptime()) == set()
    assert swarmnodes.container_cgroups(killed) == []
    with capsys.disabled():
        print(f"\nthree-node swarm: setup {setup_seconds:.1f} s, stopped worker down after "
              f"{down_seconds:.1f} s (bound {swarm.down_within:.0f} s), teardown "
              f"{teardown_seconds:.1f} s")


def dockerd_that_exits(*args: Any) -> list[str]:
    return ["dockerd", "--no-such-flag"]


@pytest.mark.integration
@pytest.mark.parametrize("breaks, message", [
    ("mounts", "cannot mount"),
    ("dockerd", "dockerd of dm-worker-1 exited"),
    ("second join", "the second worker cannot join"),
    ("nodes", "not all ready"),
])
def test_a_setup_that_fails_half_way_leaves_nothing(manager, work, tmp_path_factory,
                                                    monkeypatch, breaks, message):
    if breaks == "mounts":  # the first worker's namespaces exist; no veth, no dockerd
        def cannot_mount(*args: Any) -> None:
            raise SwarmNodesError("cannot mount (as the test says)")
        monkeypatch.setattr(swarmnodes, "_hide", cannot_mount)
    elif breaks == "dockerd":
        monkeypatch.setattr(swarmnodes, "_dockerd_argv", dockerd_that_exits)
    elif breaks == "second join":
        real_join, joined = swarmnodes._join, []

        def join_once(*args: Any) -> Worker:
            if joined:
                raise SwarmNodesError("the second worker cannot join")
            joined.append(real_join(*args))
            return joined[0]
        monkeypatch.setattr(swarmnodes, "_join", join_once)
    else:  # everything was made
        def never_ready(*args: Any) -> None:
            raise SwarmNodesError("swarm nodes not all ready (as the test says)")
        monkeypatch.setattr(swarmnodes, "_wait_ready", never_ready)
    before = machine_state(manager, work)
    with pytest.raises(SwarmNodesError, match=message), \
            swarmnodes.three_node_swarm(work, tmp_path_factory.getbasetemp()):
        pytest.fail("the swarm was made")
    assert machine_state(manager, work) == before


@pytest.mark.integration
def test_an_engine_already_in_a_swarm_is_refused_and_left_in_it(manager, work,
                                                                tmp_path_factory):
    had_bridge = swarmnodes.SWARM_BRIDGE in machine_state(manager, work).networks
    manager.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    try:
        with pytest.raises(SwarmNodesError, match="already in a swarm.*docker swarm leave"), \
                swarmnodes.three_node_swarm(work, tmp_path_factory.getbasetemp()):
            pytest.fail("the swarm was made")
        assert manager.info()["Swarm"]["LocalNodeState"] == "active"
        assert list(work.iterdir()) == []
    finally:
        manager.swarm.leave(force=True)
        for network in manager.networks.list(names=[swarmnodes.SWARM_BRIDGE]):
            if network.name == swarmnodes.SWARM_BRIDGE and not had_bridge:
                network.remove()
