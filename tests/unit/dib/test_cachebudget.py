"""A cache directory's size budget: least recently used first, entries in use kept."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from dib import bootstrap, cachebudget
from dib.errors import ConfigError


def entries(directory, **ages):
    """One 100-byte tar per name, its mtime the given age order (higher: more recent)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, mtime in ages.items():
        tar = directory / f"{name}.tar"
        tar.write_bytes(b"x" * 100)
        tar.with_suffix(".lock").touch()
        os.utime(tar, (mtime, mtime))
    return directory


@pytest.mark.parametrize("text, size", [
    ("2G", 2 << 30), ("500M", 500 << 20), ("1048576", 1 << 20), ("2GiB", 2 << 30),
    (" 3 k ", 3 << 10)])
def test_sizes_parse(text, size):
    assert cachebudget.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "1.5G", "2X", "8 gigabytes"])
def test_non_sizes_are_refused(text):
    assert cachebudget.parse_size(text) is None


def test_least_recently_used_go_first_until_the_rest_fit(tmp_path):
    directory = entries(tmp_path / "c", new=30, old=10, mid=20, newest=40)
    removed = cachebudget.prune(directory, 250, keep="new",
                                remove=lambda tar: tar.unlink() is None)
    assert removed == ["old", "mid"]
    assert sorted(p.name for p in directory.glob("*.tar")) == ["new.tar", "newest.tar"]


def test_the_kept_entry_stays_even_over_budget(tmp_path):
    directory = entries(tmp_path / "c", mine=1, other=2)
    removed = cachebudget.prune(directory, 0, keep="mine",
                                remove=lambda tar: tar.unlink() is None)
    assert removed == ["other"] and (directory / "mine.tar").exists()


def test_an_entry_that_cannot_be_removed_is_passed_over(tmp_path):
    directory = entries(tmp_path / "c", busy=1, idle=2, mine=3)
    removed = cachebudget.prune(
        directory, 150, keep="mine",
        remove=lambda tar: tar.stem != "busy" and tar.unlink() is None)
    assert removed == ["idle"] and (directory / "busy.tar").exists()


def test_half_written_files_of_killed_builds_go_when_stale(tmp_path):
    directory = entries(tmp_path / "c", mine=1)
    stale = directory / "gone.tar.partial-123"
    fresh = directory / "busy.tar.partial-456"
    for path in (stale, fresh):
        path.write_bytes(b"x")
    old = time.time() - cachebudget.STALE_PARTIAL_SECONDS - 60
    os.utime(stale, (old, old))
    cachebudget.prune(directory, 1 << 30, keep="mine", remove=lambda tar: False)
    assert not stale.exists() and fresh.exists()


def test_a_base_a_build_holds_locked_is_not_removed(tmp_path):
    directory = entries(tmp_path / "debootstrap", held=1, idle=2, mine=3)
    (directory / "failed.lock").touch()  # a build that never stored its base
    with open(directory / "held.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bootstrap.prune_bases(directory / "mine.tar", budget=100)
    assert sorted(p.name for p in directory.iterdir()) == [
        "held.lock", "held.tar", "mine.lock", "mine.tar"]


def test_the_base_budget_setting(tmp_path):
    assert bootstrap.base_budget({}) == bootstrap.DEFAULT_BASE_BUDGET
    assert bootstrap.base_budget({"DIB_BASE_CACHE_MAX": "1G"}) == 1 << 30
    with pytest.raises(ConfigError, match="DIB_BASE_CACHE_MAX='lots'"):
        bootstrap.base_budget({"DIB_BASE_CACHE_MAX": "lots"})


def test_using_a_base_marks_it_recent(tmp_path, monkeypatch):
    tar = entries(tmp_path / "debootstrap", base=1) / "base.tar"
    monkeypatch.setattr(bootstrap.tarball, "unpack", lambda *a, **k: None)
    bootstrap.extract(tar, tmp_path / "root")
    assert tar.stat().st_mtime > time.time() - 60
