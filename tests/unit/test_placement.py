"""matrix.containers.placement: which node takes a cell, at most per_node at once."""

from __future__ import annotations

import threading
import time

import pytest

from matrix.containers.engine import EngineError
from matrix.containers.placement import (
    Node,
    NodeLost,
    NodePool,
    is_usable,
    node_of,
    per_node_default,
)


def node(name, manager=False):
    return Node(id=f"id-{name}", hostname=name, address=f"10.0.0.{len(name)}",
                manager=manager, arch="x86_64")


NODES = [node("m", manager=True), node("w1"), node("w2")]


def test_cells_spread_over_the_nodes_before_any_takes_a_second():
    pool = NodePool(NODES, per_node=2)
    stop = threading.Event()
    first = [pool.acquire(stop).hostname for _ in range(3)]
    assert sorted(first) == ["m", "w1", "w2"]
    second = [pool.acquire(stop).hostname for _ in range(3)]
    assert sorted(second) == ["m", "w1", "w2"]


def test_a_cell_goes_back_to_the_node_it_last_ran_on_when_that_node_is_as_free():
    pool = NodePool(NODES, per_node=2)
    stop = threading.Event()
    assert pool.acquire(stop, prefer="w2").hostname == "w2"
    assert pool.acquire(stop, prefer="w2").hostname != "w2"  # w2 is busier now
    assert pool.acquire(stop, prefer="gone").hostname in ("m", "w1")


def test_a_full_swarm_makes_a_cell_wait_until_a_node_frees_a_slot():
    pool = NodePool(NODES[:2], per_node=1)
    stop = threading.Event()
    taken = [pool.acquire(stop), pool.acquire(stop)]
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(stop)))
    waiter.start()
    time.sleep(0.2)
    assert not got  # every node is at its limit
    pool.release(taken[1])
    waiter.join(5)
    assert got == [taken[1]]


def test_a_cell_that_binds_this_machines_paths_goes_to_the_manager():
    pool = NodePool(NODES, per_node=3)
    stop = threading.Event()
    assert {pool.acquire(stop, manager_only=True).hostname for _ in range(3)} == {"m"}


def test_a_lost_node_takes_no_more_cells_and_none_left_is_node_lost():
    pool = NodePool(NODES[1:], per_node=5)
    stop = threading.Event()
    pool.lose(NODES[1], "down")
    assert {pool.acquire(stop).hostname for _ in range(3)} == {"w2"}
    pool.lose(NODES[2], "removed")
    with pytest.raises(NodeLost, match="no node left"):
        pool.acquire(stop)


def test_a_stopping_run_ends_the_wait():
    pool = NodePool(NODES[:1], per_node=1)
    stop = threading.Event()
    pool.acquire(stop)
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(EngineError, match="stopping"):
        pool.acquire(stop)


def test_an_empty_swarm_is_an_engine_error():
    with pytest.raises(EngineError, match="no ready"):
        NodePool([], per_node=1)


@pytest.mark.parametrize(("max_parallel", "nodes", "share"), [(2, 3, 1), (6, 3, 2), (7, 3, 3),
                                                               (1, 1, 1), (4, 0, 4)])
def test_the_default_per_node_limit_is_an_even_share(max_parallel, nodes, share):
    assert per_node_default(max_parallel, nodes) == share


def test_node_inspection_reads_the_engines_fields_and_usability():
    attrs = {"ID": "abc", "Spec": {"Role": "manager", "Availability": "active"},
             "Status": {"State": "ready", "Addr": "10.1.0.1"},
             "Description": {"Hostname": "m1", "Platform": {"Architecture": "x86_64"}}}
    assert node_of(attrs) == Node("abc", "m1", "10.1.0.1", True, "x86_64")
    assert is_usable(attrs)
    drained = {**attrs, "Spec": {"Role": "worker", "Availability": "drain"}}
    assert not is_usable(drained)
    assert not is_usable({**attrs, "Status": {"State": "down"}})
