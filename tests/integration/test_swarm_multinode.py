"""A run on a real three-node swarm on this machine (tests/integration/swarmnodes.py):
the local engine as manager and two more dockerds, each in its own network, mount and
UTS namespaces, where the run's results directory does not exist. The run pushes its
dib layer to the registry it starts, the cells come back through its upload endpoint,
and the package cache serves every node.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator

import docker
import pytest

from dib.outputs import sha256_file
from tests.integration.matrixhelpers import LABEL_RUN, cells_of, dib_matrix, start_run, write_matrix
from tests.integration.swarmnodes import ThreeNodeSwarm, swarm_fixture

pytestmark = pytest.mark.integration
HOST = "debian-bookworm"
MATRIX = f"""\
name: three-nodes
hosts: [{HOST}]
targets: [debian-bookworm, debian-trixie]
checks: [tox]
max-parallel: 3
timeout: 15m
"""
# Three builds at once over three nodes, one each: every node builds and uses the cache.
BUILDS_MATRIX = f"""\
name: three-builds
hosts: [{HOST}]
targets: [debian-bookworm, debian-trixie, debian-bullseye]
checks: []
max-parallel: 3
timeout: 15m
"""
LEFTOVER_SECONDS = 60.0  # a cell on a worker stops at its token's revocation, then is removed


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreeNodeSwarm]:
    yield from swarm_fixture(tmp_path_factory)


def run_objects(client: docker.DockerClient, run_id: str) -> list:
    selector = {"filters": {"label": f"{LABEL_RUN}={run_id}"}}
    return client.containers.list(all=True, **selector)


def assert_nothing_left(nodes: ThreeNodeSwarm, run_id: str) -> None:
    """No service of the run on the manager, no container of it on any node."""
    deadline = time.monotonic() + LEFTOVER_SECONDS
    engines = [nodes.manager] + [w.client for w in nodes.workers]
    while True:
        services = nodes.manager.services.list(filters={"label": f"{LABEL_RUN}={run_id}"})
        left = {i: run_objects(e, run_id) for i, e in enumerate(engines)}
        if not services and not any(left.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: services {services}, containers {left}")
        time.sleep(2)


def test_a_run_on_three_nodes_gives_the_local_verdicts_and_brings_everything_back(
        nodes, tmp_path):
    matrix = write_matrix(tmp_path, BUILDS_MATRIX)
    local = dib_matrix("run", str(matrix), "--out", str(tmp_path / "local"))
    local_cells, _ = cells_of((tmp_path / "local" / "latest").resolve())

    done = dib_matrix("run", str(matrix), "--out", str(tmp_path / "out"), "--engine", "swarm")
    run_dir = (tmp_path / "out" / "latest").resolve()
    cells, data = cells_of(run_dir)
    assert done.returncode == local.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {i: c["state"] for i, c in cells.items()} == \
        {i: c["state"] for i, c in local_cells.items()}

    # Placed on every node: one each (max-parallel 3 over three nodes).
    ran = {c["id"]: c["node"] for c in cells.values() if c["kind"] != "hostgen"}
    names = {nodes.manager.info()["Name"]} | {w.name for w in nodes.workers}
    assert set(ran.values()) == names, ran
    assert data["engine"]["nodes"] == sorted(names)

    # Every image back in the run directory, checksums good; every log complete.
    for cell in cells.values():
        if cell["kind"] == "build":
            assert cell["artifacts"], cell
            for artifact in cell["artifacts"]:
                path = run_dir / artifact["path"]
                assert sha256_file(path) == artifact["sha256"]
                assert path.with_name(path.name + ".sha256").read_text().split()[0] == \
                    artifact["sha256"]
            assert "build finished" in (run_dir / cell["log"]).read_text()

    # The package cache served every node: the repository view saw each cell from the
    # address of the node it ran on.
    addresses = {nodes.manager_address} | {w.address for w in nodes.workers}
    seen: dict[str, set[str]] = {}
    for line in (run_dir / "logs" / "repository.log").read_text().splitlines():
        found = re.match(r"\S+ '([^']+)' (\S+) GET \S+ 200 ", line)
        if found:
            seen.setdefault(found.group(1), set()).add(found.group(2))
    assert {a for cell_id in ran for a in seen.get(cell_id, ())} == addresses, seen

    # The dib layer went through the run's registry, pinned by digest.
    hostgen_log = (run_dir / "logs" / HOST / "hostgen.log").read_text() + "".join(
        (run_dir / c["log"]).read_text() for c in cells.values() if c["kind"] == "build")
    pinned = re.search(r"cells use (\S+/dib-matrix/dib-debian-bookworm@sha256:[0-9a-f]{64})",
                       hostgen_log)
    assert pinned
    assert_nothing_left(nodes, run_dir.name)
    # ... and that name, in a registry gone with the run, is not left on the manager.
    digests = {n for i in nodes.manager.images.list() for n in i.attrs.get("RepoDigests") or []}
    assert pinned.group(1) not in digests


def test_ctrl_c_stops_the_cells_on_every_node_and_leaves_nothing(nodes, tmp_path):
    # Without the tree cache the builds last long enough to be caught running.
    matrix = write_matrix(tmp_path, BUILDS_MATRIX.replace("three-builds", "interrupted")
                          + 'env: {DIB_TREE_CACHE: "0"}\n')
    proc = start_run(matrix, tmp_path / "out", "--engine", "swarm")
    try:
        run_id = _wait_for_a_task_on(nodes, nodes.workers[0].node_id, proc)
        _wait_for_a_task_on(nodes, nodes.workers[1].node_id, proc)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output[-3000:]
    cells, data = cells_of(tmp_path / "out" / run_id)
    assert data["interrupted"] is True
    assert "pending" in {c["state"] for c in cells.values()}
    assert_nothing_left(nodes, run_id)


def test_a_worker_lost_mid_run_leaves_its_cell_pending_and_resume_finishes(nodes, tmp_path):
    matrix = write_matrix(tmp_path, MATRIX)
    lost = nodes.workers[-1]
    proc = start_run(matrix, tmp_path / "out", "--engine", "swarm")
    try:
        run_id = _wait_for_a_task_on(nodes, lost.node_id, proc)
        nodes.stop_worker(lost)
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = (tmp_path / "out" / "latest").resolve()
    assert run_dir.name == run_id
    cells, data = cells_of(run_dir)
    assert proc.returncode == 2, output[-3000:]
    assert "swarm nodes left mid-run" in output and "--resume" in output
    pending = [c for c in cells.values() if c["state"] == "pending"]
    assert len(pending) == 1 and lost.name in pending[0]["reason"], cells
    assert all(c["state"] == "success" for c in cells.values() if c not in pending)
    assert data["engine"]["nodes_lost"]

    done = dib_matrix("run", "--resume", str(run_dir), "--engine", "swarm")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells, _ = cells_of(run_dir)
    assert {c["state"] for c in cells.values()} == {"success"}
    assert cells[pending[0]["id"]]["node"] != lost.name
    assert_nothing_left_but(nodes, run_dir.name, lost)


def assert_nothing_left_but(nodes: ThreeNodeSwarm, run_id: str, dead) -> None:
    alive = ThreeNodeSwarm(nodes.manager, nodes.manager_address,
                           [w for w in nodes.workers if w is not dead])
    assert_nothing_left(alive, run_id)


def _wait_for_a_task_on(nodes: ThreeNodeSwarm, node_id: str, proc: subprocess.Popen,
                        timeout: float = 600) -> str:
    """The run id, once one of the run's tasks runs on ``node_id``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
        for service in nodes.manager.services.list(filters={"label": LABEL_RUN}):
            for task in service.tasks():
                if task.get("NodeID") == node_id and task["Status"]["State"] == "running":
                    return service.attrs["Spec"]["Labels"][LABEL_RUN]
        time.sleep(1)
    raise AssertionError("no task of the run ran on the node to stop")

