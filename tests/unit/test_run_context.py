"""matrix.run.context: frozen run settings, one record per host, the cells' view of both."""

import dataclasses
import threading
from types import SimpleNamespace

import pytest

from matrix.config.dibtree import DibTree
from matrix.config.matrixfile import load_matrix
from matrix.containers.engine import EngineError
from matrix.hostgen.facts import HostFacts
from matrix.run.context import HostRecord, HostRecords, RunContext, RunSettings


class FakeImages:
    def __init__(self):
        self.asked = []

    def get(self, name):
        self.asked.append(name)
        return SimpleNamespace(id=f"sha256:{len(self.asked)}-{name}")


def settings(tmp_path, text="hosts: [debian-bookworm]\ntargets: [debian-bookworm]\n"):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    (tmp_path / "tree" / "dib").mkdir(parents=True, exist_ok=True)
    (tmp_path / "tree" / "dib" / "__main__.py").write_text("")
    (tmp_path / "tree" / "elements").mkdir(exist_ok=True)
    return RunSettings(load_matrix(path), "r", tmp_path / "run",
                       DibTree.read(tmp_path / "tree"))


def test_settings_and_context_are_frozen(tmp_path):
    ctx = RunContext(settings(tmp_path), client=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.settings.run_id = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.keys = None


def test_timeouts_are_the_matrix_files_not_copies(tmp_path):
    ctx = RunContext(settings(tmp_path, "hosts: [debian-bookworm]\ntargets: [debian-bookworm]\n"
                                        "timeout: 2m\n"), client=None)
    config = ctx.settings.config
    assert (config.timeout, config.boot_timeout, config.hostgen_timeout) == (120, 120, 1800)


def test_one_record_per_host_holds_image_facts_layer_and_id():
    facts = HostFacts(tools=("dnf",), debootstrap_scripts=(), arch="amd64")
    hosts = HostRecords()
    assert hosts.get("h") is None and hosts.facts("h") is None
    hosts.built("h", "dib-matrix/host-h:1", facts)
    hosts.baked("h", "dib-matrix/layer-h:1")
    client = SimpleNamespace(images=FakeImages())
    assert hosts.image_id("h", client) == hosts.image_id("h", client)
    assert client.images.asked == ["dib-matrix/host-h:1"]  # the engine asked once
    record = hosts.get("h")
    assert record == HostRecord("dib-matrix/host-h:1", facts, "dib-matrix/layer-h:1",
                                "sha256:1-dib-matrix/host-h:1")
    assert hosts.images() == {"h": "dib-matrix/host-h:1"}


def test_a_rebuilt_host_forgets_its_layer_and_id():
    hosts = HostRecords()
    hosts.built("h", "img:1", None)
    hosts.baked("h", "layer:1")
    hosts.image_id("h", SimpleNamespace(images=FakeImages()))
    hosts.built("h", "img:2", None)
    assert hosts.get("h") == HostRecord("img:2")


def test_a_host_without_hostgen_is_an_engine_error():
    hosts = HostRecords()
    with pytest.raises(EngineError, match="no host image for host h"):
        hosts.baked("h", "layer")
    with pytest.raises(EngineError, match="no host image for host h"):
        hosts.image_id("h", SimpleNamespace(images=FakeImages()))


def test_records_take_concurrent_writers():
    hosts = HostRecords()
    workers = [threading.Thread(target=hosts.built, args=(f"h{i}", f"img{i}", None))
               for i in range(32)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(hosts.images()) == 32 and list(hosts.images()) == sorted(hosts.images())
