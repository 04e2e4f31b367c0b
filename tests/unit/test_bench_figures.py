"""The benchmark's table, ratios and profile summaries (no builds, no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import matrixbench
from bench.builders import dib_packages, our_packages
from bench.figures import (
    Figure,
    Report,
    format_report,
    format_table,
    format_value,
    megabytes,
    ratio,
)
from bench.profiling import busy_seconds
from bench.steps import dib_slowest, slowest_steps
from bench.workspace import REPO, BenchError, write_element
from dib import spawn
from matrix.config.hosts import load_host
from matrix.config.matrixfile import load_matrix
from matrix.run.plan import make_plan
from results.model import Cell, CellKind, RunResults, State


def test_ratio_is_none_without_both_figures():
    assert ratio(10.0, 40.0) == 0.25
    assert ratio(None, 40.0) is None
    assert ratio(10.0, None) is None
    assert ratio(10.0, 0.0) is None
    assert megabytes(3 << 20) == 3.0 and megabytes(None) is None


def test_status_against_an_upper_bound():
    assert Figure("s", "a", 0.4, "x", 0.4).status == "ok"
    assert Figure("s", "a", 0.41, "x", 0.4).status == "MISSED"
    assert Figure("s", "a", None, "x", 0.4).status == "n/a"
    assert Figure("s", "a", 3.0, "s").status == ""


def test_values_read_with_their_units():
    assert format_value(0.2534, "x") == "0.25x"
    assert format_value(4.771, "s") == "4.77 s"
    assert format_value(25.31, "s") == "25.3 s"
    assert format_value(312.7, "MB") == "313 MB"
    assert format_value(9.45, "%") == "9.4 %"
    assert format_value(2600.0, "") == "2600"
    assert format_value(None, "s") == "n/a"


def test_table_names_each_section_once_and_shows_targets():
    table = format_table([
        Figure("dib vs DIB", "DIB cold", 108.0, "s"),
        Figure("dib vs DIB", "dib cold / DIB cold", 0.25, "x", 0.4),
        Figure("matrix", "--reuse", 12.5, "s", 10.0, note="2/2 reused"),
    ])
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["section", "figure", "value", "target"]
    rows = lines[2:]
    assert rows[0].startswith("dib vs DIB") and rows[1].startswith(" ")
    assert "0.25x" in rows[1] and "<= 0.40x" in rows[1] and "ok" in rows[1]
    assert rows[2].startswith("matrix") and "MISSED" in rows[2] and "2/2 reused" in rows[2]


def test_report_lists_misses_profiles_and_round_trips_as_json():
    report = Report()
    report.add([Figure("matrix", "--reuse", 12.5, "s", 10.0), Figure("x", "y", 1.0, "s", 2.0)])
    report.profiles["reuse"] = ["  9.00 s  execute (matrix/run/runner.py)"]
    report.notes.append("full run")
    text = format_report(report)
    assert "targets: 1 met, 1 missed: matrix/--reuse" in text
    assert "profile: reuse\n    9.00 s  execute (matrix/run/runner.py)" in text
    assert text.endswith("note: full run")
    data = json.loads(report.to_json())
    assert data["figures"][0]["status"] == "MISSED" and data["figures"][1]["value"] == 1.0


def test_profile_counts_busy_stacks_of_our_code_only():
    raw = [
        # a worker running a cell: 50 samples at 100/s = 0.5 s in run_cell and below
        "_bootstrap (threading.py:995);run (concurrent/futures/thread.py:58);"
        "execute (/work/main/matrix/run/cells.py:80);"
        "run_cell (/work/main/matrix/containers/engine.py:170);"
        "create (/v/site-packages/docker/models/containers.py:900) 50",
        # the scheduler waiting, a watchdog timer, an idle pool worker: not cost
        "run (/work/main/matrix/run/scheduler.py:90);wait (concurrent/futures/_base.py:305) 400",
        "_bootstrap (threading.py:995);Timer.run (threading.py:1427) 300",
        "_bootstrap (threading.py:995);_worker (concurrent/futures/thread.py:81);"
        "get (queue.py:171) 200",
        "garbage",
    ]
    seconds = busy_seconds(raw)
    assert seconds["run_cell (matrix/containers/engine.py)"] == 0.5
    assert seconds["create (docker/models/containers.py)"] == 0.5
    assert "run (matrix/run/scheduler.py)" not in seconds
    assert len(seconds) == 3


OUR_LOG = """\
2026-11-22 03:36:00.000 | elements: package-installs dpkg base debootstrap debian-minimal
2026-11-22 03:36:19.100 | finished root.d/08-debootstrap in 19.1 s
2026-11-22 03:36:21.000 | finished pre-install.d/00-dpkg-setup in 1.9 s
2026-11-22 03:36:22.500 | ext4 filesystem image.raw: 206 MiB
2026-11-22 03:36:26.000 | wrote /tmp/image.qcow2 (51 MiB)
"""

DIB_LOG = """\
2026-11-22 03:31:24.188 | dib-run-parts Target: root.d
2026-11-22 03:31:24.196 | dib-run-parts 08-debootstrap                               23.004
2026-11-22 03:31:24.223 | dib-run-parts 75-debian-minimal-baseinstall                 7.673
2026-11-22 03:32:14.131 | dib-run-parts Target: install.d
2026-11-22 03:32:14.147 | dib-run-parts 01-package-installs                          39.440
2026-11-22 03:32:18.927 | Converting image using qemu-img convert
2026-11-22 03:32:38.786 | Image file /tmp/image.qcow2 created...
"""


def test_slowest_steps_from_both_builders_logs(tmp_path):
    ours, theirs = tmp_path / "ours.log", tmp_path / "dib.log"
    ours.write_text(OUR_LOG)
    theirs.write_text(DIB_LOG)
    assert slowest_steps(ours) == [
        "   26.0 s  whole build",
        "   19.1 s  root.d/08-debootstrap",
        "    3.5 s  qcow2 conversion (qemu-img convert -c)",
        "    1.9 s  pre-install.d/00-dpkg-setup",
        "    1.5 s  filesystem image (mkfs.ext4 -d)",
    ]
    assert dib_slowest(theirs) == [
        "   74.6 s  whole build",
        "   39.4 s  install.d/01-package-installs",
        "   23.0 s  root.d/08-debootstrap",
        "   19.9 s  qcow2 conversion (qemu-img convert)",
        "    7.7 s  root.d/75-debian-minimal-baseinstall",
    ]


def test_diskimage_builder_manifest_names_drop_the_arch(tmp_path):
    manifests = tmp_path / "image.d" / "dib-manifests"
    manifests.mkdir(parents=True)
    (manifests / "dib-manifest-dpkg-image").write_text(json.dumps({"packages": [
        {"package": "libc6:amd64", "arch": "amd64", "version": "2.36", "status": "ii "},
        {"package": "adduser", "arch": "all", "version": "3.134", "status": "ii "}]}))
    (tmp_path / "image.packages").write_text("libc6 2.36 amd64\nbash 5.2 amd64\n")
    assert dib_packages(tmp_path / "image") == {"libc6", "adduser"}
    assert our_packages(tmp_path / "image") == {"libc6", "bash"}


# --- the matrix section: what it runs, what a touch must re-run, how runs are counted ----

MATRIX_BENCH = """\
name: default
hosts: [debian-bookworm, debian-trixie, ubuntu-noble]
targets: [debian-bookworm, debian-bookworm-vm]
checks: [tox]
max-parallel: 2
timeout: 30m
"""


def _plan(tmp_path, text=MATRIX_BENCH):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return make_plan(load_matrix(path))


def test_bench_matrix_keeps_the_source_but_its_hosts(tmp_path):
    source = {"name": "default", "hosts": ["debian-*"], "targets": ["debian-bookworm", "t.yaml"],
              "checks": ["tox"], "max-parallel": 3, "timeout": "20m", "output": "out",
              "exclude": [{"host": "debian-trixie", "target": "x", "reason": "r"},
                          {"target": "y", "reason": "r"}],
              "allowed-failures": [{"host": "*"}]}
    hosts = [tmp_path / "bench-debian-bookworm.yaml"]
    doc = matrixbench.bench_matrix(source, tmp_path, hosts)
    assert doc["name"] == "bench-default" and doc["hosts"] == [str(hosts[0])]
    assert doc["targets"] == ["debian-bookworm", str(tmp_path / "t.yaml")]
    assert (doc["checks"], doc["max-parallel"], doc["timeout"]) == (["tox"], 3, "20m")
    assert "output" not in doc
    assert doc["exclude"][0]["host"] == "bench-debian-trixie"
    assert "host" not in doc["exclude"][1]
    assert doc["allowed-failures"] == [{"host": "bench-*"}]
    with pytest.raises(BenchError):
        matrixbench.bench_matrix({**source, "include": [{"host": "a", "target": "b"}]},
                                 tmp_path, hosts)


def test_bench_host_is_a_renamed_copy(tmp_path):
    path = matrixbench.bench_host(REPO / "hosts" / "ubuntu-noble.yaml", tmp_path)
    assert path.name == "bench-ubuntu-noble.yaml"
    assert load_host(path).name == "bench-ubuntu-noble"
    assert load_host(path).base == load_host(REPO / "hosts" / "ubuntu-noble.yaml").base


def test_figure_names_what_the_plan_holds(tmp_path):
    assert matrixbench.describe_plan("default matrix", _plan(tmp_path)) == \
        "default matrix: 3 hosts x 2 targets + tox + 1 boot row"
    small = "hosts: [debian-bookworm]\ntargets: [debian-bookworm]\nchecks: []\n"
    assert matrixbench.describe_plan("bench matrix", _plan(tmp_path, small)) == \
        "bench matrix: 1 host x 1 target"


def test_touch_picks_an_element_only_some_targets_use():
    closures = {"a": {"base", "x", "growroot"}, "b": {"base", "y", "z"}}
    assert matrixbench.pick_touched(closures) == "growroot"
    assert matrixbench.pick_touched(closures, preferred=()) == "growroot"
    assert matrixbench.pick_touched(closures, preferred=("base", "z")) == "z"
    assert matrixbench.pick_touched({"a": {"base"}, "b": {"base"}}) is None


def test_touching_growroot_reruns_the_vm_builds_their_boot_rows_and_every_check(tmp_path):
    plan = _plan(tmp_path)
    closures = matrixbench.closures(plan, REPO)
    assert "growroot" in closures["debian-bookworm-vm"]
    assert "growroot" not in closures["debian-bookworm"]
    assert matrixbench.pick_touched(closures) == "growroot"
    hosts = ("debian-bookworm", "debian-trixie", "ubuntu-noble")
    assert matrixbench.expected_after_touch(plan, closures, "growroot") == {
        f"{h}.{row}" for h in hosts for row in ("tox", "debian-bookworm-vm",
                                               "debian-bookworm-vm:boot")}
    # an element every build holds: every build, boot and check cell
    every = matrixbench.expected_after_touch(plan, closures, "base")
    assert every == {c.id for c in plan.cells if c.kind is not CellKind.HOSTGEN}


def test_touch_appends_to_the_elements_first_script(tmp_path):
    script = write_element(tmp_path, "e", {"post-install.d/20-b": "b\n",
                                           "install.d/10-a": "a\n", "README.md": "r\n"})
    touched = matrixbench.touch(tmp_path, "e")
    assert touched == script / "install.d" / "10-a"
    assert touched.read_text() == "a\n" + matrixbench.TOUCH_MARK


def _cell(host, row, kind, state=State.SUCCESS, reused=False, ran=True):
    return Cell(host, row, kind, state, reused=reused, reproducer="docker run ..." if ran else None)


def _run(label, cells, seconds=1.0):
    results = RunResults("r", "m.yaml", [], [], cells)
    return matrixbench.MatrixRun(label, spawn.Result((), 0, b"", seconds), Path("r"),
                                 results, 0)


def test_ran_tells_runs_from_reuse_preflight_and_skips():
    assert matrixbench.ran(_cell("h", "t", CellKind.BUILD))
    assert matrixbench.ran(_cell("h", "t", CellKind.BUILD, State.FAILED))
    assert matrixbench.ran(_cell("h", "t:boot", CellKind.BOOT, State.TIMEOUT))
    assert not matrixbench.ran(_cell("h", "t", CellKind.BUILD, reused=True))
    assert not matrixbench.ran(_cell("h", "t", CellKind.BUILD, State.FAILED, ran=False))
    assert not matrixbench.ran(_cell("h", "t", CellKind.BUILD, State.SKIPPED, ran=False))
    assert not matrixbench.ran(_cell("h", "hostgen", CellKind.HOSTGEN))


def _again(cells, reuse):
    """The same cells in a --reuse run: ``reuse(cell)`` tells which are reused."""
    return [_cell(c.host, c.row, c.kind, c.state, reused=reuse(c), ran=c.reproducer is not None)
            for c in cells]


def test_reuse_figures_count_build_check_and_boot_honestly():
    warm = [_cell(h, row, kind) for h in ("a", "b") for row, kind in
            (("tox", CellKind.CHECK), ("t", CellKind.BUILD), ("vm", CellKind.BUILD),
             ("vm:boot", CellKind.BOOT))]
    warm += [_cell("a", "forky", CellKind.BUILD, State.FAILED),  # fails every time
             _cell("a", "suse", CellKind.BUILD, State.FAILED, ran=False)]  # preflight
    reusable = matrixbench.ran_ok(warm)
    assert len(reusable) == 8
    # unchanged: the boot rows still run (not reused); the failed build runs again
    reuse = _run("reuse", _again(warm, lambda c: c.id in reusable and c.kind is not CellKind.BOOT),
                 31.0)
    expected = {"a.tox", "b.tox", "a.vm", "b.vm", "a.vm:boot", "b.vm:boot"}
    touched = _run("touched", _again(warm, lambda c: c.id in reusable and c.id not in expected),
                   40.0)
    figures = {f.name: f for f in matrixbench.reuse_figures(reuse, touched, reusable, expected,
                                                            "growroot")}
    unchanged = figures["--reuse, nothing changed"]
    assert unchanged.status == "MISSED"
    assert unchanged.note == ("reused: build 4/4, check 2/2, boot 0/2; failed cells ran again "
                              "(no --reuse-failures): build 1")
    again = figures["  successful cells re-run"]
    assert again.value == 2 and again.status == "MISSED"
    assert again.note == "vm:boot (2 hosts) (boot 2)"
    assert figures["--reuse, growroot touched"].note == (
        "re-ran: forky (1 host), tox (2 hosts), vm (2 hosts), vm:boot (2 hosts) "
        "(build 3, check 2, boot 2); of which failed before: 1")
    exact = figures["  re-runs not in growroot's closure (or missing)"]
    assert exact.value == 0 and exact.status == "ok"
    assert exact.note == "expected: tox (2 hosts), vm (2 hosts), vm:boot (2 hosts)"
    # a build outside the closure that re-ran, and an expected one that did not
    wrong = _run("touched", _again(warm, lambda c: c.id in reusable and c.id not in
                                   (expected - {"b.vm"}) | {"a.t"}))
    exact = matrixbench.reuse_figures(reuse, wrong, reusable, expected, "growroot")[-1]
    assert exact.value == 2 and exact.note.endswith("; differ: a.t, b.vm")


def test_overhead_matrices_load_and_plan_serial_noop_cells(tmp_path):
    from bench import overhead
    from bench.workspace import Bench

    bench = Bench(work=tmp_path, logs=tmp_path / "logs", quick=True, mirror="http://mirror")
    matrices = overhead.prepare(bench, (1, 2, 4))
    assert sorted(matrices) == [1, 2, 4]
    plan = make_plan(load_matrix(matrices[4]))
    builds = [c for c in plan.cells if c.kind is CellKind.BUILD]
    assert len(builds) == 4 and {c.host.name for c in builds} == {"bench-debian-bookworm"}
    assert load_matrix(matrices[4]).max_parallel == 1


def test_clean_removes_only_the_bench_copies(tmp_path):
    from types import SimpleNamespace

    from bench import cleanup

    removed = []

    def image(created, *tags):
        return SimpleNamespace(id=tags[0], tags=list(tags), attrs={"Created": created})

    def volume(name):
        return SimpleNamespace(name=name, remove=lambda force: removed.append(name))

    images = [image("1", "dib-matrix/base-bench-debian-trixie:a"),
              image("3", "dib-matrix/dib-bench-debian-trixie:c"),
              image("2", "dib-matrix/host-bench-debian-trixie:b"),
              image("2", "dib-matrix/host-debian-trixie:b"),  # the real host: kept
              image("0", "dib-matrix/base-debian-trixie:a",
                    "dib-matrix/base-bench-debian-trixie:z"),
              image("4", "debian:bookworm")]
    client = SimpleNamespace(
        images=SimpleNamespace(list=lambda: images,
                               remove=lambda image_id, force: removed.append(image_id)),
        volumes=SimpleNamespace(list=lambda: [volume("dib-matrix-cache-bench-debian-trixie"),
                                              volume("dib-matrix-cache-debian-trixie")]))
    work = tmp_path / ".work"
    (work / "venvs").mkdir(parents=True)
    gone = cleanup.clean(client, work)
    assert removed == ["dib-matrix/dib-bench-debian-trixie:c",  # newest (on top) first
                       "dib-matrix/host-bench-debian-trixie:b",
                       "dib-matrix/base-bench-debian-trixie:a",
                       "dib-matrix/base-bench-debian-trixie:z",  # untagged, image kept
                       "dib-matrix-cache-bench-debian-trixie"]
    assert not work.exists() and gone[-1] == f"directory {work}"


def test_the_arm64_section_is_left_out_of_a_quick_run(tmp_path):
    from bench import foreign
    from bench.workspace import Bench, BenchError

    bench = Bench(tmp_path, tmp_path / "logs", quick=True, mirror="http://mirror.invalid/debian")
    with pytest.raises(BenchError, match="--quick"):
        foreign.run(bench)
