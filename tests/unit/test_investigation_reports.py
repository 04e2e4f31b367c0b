"""An investigation's variants and verdicts in results.json and in every report, and the
``investigate`` command's usage errors (which never reach the engine).

Hostile classes covered: variants must never count in the table, the counts, the gate,
JUnit, the legend or ``compare``; verdict entries with terminal escapes, markup, pipes
or wrong types are shown inert (or refused by the reader with exit 2), never a
traceback; an ``investigate`` of a run with no baseline, a glob matching nothing, a
negative budget, a run that is not one: exit 2; nothing regressed: exit 0, nothing run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reports import write_all
from reports.compare import Change, compare
from reports.gate import gating_cells
from reports.markdown import render_markdown
from reports.text import render_report
from results.archive import RunDir
from results.model import State
from results.reader import read_results
from tests.hostile import TreeWatch, golden_copy, run_cli
from tests.resultfactory import make_cell, make_run

RUN_ID = "20250601T020000Z-a1b2c3"
HOSTILE = "\x1b[2J\x1b]0;owned\x07<script>alert(1)</script> | `x` [l](javascript:x)"


def _with_investigation(evidence: str = "variant dib-tree passed") -> callable:
    def edit(document):
        for variant, state in (("rerun", "failed"), ("dib-tree", "success")):
            document["cells"].append({
                "host": "debian-bookworm", "row": f"debian-forky--inv-{variant}",
                "id": f"debian-bookworm.debian-forky--inv-{variant}", "kind": "build",
                "state": state, "voting": False, "attempts": 1,
                "log": f"logs/debian-bookworm/debian-forky--inv-{variant}.log",
                "investigation": {"of": "debian-bookworm.debian-forky", "variant": variant}})
        document["investigations"] = [{
            "cell": "debian-bookworm.debian-forky", "verdict": "dib tree",
            "evidence": evidence, "baseline": "20250531T020000Z-000000",
            "last_good": "20250530T020000Z-000000", "seconds": 312.4,
            "variants": [{"variant": "rerun", "cell": "debian-bookworm.debian-forky--inv-rerun",
                          "state": "failed", "log": "logs/x.log", "reused": False},
                         {"variant": "dib-tree", "state": "success", "reused": False,
                          "cell": "debian-bookworm.debian-forky--inv-dib-tree",
                          "log": "logs/debian-bookworm/debian-forky--inv-dib-tree.log"}],
            "impossible": [{"variant": "host-image", "why": "the host image is unchanged"}]}]
    return edit


def test_variants_and_verdicts_read_back(tmp_path):
    run = golden_copy(tmp_path / RUN_ID, _with_investigation())
    results = read_results(run)
    variants = results.investigation_cells()
    assert [c.investigation["variant"] for c in variants] == ["rerun", "dib-tree"]
    assert results.investigations[0]["verdict"] == "dib tree"
    again = RunDir(run).save(results)
    assert json.loads(again.read_text())["investigations"][0]["cell"] == \
        "debian-bookworm.debian-forky"


def test_variants_are_off_the_grid_the_counts_the_gate_and_compare(tmp_path):
    plain = read_results(golden_copy(tmp_path / "plain" / RUN_ID))
    results = read_results(golden_copy(tmp_path / RUN_ID, _with_investigation()))
    assert results.counts() == plain.counts()
    assert results.classification_rate() == plain.classification_rate()
    assert [c.id for c in gating_cells(results)] == [c.id for c in gating_cells(plain)]
    comparison = compare(plain, results)
    assert not comparison.of(Change.NEW) and not comparison.diffs
    text = render_report(results.grid_view(), run_dir=tmp_path / RUN_ID)
    assert "--inv-" not in text.split("investigations")[0]
    assert "debian-bookworm.debian-forky: dib tree - variant dib-tree passed" in text
    assert "host-image: not possible: the host image is unchanged" in text


def test_every_report_shows_the_section_and_junit_leaves_variants_out(tmp_path):
    run = golden_copy(tmp_path / RUN_ID, _with_investigation())
    results = read_results(run)
    write_all(run, results)
    html = (run / "report.html").read_text()
    assert 'id="investigations"' in html and "dib tree" in html
    assert 'href="logs/debian-bookworm/debian-forky--inv-dib-tree.log"' in html
    assert "--inv-" not in (run / "junit.xml").read_text()
    markdown = render_markdown(results)
    assert "#### Investigations" in markdown and "**dib tree**" in markdown


def test_hostile_evidence_is_inert_in_every_form(tmp_path):
    run = golden_copy(tmp_path / RUN_ID, _with_investigation(HOSTILE))
    results = read_results(run)
    write_all(run, results)
    for name in ("report.txt", "report.html"):
        text = (run / name).read_text()
        assert "\x1b" not in text and "\x07" not in text
    assert "<script>alert(1)" not in (run / "report.html").read_text()
    assert "&lt;script&gt;alert(1)" in (run / "report.html").read_text()
    markdown = render_markdown(results)
    assert "<script>alert(1)" not in markdown and "\x1b" not in markdown
    done = run_cli("compare", golden_copy(tmp_path / "old" / RUN_ID), run)
    assert done.code == 0 and "\x1b" not in done.stdout, done.output
    assert "debian-bookworm.debian-forky: dib tree" in done.stdout
    assert "0 new" in done.stdout  # the variants are no new cells


@pytest.mark.parametrize("edit", [
    lambda d: d.update(investigations=[{"cell": "x", "verdict": "because"}]),
    lambda d: d.update(investigations={"cell": "x"}),
    lambda d: d.update(investigations=[{"cell": 5, "verdict": "flaky"}]),
    lambda d: d["cells"][0].update(investigation={"of": "x", "variant": "../../etc"}),
    lambda d: d["cells"][0].update(investigation="yes"),
    lambda d: d.update(investigations=[{"cell": "x", "verdict": "flaky",
                                        "variants": [{"variant": "rerun"}]}]),
])
def test_malformed_investigations_are_refused_with_exit_2(tmp_path, edit):
    run = golden_copy(tmp_path / RUN_ID, edit)
    done = run_cli("report", run, "--format", "text")
    assert done.code == 2, done.output


def test_entries_of_the_wrong_shape_are_left_out_of_reports_not_a_crash():
    results = make_run([make_cell("h", "t1", State.FAILED)])
    results.investigations = [None, {"cell": None}, {"cell": "h.t1", "verdict": 5,
                                                      "variants": [7, {"variant": None}],
                                                      "impossible": "no", "seconds": True}]
    text = render_report(results)
    assert "h.t1: 5" in text


def _out_with_golden(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    run = golden_copy(out / RUN_ID)
    return out, run


def test_investigate_without_an_earlier_run_says_give_a_baseline(tmp_path):
    out, run = _out_with_golden(tmp_path)
    watch = TreeWatch(tmp_path, out)
    done = run_cli("investigate", run)
    assert done.code == 2 and "--baseline" in done.stderr, done.output
    watch.assert_untouched()


def test_investigate_when_nothing_regressed_runs_nothing(tmp_path):
    out, run = _out_with_golden(tmp_path)
    baseline = tmp_path / "elsewhere" / RUN_ID
    shutil.copytree(run, baseline)
    before = (run / "results.json").read_bytes()
    done = run_cli("investigate", run, "--baseline", baseline)
    assert done.code == 0 and "no voting build cell" in done.stdout, done.output
    assert (run / "results.json").read_bytes() == before


@pytest.mark.parametrize("args", [("--cells", "no-such.*"), ("--budget", "-1"),
                                  ("--baseline", "/nonexistent/run")])
def test_investigate_usage_errors_exit_2(tmp_path, args):
    out, run = _out_with_golden(tmp_path)
    done = run_cli("investigate", run, *args)
    assert done.code == 2, done.output


def test_investigate_a_directory_that_is_no_run_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    assert run_cli("investigate", tmp_path / "empty").code == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text('{"run_id": ')
    assert run_cli("investigate", tmp_path / "bad").code == 2
