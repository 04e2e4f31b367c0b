"""results.paths: names never become paths outside their root; outputs replace only files;
and the atomic writer every report uses keeps to that."""

from __future__ import annotations

import os
import stat

import pytest

from results.paths import (
    UnsafeOutput,
    UnsafePath,
    absolute,
    check_component,
    check_replaceable,
    inside,
    output_file,
)
from results.store import write_atomically

# Names a tampered results.json may carry where a host or row is expected.
NOT_COMPONENTS = ["..", ".", "", "/", "/etc", "a/b", "../x", "../../../../x", "x/..",
                  "nul\0", "//", "a/", 7, None, ["a"], b"bytes"]


@pytest.mark.parametrize("name", NOT_COMPONENTS, ids=repr)
def test_a_name_that_is_not_one_component_is_refused(tmp_path, name):
    with pytest.raises(UnsafePath):
        check_component(name)
    with pytest.raises(UnsafePath):
        inside(tmp_path, "logs", name, "tox.log")
    assert issubclass(UnsafePath, ValueError)


def test_plain_names_stay_inside(tmp_path):
    assert inside(tmp_path, "logs", "debian-bookworm", "debian-forky:boot.log") == \
        tmp_path / "logs" / "debian-bookworm" / "debian-forky:boot.log"
    assert inside(tmp_path, "...", "a..b", " x") == tmp_path / "..." / "a..b" / " x"
    assert inside(tmp_path) == tmp_path


def test_a_symlinked_directory_that_leads_out_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "images").symlink_to(outside)
    with pytest.raises(UnsafePath, match="leads outside"):
        inside(root, "images", "host")
    with pytest.raises(UnsafePath, match="leads outside"):
        inside(root, "images", "host", "deeper", "file")
    (root / "inner").mkdir()
    (root / "loop").symlink_to(root / "inner")  # stays inside: the caller refuses symlinks
    assert inside(root, "loop", "x") == root / "loop" / "x"


def test_a_symlink_loop_is_an_unsafe_path_not_a_crash(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(UnsafePath, match="symlink loop"):
        inside(tmp_path, "loop", "x")
    with pytest.raises(UnsafePath, match="symlink loop"):
        inside(tmp_path / "loop", "x")


def test_the_root_itself_may_be_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert inside(tmp_path / "link", "logs", "h") == tmp_path / "link" / "logs" / "h"


def test_absolute_removes_dot_dot_by_the_text(tmp_path):
    assert absolute(tmp_path / "busy" / "absent" / "..") == tmp_path / "busy"
    assert absolute(tmp_path / "a" / "." / "b" / "") == tmp_path / "a" / "b"
    assert absolute(tmp_path / "x").is_absolute()


def _special_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers
    target = tmp_path / "target.txt"
    target.write_text("untouched")
    link = tmp_path / "link"
    link.symlink_to(target)
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")  # what /dev/stdout is
    directory = tmp_path / "dir"
    directory.mkdir()
    return {"a FIFO": fifo, "a character device": device, "a symlink": link,
            "a directory": directory, "stdout": stdout}


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_the_atomic_writer_never_replaces_what_is_not_a_regular_file(tmp_path):
    for what, path in _special_files(tmp_path).items():
        before = os.lstat(path)
        with pytest.raises(UnsafeOutput, match="not a regular file"):
            write_atomically(path, "report")
        with pytest.raises(UnsafeOutput):
            check_replaceable(path)
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), what
    assert (tmp_path / "target.txt").read_text() == "untouched"
    assert issubclass(UnsafeOutput, OSError)  # callers' "except OSError" still hold
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_the_atomic_writer_still_replaces_a_regular_file(tmp_path):
    path = tmp_path / "report.txt"
    path.write_text("old")
    write_atomically(path, "new")
    assert path.read_text() == "new"
    write_atomically(tmp_path / "fresh" / "report.txt", "made")  # as before: parents made
    assert (tmp_path / "fresh" / "report.txt").read_text() == "made"


def test_output_file_needs_its_directory(tmp_path):
    with pytest.raises(UnsafeOutput, match="does not exist"):
        output_file(tmp_path / "absent" / "out.txt")
    assert not (tmp_path / "absent").exists()
    assert output_file(tmp_path / "absent" / ".." / "out.txt") == tmp_path / "out.txt"
