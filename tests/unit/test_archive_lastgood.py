"""Each cell's last-known-good (``results.lastgood``): recorded by hard links at a run's end,
replaced as a whole, kept past retention, shown by ``show --last-good`` and linked from
failed cells in the HTML report.

Hostile classes covered: a recorded path that leads out of its run (symlinks, FIFOs),
names that are not names, a last-good.json that lies (paths out of its directory, another
cell, a bad run id, not JSON, a FIFO, huge), symlinked directories in the store, a writer
killed half-way, an older run finishing after a newer one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from reports.html import render_html
from results import lastgood, retention
from results.archive import OutDir
from results.lastgood import LastGoodError
from results.model import State
from results.retention import Policy
from tests.archivefactory import run_id, stored_run
from tests.hostile import TreeWatch, run_cli

BROKEN = {"h1.t1": State.FAILED}


def record(out: Path, day: int, **kw):
    run = stored_run(out, day, **kw)
    return run, lastgood.record_run(OutDir(out), run, run.load(), warn=pytest.fail)


def test_each_success_is_hard_linked_with_its_record(tmp_path):
    out = tmp_path / "out"
    run, recorded = record(out, 1, states=BROKEN)
    assert sorted(g.cell_id for g in recorded) == ["h1.hostgen", "h1.t2", "h2.hostgen",
                                                  "h2.t1", "h2.t2"]
    good = lastgood.read(OutDir(out), "h2", "t1")
    assert good is not None and good.run_id == run.run_id and good.key == "key-h2-t1"
    paths = {f.path for f in good.files}
    assert paths == {"logs/h2/t1.log", "images/h2/t1.qcow2", "images/h2/t1.qcow2.sha256",
                     "images/h2/t1.packages"}
    for item in good.files:
        kept, original = good.file(item), run.path / item.path
        assert os.stat(kept).st_ino == os.stat(original).st_ino  # a link, not a copy
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == item.sha256
        assert item.size == kept.stat().st_size
    assert lastgood.read(OutDir(out), "h1", "t1") is None  # failed: nothing recorded


def test_last_good_survives_the_collection_of_its_run(tmp_path):
    out = tmp_path / "out"
    first, _ = record(out, 1)
    for day in (2, 3):
        record(out, day, states=BROKEN)
    retention.collect(OutDir(out), Policy(keep_runs=1), lambda run: False)
    assert not first.path.exists()
    good = lastgood.read(OutDir(out), "h1", "t1")
    assert good is not None and good.run_id == first.run_id
    for item in good.files:
        assert hashlib.sha256(good.file(item).read_bytes()).hexdigest() == item.sha256
    assert lastgood.read(OutDir(out), "h2", "t1").run_id == run_id(3)


def test_a_newer_success_replaces_the_whole_record(tmp_path):
    out = tmp_path / "out"
    record(out, 1)
    record(out, 2)
    good = lastgood.read(OutDir(out), "h1", "t1")
    assert good.run_id == run_id(2)
    assert sorted(p.name for p in good.directory.parent.iterdir()) == ["hostgen", "t1", "t2"]
    assert b"day2" in good.file(good.files[1]).read_bytes() or b"day2" in good.file(
        good.files[0]).read_bytes()


def test_an_older_run_finishing_late_does_not_replace_a_newer_success(tmp_path):
    out = tmp_path / "out"
    newer = stored_run(out, 5)
    older = stored_run(out, 2)
    lastgood.record_run(OutDir(out), newer, newer.load())
    assert lastgood.record_run(OutDir(out), older, older.load()) == []
    assert lastgood.read(OutDir(out), "h1", "t1").run_id == run_id(5)


def test_a_record_dated_in_the_future_does_not_block_later_successes(tmp_path):
    out = tmp_path / "out"
    tamper(out, lambda d: d.update(date="9999-12-31T00:00:00+00:00"))
    record(out, 2)
    assert lastgood.read(OutDir(out), "h1", "t1").run_id == run_id(2)


def test_what_a_killed_writer_left_is_swept(tmp_path):
    out = tmp_path / "out"
    record(out, 1)
    host_dir = OutDir(out).last_good("h1", "t1").parent
    (host_dir / ".new-dead").mkdir()
    (host_dir / ".old-dead").mkdir()
    record(out, 2)
    assert sorted(p.name for p in host_dir.iterdir()) == ["hostgen", "t1", "t2"]
    assert lastgood.read_all(OutDir(out), warn=pytest.fail).keys() >= {"h1.t1"}


def test_a_recorded_path_leading_out_of_the_run_is_not_followed(tmp_path):
    out = tmp_path / "out"
    run = stored_run(out, 1)
    secret = tmp_path / "secret"
    secret.write_text("not the run's")
    packages = run.packages("h1", "t1")
    packages.unlink()
    packages.symlink_to(secret)  # a symlink inside the run, out of it
    sums = Path(f"{run.image('h1', 't1', '.qcow2')}.sha256")
    sums.unlink()
    os.mkfifo(sums)  # never opened
    results = run.load()
    results.cell("h1", "t2").log = "logs/../../../secret"  # bypassing the reader
    lastgood.record_run(OutDir(out), run, results, warn=pytest.fail)
    good = lastgood.read(OutDir(out), "h1", "t1")
    assert {f.path for f in good.files} == {"logs/h1/t1.log", "images/h1/t1.qcow2"}
    assert "logs/../../../secret" not in {f.path for f in lastgood.read(OutDir(out), "h1",
                                                                        "t2").files}


def test_a_symlinked_store_directory_is_refused(tmp_path):
    out = tmp_path / "out"
    stored_run(out, 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = OutDir(out).last_good_dir
    store.parent.mkdir(parents=True)
    store.mkdir()
    (store / "h1").symlink_to(elsewhere)
    warned: list[str] = []
    run = OutDir(out).run(run_id(1))
    lastgood.record_run(OutDir(out), run, run.load(), warn=warned.append)
    assert list(elsewhere.iterdir()) == []
    assert warned and all("h1." in w for w in warned)
    assert set(lastgood.read_all(OutDir(out), warn=pytest.fail)) == {"h2.hostgen", "h2.t1",
                                                                     "h2.t2"}


def tamper(out: Path, change) -> Path:
    record(out, 1)
    path = OutDir(out).last_good("h1", "t1") / lastgood.RECORD
    document = json.loads(path.read_text())
    replaced = change(document)
    if isinstance(replaced, bytes):
        path.write_bytes(replaced)
    else:
        path.write_text(replaced if isinstance(replaced, str) else json.dumps(document))
    return path


@pytest.mark.parametrize("change, says", [
    (lambda d: d["files"].append({"path": "../../../../etc/passwd", "sha256": "", "size": 1}),
     "not a path inside"),
    (lambda d: d["files"].append({"path": "/etc/passwd", "sha256": "", "size": 1}),
     "not a path inside"),
    (lambda d: d["files"].append({"path": "logs/h1/\x1b[2J.log", "sha256": "", "size": 1}),
     "not a path inside"),
    (lambda d: d.update(run_id="../../x"), "not a run id"),
    (lambda d: d.update(host="h2"), "not h1.t1"),
    (lambda d: d.update(format=2), "format 1"),
    (lambda d: d.update(date="x" * 1000), "date"),
    (lambda d: d.update(files={"a": 1}), "files must be a list"),
    (lambda d: d["files"][0].update(size=-1), "is not a size"),
    (lambda d: d["files"][0].update(sha256="<script>"), "is not a digest"),
    (lambda d: "[" * 100000, "not JSON"),
    (lambda d: b'{"format": 1, "date": "\xed\xa0\x80"}', "not JSON"),
    (lambda d: d.update(date="\ud800"), "date"),
])
def test_a_lying_record_is_refused(tmp_path, change, says):
    out = tmp_path / "out"
    tamper(out, change)
    with pytest.raises(LastGoodError, match=says.replace("[", r"\[")):
        lastgood.read(OutDir(out), "h1", "t1")
    warned: list[str] = []
    assert "h1.t1" not in lastgood.read_all(OutDir(out), warn=warned.append)
    assert len(warned) == 1


def test_a_fifo_or_a_huge_record_is_refused_without_blocking(tmp_path):
    out = tmp_path / "out"
    path = tamper(out, lambda d: None)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(OSError):
        lastgood.read(OutDir(out), "h1", "t1")
    path.unlink()
    path.write_bytes(b" " * (lastgood.RECORD_LIMIT + 1))
    with pytest.raises(OSError):
        lastgood.read(OutDir(out), "h1", "t1")


# ---------------------------------------------------------------- show --last-good


def test_show_last_good_says_where_and_from_which_run(tmp_path):
    out = tmp_path / "out"
    first, _ = record(out, 1)
    latest, _ = record(out, 2, states=BROKEN)
    done = run_cli("show", latest.path, "h1.t1", "--last-good")
    assert done.code == 0, done.output
    assert str(OutDir(out).last_good("h1", "t1")) in done.stdout
    assert f"run        {first.run_id}" in done.stdout
    assert "images/h1/t1.qcow2" in done.stdout
    retention.collect(OutDir(out), Policy(keep_runs=1), lambda run: False)
    after = run_cli("show", out, "h1.*", "--last-good")  # the output directory itself
    assert after.code == 0, after.output
    assert f"{first.run_id} (run since collected)" in after.stdout
    assert "h1.hostgen" in after.stdout


def test_show_last_good_of_a_cell_without_one(tmp_path):
    out = tmp_path / "out"
    run = stored_run(out, 1, states=BROKEN)
    done = run_cli("show", run.path, "h1.t1", "--last-good")
    assert done.code == 0 and "none recorded" in done.stdout


@pytest.mark.parametrize("cell", ["nope.*", "h1.t1\x1b[2J"])
def test_show_last_good_of_no_cell_is_exit_2(tmp_path, cell):
    out = tmp_path / "out"
    run, _ = record(out, 1)
    done = run_cli("show", run.path, cell, "--last-good")
    assert done.code == 2 and "\x1b" not in done.output


def test_show_last_good_with_a_lying_record_is_no_traceback(tmp_path):
    out = tmp_path / "out"
    tamper(out, lambda d: d.update(host="\x1b]0;pwned\x07"))
    done = run_cli("show", out / run_id(1), "h1.t1", "--last-good")
    assert done.code == 0 and "unreadable" in done.stdout and "\x1b" not in done.output


# ---------------------------------------------------------------- the HTML report


def test_a_failed_cell_links_to_its_last_good_run_while_it_exists(tmp_path):
    out = tmp_path / "out"
    first, _ = record(out, 1)
    latest, _ = record(out, 2, states=BROKEN)
    page = render_html(latest.load(), run_dir=latest.path)
    assert f'href="../{first.run_id}/report.html#cell-h1.t1"' in page
    retention.collect(OutDir(out), Policy(keep_runs=1), lambda run: False)
    page = render_html(latest.load(), run_dir=latest.path)
    assert f"../{first.run_id}/report.html" not in page
    assert f"run {first.run_id} (collected; its files:" in page
    assert ".dib-matrix/last-good/h1/t1/" in page


def test_a_lying_last_good_never_becomes_a_link(tmp_path):
    out = tmp_path / "out"
    tamper(out, lambda d: d.update(run_id="javascript:alert(1)"))
    latest = stored_run(out, 2, states=BROKEN)
    page = render_html(latest.load(), run_dir=latest.path)
    assert "javascript:" not in page


def test_recording_touches_only_the_store(tmp_path):
    out = tmp_path / "out"
    run = stored_run(out, 1)
    watch = TreeWatch(tmp_path, OutDir(out).state_dir)
    lastgood.record_run(OutDir(out), run, run.load(), warn=pytest.fail)
    watch.assert_untouched()  # the run's files are linked, never changed
