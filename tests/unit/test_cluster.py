"""matrix.run.cluster: a cell made ready for other nodes, and launched on one of them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from matrix.config.registryname import RegistryName
from matrix.containers import engine, swarm
from matrix.containers.placement import Node, NodeLost, NodePool
from matrix.run import cluster as cluster_module
from matrix.run.cluster import UPLOADER, Cluster
from matrix.run.incontainer import upload_results

MANAGER = Node("m", "manager", "10.0.0.1", True, "x86_64")
WORKER = Node("w", "worker", "10.0.0.2", False, "x86_64")


class FakeEndpoint:
    url = "http://10.0.0.1:4000"

    def __init__(self):
        self.expected, self.revoked = {}, []

    def expect(self, cell_id, dest):
        token = f"token-{len(self.expected)}"
        self.expected[token] = (cell_id, dest)
        return token

    def revoke(self, token):
        self.revoked.append(token)

    def revoke_all(self):
        self.revoked.append("*")


def spec(tmp_path: Path, **changes) -> engine.CellSpec:
    values = dict(run_id="r", cell_id="h.t", host="h", image="dib-matrix/dib-h:1",
                  command=("python3", "-m", "dib", "-o", "/out/t"), log_path=tmp_path / "t.log",
                  timeout=60.0, environment={"http_proxy": "http://x@10.0.0.1:5"},
                  out_dir=tmp_path / "images" / "h", cache_volume="dib-matrix-cache-h")
    values.update(changes)
    return engine.CellSpec(**values)


def make(endpoint=None, nodes=(MANAGER, WORKER), per_node=1):
    return Cluster(NodePool(nodes, per_node), "10.0.0.1", RegistryName("10.0.0.1:5000"),
                   endpoint, threading.Event())


def test_a_build_for_other_nodes_uploads_its_outputs_instead_of_binding_them(tmp_path):
    endpoint = FakeEndpoint()
    ready = make(endpoint).for_nodes(spec(tmp_path))
    assert ready.out_dir is None  # nothing of this machine is bound
    assert ready.command[:5] == ("python3", UPLOADER, "--dir", engine.OUT_MOUNT, "--")
    assert ready.command[5:] == ("python3", "-m", "dib", "-o", "/out/t")
    token = ready.environment[upload_results.TOKEN_ENV]
    assert endpoint.expected[token] == ("h.t", tmp_path / "images" / "h")
    assert ready.environment[upload_results.URL_ENV] == endpoint.url
    assert ready.environment["http_proxy"] == "http://x@10.0.0.1:5"


def test_a_check_is_wrapped_too_so_that_a_stopping_run_reaches_it(tmp_path):
    endpoint = FakeEndpoint()
    ready = make(endpoint).for_nodes(spec(tmp_path, out_dir=None, command=("bash", "t.sh")))
    assert ready.command == ("python3", UPLOADER, "--", "bash", "t.sh")
    token = ready.environment[upload_results.TOKEN_ENV]
    assert endpoint.expected[token] == ("h.t", None)  # a token that uploads nothing


def test_shared_results_bind_the_run_directory_and_still_reach_the_cell(tmp_path):
    endpoint = FakeEndpoint()
    cluster = make(endpoint)
    cluster.shared_results = True
    ready = cluster.for_nodes(spec(tmp_path))
    assert ready.out_dir == tmp_path / "images" / "h"  # bound, as on one machine
    assert ready.command[:3] == ("python3", UPLOADER, "--")  # nothing uploaded
    assert endpoint.expected[ready.environment[upload_results.TOKEN_ENV]] == ("h.t", None)


def test_launch_places_the_job_releases_the_node_and_revokes_the_token(tmp_path, monkeypatch):
    endpoint = FakeEndpoint()
    cluster = make(endpoint)
    placed = []

    def run_cell(client, cell_spec, node):
        placed.append(node)
        return engine.CellResult(cell_spec.cell_id, "c", 0, False, cell_spec.log_path, 1.0,
                                 node=node.hostname)

    monkeypatch.setattr(swarm, "run_cell", run_cell)
    ready = cluster.for_nodes(spec(tmp_path))
    result = cluster.launch(None, ready)
    assert result.node in {"manager", "worker"} and placed
    assert endpoint.revoked == [ready.environment[upload_results.TOKEN_ENV]]
    assert cluster.pool.running == {"m": 0, "w": 0}


def test_a_cell_goes_back_to_the_node_it_ran_on_last_time(tmp_path, monkeypatch):
    monkeypatch.setattr(swarm, "run_cell", lambda client, s, node: engine.CellResult(
        s.cell_id, "c", 0, False, s.log_path, 1.0, node=node.hostname))
    for hostname in ("worker", "manager", "worker"):
        cluster = make(FakeEndpoint())
        cluster.previous_nodes = {"h.t": hostname}
        assert cluster.launch(None, spec(tmp_path)).node == hostname


def test_a_cell_binding_this_machines_paths_runs_on_the_manager(tmp_path, monkeypatch):
    cluster = make(FakeEndpoint())
    monkeypatch.setattr(swarm, "run_cell", lambda client, s, node: engine.CellResult(
        s.cell_id, "c", 0, False, s.log_path, 1.0, node=node.hostname))
    for _ in range(3):
        result = cluster.launch(None, spec(tmp_path, dib_tree=tmp_path, out_dir=None))
        assert result.node == "manager"


def test_a_lost_node_takes_no_more_cells(tmp_path, monkeypatch):
    cluster = make(FakeEndpoint(), nodes=(WORKER,))

    def lose(client, s, node):
        raise NodeLost(node.hostname, "its state is down")

    monkeypatch.setattr(swarm, "run_cell", lose)
    with pytest.raises(NodeLost):
        cluster.launch(None, spec(tmp_path))
    assert "w" in cluster.pool.lost
    with pytest.raises(NodeLost, match="no node left"):
        cluster.launch(None, spec(tmp_path))


def test_a_stopping_run_revokes_every_token_and_waits_for_the_tasks(monkeypatch):
    endpoint = FakeEndpoint()
    left = iter([2, 1, 0])
    monkeypatch.setattr(cluster_module, "_running_tasks", lambda client, run_id: next(left))
    monkeypatch.setattr(cluster_module.time, "sleep", lambda _: None)
    make(endpoint).stop_cells(None, "r")
    assert endpoint.revoked == ["*"]


def test_a_single_node_swarm_gets_no_cluster(monkeypatch):
    monkeypatch.setattr(cluster_module, "swarm_nodes", lambda client: [MANAGER])
    assert Cluster.start(None, run_id="r", max_parallel=2, max_per_node=None, registry=None,
                         shared_results=False, work=Path("/nonexistent"),
                         stop=threading.Event(), stack=None) is None


def test_the_run_removes_its_pinned_layer_names_and_never_the_images():
    import docker.errors

    class Images:
        def __init__(self):
            self.removed = []

        def remove(self, name, noprune=False):
            assert noprune  # the image's layers stay: it keeps its local tag
            self.removed.append(name)
            if "gone" in name:
                raise docker.errors.ImageNotFound("no such image")

    client = type("Client", (), {"images": Images()})()
    cluster = make(FakeEndpoint())
    cluster.pinned = {"dib-matrix/dib-h:1": "10.0.0.1:5000/dib-matrix/dib-h@sha256:" + "a" * 64,
                      "dib-matrix/dib-g:1": "10.0.0.1:5000/gone@sha256:" + "b" * 64}
    cluster.unpin(client)
    assert client.images.removed == list(cluster.pinned.values())
