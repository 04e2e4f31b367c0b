"""``dib-matrix report -o`` and the reports written into a run directory, through the real
command line: an output replaces only a regular file.

A FIFO stays a FIFO (and nothing hangs), a symlink stays a symlink (its target is not
written), a device stays a device, a directory or a path under /proc is a clear
error (exit 2, one line), ``-o -`` is standard output, a missing directory is not
made, and ``DIR/absent/../FILE`` is ``DIR/FILE``. (/dev/stdout itself is not used:
a symlink in the test's directory to /proc/self/fd/1 is what it is.)
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hostile import Outcome, TreeWatch, golden_copy, run_cli

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return golden_copy(tmp_path / "run")


def report(run_dir: Path, *args: str | Path, cwd: Path | None = None) -> Outcome:
    return run_cli("report", run_dir, "--format", "junit", *args, cwd=cwd)


def assert_refused(outcome: Outcome, *words: str) -> None:
    assert outcome.code == 2, outcome.output
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dib-matrix: "), outcome.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "fifo")
    return tmp_path / "fifo"


def _symlink_to_a_file(tmp_path: Path) -> Path:
    (tmp_path / "target.xml").write_text("not a report")
    (tmp_path / "link.xml").symlink_to(tmp_path / "target.xml")
    return tmp_path / "link.xml"


def _symlink_to_dev_null(tmp_path: Path) -> Path:
    (tmp_path / "null-link").symlink_to("/dev/null")
    return tmp_path / "null-link"


def _symlink_like_dev_stdout(tmp_path: Path) -> Path:
    (tmp_path / "stdout").symlink_to("/proc/self/fd/1")
    return tmp_path / "stdout"


def _char_device(tmp_path: Path) -> Path:
    os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers
    return tmp_path / "null"


def _directory(tmp_path: Path) -> Path:
    (tmp_path / "dir").mkdir()
    return tmp_path / "dir"


NOT_REGULAR: dict[str, tuple[Callable[[Path], Path], str]] = {
    "fifo": (_fifo, "a FIFO"),
    "symlink": (_symlink_to_a_file, "a symlink"),
    "symlink-to-dev-null": (_symlink_to_dev_null, "a symlink"),
    "symlink-like-dev-stdout": (_symlink_like_dev_stdout, "a symlink"),
    "char-device": (_char_device, "a character device"),
    "directory": (_directory, "a directory"),
}


@needs_root
@pytest.mark.parametrize("case", list(NOT_REGULAR))
def test_report_output_that_is_not_a_regular_file_stays_what_it_is(tmp_path, run_dir, case):
    make, what = NOT_REGULAR[case]
    target = make(tmp_path)
    before = os.lstat(target)
    watch = TreeWatch(tmp_path)
    assert_refused(report(run_dir, "-o", target), what, "not a regular file", "-o -")
    after = os.lstat(target)
    assert (stat.S_IFMT(after.st_mode), after.st_ino) == (stat.S_IFMT(before.st_mode),
                                                          before.st_ino)
    watch.assert_untouched()  # a symlink's target too


@pytest.mark.parametrize("where", ["/proc/dib-matrix-report.xml", "/proc/self/dib-matrix.xml"])
def test_report_output_where_no_file_can_be_made_is_a_clear_error(tmp_path, run_dir, where):
    watch = TreeWatch(tmp_path)
    assert_refused(report(run_dir, "-o", where), "cannot write the report to " + where)
    watch.assert_untouched()


def test_report_output_into_a_missing_directory_is_refused_not_made(tmp_path, run_dir):
    watch = TreeWatch(tmp_path)
    assert_refused(report(run_dir, "-o", tmp_path / "absent" / "r.xml"), "does not exist")
    watch.assert_untouched()
    assert not (tmp_path / "absent").exists()


def test_report_output_spelled_with_dots_is_written_where_it_names(tmp_path, run_dir):
    out = tmp_path / "junit.xml"
    watch = TreeWatch(tmp_path, out)
    outcome = report(run_dir, "-o", f"{tmp_path}/absent/../junit.xml")
    assert outcome.code == 0, outcome.output
    assert out.read_text().startswith("<?xml")
    assert not (tmp_path / "absent").exists()
    watch.assert_untouched()


def test_report_output_dash_is_standard_output(tmp_path, run_dir):
    watch = TreeWatch(tmp_path)
    outcome = report(run_dir, "-o", "-", cwd=tmp_path)
    assert outcome.code == 0, outcome.output
    assert outcome.stdout.startswith("<?xml")
    assert not (tmp_path / "-").exists()
    watch.assert_untouched()


def test_report_output_replaces_a_regular_file(tmp_path, run_dir):
    out = tmp_path / "r.json"
    out.write_text("old")
    outcome = run_cli("report", run_dir, "--format", "json", "-o", out)
    assert outcome.code == 0, outcome.output
    assert json.loads(out.read_text())["run_id"]


def test_reports_in_the_run_directory_never_replace_a_symlink(tmp_path, run_dir):
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    (run_dir / "report.txt").symlink_to(outside)
    watch = TreeWatch(tmp_path, run_dir / "report.html", run_dir / "junit.xml")
    outcome = run_cli("report", run_dir)
    assert_refused(outcome, "cannot write the report", "report.txt", "a symlink")
    watch.assert_untouched()
    assert (run_dir / "report.txt").is_symlink()


def test_history_index_that_is_a_fifo_does_not_hang(tmp_path, run_dir):
    history = tmp_path / "history"
    history.mkdir()
    os.mkfifo(history / "index.html")
    watch = TreeWatch(tmp_path, *(run_dir / n for n in ("report.txt", "report.html",
                                                         "junit.xml")))
    outcome = run_cli("report", run_dir, "--history", history)
    assert_refused(outcome, "index.html", "a FIFO")
    assert stat.S_ISFIFO(os.lstat(history / "index.html").st_mode)
    watch.assert_untouched()
