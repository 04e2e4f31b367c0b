"""The benchmark's table, ratios and profile summaries (no builds, no engine)."""

from __future__ import annotations

import json

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
    report.profiles["reuse"] = ["  9.00 s  execute (matrix/runner.py)"]
    report.notes.append("full run")
    text = format_report(report)
    assert "targets: 1 met, 1 missed: matrix/--reuse" in text
    assert "profile: reuse\n    9.00 s  execute (matrix/runner.py)" in text
    assert text.endswith("note: full run")
    data = json.loads(report.to_json())
    assert data["figures"][0]["status"] == "MISSED" and data["figures"][1]["value"] == 1.0


def test_profile_counts_busy_stacks_of_our_code_only():
    raw = [
        # a worker running a cell: 50 samples at 100/s = 0.5 s in run_cell and below
        "_bootstrap (threading.py:995);run (concurrent/futures/thread.py:58);"
        "execute (/work/main/matrix/cells.py:80);run_cell (/work/main/matrix/engine.py:170);"
        "create (/v/site-packages/docker/models/containers.py:900) 50",
        # the scheduler waiting, a watchdog timer, an idle pool worker: not cost
        "run (/work/main/matrix/scheduler.py:90);wait (concurrent/futures/_base.py:305) 400",
        "_bootstrap (threading.py:995);Timer.run (threading.py:1427) 300",
        "_bootstrap (threading.py:995);_worker (concurrent/futures/thread.py:81);"
        "get (queue.py:171) 200",
        "garbage",
    ]
    seconds = busy_seconds(raw)
    assert seconds["run_cell (matrix/engine.py)"] == 0.5
    assert seconds["create (docker/models/containers.py)"] == 0.5
    assert "run (matrix/scheduler.py)" not in seconds
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
