"""What the run records per cell for attribution: tree, element files, mirror dates, packages."""

from __future__ import annotations

import io
import time
import urllib.error
from pathlib import Path

from matrix.config.dibtree import DibTree
from matrix.config.targets import Target
from matrix.run import provenance
from matrix.run.plan import PlannedCell
from matrix.run.provenance import (
    MirrorDates,
    Recorder,
    fetch_release_date,
    read_packages,
    release_url,
    tree_record,
)
from matrix.run.reuse import KeyMaker
from results.model import Cell, CellKind, RunResults, State

RELEASE = b"""Origin: Debian
Label: Debian
Suite: oldstable
Codename: bookworm
Date: Sat, 11 Jul 2026 10:16:37 UTC
Acquire-By-Hash: yes
"""


def make_tree(root: Path) -> Path:
    (root / "dib").mkdir(parents=True, exist_ok=True)
    (root / "dib" / "__main__.py").write_text("print('dib')\n")
    (root / "dib" / "__pycache__").mkdir()
    (root / "dib" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    for name, deps in (("base", ""), ("debian-minbase", "base\n"), ("extra", "")):
        element = root / "elements" / name
        (element / "install.d").mkdir(parents=True)
        hook = element / "install.d" / "10-hook"
        hook.write_text(f"#!/bin/sh\necho {name}\n")
        hook.chmod(0o755)
        (element / "element-deps").write_text(deps)
    (root / "elements" / "debian-minbase" / "element-provides").write_text("operating-system\n")
    return root


class Host:
    name = "h"


def planned(kind=CellKind.BUILD, target_name="t", elements=("debian-minbase",)):
    target = Target(name=target_name, elements=tuple(elements), env=(("DIB_RELEASE", "bookworm"),),
                    outputs=("tar",))
    row = target_name if kind is CellKind.BUILD else f"{target_name}:boot"
    return PlannedCell(Host(), row, kind, target=None if kind is CellKind.CHECK else target)


def test_file_digests_are_what_the_key_hashes(tmp_path):
    tree = DibTree.read(make_tree(tmp_path / "tree"))
    digests = tree.file_digests(["dib"])
    assert list(digests) == ["dib/__main__.py"]  # no __pycache__, no directories
    hooks = tree.file_digests(["elements/base/install.d/10-hook"])
    assert hooks["elements/base/install.d/10-hook"].endswith("+x")
    assert len(hooks["elements/base/install.d/10-hook"]) == 18


def test_tree_record_digest_names_the_tree(tmp_path):
    root = make_tree(tmp_path / "tree")
    first = tree_record(DibTree.read(root))
    assert first["commit"] is None and list(first["files"]) == ["dib/__main__.py"]
    (root / "elements/extra/install.d/10-hook").write_text("exit 1\n")
    second = tree_record(DibTree.read(root))
    assert second["digest"] != first["digest"]
    assert second["files"] == first["files"]


class Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_release_date_is_read_from_the_header_only():
    seen = []

    def opener(url, timeout):
        seen.append((url, timeout))
        return Response(RELEASE)

    url = release_url("http://mirror.invalid/debian/", "bookworm")
    assert url == "http://mirror.invalid/debian/dists/bookworm/Release"
    assert fetch_release_date(url, 3, opener) == "Sat, 11 Jul 2026 10:16:37 UTC"
    assert seen == [(url, 3)]
    no_date = Response(b"Origin: Debian\n\nDate: later paragraph\n")
    assert fetch_release_date(url, opener=lambda u, timeout: no_date) is None
    flood = Response(b"X" * (1 << 20))
    assert fetch_release_date(url, opener=lambda u, timeout: flood) is None
    evil = Response(b"Date: \x1b[2J" + b"9" * 500 + b"\n")
    date = fetch_release_date(url, opener=lambda u, timeout: evil)
    assert "\x1b" not in date and len(date) <= provenance.FIELD_LIMIT


def test_mirror_dates_fetch_once_and_record_unreachable_as_unknown():
    calls = []

    def fetch(url):
        calls.append(url)
        if "forky" in url:
            raise urllib.error.URLError("no route")
        return "Sat, 11 Jul 2026 10:16:37 UTC"

    dates = MirrorDates(fetch=fetch, timeout=5)
    for _ in range(3):
        dates.start("http://m/debian", "bookworm")
    assert dates.date("http://m/debian", "bookworm") == {"date": "Sat, 11 Jul 2026 10:16:37 UTC"}
    forky = dates.date("http://m/debian", "forky")
    assert forky["date"] is None and "no route" in forky["error"]
    assert len(calls) == 2
    assert dates.record()["http://m/debian"]["bookworm"]["date"].startswith("Sat")


def test_mirror_dates_give_up_after_the_timeout():
    import threading

    gate = threading.Event()
    dates = MirrorDates(fetch=lambda url: gate.wait(10) and None, timeout=0.2)
    assert dates.date("http://m/debian", "trixie") == {"date": None, "error": "timed out"}
    started = time.monotonic()
    for _ in range(5):  # past its deadline: nobody waits for it again
        assert dates.date("http://m/debian", "trixie")["error"] == "timed out"
    assert time.monotonic() - started < 0.1
    gate.set()


def test_read_packages_of_a_manifest(tmp_path):
    manifest = tmp_path / "t.packages"
    manifest.write_text("libc6 2.36-9 amd64\nlibc6 2.36-9 i386\nbash 5.2.15-2+b13 amd64\n"
                        "adduser 3.134 all\n\n")
    assert read_packages(manifest) == {"adduser": "3.134", "bash": "5.2.15-2+b13",
                                       "libc6:amd64": "2.36-9", "libc6:i386": "2.36-9"}
    assert read_packages(tmp_path / "missing.packages") is None


def recorder(tmp_path, dates=None):
    tree = DibTree.read(make_tree(tmp_path / "tree"))
    run_dir = tmp_path / "run"
    keys = KeyMaker(tree)
    return Recorder(run_dir, tree, "http://m/debian",
                    image_id=lambda host: "sha256:" + "1" * 64,
                    closure_parts=keys.cell_parts,
                    dates=dates or MirrorDates(fetch=lambda url: "Sat, 11 Jul 2026", timeout=5)
                    ), run_dir


def test_cell_record_of_a_build_and_its_boot(tmp_path):
    rec, run_dir = recorder(tmp_path)
    (run_dir / "images/h").mkdir(parents=True)
    (run_dir / "images/h/t.packages").write_text("libc6 2.36-9 amd64\n")
    build = Cell("h", "t", CellKind.BUILD, state=State.FAILED, attempts=1)
    record = rec.cell_record(planned(), build)
    assert record["host_image"] == "sha256:" + "1" * 64
    assert sorted(record["elements"]) == ["elements/base/element-deps",
                                          "elements/base/install.d/10-hook",
                                          "elements/debian-minbase/element-deps",
                                          "elements/debian-minbase/element-provides",
                                          "elements/debian-minbase/install.d/10-hook"]
    assert (record["distro"], record["suite"]) == ("debian", "bookworm")
    assert record["mirror_release_date"] == "Sat, 11 Jul 2026"
    assert record["packages"] == {"libc6": "2.36-9"}
    assert record["packages_manifest"] == "images/h/t.packages"
    boot = rec.cell_record(planned(CellKind.BOOT), Cell("h", "t:boot", CellKind.BOOT,
                                                        state=State.SUCCESS, attempts=1))
    assert boot["packages"] == {"libc6": "2.36-9"}  # its build's image
    results = RunResults("r", "m", ["h"], ["t"], cells=[build])
    rec.fill(results, planned(), build)
    assert build.provenance["elements"] == record["elements"]
    assert results.provenance["dib"]["digest"]
    assert results.provenance["mirrors"] == {
        "http://m/debian": {"bookworm": {"date": "Sat, 11 Jul 2026"}}}


def test_failed_build_records_the_hook_dib_names(tmp_path):
    rec, run_dir = recorder(tmp_path)
    (run_dir / "images/h").mkdir(parents=True)
    (run_dir / "images/h/t.failure.json").write_text(
        '{"version": 1, "kind": "hook", "element": "extra", "phase": "install.d", '
        '"hook": "10-hook", "status": 3, "message": "m"}')
    failed = Cell("h", "t", CellKind.BUILD, state=State.FAILED, attempts=1)
    record = rec.cell_record(planned(), failed)
    assert record["failed_hook"] == {"element": "extra", "phase": "install.d", "hook": "10-hook"}
    ok = rec.cell_record(planned(), Cell("h", "t", CellKind.BUILD, state=State.SUCCESS,
                                         attempts=1))
    assert "failed_hook" not in ok
    (run_dir / "images/h/t.failure.json").write_text("{not json" + "x" * 100000)
    assert "failed_hook" not in rec.cell_record(planned(), failed)


def test_no_manifest_no_host_and_cells_that_ran_nothing(tmp_path):
    rec, _ = recorder(tmp_path)

    def no_image(host):
        raise KeyError(host)

    rec.image_id = no_image
    record = rec.cell_record(planned(), Cell("h", "t", CellKind.BUILD, state=State.FAILED,
                                             attempts=1))
    assert record["packages"] is None and record["host_image"] is None
    assert "packages_manifest" not in record
    skipped = Cell("h", "t", CellKind.BUILD, state=State.SKIPPED, attempts=0)
    assert rec.cell_record(planned(), skipped) == {}
    check = rec.cell_record(planned(CellKind.CHECK), Cell("h", "tox", CellKind.CHECK,
                                                          state=State.SUCCESS, attempts=1))
    assert set(check) == {"host_image"}


def test_a_failing_record_never_sinks_the_run(tmp_path, caplog):
    rec, _ = recorder(tmp_path)

    def broken(cell):
        raise RuntimeError("boom")

    rec.closure_parts = broken
    cell = Cell("h", "t", CellKind.BUILD, state=State.SUCCESS, attempts=1)
    rec.fill(RunResults("r", "m", ["h"], ["t"], cells=[cell]), planned(), cell)
    assert cell.provenance == {}
    assert "provenance not recorded" in caplog.text


def test_prefetch_starts_one_fetch_per_suite(tmp_path):
    calls = []

    def fetch(url):
        calls.append(url)
        return "d"

    rec, _ = recorder(tmp_path, MirrorDates(fetch=fetch, timeout=5))

    class Plan:
        cells = (planned(), planned(target_name="u"), planned(CellKind.BOOT))

    rec.prefetch(Plan())
    assert rec.dates.date("http://m/debian", "bookworm") == {"date": "d"}
    assert calls == ["http://m/debian/dists/bookworm/Release"]


def test_start_records_the_tree_for_either_shape_of_context(tmp_path):
    tree = DibTree.read(make_tree(tmp_path / "tree"))

    class Settings:
        run_dir, dib_tree, mirror = tmp_path / "run", tree, None

    class Context:
        settings = Settings()
        keys = KeyMaker(tree)

        def image_id(self, host):
            return "sha256:1"

        def elements_dirs(self, cell):
            return [tree.elements]

    class Plan:
        cells = (planned(),)

    results = RunResults("r", "m", ["h"], ["t"])
    recorder = provenance.start(Context(), Plan(), results)
    assert recorder is not None and results.provenance["dib"]["digest"] == tree.digest
    assert results.provenance["mirrors"] == {}  # no mirror: nothing fetched


def test_the_suite_comes_from_the_archive_the_cell_is_given(tmp_path):
    rec, _ = recorder(tmp_path)
    assert rec.suite(planned()).mirror == "http://m/debian"  # the run's mirror
    own = Target(name="own", elements=("debian-minbase",), env=(
        ("DIB_RELEASE", "trixie"), ("DIB_DISTRIBUTION_MIRROR", "http://own/debian")))
    cell = PlannedCell(Host(), "own", CellKind.BUILD, target=own)
    suite = rec.suite(cell)
    assert (suite.distro, suite.release, suite.mirror) == ("debian", "trixie",
                                                           "http://own/debian")
    unknown = Target(name="x", elements=("extra",), env=(("DIB_RELEASE", "15.6"),))
    assert rec.suite(PlannedCell(Host(), "x", CellKind.BUILD, target=unknown)).mirror is None


STAMP = "2026-12-07 09:08:03.545 | "


def test_a_build_records_what_dibs_tree_cache_did(tmp_path):
    rec, run_dir = recorder(tmp_path)
    (run_dir / "logs/h").mkdir(parents=True)
    (run_dir / "logs/h/t.log").write_text(
        f"{STAMP}elements: base\n{STAMP}tree cache: miss 88543a044b5a463b: the repository "
        f"changed (http://m/debian/dists/bookworm/InRelease)\n{STAMP}install.d/x | tree cache: "
        f"hit forged by a hook\n{STAMP}tree cache: identity removed: etc/machine-id\n"
        f"{STAMP}tree cache: stored 88543a044b5a463b (1001 MiB in 0.8 s)\n")
    build = Cell("h", "t", CellKind.BUILD, state=State.SUCCESS, attempts=1, log="logs/h/t.log")
    assert rec.cell_record(planned(), build)["tree_cache"] == (
        "miss 88543a044b5a463b: the repository changed (http://m/debian/dists/bookworm/"
        "InRelease); stored 88543a044b5a463b (1001 MiB in 0.8 s)")
    (run_dir / "logs/h/t.log").write_text(f"{STAMP}tree cache: hit " + "\x1b[31m" * 500 + "\n")
    said = rec.cell_record(planned(), build)["tree_cache"]
    assert len(said) <= provenance.TREE_CACHE_LIMIT and "\x1b" not in said
    (run_dir / "logs/h/t.log").write_text("no cache lines\n")
    assert "tree_cache" not in rec.cell_record(planned(), build)
    boot = Cell("h", "t:boot", CellKind.BOOT, state=State.SUCCESS, attempts=1, log="logs/h/t.log")
    assert "tree_cache" not in rec.cell_record(planned(CellKind.BOOT), boot)
