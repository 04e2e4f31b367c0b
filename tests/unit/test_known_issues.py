"""Known issues with a lifecycle: the catalogue's ticket and dates, the record of
occurrences in the output directory, what the reports say about a known failure
("known issue <ticket>: seen N times since DATE, last on RUN (cell)", "also on ..."),
``catalogue stale``, and allowed-failures rules naming a cause, with their expiry.

Every clock is injected: no test waits for a day to pass.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import multiprocessing
import os
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from matrix.cli import showcli
from matrix.config.diagnostics import ConfigError
from matrix.config.matrixfile import CellRule, load_matrix
from matrix.config.yamlload import load_yaml
from matrix.run import runner
from matrix.run.cellreport import CellReport
from matrix.run.plan import make_plan
from matrix.verdict import lifecycle
from matrix.verdict.catalogue import CATEGORY_KEYS, load_catalogue
from matrix.verdict.classify import classify_lines
from reports.gate import gate_exit_code
from reports.html import render_html
from reports.knownissues import MAX_ALSO_ON, KnownIssues
from reports.markdown import render_markdown
from reports.text import render_report
from results import occurrences
from results.model import Category, Cell, CellKind, State
from results.reader import read_results
from results.store import save
from results.weblinks import MAX_URL, web_url_problem
from tests.hostile import TreeWatch, golden_copy, run_cli
from tests.resultfactory import make_cell, make_run

UTC = dt.timezone.utc
NOW = dt.datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
TICKET = "https://bugs.example/show_bug.cgi?id=42"
GOLDEN_RUN = "20250601T020000Z-a1b2c3"
ZYPPER = "zypper-not-available"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def catalogue_issues(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_catalogue([path])
    return [str(issue) for issue in err.value.issues]


def failed(host: str, row: str, cause: str, *labels: str, state: State = State.FAILED,
           ticket: str | None = None, **kw) -> Cell:
    category = Category(cause, cause.replace("-", " "), labels=[cause, *labels], ticket=ticket)
    kw.setdefault("evidence", f"{cause} here")
    return make_cell(host, row, state, category=category, **kw)


# ---------------------------------------------------------------- catalogue keys


def test_an_entry_carries_its_ticket_and_days(tmp_path):
    path = write(tmp_path / "mine.yaml", f"""\
        - id: flaky-mirror
          patterns: ['mirror flaked']
          ticket: {TICKET}
          since: 2025-05-01
          expires: "2025-07-01"
        - id: slow-disk
          patterns: ['disk slow']
          review-after: 2025-06-01
        """)
    catalogue = load_catalogue([path])
    flaky, slow = catalogue.get("flaky-mirror"), catalogue.get("slow-disk")
    assert (flaky.ticket, flaky.since, flaky.expires, flaky.review_after) == (
        TICKET, dt.date(2025, 5, 1), dt.date(2025, 7, 1), None)
    assert slow.review_after == dt.date(2025, 6, 1) and slow.ticket is None
    assert {"ticket", "since", "review-after", "expires"} <= {k.name for k in CATEGORY_KEYS}


@pytest.mark.parametrize("url", [TICKET, "http://bugs.example", "HTTPS://BUGS.example:8443/x",
                                 "https://[2001:db8::1]/issues/7#c3", "https://x.org/a%20b"])
def test_a_web_link_is_http_or_https_with_a_host(url):
    assert web_url_problem(url) is None


@pytest.mark.parametrize("ticket", [
    "javascript:alert(1)", "data:text/html,<script>x</script>", "vbscript:x", "ftp://x.org/1",
    "file:///etc/passwd", "//evil.example/1", "bugs.example/1", "http://", "https:///1",
    "http:evil.example", "https://user:pw@evil.example/", "https://trusted@evil.example/",
    "https://x.org/a b", 'https://x.org/"onmouseover="x', "https://x.org/<b>",
    "https:\\\\evil.example", "https://x.org/\u202e1", "https://b\u00fcgs.example/",
    "https://x.org:99999/", "https://[::1/", "'https://x.org/\\n1'", "''",
    f"https://x.org/{'a' * MAX_URL}", "42", "[https://x.org/]", "{a: b}", "true", "null",
])
def test_a_ticket_must_be_an_http_link_a_report_may_follow(tmp_path, ticket):
    path = write(tmp_path / "mine.yaml", f"- id: bad\n  ticket: {ticket}\n")
    found = catalogue_issues(path)
    assert len(found) == 1 and f"{path}:2: [0].ticket: " in found[0], found


@pytest.mark.parametrize("day", [
    "'2025-02-30'", "'2025-6-1'", "20250601", "'20250601'", "2025-06-01 10:00:00",
    "'2025-06-01T00:00'", "yesterday", "2025", "true", "[2025-06-01]", "'2025-06-01\\n'",
    "'\uff12025-06-01'", "null",
])
def test_a_day_must_be_a_plain_date(tmp_path, day):
    path = write(tmp_path / "mine.yaml", f"- id: bad\n  patterns: ['x']\n  expires: {day}\n")
    found = catalogue_issues(path)
    assert len(found) == 1 and f"{path}:3: [0].expires: must be a day as YYYY-MM-DD" in found[0]


@pytest.mark.parametrize("text", ["since: 2025-13-01", "since: 0000-01-01", "2025-02-30: x",
                                  "since: 2025-01-01 25:00:00"])
def test_a_date_shaped_scalar_that_is_no_day_is_a_yaml_error_at_its_line(tmp_path, text):
    # PyYAML raises a bare ValueError for these: every config file kind would crash.
    path = write(tmp_path / "mine.yaml", f"- id: bad\n  {text}\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    assert f"{path}:2: invalid YAML: " in str(err.value)


def test_review_after_and_expires_are_one_or_the_other_and_after_since(tmp_path):
    path = write(tmp_path / "mine.yaml", """\
        - id: both
          since: 2025-05-01
          review-after: 2025-06-01
          expires: 2025-07-01
        - id: backwards
          since: 2025-05-01
          expires: 2025-04-01
        """)
    found = catalogue_issues(path)
    assert found == [f"{path}:4: [0].expires: give review-after or expires, not both",
                     f"{path}:7: [1].expires: 2025-04-01 is before since (2025-05-01)"]


def test_the_run_writes_the_entrys_ticket_into_the_cells_category(tmp_path):
    path = write(tmp_path / "mine.yaml", f"""\
        - id: flaky-mirror
          priority: 500
          patterns: ['mirror flaked']
          ticket: {TICKET}
        """)
    verdict = classify_lines(["E: mirror flaked"], "h", "t", load_catalogue([path]))
    assert (verdict.category.id, verdict.category.ticket) == ("flaky-mirror", TICKET)
    untracked = classify_lines(["zypper: command not found"], "h", "t", load_catalogue())
    assert untracked.category.ticket is None


def test_results_json_keeps_a_ticket_and_writes_none_when_there_is_none(tmp_path):
    run = make_run([failed("h", "t", "flaky", ticket=TICKET), failed("h", "u", "other")],
                   run_id="r1")
    save(run, tmp_path)
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["cells"][0]["category"]["ticket"] == TICKET
    assert "ticket" not in document["cells"][1]["category"]  # as results were before
    assert read_results(tmp_path).cells[0].category.ticket == TICKET


# ---------------------------------------------------------------- the record of occurrences


def recorded(out: Path, run, now=NOW, **kw) -> tuple[int, list[str]]:
    warnings: list[str] = []
    return occurrences.record_run(out, run, now=now, warn=warnings.append, **kw), warnings


def read_back(out: Path) -> tuple[list[occurrences.Occurrence], list[str]]:
    warnings: list[str] = []
    return occurrences.read(out, warnings.append), warnings


def test_a_run_appends_each_named_cause_with_every_label(tmp_path):
    run = make_run([
        failed("a", "t", "no-such-script", "missing-host-tool"),
        failed("b", "t", ZYPPER, state=State.ALLOWED_FAILURE),
        failed("c", "t", "timeout", state=State.TIMEOUT),
        failed("d", "t", "missing-dependency", state=State.SKIPPED),
        failed("e", "t", "uncategorized"),
        failed("f", "t", ZYPPER, reused=True),  # seen by the run it came from
        make_cell("g", "t", State.SUCCESS),
        make_cell("h", "t", State.EXCLUDED, reason="no"),
    ], run_id="r1")
    assert recorded(tmp_path, run) == (4, [])
    found, warnings = read_back(tmp_path)
    assert not warnings
    assert [(o.cell, o.category, o.labels) for o in found] == [
        ("a.t", "no-such-script", ("no-such-script", "missing-host-tool")),
        ("b.t", ZYPPER, (ZYPPER,)), ("c.t", "timeout", ("timeout",)),
        ("d.t", "missing-dependency", ("missing-dependency",))]
    assert found[0].run == "r1" and found[0].at == NOW
    assert found[0].evidence == "no-such-script here"
    assert occurrences.seen(found, "missing-host-tool").count == 1  # a label counts too
    assert occurrences.record_path(tmp_path) == tmp_path / ".dib-matrix" / "occurrences.jsonl"


def test_a_run_without_a_named_cause_leaves_the_output_directory_alone(tmp_path):
    run = make_run([make_cell("h", "t", State.SUCCESS), failed("h", "u", "uncategorized")])
    assert recorded(tmp_path, run) == (0, [])
    assert list(tmp_path.iterdir()) == []


def test_a_line_is_bounded_whatever_the_evidence(tmp_path):
    labels = [f"label-{n}" for n in range(64)]
    cell = failed("h", "t", "boom", *labels, evidence="\x00\u202e\U0001f600" * 50_000)
    record_run_cells(tmp_path, [cell])
    lines = occurrences.record_path(tmp_path).read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 and len(lines[0]) <= occurrences.MAX_LINE
    (back,), warnings = read_back(tmp_path)
    assert not warnings and len(back.labels) == occurrences.MAX_LABELS


def record_run_cells(out: Path, cells: list[Cell], run_id: str = "r1", now=NOW) -> None:
    count, warnings = recorded(out, make_run(cells, run_id=run_id), now=now)
    assert count == len(cells) and not warnings


GOOD = {"v": 1, "run": "r1", "host": "h", "row": "t", "category": "boom", "labels": ["boom"],
        "evidence": "e", "at": "2025-06-01T00:00:00+00:00"}


def good(**changes) -> bytes:
    return (json.dumps({**GOOD, **changes}) + "\n").encode()


@pytest.mark.parametrize("bad", [
    b"garbage\n", b"\xff\xfe\n", b"[1, 2]\n", b"null\n", b'"text"\n', b"{}\n",
    good(v=2), good(run="../x"), good(host="../../etc"), good(host="H"), good(row="t:x"),
    good(category=""), good(labels="boom"), good(labels=[1]), good(labels=["a"] * 99),
    good(evidence=None), good(at="yesterday"), good(at="2025-06-01T00:00:00"),
    good(at="0001-01-01T00:00:00+01:00"), good(at="9" * 100), good(at=1.5),
    b'{"v": 1, "v": 1}\n', b'{"v": NaN}\n', b"[" * 5000 + b"]" * 5000 + b"\n",
    b'{"v": ' + b"9" * 5000 + b"}\n", b"x" * (occurrences.MAX_LINE * 3) + b"\n",
    b"\x00" * 100 + b"\n",
])
def test_a_bad_line_is_skipped_with_one_warning_and_the_rest_is_read(tmp_path, bad):
    path = occurrences.record_path(tmp_path)
    path.parent.mkdir()
    path.write_bytes(good(host="before") + bad + bad + good(host="after"))
    found, warnings = read_back(tmp_path)
    assert [o.host for o in found] == ["before", "after"]
    assert len(warnings) == 1 and "skipped 2 unreadable lines" in warnings[0], warnings


def test_a_writer_killed_mid_line_costs_that_line_only(tmp_path):
    path = occurrences.record_path(tmp_path)
    path.parent.mkdir()
    path.write_bytes(good(host="before") + good(host="torn")[:30])
    append_one(tmp_path, "after")
    found, warnings = read_back(tmp_path)
    assert [o.host for o in found] == ["before", "after"] and len(warnings) == 1


def append_one(out: Path, host: str) -> None:
    occurrences.append(out, occurrences.occurrences_of(
        make_run([failed(host, "t", "boom")], run_id="r2"), NOW))


def test_a_cell_recorded_twice_counts_once(tmp_path):
    run = make_run([failed("h", "t", "boom")], run_id="r1")
    recorded(tmp_path, run)
    recorded(tmp_path, run, now=NOW + dt.timedelta(hours=1))  # run --resume of it
    found, _ = read_back(tmp_path)
    assert len(found) == 1 and found[0].at == NOW + dt.timedelta(hours=1)


def test_a_rewrite_keeps_the_record_bounded(tmp_path, monkeypatch):
    # r-300 is a clock far off, or a forgery: it would keep its entry "seen" for ever.
    occurrences.append(tmp_path, [occurrence(f"r{days}", "h", NOW - dt.timedelta(days=days))
                                  for days in (500, 300, 2, -300)])
    assert len(read_back(tmp_path)[0]) == 4
    assert occurrences.prune(tmp_path, NOW, keep_days=400) == 2
    assert [o.run for o in read_back(tmp_path)[0]] == ["r300", "r2"]
    # An append rewrites only when the oldest line is out of the window, or past a size.
    record_run_cells(tmp_path, [failed("h", "t", "boom")], run_id="r0")
    assert [o.run for o in read_back(tmp_path)[0]] == ["r300", "r2", "r0"]
    record_run_cells(tmp_path, [failed("h", "t", "boom")], run_id="late",
                     now=NOW + dt.timedelta(days=200))
    assert [o.run for o in read_back(tmp_path)[0]] == ["r2", "r0", "late"]
    cells = [failed(f"h{n}", "t", "boom") for n in range(5)]
    line = len(occurrences.occurrences_of(make_run(cells, run_id="big"), NOW)[0].to_line())
    monkeypatch.setattr(occurrences, "REWRITE_AT", 3 * line)
    monkeypatch.setattr(occurrences, "KEEP_BYTES", 3 * line)
    record_run_cells(tmp_path, cells, run_id="big", now=NOW + dt.timedelta(days=200))
    assert [o.host for o in read_back(tmp_path)[0]] == ["h2", "h3", "h4"]


def test_a_record_larger_than_the_read_bound_is_read_from_its_newest_part(tmp_path,
                                                                          monkeypatch):
    path = occurrences.record_path(tmp_path)
    path.parent.mkdir()
    path.write_bytes(b"".join(good(host=f"h{n}") for n in range(1000)))
    monkeypatch.setattr(occurrences, "MAX_READ", 10 * len(good(host="h999")) + 5)
    found, warnings = read_back(tmp_path)
    assert [o.host for o in found] == [f"h{n}" for n in range(990, 1000)] and not warnings


def _append_many(out: str, worker: int, rounds: int) -> None:
    for number in range(rounds):
        cells = [failed(f"w{worker}-{number}-{n}", "t", "boom", evidence="x" * 1000)
                 for n in range(5)]
        count = occurrences.record_run(Path(out), make_run(cells, run_id=f"r{worker}"),
                                       now=NOW, warn=print)
        assert count == 5


def test_two_processes_appending_at_once_never_interleave(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(tmp_path), w, 60))
               for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    found, warnings = read_back(tmp_path)
    assert not warnings and len(found) == 2 * 60 * 5
    assert len(occurrences.record_path(tmp_path).read_bytes().splitlines()) == 600


def test_a_held_lock_costs_a_warning_after_the_timeout_never_a_hang(tmp_path):
    lock = tmp_path / ".dib-matrix" / "occurrences.lock"
    lock.parent.mkdir()
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        count, warnings = recorded(tmp_path, make_run([failed("h", "t", "boom")]), timeout=0.2)
    assert count == 0 and "held by another process" in warnings[0]


def _symlinked_record(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    out = tmp_path / "out"
    (out / ".dib-matrix").mkdir(parents=True)
    (out / ".dib-matrix" / "occurrences.jsonl").symlink_to(outside / "victim")
    return out, outside


def _symlinked_directory(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".dib-matrix").symlink_to(outside)
    return out, outside


def _symlinked_lock(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    (out / ".dib-matrix").mkdir(parents=True)
    (out / ".dib-matrix" / "occurrences.lock").symlink_to(outside / "made-by-us")
    return out, outside


def _fifo_record(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    (out / ".dib-matrix").mkdir(parents=True)
    os.mkfifo(out / ".dib-matrix" / "occurrences.jsonl")
    return out, tmp_path / "nothing"


def _fifo_lock(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    (out / ".dib-matrix").mkdir(parents=True)
    os.mkfifo(out / ".dib-matrix" / "occurrences.lock")
    return out, tmp_path / "nothing"


def _directory_record(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    (out / ".dib-matrix" / "occurrences.jsonl").mkdir(parents=True)
    return out, tmp_path / "nothing"


def _file_in_place_of_directory(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".dib-matrix").write_text("mine")
    return out, tmp_path / "nothing"


def _no_out_directory(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "absent", tmp_path / "nothing"


UNSAFE_PLACES = [_symlinked_record, _symlinked_directory, _symlinked_lock, _fifo_record,
                 _fifo_lock, _directory_record, _file_in_place_of_directory, _no_out_directory]


@pytest.mark.parametrize("place", UNSAFE_PLACES, ids=lambda f: f.__name__.strip("_"))
def test_an_unsafe_record_costs_a_warning_and_touches_nothing(tmp_path, place):
    out, outside = place(tmp_path)
    watch = TreeWatch(tmp_path, out / ".dib-matrix" / "occurrences.lock")
    count, warnings = recorded(out, make_run([failed("h", "t", "boom")]))
    found, read_warnings = read_back(out)
    assert count == 0 and len(warnings) == 1, warnings
    assert found == [] and len(read_warnings) <= 1
    watch.assert_untouched()
    assert not (outside / "made-by-us").exists()


# ---------------------------------------------------------------- what the reports say


def occurrence(run: str, host: str, at: dt.datetime, cause: str = ZYPPER,
               row: str = "opensuse-leap-15") -> occurrences.Occurrence:
    return occurrences.Occurrence(run, host, row, cause, (cause,), "zypper: not found", at)


def test_seen_counts_cells_since_the_first_and_names_the_last():
    found = [occurrence("r1", "a", NOW - dt.timedelta(days=9)),
             occurrence("r2", "a", NOW - dt.timedelta(days=1)),
             occurrence("r2", "b", NOW - dt.timedelta(days=2)),
             occurrence("r2", "c", NOW, cause="other")]
    seen = occurrences.seen(found, ZYPPER)
    assert (seen.count, seen.first, seen.last.run, seen.last.cell) == (
        3, NOW - dt.timedelta(days=9), "r2", "a.opensuse-leap-15")
    assert occurrences.seen(found, "never-seen") is None
    assert occurrences.last_seen(found) == {ZYPPER: NOW - dt.timedelta(days=1), "other": NOW}


def ticketed_out(tmp_path: Path, ticket: str = TICKET) -> Path:
    """out/ with the golden run (its zypper failures carrying ``ticket``) and a record."""
    def add_ticket(document):
        for cell in document["cells"]:
            if (cell.get("category") or {}).get("id") == ZYPPER:
                cell["category"]["ticket"] = ticket

    out = tmp_path / "out"
    out.mkdir()
    run_dir = golden_copy(out / GOLDEN_RUN, add_ticket)
    occurrences.append(out, [
        occurrence("20250501-010000-aaaa", "debian-bookworm", dt.datetime(2025, 5, 2, tzinfo=UTC)),
        occurrence(GOLDEN_RUN, "debian-trixie", dt.datetime(2025, 6, 1, 2, tzinfo=UTC)),
        occurrence(GOLDEN_RUN, "debian-bookworm", dt.datetime(2025, 6, 1, 3, tzinfo=UTC)),
    ])
    return run_dir


SAID = ("known issue https://bugs.example/show_bug.cgi?id=42: seen 3 times since 2025-05-02, "
        f"last on {GOLDEN_RUN} (debian-bookworm.opensuse-leap-15)")


def test_the_text_legend_says_the_known_issue_and_its_counts(tmp_path):
    run_dir = ticketed_out(tmp_path)
    text = render_report(read_results(run_dir), run_dir=run_dir)
    legend = text.splitlines()
    at = next(i for i, line in enumerate(legend) if line.endswith("zypper not available"))
    assert legend[at + 1] == "      " + SAID
    assert text.count("known issue") == 1  # one footnote, two cells
    # Without the record (a run directory on its own) the ticket still shows.
    bare = render_report(read_results(run_dir))
    assert "known issue https://bugs.example/show_bug.cgi?id=42: not seen" in bare


def test_the_markdown_summary_says_known_issue_and_where(tmp_path):
    run_dir = ticketed_out(tmp_path)
    text = render_markdown(read_results(run_dir), run_dir=run_dir)
    item = text.split("`debian-bookworm.opensuse-leap-15`", 1)[1].split("\n- ", 1)[0]
    assert f"  - known issue `{TICKET}`: seen 3 times since 2025\\-05\\-02" in item
    assert "  - also on debian\\-trixie" in item
    forky = text.split("`debian-bookworm.debian-forky`", 1)[1].split("\n- ", 1)[0]
    assert "also on ubuntu\\-noble" in forky and "known issue" not in forky
    noble = text.split("`debian-bookworm.ubuntu-noble`", 1)[1].split("\n- ", 1)[0]
    assert "only on this host" in noble


def test_the_html_links_the_ticket_safely_in_the_panel_and_the_legend(tmp_path):
    run_dir = ticketed_out(tmp_path)
    html = render_html(read_results(run_dir), run_dir=run_dir)
    link = ('<a class="ticket" href="https://bugs.example/show_bug.cgi?id=42" '
            'rel="noopener noreferrer">https://bugs.example/show_bug.cgi?id=42</a>')
    assert html.count(link) == 3  # the legend and the two cells' panels
    panel = html.split('id="cell-debian-bookworm.opensuse-leap-15"', 1)[1].split("</details>")[0]
    assert f"{link}: seen 3 times since 2025-05-02" in panel
    assert "<th>where</th><td>also on debian-trixie</td>" in panel


def test_show_says_known_issue_and_where(tmp_path):
    run_dir = ticketed_out(tmp_path)
    outcome = run_cli("show", run_dir, "debian-bookworm.opensuse-leap-15")
    assert outcome.code == 0, outcome.output
    assert f"known issue  {SAID}" in outcome.stdout
    assert "where        also on debian-trixie" in outcome.stdout


@pytest.mark.parametrize("ticket", [
    "javascript:alert(1)", "data:text/html,<script>alert(1)</script>", "//evil.example/",
    "https://trusted@evil.example/", "https://x.org/\u202e1", "https://x.org/\x1b]8;;x\x07",
    " https://x.org/", 'https://x.org/"><script>alert(1)</script>', "https:\\\\evil.example",
    "ftp://x.org/",
])
def test_a_hostile_ticket_in_results_json_is_shown_nowhere(tmp_path, ticket):
    run_dir = ticketed_out(tmp_path, ticket)
    results = read_results(run_dir)
    outputs = [render_report(results, run_dir=run_dir), render_markdown(results, run_dir=run_dir),
               render_html(results, run_dir=run_dir),
               run_cli("show", run_dir, "debian-bookworm.opensuse-leap-15").stdout]
    for output in outputs:
        assert "known issue" not in output and 'class="ticket"' not in output
        assert "evil" not in output and "javascript:" not in output


@pytest.mark.parametrize("fmt", ["text", "markdown", "html"])
def test_a_report_beside_an_unreadable_record_warns_and_renders(tmp_path, fmt):
    run_dir = ticketed_out(tmp_path)
    record = occurrences.record_path(run_dir.parent)
    record.unlink()
    os.mkfifo(record)  # a FIFO would hang a reader that waits on it
    outcome = run_cli("report", run_dir, "--format", fmt)
    assert outcome.code == 0 and "not a regular file" in outcome.stderr, outcome.output
    assert "not seen in this output directory" in outcome.stdout


def test_no_ticket_no_reading_of_the_record(tmp_path, monkeypatch, all_states):
    def refuse(*args):
        raise AssertionError("the record was read")

    monkeypatch.setattr("reports.knownissues.read", refuse)
    assert "known issue" not in render_report(all_states, run_dir=tmp_path / "run")


def test_also_on_names_the_other_hosts_with_the_same_cause_in_host_order():
    cells = [failed("sid", "t", "boom"), failed("bookworm", "t", "boom"),
             failed("trixie", "t", "boom", state=State.ALLOWED_FAILURE),
             failed("noble", "t", "other"), failed("jammy", "u", "boom"),
             failed("fedora", "t", "uncategorized"), make_cell("leap", "t", State.SUCCESS)]
    run = make_run(cells)
    run.hosts = ["bookworm", "trixie", "sid", "noble", "jammy", "fedora", "leap"]
    known = KnownIssues(run)
    assert known.also_on_text(cells[0]) == "also on bookworm, trixie"
    assert known.also_on_text(cells[3]) == "only on this host"
    assert known.also_on_text(cells[4]) == "only on this host"  # another row
    assert known.also_on_text(cells[5]) is None and known.also_on_text(cells[6]) is None


def test_also_on_is_bounded():
    cells = [failed(f"h{n:03}", "t", "boom") for n in range(MAX_ALSO_ON + 5)]
    text = KnownIssues(make_run(cells)).also_on_text(cells[0])
    assert text == "also on " + ", ".join(f"h{n:03}" for n in range(1, MAX_ALSO_ON + 1)) + (
        " and 4 more")


def test_show_describe_without_a_record_still_says_where(all_states):
    cell = all_states.cell("ubuntu-noble", "debian-forky")
    fields = dict(showcli.describe(cell, Path("/nonexistent"), all_states))
    assert fields["where"] == "also on debian-bookworm" and "known issue" not in fields


# ---------------------------------------------------------------- catalogue stale


def test_unseen_and_past_dates_with_an_injected_clock(tmp_path):
    path = write(tmp_path / "mine.yaml", """\
        - id: reviewed
          review-after: 2025-06-09
        - id: expiring-today
          expires: 2025-06-10
        - id: expired
          expires: 2025-06-01
        """)
    catalogue = load_catalogue([path])
    last = {"reviewed": NOW - dt.timedelta(days=3), "expired": NOW - dt.timedelta(days=30),
            ZYPPER: NOW - dt.timedelta(days=21, seconds=1)}
    unseen = {u.rule.id: u.last_seen for u in lifecycle.unseen(catalogue, last, NOW, 21)}
    assert "reviewed" not in unseen and unseen["expired"] == NOW - dt.timedelta(days=30)
    assert unseen["expiring-today"] is None and ZYPPER in unseen
    assert len(unseen) == len(catalogue.rules) - 1
    past = [(p.rule.id, p.key, p.day) for p in lifecycle.past_dates(catalogue, TODAY)]
    assert past == [("reviewed", "review-after", dt.date(2025, 6, 9)),
                    ("expired", "expires", dt.date(2025, 6, 1))]


def stale_out(tmp_path: Path) -> tuple[Path, Path]:
    now = dt.datetime.now(UTC)
    out = tmp_path / "out"
    out.mkdir()
    occurrences.append(out, [occurrence("r1", "h", now - dt.timedelta(days=2)),
                             occurrence("r0", "h", now - dt.timedelta(days=40),
                                        cause="no-such-script")])
    mine = write(tmp_path / "mine.yaml", f"""\
        - id: my-issue
          patterns: ['my issue']
          ticket: {TICKET}
          expires: 2001-01-01
        """)
    return out, mine


def test_catalogue_stale_lists_unseen_and_past_entries(tmp_path):
    out, mine = stale_out(tmp_path)
    watch = TreeWatch(tmp_path)
    outcome = run_cli("catalogue", "stale", "--out", out, "--categories", mine,
                      "--format", "json")
    watch.assert_untouched()
    assert outcome.code == 0, outcome.output
    document = json.loads(outcome.stdout)
    unseen = {e["id"]: e for e in document["unseen"]}
    assert ZYPPER not in unseen and "no-such-script" in unseen
    assert unseen["no-such-script"]["last_seen"] is not None
    assert unseen["my-issue"] == {"id": "my-issue", "origin": "user", "ticket": TICKET,
                                  "last_seen": None}
    assert unseen["timeout"]["origin"] == "bundled"
    assert document["past_date"] == [{"id": "my-issue", "origin": "user", "ticket": TICKET,
                                      "key": "expires", "day": "2001-01-01"}]
    text = run_cli("catalogue", "stale", "--out", out, "--categories", mine, "--days", "60")
    assert text.code == 0 and "no-such-script" not in text.stdout.split("past their")[0]
    assert "my-issue" in text.stdout and "expires 2001-01-01" in text.stdout


@pytest.mark.parametrize("args", [["--days", "0"], ["--days", "-3"], ["--days", "3x"],
                                  ["--days", "99999999"], ["--days", "\u0663"],
                                  ["--out", "absent"], ["--out", "file"],
                                  ["--categories", "absent.yaml"],
                                  ["--categories", "bad.yaml"]])
def test_catalogue_stale_on_bad_input_exits_2(tmp_path, args):
    (tmp_path / "file").write_text("x")
    (tmp_path / "bad.yaml").write_text("- id: x\n  expires: tomorrow\n")
    watch = TreeWatch(tmp_path)
    outcome = run_cli("catalogue", "stale", *args, cwd=tmp_path)
    assert outcome.code == 2, outcome.output
    watch.assert_untouched()


@pytest.mark.parametrize("place", UNSAFE_PLACES[:-1], ids=lambda f: f.__name__.strip("_"))
def test_catalogue_stale_over_an_unsafe_record_warns_and_lists(tmp_path, place):
    out, _ = place(tmp_path)
    watch = TreeWatch(tmp_path)
    outcome = run_cli("catalogue", "stale", "--out", out)
    watch.assert_untouched()
    assert outcome.code == 0, outcome.output
    assert "not matched in the last 21 days" in outcome.stdout


def test_catalogue_stale_over_a_garbage_record_warns_once(tmp_path):
    out = tmp_path / "out"
    path = occurrences.record_path(out)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage\n" * 1000 + good(at=dt.datetime.now(UTC).isoformat()))
    outcome = run_cli("catalogue", "stale", "--out", out)
    assert outcome.code == 0 and outcome.stderr.count("warning") == 1, outcome.output
    assert "boom" not in outcome.stdout


def test_catalogue_stale_without_an_output_directory_checks_the_days_only(tmp_path):
    mine = write(tmp_path / "mine.yaml", "- id: old\n  review-after: 2001-01-01\n")
    outcome = run_cli("catalogue", "stale", "--categories", mine, cwd=tmp_path)
    assert outcome.code == 0, outcome.output
    assert "occurrences not checked" in outcome.stderr
    assert "not matched" not in outcome.stdout and "old" in outcome.stdout


# ---------------------------------------------------------------- allowed failures by cause


def matrix(tmp_path: Path, rules: str) -> Path:
    """A matrix file whose allowed-failures rules start on line 4."""
    path = tmp_path / "m.yaml"
    path.write_text("hosts: [debian-bookworm, fedora-43]\n"
                    "targets: [opensuse-leap-15, debian-trixie]\nallowed-failures:\n"
                    + "".join(f"  {line}\n" for line in textwrap.dedent(rules).splitlines()))
    return path


def test_a_rule_may_name_a_cause_and_leaves_its_cells_voting(tmp_path):
    config = load_matrix(matrix(tmp_path, f"""\
        - {{host: 'debian-*', target: opensuse-leap-15, cause: {ZYPPER}}}
        - {{host: fedora-43, target: debian-trixie}}
        """))
    assert config.allowed_failures[0] == CellRule("debian-*", "opensuse-leap-15", "", ZYPPER)
    voting = {c.id: c.voting for c in make_plan(config).cells}
    assert voting["debian-bookworm.opensuse-leap-15"] is True  # the verdict decides
    assert voting["fedora-43.debian-trixie"] is False


@pytest.mark.parametrize("cause", ["Zypper", "'../x'", "[a, b]", "''", "'a b'", "null", "42",
                                   "'zypper\\n'", "'" + "z" * 200 + "'"])
def test_a_cause_must_be_an_entry_id(tmp_path, cause):
    path = matrix(tmp_path, f"- {{target: opensuse-leap-15, cause: {cause}}}\n")
    with pytest.raises(ConfigError) as err:
        load_matrix(path)
    assert f"{path}:4: allowed-failures[0].cause: must be a catalogue entry's id" in str(
        err.value)


def test_exclude_takes_no_cause(tmp_path):
    path = write(tmp_path / "m.yaml", f"""\
        hosts: [debian-bookworm]
        targets: [opensuse-leap-15]
        exclude:
          - {{target: opensuse-leap-15, reason: x, cause: {ZYPPER}}}
        """)
    with pytest.raises(ConfigError) as err:
        load_matrix(path)
    assert "exclude[0].cause: unknown key; known: host, target, reason" in str(err.value)


def test_a_cause_no_entry_has_is_refused_with_file_and_line(tmp_path):
    path = matrix(tmp_path, f"""\
        - {{target: opensuse-leap-15, cause: {ZYPPER}}}
        - {{target: debian-trixie, cause: zypper-not-availble}}
        """)
    issues = lifecycle.unknown_causes(load_matrix(path), load_catalogue())
    assert [str(i) for i in issues] == [
        f"{path}:5: allowed-failures[1].cause: 'zypper-not-availble' is no entry of the "
        "failure catalogue"]


def allowance_catalogue(tmp_path: Path):
    return load_catalogue([write(tmp_path / "mine.yaml", """\
        - id: flaky
          patterns: ['flaked']
          expires: 2025-06-10
        """)])


RULES = (CellRule("debian-*", "opensuse-leap-15", cause=ZYPPER),
         CellRule("*", "*", cause="flaky"), CellRule("*", "*", cause="no-such-entry"))


@pytest.mark.parametrize("host, row, cause, labels, today, allowed", [
    ("debian-bookworm", "opensuse-leap-15", ZYPPER, (), TODAY, True),
    ("debian-bookworm", "opensuse-leap-15", "mirror-unreachable", (ZYPPER,), TODAY, False),
    ("fedora-43", "opensuse-leap-15", ZYPPER, (), TODAY, False),  # outside the rule's globs
    ("debian-bookworm", "debian-trixie", ZYPPER, (), TODAY, False),
    ("fedora-43", "debian-trixie", "flaky", (), TODAY, True),  # its last day
    ("fedora-43", "debian-trixie", "flaky", (), TODAY + dt.timedelta(days=1), False),
    ("debian-bookworm", "opensuse-leap-15", ZYPPER, (), dt.date(2099, 1, 1), True),
    ("fedora-43", "debian-trixie", "no-such-entry", (), TODAY, False),
])
def test_a_cause_rule_allows_that_cause_only_until_it_expires(tmp_path, host, row, cause,
                                                             labels, today, allowed):
    allowance = lifecycle.cause_allowance(RULES, allowance_catalogue(tmp_path), today)
    category = Category(cause, cause, labels=[cause, *labels])
    assert allowance.allows(host, row, category) is allowed
    assert allowance.allows(host, row, None) is False


def test_an_expired_rule_is_said_in_one_warning_line(tmp_path):
    catalogue = allowance_catalogue(tmp_path)
    assert lifecycle.cause_allowance(RULES, catalogue, TODAY).warning() is None
    later = lifecycle.cause_allowance(RULES * 3, catalogue, TODAY + dt.timedelta(days=1))
    assert later.warning() == ("allowed-failures: past the catalogue entry's expires date, "
                               "failures with these causes vote again: flaky (expired "
                               "2025-06-10)")


def test_the_run_logs_the_expired_rules_once(tmp_path, caplog):
    config = SimpleNamespace(allowed_failures=RULES)
    with caplog.at_level("WARNING", logger="dib-matrix"):
        runner.allowance_of(config, allowance_catalogue(tmp_path))  # today is past 2025
    assert [r.getMessage() for r in caplog.records if "vote again" in r.getMessage()] == [
        "allowed-failures: past the catalogue entry's expires date, failures with these "
        "causes vote again: flaky (expired 2025-06-10)"]


@pytest.mark.parametrize("cause, state", [(ZYPPER, State.ALLOWED_FAILURE),
                                          ("mirror-unreachable", State.FAILED)])
def test_the_verdict_of_a_cell_follows_the_cause(tmp_path, cause, state):
    run = runner.MatrixRun.__new__(runner.MatrixRun)
    run.run_dir = tmp_path
    run.allowance = lifecycle.cause_allowance(RULES, load_catalogue(), TODAY)
    cell = Cell("debian-bookworm", "opensuse-leap-15", CellKind.BUILD)
    report = CellReport(State.FAILED, category=Category(cause, cause, labels=[cause]))
    run._fill(cell, SimpleNamespace(voting=True), report)
    assert cell.state is state
    assert gate_exit_code(make_run([cell])) == (0 if state is State.ALLOWED_FAILURE else 1)


def test_plan_refuses_an_allowed_failure_naming_no_entry(tmp_path):
    path = matrix(tmp_path, "- {target: opensuse-leap-15, cause: zypper-not-availble}\n")
    outcome = run_cli("plan", path, cwd=tmp_path)
    assert outcome.code == 2, outcome.output
    assert "allowed-failures[0].cause: 'zypper-not-availble' is no entry" in outcome.stderr
