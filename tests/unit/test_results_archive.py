"""results.archive: the output directory (runs newest first, new run, ``latest``) and the
run directory (where each file is), the one owner of both layouts.

A run directory is untrusted once written: names become paths only through
``results.paths.inside``, a recorded path is followed only inside its run, and a
listing skips (and names) a run it cannot read.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from matrix.run import provenance
from results.archive import OutDir, RunDir
from results.model import CellKind, State
from results.paths import UnsafeOutput, UnsafePath
from results.reader import ResultsError
from tests.hostile import TreeWatch, golden_copy, run_cli, write_results
from tests.resultfactory import make_cell, make_run

GOLDEN_ID = "20250601T020000Z-a1b2c3"
# Names a tampered results.json or a bad caller may hand over where a name is wanted.
NOT_NAMES = ["..", ".", "", "/", "/etc", "a/b", "../x", "x/..", "a\0b"]
NOT_RUN_IDS = [*NOT_NAMES, "latest", ".hidden", "-rf", "a b", "x\n", "r" * 129, None, 7]


def stored(out: Path, run_id: str, started: str = "2026-01-01T00:00:00") -> RunDir:
    run = OutDir(out).new_run(run_id)
    run.save(make_run([make_cell("h", "t")], run_id=run_id, started=started))
    return run


# ---------------------------------------------------------------- names checked


@pytest.mark.parametrize("run_id", NOT_RUN_IDS, ids=repr)
def test_a_run_id_that_is_no_run_id_never_becomes_a_path(tmp_path, run_id):
    out = OutDir(tmp_path / "out")
    for make in (out.run, out.new_run, out.point_latest):
        with pytest.raises(UnsafePath):
            make(run_id)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", NOT_NAMES, ids=repr)
def test_host_row_and_target_names_are_one_plain_component(tmp_path, name):
    run = RunDir(tmp_path / "run")
    calls = [lambda: run.log(name, "t"), lambda: run.log("h", name), lambda: run.images(name),
             lambda: run.image(name, "t", ".qcow2"), lambda: run.image("h", name, ".qcow2"),
             lambda: run.packages("h", name), lambda: run.failure_record(name, "t")]
    for call in calls:
        with pytest.raises(UnsafePath):
            call()


def test_the_layout(tmp_path):
    run = OutDir(tmp_path).run("r1")
    assert run == RunDir(tmp_path / "r1") and run.run_id == "r1"
    assert run.results_file == tmp_path / "r1/results.json"
    assert run.run_log == tmp_path / "r1/run.log"
    assert run.log("h", "t:boot") == tmp_path / "r1/logs/h/t-boot.log"
    assert run.images("h") == tmp_path / "r1/images/h"
    assert run.image("h", "t", ".qcow2") == tmp_path / "r1/images/h/t.qcow2"
    assert run.packages("h", "t") == tmp_path / "r1/images/h/t.packages"
    assert run.failure_record("h", "t") == tmp_path / "r1/images/h/t.failure.json"
    assert run.relative(run.log("h", "t")) == "logs/h/t.log"
    with pytest.raises(ValueError):
        run.relative(tmp_path / "elsewhere.log")


def test_a_symlinked_directory_never_takes_a_path_out_of_the_run(tmp_path):
    run = RunDir(tmp_path / "run")
    (tmp_path / "run/logs").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run/logs/h").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "run/images").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath):
        run.log("h", "t")
    with pytest.raises(UnsafePath):
        run.image("h", "t", ".qcow2")


def test_image_files_are_the_targets_own(tmp_path):
    run = RunDir(tmp_path)
    images = tmp_path / "images/h"
    images.mkdir(parents=True)
    for name in ("a.qcow2", "a.failure.json", "ab.tar", "a", "b.tar", "[a].tar"):
        (images / name).write_text("x")
    assert [p.name for p in run.image_files("h", "a")] == ["a.failure.json", "a.qcow2"]
    assert [p.name for p in run.image_files("h", "[a]")] == ["[a].tar"]  # a glob's [ is a name


# ---------------------------------------------------------------- recorded paths


@pytest.mark.parametrize("recorded", ["/etc/passwd", "../outside.log", "logs/../../outside.log",
                                      "logs/out/x.log", "loop/x.log", "a\0b", "", None, 3])
def test_a_recorded_path_is_followed_only_inside_the_run(tmp_path, recorded):
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    (tmp_path / "outside.log").write_text("secret")
    (run_dir / "logs/out").symlink_to(tmp_path)
    (run_dir / "loop").symlink_to(run_dir / "loop")
    assert RunDir(run_dir).recorded(recorded) is None


def test_a_recorded_path_inside_the_run_is_resolved(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "logs/h").mkdir(parents=True)
    (run_dir / "logs/h/t.log").write_text("log")
    (run_dir / "logs/h/alias.log").symlink_to("t.log")
    run = RunDir(run_dir)
    assert run.recorded("logs/h/t.log") == (run_dir / "logs/h/t.log").resolve()
    assert run.recorded("logs/h/alias.log") == (run_dir / "logs/h/t.log").resolve()


def test_a_failure_record_that_is_a_fifo_does_not_hang_provenance(tmp_path):
    """dib's failure record is written inside the cell's container: a FIFO there (an
    element's script made it) must cost the orchestrator nothing."""
    run = RunDir(tmp_path)
    run.images("h").mkdir(parents=True)
    os.mkfifo(run.failure_record("h", "t"))
    planned = SimpleNamespace(kind=CellKind.BUILD, host=SimpleNamespace(name="h"),
                              target=SimpleNamespace(name="t"))
    found: list[object] = []
    reader = threading.Thread(
        target=lambda: found.append(provenance.failed_hook(tmp_path, planned)), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "failed_hook blocked on a FIFO"
    assert found == [None]


# ---------------------------------------------------------------- reading and writing


def test_save_then_load_through_the_validating_reader(tmp_path):
    run = OutDir(tmp_path).new_run("r1")
    results = make_run([make_cell("h", "t", State.FAILED)], run_id="r1")
    assert run.save(results) == run.results_file
    assert run.load() == results
    document = json.loads(run.results_file.read_text())
    document["cells"][0]["log"] = "../../etc/passwd"
    run.results_file.write_text(json.dumps(document))
    with pytest.raises(ResultsError, match=r"cells\[0\]\.log"):
        run.load()


# ---------------------------------------------------------------- the latest link


def test_latest_points_at_the_newest_run_and_is_replaced(tmp_path):
    out = OutDir(tmp_path)
    assert out.latest() is None
    first = stored(tmp_path, "20260101-000000-aaaa")
    second = stored(tmp_path, "20260102-000000-bbbb")
    out.point_latest(first.run_id)
    assert out.latest() == first
    (tmp_path / f".latest-{second.run_id}").symlink_to("stale")  # left by a killed run
    out.point_latest(second.run_id)
    assert os.readlink(tmp_path / "latest") == second.run_id  # relative: the out dir may move
    assert out.latest() == second
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.run_id, second.run_id,
                                                                 "latest"])


def test_latest_is_replaced_in_one_rename(tmp_path, monkeypatch):
    """A reader never finds no link: until the rename, the old one is there."""
    out = OutDir(tmp_path)
    first, second = stored(tmp_path, "r1"), stored(tmp_path, "r2")
    out.point_latest(first.run_id)
    seen = []
    real_replace = os.replace

    def watching(src, dst):
        seen.append((os.path.basename(src), os.path.basename(dst), out.latest()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching)
    out.point_latest(second.run_id)
    assert seen == [(".latest-r2", "latest", first)]
    assert out.latest() == second


@pytest.mark.parametrize("target", ["../elsewhere", "/etc", "missing-run", "latest", "a/../r1",
                                    "nested/r1"])
def test_a_latest_link_to_no_run_here_is_none(tmp_path, target):
    out = tmp_path / "out"
    stored(out, "r1")
    (tmp_path / "elsewhere").mkdir()
    (out / "nested").mkdir()
    (out / "latest").symlink_to(target)
    assert OutDir(out).latest() is None


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: p.write_text("notes")],
                         ids=["directory", "file"])
def test_a_file_or_directory_named_latest_is_never_replaced(tmp_path, make):
    out = OutDir(tmp_path)
    stored(tmp_path, "r1")
    make(tmp_path / "latest")
    before = TreeWatch(tmp_path)
    with pytest.raises(UnsafeOutput, match="not the link to the newest run"):
        out.point_latest("r1")
    before.assert_untouched()
    assert out.latest() is None


# ---------------------------------------------------------------- listing runs


def test_runs_newest_first_with_a_limit_and_without_the_run_going_on(tmp_path):
    ids = ["20260101-000000-aaaa", "20260103-000000-cccc", "20260102-000000-bbbb"]
    for run_id in ids:
        stored(tmp_path, run_id)
    OutDir(tmp_path).point_latest(ids[0])
    out = OutDir(tmp_path)
    newest_first = sorted(ids, reverse=True)
    assert [s.results.run_id for s in out.runs()] == newest_first  # latest not twice
    assert [s.results.run_id for s in out.runs(2)] == newest_first[:2]
    assert [s.run_dir.name for s in out.runs(exclude=newest_first[0])] == newest_first[1:]
    assert list(out.runs(0)) == []
    assert list(OutDir(tmp_path / "nowhere").runs()) == []


def test_a_bad_run_is_skipped_with_one_warning_naming_it(tmp_path):
    stored(tmp_path, "20260101-000000-good")
    (tmp_path / "20260102-000000-json").mkdir()
    write_results(tmp_path / "20260102-000000-json", "{not json")
    golden_copy(tmp_path / "20260103-000000-path",
                lambda d: d["cells"][0].update(log="../../../etc/passwd"))
    (tmp_path / "20260104-000000-fifo").mkdir()
    os.mkfifo(tmp_path / "20260104-000000-fifo/results.json")
    stored(tmp_path, "20260105-000000-name").path.rename(tmp_path / "bad name!")
    warnings: list[str] = []
    found = [s.run_dir.name for s in OutDir(tmp_path).runs(warn=warnings.append)]
    assert found == ["20260101-000000-good"]
    assert len(warnings) == 4
    for name in ("20260104-000000-fifo", "20260103-000000-path", "20260102-000000-json",
                 "bad name!"):
        assert sum(name in w for w in warnings) == 1, (name, warnings)
    assert all(w.startswith("skipped ") and "\n" not in w for w in warnings)


def test_a_bad_run_in_the_history_is_a_warning_not_a_failure(tmp_path):
    """``report --history``: the series is read through the archive, a tampered run is
    named and skipped, and nothing but the reports and the index is written."""
    out = tmp_path / "out"
    good = golden_copy(out / GOLDEN_ID)
    golden_copy(out / "20250602T020000Z-bad", lambda d: d.update(run_id="../../x"))
    (out / "latest").symlink_to("../elsewhere")
    watch = TreeWatch(tmp_path, good / "report.txt", good / "report.html", good / "junit.xml",
                      out / "index.html")
    outcome = run_cli("report", good, "--history", out)
    assert outcome.code == 0, outcome.output
    assert "skipped" in outcome.stderr and "20250602T020000Z-bad" in outcome.stderr
    watch.assert_untouched()


def test_a_copy_of_the_latest_run_in_the_links_place_is_not_listed_twice(tmp_path):
    """An artifact upload (or ``cp -rL``) turns the link into a copy of the run."""
    run = stored(tmp_path, "20260101-000000-aaaa")
    golden_copy(tmp_path / "latest")
    (tmp_path / "latest" / "results.json").write_bytes(run.results_file.read_bytes())
    warnings: list[str] = []
    assert [s.run_dir for s in OutDir(tmp_path).runs(warn=warnings.append)] == [run.path]
    assert warnings == []


# ---------------------------------------------------------------- a resumed run writes back home


@pytest.mark.parametrize("run_id", ["20250601T020000Z-other", "latest"])
def test_a_resume_whose_id_names_another_directory_is_refused(tmp_path, run_id):
    """``run --resume DIR`` writes to the directory its results.json's run id names: a
    copied or edited file must not send the run's writes into another run (or into
    the ``latest`` link), and says so with exit 2 before anything is touched."""
    out = tmp_path / "out"
    other = golden_copy(out / "20250601T020000Z-other")
    resumed = golden_copy(out / GOLDEN_ID, lambda d: d.update(run_id=run_id))
    (out / "latest").symlink_to(other.name)
    watch = TreeWatch(tmp_path)
    for given in (resumed, resumed / "results.json"):
        outcome = run_cli("run", "--resume", given)
        assert outcome.code == 2, outcome.output
        assert f"results.json is run {run_id}" in outcome.stderr, outcome.stderr
    watch.assert_untouched()


def test_a_resume_loop_is_refused_with_exit_2(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    outcome = run_cli("run", "--resume", tmp_path / "loop")
    assert outcome.code == 2 and "symlink loop" in outcome.stderr, outcome.output
