"""Cells as Docker Swarm replicated-job services, on a real single-node swarm.

The engine joins a swarm of its own for this module (advertised on loopback) and
leaves it afterwards, unless it was a swarm member already.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import docker
import pytest

from matrix.containers import engine, swarm
from matrix.containers.engine import LABEL_RUN, CellSpec
from tests.integration.hostfixtures import HostgenSession, open_hostgen_session
from tests.integration.matrixhelpers import dib_matrix, write_matrix

pytestmark = pytest.mark.integration
HOST = "debian-bookworm"
SWARM_BRIDGE = "docker_gwbridge"


def swarm_state(client: docker.DockerClient) -> str:
    return client.info().get("Swarm", {}).get("LocalNodeState", "")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostgenSession]:
    yield from open_hostgen_session(tmp_path_factory)


@pytest.fixture(scope="module")
def manager(hosts: HostgenSession) -> Iterator[docker.DockerClient]:
    client = hosts.client
    joined_here = swarm_state(client) != "active"
    had_bridge = bool(client.networks.list(names=[SWARM_BRIDGE]))
    if joined_here:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    try:
        yield client
    finally:
        if joined_here:
            client.swarm.leave(force=True)
            if not had_bridge:  # made by swarm init, left behind by leave
                for network in client.networks.list(names=[SWARM_BRIDGE]):
                    network.remove()


def our_services(client: docker.DockerClient, run_id: str) -> list:
    return client.services.list(filters={"label": f"{LABEL_RUN}={run_id}"})


def job(hosts: HostgenSession, cell_id: str, script: str, timeout: float = 120) -> CellSpec:
    return CellSpec(run_id=hosts.run_id, cell_id=cell_id, host=HOST, image=hosts.image(HOST),
                    command=("sh", "-c", script),
                    log_path=hosts.workdir / "logs" / HOST / f"{cell_id}.log", timeout=timeout,
                    environment={"GREETING": "hello; $(not run)"})


def test_run_without_a_swarm_exits_2_and_says_how_to_get_one(tmp_path, hosts):
    if swarm_state(hosts.client) == "active":
        pytest.skip("this engine was a swarm member before the tests: cannot see it refuse")
    matrix = write_matrix(tmp_path, f"name: s\nhosts: [{HOST}]\ntargets: [debian-bookworm]\n")
    done = dib_matrix("run", str(matrix), "--out", str(tmp_path / "out"), "--engine", "swarm")
    assert done.returncode == 2, done.stderr
    assert "not a swarm manager" in done.stderr and "docker swarm init" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_job_runs_with_the_cells_environment_and_capabilities(manager, hosts):
    script = ('echo "$GREETING"; echo to-stderr >&2; '
              'grep ^CapEff /proc/self/status; exit 3')
    result = swarm.run_cell(manager, job(hosts, "caps", script))
    assert result.exit_code == 3 and not result.timed_out
    log = result.log_path.read_text()
    assert "hello; $(not run)" in log and "to-stderr" in log
    effective = int(log.split("CapEff:")[1].split()[0], 16)
    assert effective & (1 << 21)  # CAP_SYS_ADMIN, granted by name
    assert not effective & (1 << 12)  # CAP_NET_ADMIN, dropped with ALL
    assert our_services(manager, hosts.run_id) == []


def test_a_job_past_its_timeout_is_removed(manager, hosts):
    result = swarm.run_cell(manager, job(hosts, "sleeper", "echo started; sleep 600", 8))
    assert result.timed_out and result.duration < 30
    log = result.log_path.read_text()
    assert "after the 8 s cell timeout" in log
    assert "started" in log  # copied live from the container on this node
    assert our_services(manager, hosts.run_id) == []
    leftover = manager.containers.list(all=True, filters={"label": f"{LABEL_RUN}={hosts.run_id}"})
    assert [c for c in leftover if c.status == "running"] == []


def test_dib_matrix_run_on_the_swarm_gives_the_same_verdicts(manager, hosts, tmp_path):
    hosts.image(HOST)  # the host image, built or cached once for the session
    matrix = write_matrix(tmp_path, f"""\
name: on-swarm
hosts: [{HOST}]
targets: [debian-bookworm, debian-forky]
checks: [tox]
max-parallel: 2
timeout: 15m
""")
    done = dib_matrix("run", str(matrix), "--out", str(tmp_path / "out"), "--engine", "swarm")
    run_dir = (tmp_path / "out" / "latest").resolve()
    data = json.loads((run_dir / "results.json").read_text())
    cells = {c["id"]: c for c in data["cells"]}
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # forky fails
    assert data["engine"]["cells"] == "swarm"
    assert cells[f"{HOST}.tox"]["state"] == "success"
    build = cells[f"{HOST}.debian-bookworm"]
    assert build["state"] == "success", (run_dir / build["log"]).read_text()[-3000:]
    (artifact,) = build["artifacts"]
    assert (run_dir / artifact["path"]).stat().st_size == artifact["size"]
    assert (run_dir / build["log"]).read_text().count("build finished") == 1
    forky = cells[f"{HOST}.debian-forky"]
    assert forky["category"]["legend"] == "No such script: /usr/share/debootstrap/scripts/forky"
    assert our_services(manager, run_dir.name) == []
    assert manager.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_dir.name}"}) \
        == []
    assert engine.remove_run_objects(manager, run_dir.name) == engine.Removed(0, 0, 0)
