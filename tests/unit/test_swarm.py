"""matrix.containers.swarm: a cell as a replicated-job service, against a fake swarm (no Docker)."""

from __future__ import annotations

import docker.errors
import pytest

from matrix.containers import engine, swarm
from matrix.containers.engine import LABEL_RUN, CellSpec, EngineError
from matrix.containers.placement import Node, NodeLost


class FakeService:
    def __init__(self, statuses, log_lines):
        self.statuses = list(statuses)  # one task status per poll; the last one repeats
        self.log_lines = log_lines

    def tasks(self):
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return [] if status is None else [{"Status": status}]

    def logs(self, **kwargs):
        assert kwargs["timestamps"] and not kwargs["follow"]
        yield from self.log_lines


class FakeContainer:
    def __init__(self, engine, output=()):
        self.engine, self.output = engine, output

    def logs(self, stream, follow):
        assert stream and follow
        yield from self.output

    def remove(self, force, v):
        assert force and v
        self.engine.removed_containers += 1


class FakeContainers:
    def __init__(self, engine, here):
        self.engine, self.here = engine, here  # id -> FakeContainer on this node

    def get(self, container_id):
        if container_id not in self.here:
            raise docker.errors.NotFound(f"no container {container_id} on this node")
        return self.here[container_id]

    def list(self, all, filters):  # the task's container, still there after the service
        assert filters == {"label": f"{engine.SERVICE_LABEL}={NAME}"}
        return [FakeContainer(self.engine)]


class FakeVolumes:
    def get(self, name):  # the cache volume exists
        return name


class FakeSwarm:
    """Just enough of docker.DockerClient for swarm.run_cell."""

    def __init__(self, service=None, fail_create=False, manager=True, here=None):
        self.service, self.fail_create, self.manager = service, fail_create, manager
        self.services = self
        self.api = self
        self.volumes = FakeVolumes()
        self.containers = FakeContainers(self, {k: FakeContainer(self, v)
                                                for k, v in (here or {}).items()})
        self.created = {}
        self.removed = []
        self.removed_containers = 0

    def info(self):
        state = "active" if self.manager else "inactive"
        return {"Swarm": {"LocalNodeState": state, "ControlAvailable": self.manager}}

    def create(self, image, command, **kwargs):
        if self.fail_create:
            raise docker.errors.APIError("no such image")
        self.created = {"image": image, "command": command, **kwargs}
        return self.service

    def remove_service(self, name):
        self.removed.append(name)


NAME = swarm.service_name("r1", "h/t")


def done(code, container=None):
    status = {"ExitCode": code, **({"ContainerID": container} if container else {})}
    return {"State": "complete" if code == 0 else "failed", "ContainerStatus": status}


def running(container):
    return {"State": "running", "ContainerStatus": {"ContainerID": container}}


def spec(tmp_path, timeout=60.0, **kwargs):
    return CellSpec(run_id="r1", cell_id="h/t", host="h", image="img:1",
                    command=("dib", "x"), log_path=tmp_path / "logs" / "t.log",
                    timeout=timeout, environment={"A": "1 2"}, cache_volume="dib-matrix-cache-h",
                    **kwargs)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(swarm.time, "sleep", lambda _: None)


def test_a_job_runs_once_with_the_cells_capabilities_and_labels(tmp_path):
    service = FakeService([None, {"State": "running"}, done(0)],
                          [b"2026-01-01T00:00:01.000Z hello\n"])
    client = FakeSwarm(service)
    result = swarm.run_cell(client, spec(tmp_path))
    assert result.ok and result.exit_code == 0 and not result.timed_out
    made = client.created
    assert made["mode"]["ReplicatedJob"] == {"MaxConcurrent": 1, "TotalCompletions": 1}
    assert made["restart_policy"]["Condition"] == "none"
    assert made["cap_drop"] == ["ALL"] and "SYS_ADMIN" in made["cap_add"]
    assert made["networks"] == ["host"] and made["env"] == ["A=1 2"]
    assert made["labels"][LABEL_RUN] == "r1" and made["container_labels"][LABEL_RUN] == "r1"
    assert client.removed == [NAME] and client.removed_containers == 1  # gone after success
    assert result.log_path.read_text().endswith("hello\n")


def test_stdout_and_stderr_are_merged_in_time_order(tmp_path):
    lines = [b"2026-01-01T00:00:02.000000000Z second\n",  # stdout comes first from the API
             b"2026-01-01T00:00:01.000000000Z first\n",
             b"2026-01-01T00:00:02.000000000Z third\n"]
    swarm.run_cell(FakeSwarm(FakeService([done(0)], lines)), spec(tmp_path))
    body = (tmp_path / "logs" / "t.log").read_text().split("\n", 3)[3]
    assert body == "first\nsecond\nthird\n"


def test_a_failing_command_reports_its_exit_code(tmp_path):
    result = swarm.run_cell(FakeSwarm(FakeService([done(3)], [])), spec(tmp_path))
    assert result.exit_code == 3 and not result.ok


def test_a_timeout_removes_the_service_and_says_so(tmp_path, monkeypatch):
    ticks = iter(range(0, 1000, 10))
    client = FakeSwarm(FakeService([{"State": "running"}], []))
    result = swarm.run_cell(client, spec(tmp_path, timeout=25.0), clock=lambda: next(ticks))
    assert result.timed_out and result.exit_code == swarm.TIMED_OUT_EXIT
    assert set(client.removed) == {NAME}  # removed at the timeout (and again on the way out)
    assert "after the 25 s cell timeout" in result.log_path.read_text()


@pytest.mark.parametrize("status", [
    {"State": "rejected", "Err": "No such image: img:1"},
    {"State": "failed", "Err": "starting container failed: no such cap"},  # never ran
])
def test_a_task_the_swarm_could_not_run_is_an_engine_error(tmp_path, status):
    client = FakeSwarm(FakeService([status], []))
    with pytest.raises(EngineError, match=status["Err"]):
        swarm.run_cell(client, spec(tmp_path))
    assert client.removed  # nothing left behind
    assert status["Err"] in (tmp_path / "logs" / "t.log").read_text()


def test_create_failure_is_an_engine_error_and_leaves_nothing(tmp_path):
    client = FakeSwarm(fail_create=True)
    with pytest.raises(EngineError, match="no such image"):
        swarm.run_cell(client, spec(tmp_path))
    assert client.removed == [NAME]


def test_ctrl_c_while_waiting_removes_the_service(tmp_path, monkeypatch):
    def interrupt(_):
        raise KeyboardInterrupt
    monkeypatch.setattr(swarm.time, "sleep", interrupt)
    client = FakeSwarm(FakeService([{"State": "running"}], []))
    with pytest.raises(KeyboardInterrupt):
        swarm.run_cell(client, spec(tmp_path))
    assert client.removed == [NAME]


def test_only_a_manager_takes_jobs():
    swarm.check_manager(FakeSwarm())
    with pytest.raises(EngineError, match="not a swarm manager.*docker swarm init"):
        swarm.check_manager(FakeSwarm(manager=False))


def test_service_names_are_dns_labels_and_stay_apart():
    long_id = "debian-bookworm.debian-bookworm-vm:boot" + "-x" * 40
    names = {swarm.service_name("20261126-071720-663b", cell)
             for cell in ("debian-bookworm.tox", "Debian_Bookworm.tox", long_id, long_id + "y")}
    assert len(names) == 4
    for name in names:
        assert len(name) <= 63 and all(c.isalnum() or c == "-" for c in name)
        assert name == name.lower() and not name.startswith("-") and not name.endswith("-")


def test_output_of_a_task_on_this_node_is_copied_live_from_its_container(tmp_path):
    class NoServiceLog(FakeService):
        def logs(self, **kwargs):
            raise AssertionError("the service log is for tasks on other nodes")

    service = NoServiceLog([None, running("c1"), running("c1"), done(0, "c1")], [])
    client = FakeSwarm(service, here={"c1": [b"out\n", b"err\n"]})
    assert swarm.run_cell(client, spec(tmp_path)).ok
    assert (tmp_path / "logs" / "t.log").read_text().endswith("out\nerr\n")


def test_output_of_a_task_on_another_node_comes_from_the_service_log(tmp_path):
    service = FakeService([running("c9"), done(4, "c9")],
                          [b"2026-01-01T00:00:01Z far away\n"])
    result = swarm.run_cell(FakeSwarm(service, here={}), spec(tmp_path))
    assert result.exit_code == 4
    assert result.log_path.read_text().endswith("far away\n")


class FakeNodes:
    def __init__(self, states):
        self.states = list(states)  # one node state per look; the last one repeats

    def get(self, node_id):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if state is None:
            raise docker.errors.NotFound("node removed")

        class Found:
            attrs = {"ID": node_id, "Status": {"State": state},
                     "Description": {"Hostname": "worker-2"}}
        return Found()


WORKER = Node(id="n2", hostname="worker-2", address="10.0.0.2", manager=False, arch="x86_64")


def test_a_placed_job_is_constrained_to_its_node_and_records_it(tmp_path):
    client = FakeSwarm(FakeService([{"State": "running"}, done(0)], []))
    client.nodes = FakeNodes(["ready"])
    result = swarm.run_cell(client, spec(tmp_path), WORKER)
    assert client.created["constraints"] == ["node.id==n2"]
    assert result.ok and result.node == "worker-2"


def test_an_unplaced_job_records_the_node_the_swarm_chose(tmp_path):
    task_done = done(0)
    service = FakeService([task_done], [])
    service.tasks = lambda: [{"Status": task_done, "NodeID": "n2"}]
    client = FakeSwarm(service)
    client.nodes = FakeNodes(["ready"])
    result = swarm.run_cell(client, spec(tmp_path))
    assert "constraints" not in client.created or client.created["constraints"] is None
    assert result.node == "worker-2"


@pytest.mark.parametrize("node_state", ["down", "disconnected", None])
def test_a_node_that_leaves_mid_job_loses_the_cell_and_leaves_nothing(tmp_path, node_state):
    ticks = iter(range(0, 1000, 3))
    client = FakeSwarm(FakeService([{"State": "running"}], []))
    client.nodes = FakeNodes(["ready", node_state])
    with pytest.raises(NodeLost, match="worker-2 left") as lost:
        swarm.run_cell(client, spec(tmp_path, timeout=600.0), WORKER,
                       clock=lambda: next(ticks))
    assert lost.value.hostname == "worker-2"
    assert NAME in client.removed
    assert "no verdict" in (tmp_path / "logs" / "t.log").read_text()
