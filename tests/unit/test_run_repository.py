"""The run's repository stage: the snapshot key, per-cell environment, records, and the
state a cached dib base is keyed by."""

from __future__ import annotations

import contextlib
import urllib.request
from types import SimpleNamespace

import pytest

from dib.bootstrap import spec_from_env
from matrix.config.schema import Invalid
from matrix.config.snapshotkey import SnapshotService, SnapshotSetting, parse_snapshot
from matrix.config.targets import with_service
from matrix.run.repository import RepositoryStage, snapshot_identity, suites_to_pin
from matrix.snapshot.manifest import ArchiveState, FileRef, Snapshot, SuiteState
from matrix.snapshot.store import Store
from results.model import CellKind


def test_the_snapshot_key_reads_record_names_and_services():
    assert parse_snapshot("record") == SnapshotSetting(record=True)
    assert parse_snapshot("20261207-043634-0144").pinned == "20261207-043634-0144"
    service = parse_snapshot({"url": "http://snap.example/", "timestamp": "20240101T000000Z"})
    assert service.service.mirror == "http://snap.example/archive/debian/20240101T000000Z"
    assert service.waives_valid_until and not service.record
    assert parse_snapshot({"url": "http://m.example/debian"}).service.mirror == \
        "http://m.example/debian"


@pytest.mark.parametrize("value", [
    "../x", "a b", "", 7, ["record"], {"url": "ftp://x"}, {"url": "http://x", "other": 1},
    {"url": "http://x", "timestamp": "2024-01-01"}, {"url": "http://x", "record": "yes"},
    {"url": "http://x y"}, "x" * 200])
def test_a_bad_snapshot_value_is_refused(value):
    with pytest.raises(Invalid):
        parse_snapshot(value)


def test_a_target_service_is_its_mirror_with_the_expiry_check_waived():
    env = with_service((("DIB_RELEASE", "bookworm"),),
                       SnapshotService("http://snap.example", "20240101T000000Z"))
    assert dict(env) == {"DIB_RELEASE": "bookworm", "DIB_APT_CHECK_VALID_UNTIL": "false",
                         "DIB_DISTRIBUTION_MIRROR":
                         "http://snap.example/archive/debian/20240101T000000Z"}
    own = (("DIB_DISTRIBUTION_MIRROR", "http://mine.example/debian"),)
    assert dict(with_service(own, SnapshotService("http://snap.example")))[
        "DIB_DISTRIBUTION_MIRROR"] == "http://mine.example/debian"


def _snapshot(name: str, host: str, deb_sha: str) -> Snapshot:
    suite = SuiteState(suite="bookworm", components=["main"], architectures=["amd64"],
                       inrelease="a" * 64, release=None, release_gpg=None,
                       date="Sat, 01 Jun 2024 00:00:00 UTC", valid_until=None, indices={})
    archive = ArchiveState(uri=f"http://{host}/debian", suites={"bookworm": suite},
                           files={"pool/main/h/hello/hello_1_all.deb": FileRef(deb_sha, 3)})
    return Snapshot(name=name, created="2024-06-01T00:00:00+00:00", run_id=None,
                    archives={archive.uri: archive}, origin="run")


def test_the_identity_is_the_content_not_the_name_nor_the_mirror_host():
    one = snapshot_identity(_snapshot("one", "mirror-a.example", "b" * 64))
    assert one == snapshot_identity(_snapshot("two", "mirror-b.example", "b" * 64))
    assert one != snapshot_identity(_snapshot("one", "mirror-a.example", "c" * 64))


def test_a_pinned_cell_gets_its_proxy_the_waiver_and_a_base_key(tmp_path):
    snapshot = _snapshot("one", "mirror-a.example", "b" * 64)
    with contextlib.ExitStack() as stack:
        stage = RepositoryStage.start(SnapshotSetting(pinned="one"), Store(tmp_path / "s"),
                                      snapshot, None, tmp_path / "logs" / "view.log", stack)
        env = stage.cell_env("h.t", {"http_proxy": "http://127.0.0.1:1", "no_proxy": "x"})
        assert env["http_proxy"].startswith("http://") and "@127.0.0.1:" in env["http_proxy"]
        assert env["DIB_APT_CHECK_VALID_UNTIL"] == "false"
        state = env["DIB_REPOSITORY_STATE"]
        assert len(state) == 64 and stage.key_part().startswith("snapshot:")
        record = stage.run_record()
        assert record["mode"] == "pinned" and record["snapshot"] == "one"
        assert record["valid_until_waived"] is True
        # The base dib caches for this cell is keyed by the state; a live one as before.
        base = {"DIB_RELEASE": "bookworm", "DIB_DISTRIBUTION_MIRROR": "http://m.example/debian"}
        assert spec_from_env({**base, "DIB_REPOSITORY_STATE": state}).key != \
            spec_from_env(base).key
        assert spec_from_env(base).key == spec_from_env({**base,
                                                         "DIB_REPOSITORY_STATE": ""}).key


def test_a_live_cell_is_named_in_its_proxy_and_its_reads_are_its_record(tmp_path):
    with contextlib.ExitStack() as stack:
        stage = RepositoryStage.start(SnapshotSetting(), Store(tmp_path / "s"), None, None,
                                      tmp_path / "view.log", stack)
        env = stage.cell_env("host.row", {})
        assert "DIB_REPOSITORY_STATE" not in env and "DIB_APT_CHECK_VALID_UNTIL" not in env
        assert stage.key_part() == "live"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(
            {"http": env["http_proxy"]}))
        with pytest.raises(OSError):  # nothing listens there: the view says so, quickly
            opener.open("http://127.0.0.1:9/debian/dists/bookworm/InRelease", timeout=10)
        assert stage.cell_record("host.row") == []


def test_the_planned_suites_are_pinned_once_each():
    host = SimpleNamespace(base=SimpleNamespace(suite="bookworm", mirror=None))
    image_host = SimpleNamespace(base=SimpleNamespace(reference="fedora:43"))
    target = SimpleNamespace(name="t")
    cells = [SimpleNamespace(kind=CellKind.BUILD, excluded=None, target=target),
             SimpleNamespace(kind=CellKind.BUILD, excluded="no", target=target),
             SimpleNamespace(kind=CellKind.HOSTGEN, excluded=None, target=None)]
    plan = SimpleNamespace(hosts=[host, image_host], cells=cells)
    suite = SimpleNamespace(mirror="http://m.example/debian/", release="trixie")
    assert suites_to_pin(plan, "http://m.example/debian", lambda cell: suite) == [
        ("http://m.example/debian", "bookworm"), ("http://m.example/debian", "trixie")]


def test_without_a_view_on_many_nodes_cells_go_to_the_mirror_not_to_this_loopback(tmp_path):
    with contextlib.ExitStack() as stack:  # 192.0.2.1 (TEST-NET-1) is no address of ours
        stage = RepositoryStage.start(SnapshotSetting(), Store(tmp_path / "s"), None,
                                      "http://127.0.0.1:3142", tmp_path / "view.log", stack,
                                      bind="192.0.2.1")
        assert stage.view is None and stage.direct
        env = stage.cell_env("h.t", {"http_proxy": "http://127.0.0.1:3142",
                                     "HTTP_PROXY": "http://127.0.0.1:3142", "LANG": "C"})
        assert env == {"LANG": "C"}
