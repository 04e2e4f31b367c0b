"""Bump runs (run --bump-from): the package-manifest diff, the review body, the gate, and
the catalogue's ``snapshot-incomplete`` cause and ``infrastructure`` entries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import reports
from matrix.config.diagnostics import ConfigError
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import classify_lines
from reports.bump import (
    BumpMode,
    ChangeKind,
    bump_report,
    diff_packages,
    is_infrastructure,
    package_diff,
    render_bump_markdown,
    render_bump_text,
    shared_changes,
)
from reports.gate import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, gate_exit_code
from reports.markdown import MAX_CHARS
from results.model import Category, RunResults, State
from results.store import save
from tests.hostile import TreeWatch, golden_copy, run_cli
from tests.resultfactory import make_cell, make_run

CATALOGUE = load_catalogue()
INFRA = CATALOGUE.infrastructure_ids()
MIRROR = Category("mirror-unreachable", "mirror/network unreachable")
HOOK = Category("hook-failed", "element growroot: post-install.d/80-growroot exited 1")
PINNED = {"libc6": "2.36-9", "bash": "5.2.15-2", "gone": "1.0"}
BUMPED = {"libc6": "2.36-10", "bash": "5.2.15-2", "new-pkg": "0.1"}


def build(row="vm", state=State.SUCCESS, packages=None, host="h", **kw):
    provenance = {"packages": packages} if packages is not None else {}
    return make_cell(host, row, state, provenance=provenance, **kw)


def pair(new_cells, old_cells=None, old_id="run-old", new_id="run-new"):
    old = make_run(old_cells or [build(packages=PINNED)], run_id=old_id)
    new = make_run(new_cells, run_id=new_id, started="2026-07-11T10:00:00+00:00")
    return old, new


# ---------------------------------------------------------------- the package diff


def test_added_removed_and_changed_packages_with_counts():
    changes = diff_packages(PINNED, BUMPED)
    assert [c.text() for c in changes] == ["- gone 1.0", "libc6 2.36-9 -> 2.36-10",
                                           "+ new-pkg 0.1"]
    assert {c.name: c.kind for c in changes} == {
        "gone": ChangeKind.REMOVED, "libc6": ChangeKind.CHANGED, "new-pkg": ChangeKind.ADDED}
    old, new = pair([build(packages=BUMPED)])
    cell = package_diff(old, new).changed[0]
    assert cell.counts() == (1, 1, 1)  # changed, added, removed
    assert cell.summary() == "1 package changed, 1 added, 1 removed"


def test_the_summary_line_reads_as_the_report_says():
    before = {f"p{i}": "1" for i in range(12)}
    after = {**{f"p{i}": "2" for i in range(12)}, "a": "1", "b": "1", "c": "1"}
    old, new = pair([build(packages=after)], [build(packages=before)])
    assert package_diff(old, new).changed[0].summary() == "12 packages changed, 3 added"


def test_a_name_that_gains_an_arch_qualifier_is_no_change():
    """dib's manifest writes name:arch once a second arch of the name is installed."""
    before = {"libc6": "2.36-9", "zlib1g": "1:1.2.13"}
    after = {"libc6:amd64": "2.36-9", "libc6:i386": "2.36-9", "zlib1g:amd64": "1:1.3",
             "zlib1g:i386": "1:1.3"}
    changes = diff_packages(before, after)
    texts = [c.text() for c in changes]
    assert "+ libc6:i386 2.36-9" in texts
    assert not any("libc6:amd64" in t for t in texts)  # the same package, now qualified
    assert "- libc6 2.36-9" not in texts
    assert sum(c.kind is ChangeKind.CHANGED for c in changes) == 1  # zlib1g's version, once
    assert sum(c.kind is ChangeKind.ADDED for c in changes) == 2
    assert not any(c.kind is ChangeKind.REMOVED for c in changes)
    # and back: the second arch goes, the name loses its qualifier
    back = diff_packages(after, before)
    assert [c.text() for c in back if c.kind is ChangeKind.REMOVED] == [
        "- libc6:i386 2.36-9", "- zlib1g:i386 1:1.3"]
    assert not any(c.kind is ChangeKind.ADDED for c in back)


def test_unchanged_cells_are_counted_not_listed_and_one_sided_lists_counted():
    old = make_run([build("a", packages=PINNED), build("b", packages=PINNED),
                    build("c", packages=PINNED), build("hostgen"),
                    build("a:boot")], run_id="old")
    new = make_run([build("a", packages=BUMPED), build("b", packages=PINNED),
                    build("c", State.FAILED, packages=None, category=HOOK),
                    build("hostgen"), build("a:boot"), build("only-new", packages=BUMPED)],
                   run_id="new")
    new.cells[2].provenance = {"packages": None}  # failed before writing its image
    diff = package_diff(old, new)
    assert [c.cell_id for c in diff.changed] == ["h.a"]  # a:boot (no list) not twice
    assert diff.unchanged == 1
    assert diff.one_sided == 1


@pytest.mark.parametrize("hostile", [
    "not a mapping", ["libc6", "2.36"], {"libc6": 2.36}, {"libc6": None},
    {"libc6": {"nested": "x"}}, {"": ""},
])
def test_hostile_package_lists_are_read_as_far_as_they_are_text(hostile):
    old, new = pair([build(packages=hostile)])
    found = bump_report(old, new)
    render_bump_markdown(old, new)  # no exception
    assert all(isinstance(c.name, str) for cell in found.packages.changed for c in cell.changes)


def test_one_row_per_package_change_with_its_cells_most_cells_first():
    old = make_run([build(h, packages=PINNED) for h in ("a", "b", "c")], run_id="old")
    new = make_run([build("a", packages=BUMPED), build("b", packages=BUMPED),
                    build("c", packages={**PINNED, "libc6": "2.37-1"})], run_id="new")
    rows = shared_changes(package_diff(old, new))
    assert rows[0].cells == ("h.a", "h.b") and rows[0].change.kind is not None
    libc = [r for r in rows if r.change.name == "libc6"]
    assert [(r.change.new, len(r.cells)) for r in libc] == [("2.36-10", 2), ("2.37-1", 1)]


# ---------------------------------------------------------------- the gate


def gate(new: RunResults, old: RunResults) -> int:
    return gate_exit_code(new, bump_mode=BumpMode(old, INFRA))


def test_a_mirror_failure_in_a_bump_run_is_infrastructure_an_element_failure_regresses():
    old, new = pair([build(state=State.FAILED, category=MIRROR, evidence="E: Could not "
                           "connect to mirror")])
    assert gate(new, old) == EXIT_OK
    assert gate_exit_code(new, old) == EXIT_FAILURES  # an ordinary baseline run: a regression
    assert [c.id for c in bump_report(old, new, INFRA).infrastructure] == ["h.vm"]
    old, new = pair([build(state=State.FAILED, category=HOOK)])
    assert gate(new, old) == EXIT_FAILURES
    assert [d.id for d in bump_report(old, new, INFRA).regressions] == ["h.vm"]


@pytest.mark.parametrize("cause", sorted(INFRA))
def test_every_infrastructure_cause_passes_the_bump_gate(cause):
    old, new = pair([build(state=State.FAILED, category=Category(cause, cause))])
    assert gate(new, old) == EXIT_OK


def test_an_engine_error_and_a_skip_behind_an_infrastructure_failure_are_infrastructure():
    old = make_run([build("hostgen"), build("vm", packages=PINNED), build("other")],
                   run_id="old")
    new = make_run([build("hostgen", state=State.FAILED, category=MIRROR),
                    build("vm", State.SKIPPED, reason="h.hostgen did not succeed",
                          category=Category("missing-dependency", "missing dependency"),
                          evidence="prerequisite failed: h.hostgen"),
                    build("other", State.ERROR)], run_id="new")
    assert gate(new, old) == EXIT_OK
    assert is_infrastructure(new.cells[1], new, INFRA)
    new.cells[0].category = HOOK  # the prerequisite failed for a cause of the build
    assert gate(new, old) == EXIT_FAILURES


def test_a_skip_chain_that_loops_or_leads_nowhere_is_no_infrastructure():
    old = make_run([build("a"), build("b")], run_id="old")
    new = make_run([build("a", State.SKIPPED, reason="h.b did not succeed"),
                    build("b", State.SKIPPED, reason="h.a did not succeed")], run_id="new")
    assert gate(new, old) == EXIT_FAILURES
    new.cells[0].reason, new.cells[1].reason = "nowhere did not succeed", "cancelled"
    assert gate(new, old) == EXIT_FAILURES


def test_non_voting_regressions_and_earlier_failures_never_fail_the_bump_gate():
    old, new = pair([build(state=State.ALLOWED_FAILURE, category=HOOK, voting=False)])
    assert gate(new, old) == EXIT_OK
    old, new = pair([build(state=State.FAILED, category=HOOK)],
                    [build(state=State.FAILED, category=HOOK)])
    assert gate(new, old) == EXIT_OK


# ---------------------------------------------------------------- the review body


def with_archives(run: RunResults, date: str, shape: str = "flat") -> RunResults:
    state = {"bookworm": {"date": date, "inrelease": "a" * 64}}
    archive = state if shape == "flat" else {"uri": "http://m/debian", "suites": state}
    run.repository = {"mode": "live", "archives": {"http://m/debian": archive}}
    return run


def test_the_review_names_both_states_counts_dates_packages_regressions_and_infrastructure():
    old, new = pair([build("vm", packages=BUMPED), build("vm2", state=State.FAILED,
                                                         category=MIRROR),
                     build("vm3", State.FAILED, category=HOOK,
                           evidence="dpkg: error processing package libc6 (--configure)")],
                    [build("vm", packages=PINNED), build("vm2", packages=PINNED),
                     build("vm3", packages=PINNED)])
    new.cells[2].provenance = {"packages": None}
    new.cells.append(build("vm3", host="h2", packages=BUMPED))
    old.cells.append(build("vm3", host="h2", packages=PINNED))
    new.hosts.append("h2")
    old.hosts.append("h2")
    with_archives(old, "Sat, 11 Jul 2026 10:16:37 UTC")
    with_archives(new, "Sat, 18 Jul 2026 09:00:00 UTC", shape="nested")
    old.repository.update(mode="pinned", snapshot="nightly-0711")
    text = render_bump_markdown(old, new, INFRA)
    first = text.splitlines()[0]
    assert first == "### Bump `snapshot nightly-0711` \u2192 live mirror (2026\\-07\\-11)"
    assert ("2 with package changes (2 version changes, 2 additions, 2 removals in all)"
            in text)
    assert "**1 regressions** (1 voting)" in text and "1 infrastructure failures" in text
    assert "| http://m/debian | bookworm | Sat, 11 Jul 2026 10:16:37 UTC |" in text.replace(
        "\\", "")
    assert "Sat, 18 Jul 2026 09:00:00 UTC" in text.replace("\\", "")
    assert "| libc6 | 2\\.36\\-9 | 2\\.36\\-10 | 2: h\\.vm, h2\\.vm3 |" in text
    regression = text.split("#### Regressions", 1)[1].split("#### Infrastructure", 1)[0]
    # the failed build has no package list: its row's other cells' changes, the named first
    lines = regression.splitlines()
    packages_at = next(i for i, line in enumerate(lines) if "packages:" in line)
    assert "`libc6 2.36-9 -> 2.36-10` (likely: the failure names it)" in lines[packages_at + 1]
    assert "h.vm2" in text.split("#### Infrastructure", 1)[1]
    assert "h.vm2" not in regression


def test_a_regression_with_its_own_package_list_shows_its_diff_first():
    old, new = pair([build(state=State.ALLOWED_FAILURE, category=HOOK, packages=BUMPED,
                           voting=False)])
    new.cells[0].provenance["host_image"] = "sha256:" + "b" * 64
    old.cells[0].provenance["host_image"] = "sha256:" + "a" * 64
    text = render_bump_markdown(old, new, INFRA)
    regression = text.split("#### Regressions", 1)[1]
    assert regression.index("packages: 1 package changed") < regression.index("also: host image")


HOSTILE_NAME = "evil<script>alert(1)</script>|`x`*[y](http://z)@user#1"


def test_everything_from_a_run_is_escaped():
    hostile = {HOSTILE_NAME: "1.0<b>", "libc6": "2.36`|"}
    old, new = pair([build(packages=hostile, state=State.FAILED, category=Category(
        "hook-failed", "<img src=x> @team"), evidence="`](javascript:x)")],
        [build(packages={"libc6": "2.35"})], old_id="run<i>", new_id="run`@x")
    old.repository = {"snapshot": "snap|<b>*", "archives": {"http://m/<a>|": {
        "b|ook<": {"date": "<script>"}}}}
    text = render_bump_markdown(old, new, INFRA)
    outside_code = re.sub(r"`[^`\n]*`", "", text)  # a code span shows its text as is
    assert "<" not in outside_code and "@user" not in outside_code
    assert "@team" not in outside_code and "](" not in outside_code
    # no backtick from the run opens or closes a span: each is escaped or made a quote
    assert text.replace("\\`", "").count("`") % 2 == 0
    for line in text.splitlines():
        if line.startswith("|"):  # a table row keeps its columns: no raw | inside a cell
            assert line.replace("\\|", "").count("|") == 5, line
    assert "evil&lt;script&gt;" in text


def test_the_review_is_bounded_and_says_what_it_left_out():
    hosts = [f"host-{i:03}" for i in range(120)]
    long = "p" * 150
    old = make_run([build("vm", host=h, packages={f"{long}-{j}": "1" for j in range(20)})
                    for h in hosts], run_id="old")
    new = make_run([build("vm", State.FAILED, host=h, category=HOOK, evidence="x" * 500,
                          packages={f"{long}-{j}-{h}": "2" for j in range(20)})
                    for h in hosts], run_id="new")
    whole = render_bump_markdown(old, new, INFRA, limit=10 ** 9)
    assert len(whole) > MAX_CHARS  # the case needs cutting
    text = render_bump_markdown(old, new, INFRA)
    assert len(text) <= MAX_CHARS
    # the table: 20 removals shared by every cell, 2400 additions of one cell each
    assert ("| 120: host\\-000\\.vm, host\\-001\\.vm, host\\-002\\.vm, host\\-003\\.vm "
            "and 116 more |") in text  # the change in most cells first, its cells elided
    assert "\u2026 2360 more package changes" in text
    assert "\u2026 60 more cells" in text
    assert text.rstrip().endswith("more lines (cut to fit a review; see report.html)")


def test_report_txt_has_one_line_per_changed_cell_only_in_bump_mode(tmp_path):
    old, new = pair([build(packages=BUMPED), build("same", packages=PINNED)],
                    [build(packages=PINNED), build("same", packages=PINNED)])
    text = render_bump_text(BumpMode(old, INFRA), new)
    assert "  h.vm: 1 package changed, 1 added, 1 removed" in text
    assert "h.same" not in text and "1 cells changed, 1 unchanged" in text
    run_dir = tmp_path / new.run_id
    save(new, run_dir)
    reports.write_all(run_dir, new, baseline=old)
    assert "package changed" not in (run_dir / "report.txt").read_text()
    assert not (run_dir / "bump.md").exists() and not (run_dir / "summary.md").exists()
    reports.write_all(run_dir, new, bump=BumpMode(old, INFRA))
    assert "  h.vm: 1 package changed, 1 added, 1 removed" in (run_dir / "report.txt").read_text()
    assert (run_dir / "bump.md").read_text().startswith("### Bump `run-old`")
    summary = (run_dir / "summary.md").read_text()
    assert "#### Bump" in summary and "[bump.md](bump.md)" in summary
    assert "are infrastructure" not in summary
    new.cells[1].state, new.cells[1].category = State.FAILED, MIRROR
    reports.write_all(run_dir, new, bump=BumpMode(old, INFRA))
    summary = (run_dir / "summary.md").read_text()
    assert "1 of the regressions above are infrastructure" in summary


# ---------------------------------------------------------------- the catalogue

SNAPSHOT_LINES = [
    ("E: Failed to fetch http://HOST/debian/pool/main/h/hello/hello_2.10-3_amd64.deb  404  "
     "Not in snapshot [IP: 127.0.0.1 3142]", "snapshot-incomplete: hello"),
    ("  404  Not in snapshot [IP: 127.0.0.1 3142]", "snapshot-incomplete"),
    ("W: Failed to fetch http://HOST/debian/pool/main/g/glibc/libc6_2.36-9%2bdeb12u1_amd64.deb  "
     "404  Not in snapshot [IP: 127.0.0.1 3142]", "snapshot-incomplete: libc6"),
    ("2026-07-11 10:00:00 ERROR 404: Not in snapshot.", "snapshot-incomplete"),
    ("Proxy request sent, awaiting response... 404 Not in snapshot", "snapshot-incomplete"),
    ("HTTP Error 404: Not in snapshot", "snapshot-incomplete"),
    ("deb prefetch: 3 not prefetched (hello: HTTP Error 404: Not in snapshot, ...)",
     "snapshot-incomplete: hello"),
    ("no local suite for debootstrap (1 .debs not downloaded (libgcc-s1: HTTP Error 404: Not "
     "in snapshot)): plain debootstrap", "snapshot-incomplete: libgcc-s1"),
    ("urllib.error.HTTPError: HTTP Error 404: Not in snapshot for url: http://HOST/debian/pool/"
     "main/h/hello/hello_2.10-3_all.deb", "snapshot-incomplete: hello"),
    ("E: Failed to fetch http://HOST/debian/dists/bookworm/InRelease  404  Not in snapshot "
     "[IP: 127.0.0.1 3142]", "snapshot-incomplete: dists/bookworm/InRelease"),
    ("E: Failed to fetch http://HOST/archive/debian/20240101T000000Z/dists/bookworm/main/"
     "binary-amd64/Packages  404  Not in snapshot [IP: 127.0.0.1 3142]",
     "snapshot-incomplete: dists/bookworm/main/binary-amd64/Packages"),
]


@pytest.mark.parametrize("line,legend", SNAPSHOT_LINES, ids=[s[0][:40] for s in SNAPSHOT_LINES])
def test_a_file_the_snapshot_lacks_is_snapshot_incomplete_never_the_mirror(line, legend):
    verdict = classify_lines([line], "h", "t", CATALOGUE)
    assert verdict.category.id == "snapshot-incomplete"
    assert verdict.category.legend == legend
    assert not {"mirror-unreachable", "mirror-out-of-sync",
                "download-failed"} & set(verdict.category.labels)


@pytest.mark.parametrize("line,cause", [
    ("E: Failed to fetch http://m/debian/pool/main/h/hello/hello_1_amd64.deb  404  Not Found "
     "[IP: 1.2.3.4 80]", "mirror-out-of-sync"),
    ("E: Couldn't download packages: hello", "mirror-unreachable"),  # also a refused connection
    ("E: Failed to fetch http://m/debian/dists/bookworm/InRelease  Could not connect to m:80 "
     "(1.2.3.4), connection timed out", "mirror-unreachable"),
])
def test_a_live_mirror_failure_keeps_its_cause(line, cause):
    assert classify_lines([line], "h", "t", CATALOGUE).category.id == cause


def test_the_infrastructure_entries_are_the_mirror_the_network_and_the_engine():
    chosen = {"engine-error", "engine-unreachable", "registry-rate-limited", "qemu-error",
              "release-file-expired", "mirror-out-of-sync", "package-index-unreachable",
              "mirror-unreachable", "certificate-not-trusted", "mirror-response-invalid"}
    assert chosen == INFRA
    assert "snapshot-incomplete" not in INFRA


def test_infrastructure_is_a_boolean_key_of_a_users_entry(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("- id: proxy-down\n  infrastructure: true\n  patterns: ['proxy down']\n")
    assert "proxy-down" in load_catalogue([mine]).infrastructure_ids()
    mine.write_text("- id: proxy-down\n  infrastructure: maybe\n")
    with pytest.raises(ConfigError) as err:
        load_catalogue([mine])
    assert "mine.yaml:2: [0].infrastructure" in str(err.value)


# ---------------------------------------------------------------- the command line


def with_packages(packages: dict, state: str | None = None, category: dict | None = None):
    def edit(document):
        for cell in document["cells"]:
            if cell["kind"] == "build" and cell["state"] == "success":
                cell["provenance"] = {"packages": dict(packages)}
                if state:
                    cell["state"], cell["category"] = state, category
    return edit


def test_report_bump_from_rewrites_the_run_reports_with_the_bump(tmp_path):
    pinned = golden_copy(tmp_path / "pinned", with_packages(PINNED))
    bumped = golden_copy(tmp_path / "bumped", with_packages(BUMPED))
    watch = TreeWatch(tmp_path, bumped)
    outcome = run_cli("report", bumped, "--bump-from", pinned)
    assert outcome.code == EXIT_OK, outcome.output
    watch.assert_untouched()  # the pinned run is read, never written
    assert "1 package changed, 1 added, 1 removed" in (bumped / "report.txt").read_text()
    assert (bumped / "bump.md").read_text().startswith("### Bump ")
    assert "[bump.md](bump.md)" in (bumped / "summary.md").read_text()
    printed = run_cli("report", bumped, "--bump-from", pinned / "results.json",
                      "--format", "markdown")
    assert printed.code == EXIT_OK and printed.stdout.startswith("### Bump ")


def test_report_bump_from_lists_a_mirror_failure_as_infrastructure(tmp_path):
    """As the run recorded it: reports read the cause's flag, never the catalogue."""
    pinned = golden_copy(tmp_path / "pinned", with_packages(PINNED))
    bumped = golden_copy(tmp_path / "bumped", with_packages(
        BUMPED, "failed", {"id": "mirror-unreachable", "legend": "mirror/network unreachable",
                           "link": None, "labels": ["mirror-unreachable"],
                           "infrastructure": True}))
    printed = run_cli("report", bumped, "--bump-from", pinned, "--format", "markdown")
    assert printed.code == EXIT_OK, printed.output
    assert "#### Infrastructure failures" in printed.stdout
    assert "#### Regressions" not in printed.stdout
    # Without the flag (a run judged by a catalogue that did not say so) it regresses.
    unflagged = golden_copy(tmp_path / "unflagged", with_packages(
        BUMPED, "failed", {"id": "mirror-unreachable", "legend": "mirror/network unreachable",
                           "link": None, "labels": ["mirror-unreachable"]}))
    printed = run_cli("report", unflagged, "--bump-from", pinned, "--format", "markdown")
    assert "#### Regressions" in printed.stdout


def test_the_catalogue_flag_is_recorded_on_the_cause():
    from matrix.verdict.catalogue import load_catalogue
    from matrix.verdict.classify import Evidence, classify

    verdict = classify(Evidence(host="h", row="t", lines=(
        "E: Failed to fetch http://deb.example/debian/dists/x/InRelease  Could not connect "
        "to deb.example:80 (192.0.2.1), connection timed out",)), load_catalogue())
    assert verdict.category.id == "mirror-unreachable" and verdict.category.infrastructure
    deterministic = classify(Evidence(host="h", row="t", lines=(
        "E: No such script: /usr/share/debootstrap/scripts/forky",)), load_catalogue())
    assert not deterministic.category.infrastructure


@pytest.mark.parametrize("make_bad", [
    lambda d: d / "missing",
    lambda d: golden_copy(d / "garbage", lambda doc: {"cells": "no"}),
    lambda d: (d / "fifo.json", __import__("os").mkfifo(d / "fifo.json"))[0],
])
def test_report_bump_from_an_unreadable_run_is_a_usage_error(tmp_path, make_bad):
    bumped = golden_copy(tmp_path / "bumped", with_packages(BUMPED))
    bad = make_bad(tmp_path)
    watch = TreeWatch(tmp_path)
    outcome = run_cli("report", bumped, "--bump-from", bad)
    assert outcome.code == EXIT_USAGE, outcome.output
    assert outcome.stderr.startswith("dib-matrix: ")
    watch.assert_untouched()


def test_report_takes_a_baseline_or_a_bump_not_both(tmp_path):
    run = golden_copy(tmp_path / "run")
    outcome = run_cli("report", run, "--bump-from", run, "--baseline", run)
    assert outcome.code == EXIT_USAGE and "not allowed with" in outcome.stderr


def test_report_bump_from_survives_hostile_package_lists(tmp_path):
    pinned = golden_copy(tmp_path / "pinned", with_packages({HOSTILE_NAME: "\x1b[31m1"}))

    def edit(document):
        for cell in document["cells"]:
            cell["provenance"] = {"packages": {"a": "1", "\u202e": "2"} if cell["kind"] ==
                                  "build" else [1, 2]}
    bumped = golden_copy(tmp_path / "bumped", edit)
    outcome = run_cli("report", bumped, "--bump-from", pinned, "--format", "markdown")
    assert outcome.code == EXIT_OK, outcome.output
    assert "\x1b" not in outcome.stdout and "\u202e" not in outcome.stdout


def test_run_parses_bump_from_and_records_it(tmp_path, monkeypatch):
    from matrix.cli import build_parser
    from matrix.run.matrixrun import MatrixRun, RunRequest

    args = build_parser().parse_args(["run", "--bump-from", str(tmp_path / "x")])
    assert args.bump_from == tmp_path / "x" and args.baseline is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--bump-from", "a", "--baseline", "b"])
    fields = RunRequest.__dataclass_fields__
    assert fields["bump_from"].default is None
    source = Path(MatrixRun.__module__.replace(".", "/") + ".py")
    assert 'results.repository["bump_from"] = req.bump_from' in (
        Path(__file__).resolve().parents[2] / source).read_text()


def test_a_pinned_run_read_by_run_bump_from_is_the_baseline_and_the_bump(tmp_path):
    from matrix.cli import runcli

    pinned = golden_copy(tmp_path / "pinned", with_packages(PINNED))
    args = type("Args", (), {"bump_from": pinned})()
    mode = runcli._bump_mode(args, CATALOGUE)
    assert mode.pinned.run_id == json.loads((pinned / "results.json").read_text())["run_id"]
    assert mode.infrastructure == INFRA
    assert runcli._bump_mode(type("Args", (), {"bump_from": None})(), CATALOGUE) is None
