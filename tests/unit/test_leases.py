"""Run-scoped leases: live ones protect images from other runs' prunes and from clean."""

import json
import multiprocessing
import os
import subprocess
import threading
from types import SimpleNamespace

import pytest

from matrix.containers import engine, leases
from matrix.containers.labels import LABEL_HOST, LABEL_ROLE
from matrix.containers.leases import InUse, LeaseError, Owner, Registry, RunLease
from matrix.hostgen import build as hostgen
from matrix.hostgen import diblayer, hostimage
from matrix.run import cleanup
from tests.unit.fakeengine import FakeImage, FakeImages


def layer(n, host="h", created=None):
    labels = {LABEL_ROLE: diblayer.ROLE, LABEL_HOST: host}
    return FakeImage(f"sha256:{n:064x}", [f"dib-matrix/dib-{host}:{n:016x}"],
                     created or f"2026-11-29T09:{n:02d}:00Z", labels)


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "leases")


def dead_owner():
    """The owner record of a process that has exited (as after a kill -9)."""
    child = subprocess.Popen(["sleep", "30"])
    owner = Owner(child.pid, leases._start_time(child.pid), leases._boot_id(),
                  Owner.current().machine)
    child.kill()
    child.wait()
    return owner


# -- the registry ---------------------------------------------------------------


def test_a_lease_is_written_whole_and_dropped_on_release(registry):
    with RunLease("run-1", registry) as lease:
        lease.hold("dib-matrix/dib-h:aaa", None, "sha256:1")
        lease.hold("dib-matrix/dib-h:aaa")  # already held: nothing to write
        data = json.loads(registry.path("run-1").read_text())
        assert data["run"] == "run-1" and data["owner"]["pid"] == os.getpid()
        assert data["owner"]["start"] and data["owner"]["boot_id"]
        assert data["objects"] == ["dib-matrix/dib-h:aaa", "sha256:1"]
        assert set(registry.live_runs()) == {"run-1"}
        assert [p.name for p in registry.root.iterdir() if p.name != ".lock"] == ["run-1.json"]
    assert not registry.path("run-1").exists()
    assert registry.live_runs() == {}


def test_ctrl_c_releases_the_lease(registry):
    with pytest.raises(KeyboardInterrupt), RunLease("run-1", registry) as lease:
        lease.hold("x")
        raise KeyboardInterrupt
    assert registry.leases() == []


def test_a_dead_owner_is_stale_and_swept_by_the_next_writer(registry):
    registry.hold("killed", ["dib-matrix/dib-h:aaa"], owner=dead_owner())
    assert [lease.run_id for lease in registry.leases()] == ["killed"]  # the file is there
    assert registry.live_runs() == {}
    with registry.frozen() as in_use:
        assert in_use.holder("dib-matrix/dib-h:aaa") is None
    registry.hold("next", ["y"])
    assert [lease.run_id for lease in registry.leases()] == ["next"]


def test_liveness_needs_pid_start_time_and_boot(registry):
    me = Owner.current()
    assert me.alive()
    assert not Owner(me.pid, str(int(me.start) + 1), me.boot_id, me.machine).alive()  # reused
    assert not Owner(me.pid, me.start, "another-boot", me.machine).alive()  # rebooted
    assert Owner(1, "", "", "another-machine").alive()  # cannot tell: kept


def test_unreadable_lease_files_are_ignored(registry):
    registry.root.mkdir(parents=True)
    (registry.root / "broken.json").write_text("{")
    (registry.root / ".tmp-half.part").write_text("{")
    registry.hold("ok", ["a"])
    assert [lease.run_id for lease in registry.leases()] == ["ok"]


def test_one_run_id_cannot_be_live_twice(registry):
    child = subprocess.Popen(["sleep", "30"])
    try:
        other = Owner(child.pid, leases._start_time(child.pid), leases._boot_id(),
                      Owner.current().machine)
        registry.hold("run-1", ["a"], owner=other)
        with pytest.raises(LeaseError, match="run run-1 is live in pid"):
            RunLease("run-1", registry).hold("b")
        RunLease("run-1", registry).release()  # not ours: stays
        assert registry.live_runs()["run-1"] == other
    finally:
        child.kill()
        child.wait()
    RunLease("run-1", registry).hold("b")  # a resumed run takes over a dead one's lease
    assert registry.leases()[0].objects == {"b"}


def test_concurrent_updates_from_threads_lose_nothing(registry):
    def add(worker):
        for n in range(25):
            registry.hold("run-1", [f"w{worker}-{n}"])

    threads = [threading.Thread(target=add, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (lease,) = registry.leases()
    assert lease.objects == {f"w{w}-{n}" for w in range(8) for n in range(25)}


def _process_worker(root, run_id, count, written, finish):
    registry = Registry(root)
    for n in range(count):
        registry.hold(run_id, [f"{run_id}-{n}"])
    written.put(run_id)
    finish.wait(60)  # stays alive (its lease live) until the test has looked


def test_concurrent_updates_from_processes_are_atomic(registry):
    context = multiprocessing.get_context("fork")
    written, finish = context.Queue(), context.Event()
    workers = [context.Process(target=_process_worker,
                               args=(registry.root, f"run-{w}", 30, written, finish))
               for w in range(4)]
    registry.root.mkdir(parents=True)
    seen_bad = []
    stop = threading.Event()

    def read_without_lock():  # a reader never sees half a file
        while not stop.is_set():
            for path in registry.root.glob("*.json"):
                try:
                    json.loads(path.read_text())
                except FileNotFoundError:
                    continue
                except ValueError as exc:
                    seen_bad.append((path, exc))

    for worker in workers:  # forked before this process has other threads
        worker.start()
    reader = threading.Thread(target=read_without_lock)
    reader.start()
    try:
        assert sorted(written.get(timeout=60) for _ in workers) == [f"run-{w}" for w in range(4)]
        assert set(registry.live_runs()) == {f"run-{w}" for w in range(4)}
        found = {lease.run_id: lease.objects for lease in registry.leases()}
        assert found == {f"run-{w}": {f"run-{w}-{n}" for n in range(30)} for w in range(4)}
    finally:
        finish.set()
        stop.set()
        reader.join()
        for worker in workers:
            worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert seen_bad == []
    assert not list(registry.root.glob(".tmp-*"))
    assert registry.live_runs() == {}  # exited without releasing: stale


def test_in_use_matches_ids_and_tags():
    in_use = InUse({"sha256:1": "r1", "dib-matrix/dib-h:b": "r2"})
    assert in_use.image_holder(FakeImage("sha256:1", [])) == "r1"
    assert in_use.image_holder(FakeImage("sha256:2", ["x", "dib-matrix/dib-h:b"])) == "r2"
    assert in_use.image_holder(FakeImage("sha256:3", ["x"])) is None


# -- removers honour live leases, ignore stale ones -----------------------------


def test_diblayer_prune_keeps_a_live_runs_layer(registry):
    layers = [layer(n) for n in range(1, 6)]  # 5 newest; 3 and 4 are the KEEP_PREVIOUS
    client = SimpleNamespace(images=FakeImages(*layers))
    registry.hold("nightly", [layers[0].tags[0]])  # run 1 uses the oldest one
    registry.hold("killed", [layers[1].id], owner=dead_owner())
    said = []
    removed = diblayer.prune(client, "h", keep=layers[4].tags[0], leases=registry, say=said.append)
    assert removed == [layers[1].id]  # the stale lease protects nothing
    assert said == [f"kept {layers[0].tags[0]}: in use by run nightly"]
    assert layers[0].id in client.images.images
    registry.release("nightly", registry.live_runs()["nightly"])
    assert diblayer.prune(client, "h", keep=layers[4].tags[0], leases=registry) == [layers[0].id]


def test_hostgen_prune_and_remove_replaced_keep_leased_images(registry):
    labels = {LABEL_HOST: "h"}
    old = FakeImage("sha256:old", ["dib-matrix/host-h:old"], labels=labels)
    older = FakeImage("sha256:older", ["dib-matrix/host-h:older"], labels=labels)
    current = FakeImage("sha256:new", ["dib-matrix/host-h:new"], labels=labels)
    replaced = FakeImage("sha256:replaced", [], labels=labels)
    replaced_too = FakeImage("sha256:replaced-too", [], labels=labels)
    client = SimpleNamespace(images=FakeImages(old, older, current, replaced, replaced_too))
    registry.hold("nightly", ["dib-matrix/host-h:old", "sha256:replaced"])
    said = []
    hostgen._prune_stale(client, "h", keep={"dib-matrix/host-h:new"}, leases=registry,
                         say=said.append)
    hostgen._remove_replaced(client, {"sha256:replaced", "sha256:replaced-too"},
                             leases=registry, say=said.append)
    assert set(client.images.images) == {"sha256:old", "sha256:new", "sha256:replaced"}
    assert sorted(said) == ["kept dib-matrix/host-h:old: in use by run nightly",
                            "kept sha256:replaced: in use by run nightly"]


def test_clean_keeps_live_runs_and_their_caches(registry, monkeypatch, tmp_path):
    leased, free = layer(1), layer(2)
    volumes = [SimpleNamespace(name=f"dib-matrix-cache-{h}", removed=False) for h in "ab"]
    for volume in volumes:
        volume.remove = lambda force, v=volume: setattr(v, "removed", True)
    client = SimpleNamespace(images=FakeImages(leased, free),
                             volumes=SimpleNamespace(list=lambda filters: volumes))
    registry.hold("nightly", [leased.tags[0], "dib-matrix-cache-a"])
    registry.hold("killed", [free.tags[0], "dib-matrix-cache-b"], owner=dead_owner())
    monkeypatch.setattr(engine, "runs_with_objects", lambda c: {"nightly", "killed", "old"})
    cleaned = []
    monkeypatch.setattr(engine, "remove_run_objects",
                        lambda c, run: cleaned.append(run) or engine.Removed(1, 0, 2))
    said = []
    storage = tmp_path / "registry" / "storage"
    (storage / "blobs").mkdir(parents=True)
    (storage / "blobs" / "layer").write_bytes(b"x" * (3 << 20))
    cleanup.clean(client, caches=True, leases=registry, say=said.append,
                  registry_dir=tmp_path / "registry")
    assert cleaned == ["killed", "old"]
    assert f"removed the run registry's storage {storage} (3 MiB)" in said
    assert not storage.exists()
    assert said[0].startswith("run killed: removed 1 container(s)")
    assert said[1] == f"run nightly: kept: the run is live (pid {os.getpid()} on " \
                      f"{Owner.current().machine})"
    assert "kept dib-matrix-cache-a: in use by run nightly" in said
    assert "removed cache volume dib-matrix-cache-b" in said
    assert f"kept {leased.tags[0]}: in use by run nightly" in said
    assert f"removed dib layer {free.tags[0]}" in said
    assert [v.removed for v in volumes] == [False, True]
    assert list(client.images.images) == [leased.id]
    said.clear()
    cleanup.clean(client, run_id="nightly", leases=registry, say=said.append)  # named: still kept
    assert cleaned == ["killed", "old"] and said[0].startswith("run nightly: kept")


def test_host_objects_names_tags_and_the_cache_volume():
    from matrix.config.hosts import load_hosts
    from matrix.hostgen.hostimage import image_names

    host = load_hosts()["debian-bookworm"]
    names = hostimage.host_objects([host])
    assert image_names(host).image in names
    assert engine.cache_volume_name("debian-bookworm") in names
