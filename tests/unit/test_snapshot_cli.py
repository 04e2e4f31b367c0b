"""``dib-matrix snapshot save/list/show/rm/export`` and gc's snapshot part, through the
real command line in a child process (``tests.hostile.run_cli``).

Hostile classes covered: a bad repository.json, an unknown name, a bad manifest, a busy
store, a destination that is not empty, text from manifests that a terminal would obey;
each is one line on stderr and exit code 2, never a traceback and never exit 1.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import pytest

from matrix.cli import main
from matrix.snapshot import store as store_module
from matrix.snapshot.store import Store
from results.archive import OutDir
from tests.archivefactory import run_id, stored_run
from tests.hostile import TreeWatch, run_cli
from tests.unit.test_snapshot_save import (
    CACHED,
    HOSTILE_REPOSITORIES,
    INDEX,
    LOST,
    RUN_ID,
    SERVED,
    Archive,
    closed_port_uri,
    snapshot_of,
)


def one_error_line(outcome: Any) -> str:
    assert outcome.code == 2, outcome.output
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dib-matrix: "), outcome.stderr
    return lines[0]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Archive, dict[str, str]]:
    """A run saved through the CLI (by run id in --out): the fake and the CLI's env."""
    fake = Archive(tmp_path, closed_port_uri(), debs=[SERVED, CACHED, LOST])
    fake.run()
    fake.cache_deb(CACHED)
    env = {"DIB_MATRIX_SNAPSHOTS": str(fake.store.root)}
    outcome = run_cli("snapshot", "save", RUN_ID, "--out", fake.out, "--source", fake.cache,
                      "--no-fetch", env=env)
    assert outcome.code == 0, outcome.output
    assert f"saved snapshot {RUN_ID}" in outcome.stdout
    assert "incomplete: 1 files" in outcome.stdout and LOST.path in outcome.stdout
    return fake, env


def test_list_shows_each_snapshot_with_its_suites_and_bytes(saved):
    fake, env = saved
    outcome = run_cli("snapshot", "list", env=env)
    assert outcome.code == 0, outcome.output
    assert RUN_ID in outcome.stdout and "debian bookworm" in outcome.stdout
    listed = json.loads(run_cli("snapshot", "list", "--json", env=env).stdout)
    assert [entry["name"] for entry in listed] == [RUN_ID]
    assert listed[0]["pool_files"] == 2 and listed[0]["missing"] == 1
    assert listed[0]["bytes"] == listed[0]["unique_bytes"] > 0


def test_show_names_suites_dates_indices_and_what_is_missing(saved):
    fake, env = saved
    for name in (RUN_ID, str(fake.out / RUN_ID)):  # a name, or the run's directory
        outcome = run_cli("snapshot", "show", name, env=env)
        assert outcome.code == 0, outcome.output
        for text in ("suite   bookworm: InRelease", "Date Sat, 31 May 2025", INDEX,
                     "missing   1 files", LOST.path, "2 pool files"):
            assert text in outcome.stdout, outcome.stdout
    shown = json.loads(run_cli("snapshot", "show", RUN_ID, "--json", env=env).stdout)
    assert shown["missing"] == {fake.uri: [LOST.path]}
    assert shown["archives"][fake.uri]["suites"]["bookworm"]["indices"]


def test_export_writes_the_archive_layout_and_refuses_a_full_directory(saved, tmp_path):
    fake, env = saved
    dest = tmp_path / "export"
    outcome = run_cli("snapshot", "export", RUN_ID, dest, env=env)
    assert outcome.code == 0, outcome.output
    assert (dest / "debian" / CACHED.path).read_bytes() == CACHED.content
    assert (dest / "debian" / "dists" / "bookworm" / "InRelease").is_file()
    assert "is not empty" in one_error_line(run_cli("snapshot", "export", RUN_ID, dest, env=env))


def test_rm_removes_the_manifest_and_frees_what_only_it_held(saved):
    fake, env = saved
    outcome = run_cli("snapshot", "rm", RUN_ID, env=env)
    assert outcome.code == 0, outcome.output
    assert f"removed snapshot {RUN_ID}" in outcome.stdout and "freed" in outcome.stdout
    assert Store(fake.store.root).names() == []
    assert not Store(fake.store.root).has(CACHED.sha256)
    assert "no snapshot named" in one_error_line(run_cli("snapshot", "rm", RUN_ID, env=env))


@pytest.mark.parametrize("args", [
    ["show", "nightly"], ["export", "nightly", "somewhere"], ["rm", "../x"], ["rm", "nightly"],
    ["show", "/nonexistent/run"], ["save", "no-such-run", "--out", "{tmp}"],
    ["save", "latest", "--out", "{tmp}"], ["save", "../x", "--out", "{tmp}"],
    ["save", "{tmp}/absent/"], ["save", "x", "--name", "../y", "--out", "{tmp}"], [],
])
def test_unknown_names_are_one_line(tmp_path, args):
    env = {"DIB_MATRIX_SNAPSHOTS": str(tmp_path / "store")}
    one_error_line(run_cli("snapshot", *[arg.format(tmp=tmp_path) for arg in args], env=env))


def test_a_bad_manifest_is_one_line_and_skipped_by_list(saved):
    fake, env = saved
    (fake.store.manifests_dir / "broken.json").write_text('{"name": "broken", "name": 1}')
    assert "broken" in one_error_line(run_cli("snapshot", "show", "broken", env=env))
    outcome = run_cli("snapshot", "list", env=env)
    assert outcome.code == 0 and RUN_ID in outcome.stdout
    assert "broken" in outcome.stderr  # the warning, one line
    assert "nothing collected" in run_cli("snapshot", "rm", RUN_ID, env=env).stderr


@pytest.mark.parametrize("case", sorted(HOSTILE_REPOSITORIES))
def test_save_of_a_hostile_repository_file_is_one_line(tmp_path, case):
    fake = Archive(tmp_path, closed_port_uri())
    document = HOSTILE_REPOSITORIES[case]
    run_dir = fake.run(repository=document if isinstance(document, bytes)
                       else json.dumps(document).encode())
    watch = TreeWatch(tmp_path, fake.store.root)
    env = {"DIB_MATRIX_SNAPSHOTS": str(fake.store.root)}
    line = one_error_line(run_cli("snapshot", "save", run_dir, "--no-fetch", env=env))
    assert "\x1b" not in line and "\x07" not in line
    watch.assert_untouched()
    assert Store(fake.store.root).names() == []


def test_text_from_a_manifest_cannot_drive_the_terminal(saved):
    fake, env = saved
    manifest = fake.store.manifest_path(RUN_ID)
    document = json.loads(manifest.read_text())
    suite = document["archives"][fake.uri]["suites"]["bookworm"]
    suite["indices"]["dists/bookworm/main/\u202eevil\x9b31m/Packages"] = "b" * 64
    suite["components"] = ["main\u2066"]
    os.chmod(manifest, 0o644)
    manifest.write_text(json.dumps(document))
    outcome = run_cli("snapshot", "show", RUN_ID, env=env)
    assert outcome.code == 0, outcome.output
    assert not any(ch in outcome.stdout for ch in "\u202e\x9b\u2066\x1b")
    listed = run_cli("snapshot", "show", RUN_ID, "--json", env=env).stdout
    assert listed.isascii()


def test_a_busy_store_is_one_line(saved, monkeypatch, capsys):
    fake, env = saved
    monkeypatch.setenv("DIB_MATRIX_SNAPSHOTS", str(fake.store.root))
    monkeypatch.setattr(store_module, "LOCK_WAIT", 0.2)
    with open(fake.store.root / "lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert main(["snapshot", "rm", RUN_ID]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("dib-matrix: snapshot store is busy") and "\n" not in error
    assert RUN_ID in Store(fake.store.root).names()


def test_gc_drops_the_record_of_a_collected_run_and_keeps_hand_saved_ones(tmp_path):
    out, store = tmp_path / "out", Store(tmp_path / "store")
    for day in (1, 2, 3):
        stored_run(out, day)
    blob = store.put_bytes(b"deb").sha256
    for day in (1, 2):
        store.save(snapshot_of(run_id(day), "record", blob))
    store.save(snapshot_of("release-1", "run", blob, run=run_id(1)))
    store.save(snapshot_of("elsewhere", "record", blob, run="20240101T000000Z-ffffff"))
    env = {"DIB_MATRIX_SNAPSHOTS": str(store.root)}
    watch = TreeWatch(tmp_path, out, store.root)
    dry = run_cli("gc", "--out", out, "--keep-runs", "2", "--dry-run", env=env)
    assert dry.code == 0, dry.output
    assert f"would remove snapshot {run_id(1)}" in dry.stdout
    assert store.names() == sorted([run_id(1), run_id(2), "elsewhere", "release-1"])
    outcome = run_cli("gc", "--out", out, "--keep-runs", "2", env=env)
    assert outcome.code == 0, outcome.output
    assert f"removed snapshot {run_id(1)}" in outcome.stdout
    assert "snapshots: removed 1 of 4" in outcome.stdout
    assert store.names() == sorted([run_id(2), "elsewhere", "release-1"])
    assert [run.run_dir.name for run in OutDir(out).runs()] == [run_id(3), run_id(2)]
    watch.assert_untouched()
