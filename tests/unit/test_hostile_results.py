"""Tampered results.json through the real command line: one reader, one way to refuse.

Each class of bad file (not JSON's JSON, wrong types, names that are paths, a cell
listed twice, ``voting: "false"``, special files and huge files as the path) given to
``report``, ``compare`` and ``show``: exit 2, one line naming the file and the JSON
path of the problem, no traceback, no hang. A bad run *beside* others (``report
--history``, the reuse index, the estimates, ``plan --shards --history``) is
skipped with one warning and costs nothing else.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import reports
from matrix.run.progress import load_estimates
from matrix.run.reuse import index_previous
from matrix.run.shards import load_history
from reports.history import load_runs
from results.model import State
from results.reader import MAX_BYTES, ResultsError, read_results
from tests.hostile import Outcome, TreeWatch, golden_copy, run_cli, write_results
from tests.resultfactory import ALL_STATES

EXIT_USAGE = 2
GOLDEN_TEXT = (ALL_STATES / "results.json").read_text(encoding="utf-8")
GOLDEN_ID = json.loads(GOLDEN_TEXT)["run_id"]
FAILED = 4  # cells[4] of the golden run failed (debian-bookworm.debian-forky)
BAD_ID = "20200101-000000-bad0"  # a run older than the golden one


def text_edit(old: str, new: str) -> str:
    """The golden file with the first ``old`` replaced by ``new`` (what json.dumps cannot
    write: NaN, duplicate keys, lone surrogates)."""
    assert old in GOLDEN_TEXT, old
    return GOLDEN_TEXT.replace(old, new, 1)


def setter(*at: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        target = document
        for part in at[:-1]:
            target = target[part]
        target[at[-1]] = value
    return edit


def deleter(*at: Any) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        target = document
        for part in at[:-1]:
            target = target[part]
        del target[at[-1]]
    return edit


def twin(index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    """cells[index] listed a second time, at the end, with ``changes``."""
    def edit(document: dict[str, Any]) -> None:
        document["cells"].append({**document["cells"][index], **changes})
    return edit


def both(*edits: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        for one in edits:
            one(document)
    return edit


def shard_mark(document: dict[str, Any]) -> dict[str, Any]:
    hosts = document["hosts"]
    return {"kind": "part", "index": 1, "count": 2, "matrix_hash": "ab" * 32,
            "hosts": hosts[:2],
            "plan": {"hosts": hosts, "rows": document["rows"],
                     "assignment": {h: 1 if i < 2 else 2 for i, h in enumerate(hosts)},
                     "cells": [[c["host"], c["row"], c["kind"], c["voting"]]
                               for c in document["cells"]]}}


def shard(edit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """A shard's run whose mark ``edit`` then tampers with."""
    def add(document: dict[str, Any]) -> None:
        document["shard"] = shard_mark(document)
        edit(document["shard"])
    return add


# name: (raw text of results.json, or an edit of the golden document; the JSON path named)
CASES: dict[str, tuple[str | Callable[[dict[str, Any]], Any], str]] = {
    # not a results document at all
    "a list": ("[]", "$"),
    "null": ("null", "$"),
    "a string": ('"results"', "$"),
    "empty file": ("", "$"),
    "not JSON": ("{not json", "$"),
    "byte order mark": ("\ufeff" + GOLDEN_TEXT, "$"),
    "not UTF-8": ('{"run_id": "\xff\xfe"}', "$"),
    "deep arrays": ("[" * 100_000 + "]" * 100_000, "$"),
    "deep objects": ('{"a": ' * 50_000 + "1" + "}" * 50_000, "$"),
    "deep inside a cell": (text_edit('"free_bytes": {}', '"free_bytes": ' + "[" * 40
                                     + "]" * 40), "$.cells[0].free_bytes[0][0][0][0][0]..."),
    "another schema version": (setter("schema_version", value=2), "$.schema_version"),
    "a key missing": (deleter("run_id"), "$"),
    # JSON that Python reads but JSON does not have, or that hides data
    "NaN": (text_edit('"duration": 179.5', '"duration": NaN'), "$.cells[0].duration"),
    "Infinity": (text_edit('"duration": 179.5', '"duration": -Infinity'),
                 "$.cells[0].duration"),
    "an overflowing number": (text_edit('"duration": 179.5', '"duration": 1e999'),
                              "$.cells[0].duration"),
    "a huge integer": (text_edit('"attempts": 1', '"attempts": ' + "9" * 5000),
                       "$.cells[0].attempts"),
    "a lone surrogate": (text_edit('"evidence": null', '"evidence": "\\ud800"'),
                         "$.cells[0].evidence"),
    "a lone surrogate in a key": (text_edit('"free_bytes": {}', '"free_bytes": {"\\udfff": 1}'),
                                  "$.cells[0].free_bytes"),
    "a duplicate key": (text_edit('"state": "success"', '"state": "failed", "state": "success"'),
                        "$.cells[0]"),
    # types and closed sets
    "voting as a string": (setter("cells", FAILED, "voting", value="false"),
                           "$.cells[4].voting"),
    "voting as a number": (setter("cells", FAILED, "voting", value=0), "$.cells[4].voting"),
    "an unknown state": (setter("cells", 0, "state", value="exploded"), "$.cells[0].state"),
    "an unknown kind": (setter("cells", 0, "kind", value="rocket"), "$.cells[0].kind"),
    "attempts as a string": (setter("cells", 0, "attempts", value="1"), "$.cells[0].attempts"),
    "cells as an object": (setter("cells", value={"a": 1}), "$.cells"),
    "hosts as a string": (setter("hosts", value="debian-bookworm"), "$.hosts"),
    "a cell as a list": (setter("cells", 1, value=[1, 2]), "$.cells[1]"),
    "a category as a list": (setter("cells", FAILED, "category", value=["x"]),
                             "$.cells[4].category"),
    "an unexpected key": (setter("cells", 0, "\x1b[31mextra", value=1), "$.cells[0]"),
    # names that are paths, or that a terminal acts on
    "a host that climbs": (setter("cells", 3, "host", value="../../x"), "$.cells[3].host"),
    "an absolute host": (setter("hosts", 0, value="/etc"), "$.hosts[0]"),
    "a row with a newline": (setter("cells", 2, "row", value="a\nb"), "$.cells[2].row"),
    "a host with an escape": (setter("cells", 3, "host", value="\x1b[31mred"),
                              "$.cells[3].host"),
    "a very long host": (setter("cells", 3, "host", value="a" * 100_000), "$.cells[3].host"),
    "a run id that climbs": (setter("run_id", value="../x"), "$.run_id"),
    "a host image of no host": (setter("host_images", "../x", value="tag"),
                                "$.host_images['../x']"),
    "a host twice": (setter("hosts", 1, value="debian-bookworm"), "$.hosts[1]"),
    # paths outside their place
    "a log outside the run": (setter("cells", 0, "log", value="../../../etc/passwd"),
                              "$.cells[0].log"),
    "an absolute log": (setter("cells", 0, "log", value="/etc/passwd"), "$.cells[0].log"),
    "a log that is the results": (setter("cells", 0, "log", value="results.json"),
                                  "$.cells[0].log"),
    "an image outside the run": (setter("cells", 2, "artifacts", 0, "path",
                                        value="images/../../x"), "$.cells[2].artifacts[0].path"),
    # cells that hide each other
    "a cell listed twice": (twin(FAILED, state="success", category=None), "$.cells[36].id"),
    "an id that is not host.row": (setter("cells", 0, "id", value="debian-trixie.hostgen"),
                                   "$.cells[0].id"),
    "two names, one id": (both(twin(0, host="a.b", row="c", id="a.b.c"),
                               twin(0, host="a", row="b.c", id="a.b.c")), "$.cells[37].id"),
    # a shard's mark
    "a shard past the count": (shard(setter("index", value=3)), "$.shard.index"),
    "a shard count past the cap": (shard(setter("count", value=10 ** 9)), "$.shard.count"),
    "a shard host that climbs": (shard(setter("hosts", 0, value="../x")), "$.shard.hosts[0]"),
    "a planned host that climbs": (shard(setter("plan", "cells", 0, 0, value="/etc")),
                                   "$.shard.plan.cells[0][0]"),
    "an assignment of no host": (shard(setter("plan", "assignment", "../../x", value=1)),
                                 "$.shard.plan.assignment['../../x']"),
    "a planned cell of no kind": (shard(setter("plan", "cells", 0, 2, value="rocket")),
                                  "$.shard.plan.cells[0][2]"),
    "a part without its plan": (shard(deleter("plan")), "$.shard"),
}
COMMANDS = ("report", "compare", "show")
# Through the command line (a child process each): two of each class, the rest in process.
CLI_CASES = ["a list", "deep arrays", "NaN", "a lone surrogate", "a duplicate key",
             "not UTF-8", "voting as a string", "an unknown state", "a host with an escape",
             "a very long host", "a log outside the run", "an image outside the run",
             "a cell listed twice", "two names, one id", "a shard past the count",
             "an assignment of no host", "a key missing", "another schema version"]


def bad_run(tmp_path: Path, name: str) -> Path:
    """A run directory (the golden one's logs) whose results.json is case ``name``."""
    content, _ = CASES[name]
    run_dir = tmp_path / BAD_ID
    if callable(content):
        return golden_copy(run_dir, content)
    golden_copy(run_dir)
    write_results(run_dir, content)
    return run_dir


def cli(command: str, target: Path) -> Outcome:
    """``command`` reading ``target`` (compare: as the new run, after the golden one)."""
    if command == "report":
        return run_cli("report", target)
    if command == "compare":
        return run_cli("compare", ALL_STATES, target)
    return run_cli("show", target, "*")


def assert_refused(outcome: Outcome, file: str, where: str | None = None) -> str:
    """Exit 2, nothing on stdout, one printable line on stderr naming ``file`` (and
    ``where``)."""
    assert outcome.code == EXIT_USAGE, outcome.output[-2000:]
    assert outcome.stdout == ""
    line = outcome.stderr.rstrip("\n")
    assert "\n" not in line and line.isprintable(), repr(outcome.stderr)
    assert line.startswith("dib-matrix: ") and file in line, line
    if where is not None:
        assert f"{file}: {where}: " in line, line
    assert len(line) < 600, line
    return line


@pytest.mark.parametrize("name", CASES)
def test_a_bad_file_is_refused_with_where(tmp_path, name):
    """In process, every case: ResultsError naming the file and the JSON path."""
    run_dir = bad_run(tmp_path, name)
    with pytest.raises(ResultsError) as caught:
        read_results(run_dir)
    message = str(caught.value)
    assert message.startswith(f"{run_dir / 'results.json'}: {CASES[name][1]}: "), message
    assert message.isprintable() and len(message) < 600, repr(message)


@pytest.mark.parametrize("name", CLI_CASES)
def test_the_cli_refuses_a_bad_file_in_one_line(tmp_path, name):
    """Through the command line: each case read by one of report, compare and show (in
    turn), exit 2, one line, no traceback, nothing else touched."""
    run_dir = bad_run(tmp_path, name)
    command = COMMANDS[CLI_CASES.index(name) % len(COMMANDS)]
    watch = TreeWatch(tmp_path)
    outcome = cli(command, run_dir)
    assert_refused(outcome, str(run_dir / "results.json"), CASES[name][1])
    watch.assert_untouched()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", ["a list", "a cell listed twice", "a host that climbs"])
def test_every_reader_refuses_the_same_way(tmp_path, name, command):
    run_dir = bad_run(tmp_path, name)
    assert_refused(cli(command, run_dir), str(run_dir / "results.json"), CASES[name][1])


def special(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """(what to give the command, the file its message names) for a special file."""
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        return tmp_path / "fifo", str(tmp_path / "fifo")
    if kind == "zero":
        return Path("/dev/zero"), "/dev/zero"
    run_dir = tmp_path / BAD_ID
    run_dir.mkdir()
    results = run_dir / "results.json"
    if kind == "fifo in a run":
        os.mkfifo(results)
    elif kind == "link to zero in a run":
        results.symlink_to("/dev/zero")
    elif kind == "directory in a run":
        results.mkdir()
    else:  # a sparse file far over the bound: refused before a byte of it is parsed
        with results.open("wb") as stream:
            stream.truncate(4 * MAX_BYTES)
    return run_dir, str(results)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", ["fifo", "zero", "fifo in a run"])
def test_special_files_are_refused_without_a_hang(tmp_path, kind, command):
    target, file = special(tmp_path, kind)
    line = assert_refused(cli(command, target), file)
    assert "not a regular file" in line, line


@pytest.mark.parametrize("kind", ["link to zero in a run", "directory in a run",
                                  "huge file in a run"])
def test_links_directories_and_huge_files_are_refused(tmp_path, kind):
    target, file = special(tmp_path, kind)
    command = ["link to zero in a run", "directory in a run", "huge file in a run"].index(kind)
    line = assert_refused(cli(COMMANDS[command], target), file)
    assert re.search("not a regular file|larger than", line), line


def test_compare_cannot_call_a_hidden_failure_a_fix(tmp_path):
    """The new run lists the failed cell twice, the second copy a success: a reader that
    keeps the last would report a fix; the run is refused instead."""
    old = golden_copy(tmp_path / "old")
    new = golden_copy(tmp_path / "new", twin(FAILED, state="success", category=None))
    outcome = run_cli("compare", old, new)
    assert_refused(outcome, str(new / "results.json"), "$.cells[36].id")
    assert "fix" not in outcome.output.lower()
    # the same cell twice in the old run cannot turn a regression into nothing either
    outcome = run_cli("compare", new, old)
    assert_refused(outcome, str(new / "results.json"), "$.cells[36].id")


def test_voting_false_as_a_string_cannot_pass_the_gate(tmp_path):
    new = golden_copy(tmp_path / "new", setter("cells", FAILED, "voting", value="false"))
    outcome = run_cli("compare", ALL_STATES, new)
    assert_refused(outcome, str(new / "results.json"), "$.cells[4].voting")


# ---------------------------------------------------------------- bad runs beside others


def sibling(out: Path, kind: str) -> Path:
    """A bad run beside the good ones under ``out``."""
    run_dir = out / BAD_ID
    if kind == "a list":
        run_dir.mkdir()
        write_results(run_dir, "[]")
    elif kind == "a cell without its kind":  # KeyError in --reuse before
        golden_copy(run_dir, deleter("cells", 2, "kind"))
    elif kind == "a fifo":
        run_dir.mkdir()
        os.mkfifo(run_dir / "results.json")
    elif kind == "a host that climbs":
        golden_copy(run_dir, setter("cells", 3, "host", value="../../x"))
    else:  # NaN in a duration
        run_dir.mkdir()
        write_results(run_dir, text_edit('"duration": 179.5', '"duration": NaN'))
    return run_dir


SIBLINGS = ["a list", "a cell without its kind", "a fifo", "a host that climbs", "NaN"]


@pytest.fixture
def out(tmp_path) -> Path:
    """An output directory: the golden run, ``latest`` pointing at it."""
    out = tmp_path / "out"
    golden_copy(out / GOLDEN_ID)
    (out / "latest").symlink_to(GOLDEN_ID)
    return out


def one_warning(err: str, run_dir: Path) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"dib-matrix: warning: skipped {run_dir}/results.json: "), err
    assert lines[0].isprintable(), err


@pytest.mark.parametrize("kind", SIBLINGS)
def test_report_history_skips_a_bad_sibling_with_one_warning(out, kind):
    bad = sibling(out, kind)
    run_dir = out / GOLDEN_ID
    written = [run_dir / n for n in ("report.txt", "report.html", "junit.xml")]
    watch = TreeWatch(out.parent, *written, out / "index.html")
    outcome = run_cli("report", run_dir, "--history", out)
    assert outcome.code == 0, outcome.output[-2000:]
    one_warning(outcome.stderr, bad)
    assert all(p.is_file() for p in [*written, out / "index.html"])
    assert GOLDEN_ID in (out / "index.html").read_text()
    watch.assert_untouched()


@pytest.mark.parametrize("kind", SIBLINGS)
def test_the_reports_a_run_writes_survive_a_bad_sibling(out, kind, capsys):
    """``run`` ends in reports.write_all with the output directory as history."""
    bad = sibling(out, kind)
    run_dir = out / GOLDEN_ID
    reports.write_all(run_dir, read_results(run_dir), history_dir=out)
    one_warning(capsys.readouterr().err, bad)
    assert (run_dir / "report.html").is_file() and (out / "index.html").is_file()


@pytest.mark.parametrize("kind", SIBLINGS)
def test_listings_skip_a_bad_run_with_a_warning(out, kind, capsys):
    bad = sibling(out, kind)
    golden = read_results(out / GOLDEN_ID)

    assert [r.run_id for r in load_runs(out)] == [GOLDEN_ID]
    one_warning(capsys.readouterr().err, bad)

    reusable = index_previous(out, exclude_run="20990101-000000-next", with_failures=True)
    assert {r.run_dir for r in reusable.values()} == {out / GOLDEN_ID}
    assert {c.key for c in golden.cells if c.key and c.state in (State.SUCCESS, State.FAILED)
            and not c.passed_on_retry} == set(reusable)
    one_warning(capsys.readouterr().err, bad)

    estimates = load_estimates(out, exclude_run="20990101-000000-next")
    assert estimates.by_cell  # from the golden run
    one_warning(capsys.readouterr().err, bad)

    assert [r.run_id for r in load_history(out)] == [GOLDEN_ID]
    one_warning(capsys.readouterr().err, bad)


def test_listings_leave_out_links_and_the_current_run_silently(out, capsys):
    (out / "20990101-000000-next").mkdir()
    write_results(out / "20990101-000000-next", "[]")  # the run going on, half written
    (out / "20000101-000000-link").symlink_to(out / GOLDEN_ID)
    assert len(index_previous(out, exclude_run="20990101-000000-next")) > 0
    load_estimates(out, exclude_run="20990101-000000-next")
    assert capsys.readouterr().err == ""
    assert [r.run_id for r in load_runs(out, warn=lambda m: None)] == [GOLDEN_ID]


def test_plan_shards_history_skips_a_bad_run(out):
    bad = sibling(out, "a list")
    outcome = run_cli("plan", "--shards", "2", "--history", out)
    assert outcome.code == 0, outcome.output[-2000:]
    one_warning(outcome.stderr, bad)
    assert "recorded durations of 1 earlier runs" in outcome.stdout


@pytest.mark.parametrize("name", ["a list", "a host that climbs", "a cell listed twice"])
def test_run_resume_refuses_a_bad_run(tmp_path, name):
    """``run --resume RUN_DIR`` (and ``--cells``) reads the run before anything starts."""
    run_dir = bad_run(tmp_path, name)
    watch = TreeWatch(tmp_path)
    outcome = run_cli("run", "--resume", run_dir, "--cells", "*.tox")
    assert_refused(outcome, str(run_dir / "results.json"), CASES[name][1])
    watch.assert_untouched()
