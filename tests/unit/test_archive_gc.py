"""Retention (``results.retention``, ``dib-matrix gc``/``keep``), sizes and the cache trim.

Hostile classes covered: limits that must not read as "no limit" (nan, inf, negative,
zero, booleans, overflow); runs that must never go (newest, latest, kept, live, the
ending run); bytes counted once per inode; unreadable runs; what a killed removal left;
symlinks and non-directories in the archive's places; the lock held by another process.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from pathlib import Path

import pytest

from matrix.config.diagnostics import ConfigError
from matrix.config.matrixfile import load_matrix
from matrix.containers.leases import InUse
from matrix.run import cachetrim
from results import keeps, retention
from results.archive import ArchiveBusy, OutDir
from results.paths import UnsafeOutput
from results.retention import Ledger, Policy, PolicyError, parse_keep_days, parse_keep_runs
from results.sizes import SizeError, format_size, parse_size
from tests.archivefactory import run_id, stored_run
from tests.hostile import TreeWatch, run_cli

GiB = 1 << 30
NOW = dt.datetime(2025, 2, 1, tzinfo=dt.timezone.utc)


def never_live(run: str) -> bool:
    return False


def names(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def series(out: Path, days: int, **kw) -> list[str]:
    return [stored_run(out, day, **kw).run_id for day in range(1, days + 1)]


# ---------------------------------------------------------------- limits


@pytest.mark.parametrize("text, size", [("50G", 50 * GiB), ("1.5T", int(1.5 * (1 << 40))),
                                        ("800MiB", 800 << 20), (" 4096 ", 4096), ("10k", 10240),
                                        ("2gb", 2 * GiB), (12345, 12345)])
def test_sizes_read_as_people_write_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["nan", "inf", "-5G", "0", "0.0000001K", "1e400G", "50 GG",
                                 "", " ", "G", "0x10", "\u0665G", "5G\n", True, None, 1.5,
                                 [50], "9" * 40, "99999999999999P", -1, 0])
def test_a_size_that_cannot_be_read_is_refused_never_unlimited(bad):
    with pytest.raises(SizeError):
        parse_size(bad)


def test_sizes_print_for_people():
    assert format_size(512) == "512 B"
    assert format_size(3 * GiB // 2) == "1.5 GiB"


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "7", None, 10**9])
def test_keep_runs_is_a_positive_whole_number(bad):
    with pytest.raises(PolicyError):
        parse_keep_runs(bad)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "30", None, 10**6])
def test_keep_days_is_a_positive_number_of_days(bad):
    with pytest.raises(PolicyError):
        parse_keep_days(bad)


def matrix_with(tmp_path: Path, retention_yaml: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(f"hosts: [debian-bookworm]\ntargets: [debian-bookworm]\n{retention_yaml}")
    return path


def test_the_matrix_key_declares_each_limit(tmp_path):
    config = load_matrix(matrix_with(tmp_path, "retention: {keep-runs: 7, keep-days: 30, "
                                               "max-bytes: 50G}\n"))
    assert config.retention == Policy(7, 30.0, 50 * GiB)
    assert load_matrix(matrix_with(tmp_path, "")).retention is None


@pytest.mark.parametrize("value, says", [
    ("{keep-run: 7}", "retention.keep-run: unknown key"),
    ("{keep-runs: 0}", "retention.keep-runs: must be a whole number"),
    ("{keep-days: .nan}", "retention.keep-days: must be a number of days"),
    ("{max-bytes: 5 parsecs}", "retention.max-bytes: cannot read size"),
    ("{max-bytes: -1}", "retention.max-bytes:"),
    ("{}", "retention: must be a mapping"),
    ("[keep-runs]", "retention: must be a mapping"),
    ("7", "retention: must be a mapping"),
])
def test_a_bad_retention_names_file_line_and_key(tmp_path, value, says):
    with pytest.raises(ConfigError) as caught:
        load_matrix(matrix_with(tmp_path, f"retention: {value}\n"))
    assert f"m.yaml:3: {says}" in str(caught.value)


# ---------------------------------------------------------------- deciding and removing


def test_keep_runs_keeps_the_newest_and_removes_only_what_it_says(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 6)
    watch = TreeWatch(out, *(out / i for i in ids[:3]), out / ".dib-matrix")
    done = retention.collect(OutDir(out), Policy(keep_runs=3), never_live)
    assert [r.name for r in done.removals] == ids[:3]  # oldest first
    assert names(out) == ids[3:]
    watch.assert_untouched()
    assert done.freed > 0 and done.after == done.total - done.freed


def test_never_removed_newest_latest_kept_live_and_ending(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 8)
    archive = OutDir(out)
    archive.point_latest(ids[1])
    keeps.mark(archive, ids[2], "release 1.0")
    done = retention.collect(archive, Policy(keep_runs=1), lambda run: run == ids[3],
                             protect={ids[4]})
    assert sorted(r.name for r in done.removals) == [ids[0], *ids[5:7]]
    assert names(out) == [*ids[1:5], ids[7], "latest"]
    spared = {s.name: s.why for s in done.spared}
    assert spared[ids[1]] == "'latest' points at it"
    assert spared[ids[2]] == "marked with dib-matrix keep (release 1.0)"
    assert spared[ids[3]] == "in progress (its lease is live)"
    assert spared[ids[4]] == "the run that is ending"


def test_the_newest_run_stays_whatever_the_limits(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 3)
    far_later = NOW + dt.timedelta(days=3650)
    retention.collect(OutDir(out), Policy(keep_days=1, max_bytes=1), never_live, now=far_later)
    assert names(out) == [ids[-1]]


def test_keep_days_removes_runs_started_before_the_window(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 10)  # 2025-01-01 .. 2025-01-10
    now = dt.datetime(2025, 1, 10, 12, tzinfo=dt.timezone.utc)
    done = retention.collect(OutDir(out), Policy(keep_days=3), never_live, now=now)
    assert names(out) == ids[-3:]
    assert {r.why for r in done.removals} == {"older than 3 days"}


def test_a_dead_run_in_progress_is_collected_a_live_one_is_not(tmp_path):
    out = tmp_path / "out"
    stored_run(out, 1, finished=False)  # finished: null, its lease gone (kill -9)
    stored_run(out, 2, finished=False)
    stored_run(out, 3)
    live = run_id(2)
    done = retention.collect(OutDir(out), Policy(keep_runs=1), lambda run: run == live)
    assert [r.name for r in done.removals] == [run_id(1)]
    assert names(out) == [run_id(2), run_id(3)]


def test_bytes_are_counted_once_per_inode(tmp_path):
    out = tmp_path / "out"
    first = stored_run(out, 1, image_size=1 << 20)
    second = stored_run(out, 2, image_size=1 << 20, reuse_from=first)  # images hard-linked
    stored_run(out, 3, image_size=1 << 20, reuse_from=second)
    ledger = Ledger.of(out)
    images = 4 << 20  # four builds (2 hosts x 2 targets), one inode each across runs
    assert images <= ledger.total < images + (1 << 20)
    # Removing the first run frees its logs and results, not the images later runs hold.
    assert ledger.remove(run_id(1)) < 256 << 10


def test_only_what_the_archive_holds_is_measured(tmp_path):
    out = tmp_path / "out"
    series(out, 1)
    (out / "mine").mkdir()  # not a run: the user's, or gc --out / on a whole machine
    (out / "mine" / "big").write_bytes(b"x" * (4 << 20))
    (out / "notes.txt").write_text("beside the runs: counted")
    ledger = Ledger.of(out)
    assert "mine" not in ledger.trees and "notes.txt" in ledger.trees
    assert ledger.total < 1 << 20


def test_the_end_of_a_run_never_fails_on_the_archive(tmp_path, caplog):
    from matrix.run.archiving import archive_run

    out = tmp_path / "out"
    run = stored_run(out, 1)
    stored_run(out, 2)
    (out / ".dib-matrix").write_text("a file where the archive's state goes")
    archive_run(out, run.load(), Policy(keep_runs=1))
    assert "last-good cells not recorded" in caplog.text
    assert "retention not applied" in caplog.text
    assert len(names(out)) == 2


def test_max_bytes_removes_the_oldest_until_the_directory_fits(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 6, image_size=1 << 20)
    total = Ledger.of(out).total
    budget = total // 2
    done = retention.collect(OutDir(out), Policy(max_bytes=budget), never_live)
    assert Ledger.of(out).total <= budget
    assert names(out) == ids[len(done.removals):]
    assert all(r.why.startswith("over max-bytes") for r in done.removals)
    assert not done.budget_missed


def test_a_budget_only_protected_runs_exceed_is_said(tmp_path):
    out = tmp_path / "out"
    series(out, 2, image_size=1 << 20)
    done = retention.collect(OutDir(out), Policy(max_bytes=1024), never_live)
    assert done.budget_missed
    assert any("still over max-bytes" in line for line in retention.describe_plan(done, False))


def test_unreadable_runs_are_listed_and_removed_only_when_asked(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 3)
    (out / ids[0] / "results.json").write_text("{")
    odd = out / "not a run id"
    odd.mkdir()
    (odd / "results.json").write_text("{}")
    done = retention.collect(OutDir(out), Policy(keep_runs=1), never_live, warn=pytest.fail)
    assert [r.name for r in done.removals] == [ids[1]]
    assert sorted(run.name for run in done.bad) == sorted([ids[0], "not a run id"])
    assert (out / ids[0]).is_dir() and odd.is_dir()
    done = retention.collect(OutDir(out), Policy(keep_runs=1), never_live, remove_bad=True)
    assert names(out) == [ids[2]]


def test_a_removal_renames_first_and_the_next_gc_sweeps_what_a_kill_left(tmp_path, monkeypatch):
    out = tmp_path / "out"
    ids = series(out, 3)

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retention, "remove_tree", killed)
    with pytest.raises(KeyboardInterrupt):
        retention.collect(OutDir(out), Policy(keep_runs=1), never_live)
    (trash,) = OutDir(out).trash_dirs()
    assert not (out / ids[0]).exists()  # gone from its name at once: no half run is listed
    assert [s.run_dir.name for s in OutDir(out).runs(warn=pytest.fail)] == ids[:0:-1]
    monkeypatch.undo()
    retention.collect(OutDir(out), Policy(keep_runs=1), never_live)
    assert not trash.exists() and names(out) == [ids[2]]


def test_a_run_going_live_after_the_decision_stays(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 3)
    asked: list[str] = []

    def live(run: str) -> bool:  # live from its second question on: a resume meanwhile
        asked.append(run)
        return asked.count(run) > 1

    done = retention.collect(OutDir(out), Policy(keep_runs=1), live, warn=lambda m: None)
    assert done.removals == ()
    assert names(out) == ids


def test_a_dry_run_touches_nothing(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 4)
    watch = TreeWatch(out)
    planned = retention.plan(OutDir(out), Policy(keep_runs=1), never_live)
    assert [r.name for r in planned.removals] == ids[:3]
    watch.assert_untouched()
    assert not (out / ".dib-matrix").exists()


def test_symlinked_runs_are_never_listed_or_followed(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 2)
    elsewhere = tmp_path / "precious"
    stored_run(elsewhere, 1)
    (out / "20000101-000000-0000").symlink_to(elsewhere / run_id(1))
    (out / ids[0] / "images" / "escape").symlink_to(elsewhere)
    retention.collect(OutDir(out), Policy(keep_runs=1), never_live)
    assert names(out) == ["20000101-000000-0000", ids[1]]
    assert (elsewhere / run_id(1) / "results.json").is_file()


def deep_tree(top: Path, depth: int) -> None:
    """``depth`` nested directories below ``top`` (made from descriptors: the path is
    longer than any system call takes) with a file at the bottom."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with os.fdopen(os.open("image", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as f:
            f.write(b"x" * 4096)
    finally:
        os.close(fd)


def test_a_deep_or_odd_run_is_measured_and_removed_without_recursion(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 2)
    deep_tree(out / ids[0] / "images" / "h1", 3000)
    os.mkfifo(out / ids[0] / "images" / "fifo")
    (out / ids[0] / "logs" / "loop").symlink_to("loop")
    done = run_cli("gc", "--out", out, "--keep-runs", "1")
    assert done.code == 0, done.output
    assert names(out) == [ids[1]]


def test_the_state_directory_must_be_ours(tmp_path):
    out = tmp_path / "out"
    series(out, 2)
    (out / ".dib-matrix").symlink_to(tmp_path)
    with pytest.raises(UnsafeOutput):
        retention.collect(OutDir(out), Policy(keep_runs=1), never_live)
    (out / ".dib-matrix").unlink()
    (out / ".dib-matrix").mkdir()
    (out / ".dib-matrix" / "lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        retention.collect(OutDir(out), Policy(keep_runs=1), never_live)
    assert not (tmp_path / "elsewhere").exists()


def test_the_lock_is_waited_for_and_then_refused(tmp_path):
    out = tmp_path / "out"
    series(out, 2)
    archive = OutDir(out)
    with archive.locked(), pytest.raises(ArchiveBusy), archive.locked(wait=0.3):
        pass
    with archive.locked(wait=0.3):  # free again
        pass


def test_an_unreadable_keep_mark_still_keeps_its_run(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 3)
    archive = OutDir(out)
    archive.make_state_dir()
    archive.keep_dir.mkdir()
    archive.keep_mark(ids[0]).write_text("{not json")
    os.mkfifo(archive.keep_mark(ids[1]))  # never opened for a read that blocks
    (archive.keep_dir / "notes.txt").write_text("not a mark")
    warned: list[str] = []
    retention.collect(archive, Policy(keep_runs=1), never_live, warn=warned.append)
    assert names(out) == ids
    assert len(warned) == 2 and all("kept all the same" in w for w in warned)


# ---------------------------------------------------------------- the command line


def test_gc_cli_removes_what_it_prints_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 5)
    (out / ids[1] / "results.json").write_text("[]")
    watch = TreeWatch(tmp_path, *(out / i for i in (ids[0], ids[2])), out / ".dib-matrix")
    done = run_cli("gc", "--out", out, "--keep-runs", "2")
    assert done.code == 0, done.output
    assert f"removed {ids[0]}: beyond the newest 2" in done.stdout
    assert f"removed {ids[2]}: beyond the newest 2" in done.stdout
    assert "(removed only with --remove-bad)" in done.stdout
    assert names(out) == [ids[1], *ids[3:]]
    watch.assert_untouched()


def test_gc_cli_dry_run_prints_the_bytes_and_touches_nothing(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 3)
    watch = TreeWatch(tmp_path)
    done = run_cli("gc", "--out", out, "--keep-runs", "1", "--dry-run")
    assert done.code == 0, done.output
    assert f"would remove {ids[0]}" in done.stdout and "freeing" in done.stdout
    watch.assert_untouched()


@pytest.mark.parametrize("args", [["--keep-runs", "0"], ["--keep-runs", "nan"],
                                  ["--keep-days", "inf"], ["--max-bytes", "-1G"],
                                  ["--max-bytes", "\x1b[31m"], ["--out", "/nonexistent/out",
                                                                "--keep-runs", "1"],
                                  ["--caches", "--keep-runs", "1"]])
def test_gc_cli_bad_input_is_exit_2_never_1(tmp_path, args):
    watch = TreeWatch(tmp_path)
    done = run_cli("gc", *args, cwd=tmp_path)
    assert done.code == 2, done.output
    assert "\x1b" not in done.output
    watch.assert_untouched()


def test_gc_cli_with_a_file_for_a_state_directory_is_exit_2(tmp_path):
    out = tmp_path / "out"
    series(out, 2)
    (out / ".dib-matrix").write_text("mine")
    done = run_cli("gc", "--out", out, "--keep-runs", "1")
    assert done.code == 2 and "not the archive's state directory" in done.stderr
    assert len(names(out)) == 2


def test_gc_cli_without_limits_reports_and_removes_nothing(tmp_path):
    out = tmp_path / "out"
    series(out, 2)
    watch = TreeWatch(tmp_path)
    done = run_cli("gc", "--out", out)
    assert done.code == 0 and "no limit given" in done.stdout
    watch.assert_untouched()


def test_keep_cli_marks_lists_and_unmarks(tmp_path):
    out = tmp_path / "out"
    ids = series(out, 3)
    OutDir(out).point_latest(ids[2])
    assert run_cli("keep", ids[0], "--out", out, "--reason", "release\x1b]0;x\x07").code == 0
    assert run_cli("keep", str(out / ids[1])).code == 0
    assert run_cli("keep", "latest", "--out", out).code == 0
    listed = run_cli("keep", "--out", out)
    assert ids[0] in listed.stdout and "\x1b" not in listed.stdout
    assert run_cli("gc", "--out", out, "--keep-runs", "1").code == 0
    assert names(out) == [*ids, "latest"]
    assert run_cli("keep", "--remove", ids[0], "--out", out).code == 0
    assert run_cli("gc", "--out", out, "--keep-runs", "1").code == 0
    assert names(out) == [*ids[1:], "latest"]


@pytest.mark.parametrize("run", ["../etc", "latest", "no-such-run", ".dib-matrix", "a\nb", ""])
def test_keep_cli_refuses_what_is_not_a_run_here(tmp_path, run):
    out = tmp_path / "out"
    series(out, 1)
    watch = TreeWatch(tmp_path, out / ".dib-matrix")
    done = run_cli("keep", run, "--out", out)
    assert done.code == 2, done.output
    watch.assert_untouched()
    assert not (out / ".dib-matrix" / "keep").exists() or not any(
        (out / ".dib-matrix" / "keep").iterdir())


# ---------------------------------------------------------------- caches


def package_cache(home: Path, files: dict[str, tuple[int, float]]) -> Path:
    """A package cache under ``home`` (apt-cacher-ng's layout): name -> (bytes, last use)."""
    root = home / ".cache" / "dib-matrix" / "apt-cacher-ng"
    for name, (size, used) in files.items():
        path = root / "cache" / "debrep" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        head = Path(f"{path}.head")
        head.write_text("HTTP/1.1 200 OK\n")
        for item in (path, head):
            os.utime(item, (used, used))
    return root


def test_gc_caches_trims_the_least_recently_used_and_says_why_volumes_were_left(tmp_path):
    day = 86400.0
    root = package_cache(tmp_path, {"old.deb": (400_000, 1 * day), "mid.deb": (400_000, 2 * day),
                                    "new.deb": (400_000, 3 * day)})
    env = {"HOME": str(tmp_path), "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
           "DIB_MATRIX_LEASES": str(tmp_path / "leases")}
    done = run_cli("gc", "--caches", "--max-bytes", "1M", "--out", tmp_path / "out", env=env)
    assert done.code == 0, done.output
    assert "cache volumes: left as they are: the engine is unreachable" in done.stdout
    assert "removed 1 package-cache files" in done.stdout
    left = sorted(p.name for p in (root / "cache" / "debrep").iterdir())
    assert left == ["mid.deb", "mid.deb.head", "new.deb", "new.deb.head"]


def test_gc_caches_leaves_a_package_cache_a_run_is_using(tmp_path):
    root = package_cache(tmp_path, {"a.deb": (400_000, 1.0)})
    env = {"HOME": str(tmp_path), "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
           "DIB_MATRIX_LEASES": str(tmp_path / "leases")}
    with (root / "lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running apt-cacher-ng's run
        done = run_cli("gc", "--caches", "--max-bytes", "1K", "--out", tmp_path / "out",
                       env=env)
    assert done.code == 0, done.output
    assert "package cache: left as it is" in done.stdout
    assert (root / "cache" / "debrep" / "a.deb").exists()


class FakeVolume:
    def __init__(self, name: str) -> None:
        self.name, self.removed = name, False

    def remove(self, force: bool = False) -> None:
        self.removed = True


def test_volumes_and_files_share_one_lru_and_a_leased_volume_stays():
    def item(kind: str, name: str, day: int) -> cachetrim.CacheItem:
        used = dt.datetime(2025, 1, day, tzinfo=dt.timezone.utc)
        return cachetrim.CacheItem(kind, name, 100, used, volume=FakeVolume(name))

    items = [item("volume", "dib-matrix-cache-a", 1), item("volume", "dib-matrix-cache-b", 2),
             item("file", "x.deb", 3), item("volume", "dib-matrix-cache-c", 4)]
    in_use = InUse({"dib-matrix-cache-a": "run-live"})
    outcome = cachetrim.trim(items, 150, in_use, cachetrim.remover(dry_run=True))
    assert [i.name for i in outcome.removed] == ["dib-matrix-cache-b", "x.deb",
                                                 "dib-matrix-cache-c"]
    assert outcome.kept == ["kept dib-matrix-cache-a: in use by run run-live"]


def test_volume_last_use_comes_from_the_archive_else_creation():
    class Volumes:
        def list(self, filters=None):
            volume = FakeVolume("dib-matrix-cache-h1")
            volume.attrs = {"Labels": {"org.dib-matrix.cache": "h1"},
                            "CreatedAt": "2024-01-01T00:00:00Z"}
            other = FakeVolume("dib-matrix-cache-h2")
            other.attrs = {"Labels": {"org.dib-matrix.cache": "h2"}, "CreatedAt": "garbage"}
            return [volume, other]

    class Client:
        volumes = Volumes()

        def df(self):
            return {"Volumes": [{"Name": "dib-matrix-cache-h1", "UsageData": {"Size": 4096}}]}

    last = {"h1": dt.datetime(2025, 1, 5, tzinfo=dt.timezone.utc)}
    found = {i.name: i for i in cachetrim._volume_items(Client(), last)}
    assert found["dib-matrix-cache-h1"].last_used == last["h1"]
    assert found["dib-matrix-cache-h1"].size == 4096
    assert found["dib-matrix-cache-h2"].last_used.year == 1970 and found[
        "dib-matrix-cache-h2"].size == 0


def test_the_lease_check_is_asked_afresh(tmp_path, monkeypatch):
    from matrix.containers.leases import Owner, Registry
    from matrix.run.archiving import live_runs

    registry = Registry(tmp_path / "leases")
    live = live_runs(registry)
    assert not live("run-a")
    registry.hold("run-a", ["obj"], Owner.current())
    assert live("run-a")
    (tmp_path / "leases" / "run-a.json").write_text(json.dumps(
        {"format": 1, "run": "run-a", "objects": [],
         "owner": {"pid": 2**22 + 1, "start": "1", "boot_id": "", "machine": os.uname()[1]}}))
    assert not live("run-a")  # its owner is gone: a dead run
