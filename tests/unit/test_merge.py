"""reports.merge and dib-matrix merge: parts checked, cells and files merged, gate kept."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from matrix.cli import main
from matrix.config.dibtree import DibTree
from matrix.config.matrixfile import load_matrix
from matrix.run import shards
from matrix.run.plan import Plan, make_plan
from reports.gate import gate_exit_code
from reports.merge import MergeError, merge
from results.model import Artifact, Category, Cell, RunResults, State
from results.reader import read_results
from results.store import save

MATRIX = """\
hosts: [debian-bookworm, debian-trixie, ubuntu-noble]
targets: [debian-bookworm, debian-forky]
checks: [tox]
allowed-failures:
  - host: ubuntu-noble
    target: debian-forky
"""
# The verdicts a whole run would give: forky fails on bookworm (voting) and noble.
VERDICTS = {"debian-bookworm.debian-forky": State.FAILED,
            "ubuntu-noble.debian-forky": State.ALLOWED_FAILURE}


def make_matrix_plan(tmp_path: Path) -> Plan:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    return make_plan(load_matrix(path))


def make_dib_tree(tmp_path: Path) -> DibTree:
    root = tmp_path / "tree"
    (root / "dib").mkdir(parents=True)
    (root / "dib" / "__main__.py").write_text("")
    (root / "elements").mkdir()
    return DibTree.read(root)


def make_parts(tmp_path: Path, count: int = 2) -> list[Path]:
    """The run directories of every shard of MATRIX, at tmp_path/part1... (the matrix
    file and dib tree made beside them): what the hostile tests tamper with."""
    return shard_runs(tmp_path, make_matrix_plan(tmp_path), make_dib_tree(tmp_path), count)


@pytest.fixture
def plan(tmp_path):
    return make_matrix_plan(tmp_path)


@pytest.fixture
def dib_tree(tmp_path):
    return make_dib_tree(tmp_path)


def verdict_cell(planned) -> Cell:
    state = VERDICTS.get(planned.id, State.SUCCESS)
    cell = Cell(planned.host.name, planned.row, planned.kind, state, voting=planned.voting,
                attempts=1, duration=1.0, log=f"logs/{planned.host.name}/{planned.row}.log")
    if state is not State.SUCCESS:
        cell.category = Category("no-such-script", "No such script: .../forky")
        cell.evidence = "E: No such script"
    if planned.kind.value == "build" and state is State.SUCCESS:
        cell.artifacts = [Artifact(f"images/{planned.host.name}/{planned.row}.tar", "tar", 5,
                                   "a" * 64)]
    return cell


def write_run(run_dir, plan, cells_of_plan, shard=None) -> RunResults:
    results = RunResults(run_dir.name, "m.yaml", [h.name for h in plan.hosts], list(plan.rows),
                         started="2026-11-29T10:00:00+00:00", finished="2026-11-29T10:05:00+00:00")
    for planned in cells_of_plan:
        cell = verdict_cell(planned)
        results.cells.append(cell)
        log = run_dir / cell.log
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"log of {cell.id}\n")
        for artifact in cell.artifacts:
            image = run_dir / artifact.path
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(b"image")
    if shard is not None:
        results.shard = shard
    save(results, run_dir)
    (run_dir / "run.log").write_text("run log\n")
    return results


def shard_runs(tmp_path, plan, dib_tree, count=2, skip=(), digest=None):
    split = shards.split(plan, count)
    parts = []
    for shard in split.shards:
        if shard.index in skip:
            continue
        mark = shards.mark(plan, split, shard.index, dib_tree)
        if digest:
            mark["dib_tree_digest"] = digest
        part = shards.select(plan, split, shard.index)
        run_dir = tmp_path / f"part{shard.index}"
        run_dir.mkdir()
        write_run(run_dir, part, part.cells, mark)
        parts.append(run_dir)
    return parts


def verdicts(results: RunResults) -> dict[str, tuple]:
    return {c.id: (c.state, c.category.legend if c.category else None, c.voting)
            for c in results.cells}


def test_merge_gives_the_whole_runs_verdicts_files_and_gate(tmp_path, plan, dib_tree):
    whole = write_run(tmp_path / "whole", plan, plan.cells)
    parts = shard_runs(tmp_path, plan, dib_tree)
    outcome = merge(parts, tmp_path / "out" / "merged")
    merged = read_results(tmp_path / "out" / "merged")
    assert verdicts(merged) == verdicts(whole)
    assert [c.id for c in merged.cells] == [c.id for c in whole.cells]  # plan order
    assert merged.hosts == whole.hosts and merged.rows == whole.rows
    assert merged.run_id == "merged" and not merged.interrupted
    assert gate_exit_code(merged) == gate_exit_code(whole) == 1
    baseline = replace(whole, run_id="base")
    assert gate_exit_code(merged, baseline) == gate_exit_code(whole, baseline) == 0
    assert outcome.missing == [] and merged.shard["kind"] == "merged"
    assert [p["index"] for p in merged.shard["parts"]] == [1, 2]
    out = tmp_path / "out" / "merged"
    for name in ("results.json", "report.txt", "report.html", "junit.xml"):
        assert (out / name).is_file()
    image = "images/debian-trixie/debian-bookworm.tar"
    source = next(p for p in parts if (p / image).exists())
    assert (out / image).stat().st_ino == (source / image).stat().st_ino  # hard-linked
    assert merged.shard["files"] == "hardlink"
    assert (out / "logs/ubuntu-noble/tox.log").read_text() == "log of ubuntu-noble.tox\n"
    log = "logs/ubuntu-noble/tox.log"
    source = next(p for p in parts if (p / log).exists())
    assert (out / log).stat().st_ino != (source / log).stat().st_ino  # copied: appendable
    report = (out / "report.txt").read_text()
    assert "merged from 2 of 2 shards of matrix" in report
    assert (out / "parts/shard-1-of-2/results.json").is_file()
    assert (out / "parts/shard-2-of-2/run.log").is_file()
    assert "No such script" in (out / "report.txt").read_text()


def test_missing_shard_leaves_its_cells_pending_and_says_so(tmp_path, plan, dib_tree):
    parts = shard_runs(tmp_path, plan, dib_tree, skip=(2,))
    outcome = merge(parts, tmp_path / "merged")
    assert outcome.missing == [2]
    merged = outcome.results
    assert merged.interrupted
    missing_hosts = set(shards.split(plan, 2).shards[1].hosts)
    for cell in merged.cells:
        if cell.host in missing_hosts:
            assert cell.state is State.PENDING
            assert cell.reason == "shard 2/2 missing: not merged"
        else:
            assert cell.state is not State.PENDING
    assert len(merged.cells) == len(plan.cells)
    report = (tmp_path / "merged" / "report.txt").read_text()
    assert "MISSING shards: 2/2 - their cells are pending" in report


def test_duplicate_shard_is_refused(tmp_path, plan, dib_tree):
    parts = shard_runs(tmp_path, plan, dib_tree)
    again = tmp_path / "again"
    again.mkdir()
    data = json.loads((parts[0] / "results.json").read_text())
    (again / "results.json").write_text(json.dumps(data))
    with pytest.raises(MergeError, match="given twice"):
        merge([*parts, again], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("matrix_hash", "f" * 64, "different matrices"),
    ("dib_tree_digest", "e" * 64, "different dib trees"),
    ("count", 3, "different shard counts"),
])
def test_parts_of_other_matrices_or_trees_are_refused(tmp_path, plan, dib_tree, key, value,
                                                      message):
    parts = shard_runs(tmp_path, plan, dib_tree)
    path = parts[1] / "results.json"
    data = json.loads(path.read_text())
    data["shard"][key] = value
    path.write_text(json.dumps(data))
    with pytest.raises(MergeError, match=message):
        merge(parts, tmp_path / "merged")


def test_differently_split_parts_are_refused(tmp_path, plan, dib_tree):
    parts = shard_runs(tmp_path, plan, dib_tree)
    path = parts[1] / "results.json"
    data = json.loads(path.read_text())
    host = data["shard"]["hosts"][0]
    data["shard"]["plan"]["assignment"][host] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(MergeError, match="split differently"):
        merge(parts, tmp_path / "merged")


def test_parts_run_with_one_shards_object_of_a_plan_file_merge(tmp_path, plan, dib_tree):
    """plan --shards N --format json gives each CI job its shard's object: each part then
    knows only its own hosts' assignment, and the parts still merge."""
    parts = shard_runs(tmp_path, plan, dib_tree)
    for part in parts:
        path = part / "results.json"
        data = json.loads(path.read_text())
        mark = data["shard"]
        mark["plan"]["assignment"] = {h: mark["index"] for h in mark["hosts"]}
        path.write_text(json.dumps(data))
    outcome = merge(parts, tmp_path / "merged")
    assert outcome.missing == [] and len(outcome.results.cells) == len(plan.cells)


def test_a_run_that_is_not_a_shard_is_refused(tmp_path, plan, dib_tree):
    whole = tmp_path / "whole"
    write_run(whole, plan, plan.cells)
    with pytest.raises(MergeError, match="not a shard's run"):
        merge([whole], tmp_path / "merged")
    with pytest.raises(MergeError, match="no results.json"):
        merge([tmp_path / "nothing"], tmp_path / "merged")


def test_output_must_be_new_or_empty(tmp_path, plan, dib_tree):
    parts = shard_runs(tmp_path, plan, dib_tree)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    with pytest.raises(MergeError, match="not an empty directory"):
        merge(parts, busy)
    with pytest.raises(MergeError, match="inside part"):
        merge(parts, parts[0] / "merged")


def test_symlinks_in_a_part_are_not_followed(tmp_path, plan, dib_tree):
    parts = shard_runs(tmp_path, plan, dib_tree)
    secret = tmp_path / "secret"
    secret.write_text("do not copy")
    host = json.loads((parts[0] / "results.json").read_text())["shard"]["hosts"][0]
    (parts[0] / "logs" / host / "evil.log").symlink_to(secret)
    os.mkfifo(parts[0] / "images" / host / "pipe.qcow2")
    outcome = merge(parts, tmp_path / "merged")
    assert not (tmp_path / "merged" / "logs" / host / "evil.log").exists()
    assert not (tmp_path / "merged" / "images" / host / "pipe.qcow2").exists()
    # skipped, and said: a tampered part is visible
    assert [s.rsplit("/", 1)[-1] for s in outcome.skipped] == ["pipe.qcow2' (a FIFO)",
                                                              "evil.log' (a symlink)"]


def test_empty_shard_counts_as_given(tmp_path, plan, dib_tree):
    parts = shard_runs(tmp_path, plan, dib_tree, count=4)
    assert len(parts) == 4
    empty = [p for p in parts if not read_results(p).cells]
    assert len(empty) == 1
    outcome = merge(parts, tmp_path / "merged")
    assert outcome.missing == []
    assert all(c.state is not State.PENDING for c in outcome.results.cells)


def test_merge_cli_exit_codes(tmp_path, plan, dib_tree, capsys):
    whole = tmp_path / "whole"
    write_run(whole, plan, plan.cells)
    parts = shard_runs(tmp_path, plan, dib_tree)
    args = ["merge", *map(str, parts)]
    assert main([*args, "-o", str(tmp_path / "m1")]) == 1  # a voting cell failed
    assert "merged 2 of 2 shards" in capsys.readouterr().out
    assert main([*args, "-o", str(tmp_path / "m2"), "--baseline", str(whole)]) == 0
    assert main(["merge", str(parts[0]), "-o", str(tmp_path / "m3")]) == 2
    assert "shards missing: 2/2" in capsys.readouterr().err
    assert (tmp_path / "m3" / "report.html").is_file()  # written all the same
    assert main([*args, "-o", str(tmp_path / "m1")]) == 2  # exists
    assert main(["compare", str(whole), str(tmp_path / "m1")]) == 0


def test_report_heads_say_shard_merge_and_reruns(tmp_path, plan, dib_tree):
    from reports.text import render_report

    parts = shard_runs(tmp_path, plan, dib_tree)
    part = read_results(parts[0])
    assert f"shard 1/2 of matrix {part.shard['matrix_hash'][:12]}" in render_report(part)
    part.reruns.append({"cell": part.cells[0].id, "at": "t", "state": "failed"})
    assert f"re-run in place: {part.cells[0].id}" in render_report(part)
    whole = RunResults("w", "m.yaml", [], [])
    assert render_report(whole).splitlines()[2] == ""  # an ordinary run: nothing added


def test_html_metadata_says_merge_and_missing_shards(tmp_path, plan, dib_tree):
    parts = shard_runs(tmp_path, plan, dib_tree, skip=(2,))
    merge(parts, tmp_path / "merged")
    html = (tmp_path / "merged" / "report.html").read_text()
    assert "merged from 1 of 2 shards" in html
    assert "MISSING shards: 2/2" in html
