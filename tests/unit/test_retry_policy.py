"""Cause-aware retries: the policy table, the back-off, the catalogue's ``retry`` key, the
``retry-delay`` matrix key, the scheduler's wait (cut short by a stopping run) and the
note a cell keeps in results.json and the reports."""

from __future__ import annotations

import json
import threading
import time

import pytest

from matrix.config.diagnostics import ConfigError
from matrix.config.matrixfile import MAX_RETRY_DELAY, load_matrix, resolve_matrix_path
from matrix.run.cellreport import CellReport
from matrix.run.plan import PlannedCell
from matrix.run.retry import Decision, RetryPolicy
from matrix.run.scheduler import Scheduler
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import classify_lines
from reports.html import render_html
from reports.markdown import render_markdown
from reports.text import render_report
from results.archive import RunDir
from results.model import Category, CellKind, State
from results.reader import read_results
from tests.hostile import golden_copy, run_cli
from tests.resultfactory import make_cell, make_run

CATALOGUE = load_catalogue()
RETRYABLE = CATALOGUE.retry_ids()
SCRIPT = "No such script: /usr/share/debootstrap/scripts/forky"


def report(state: State, cause: str | None, legend: str | None = None) -> CellReport:
    category = None if cause is None else Category(cause, legend or cause, labels=[cause])
    return CellReport(state, category=category)


def policy(retries: int = 2, delay: float = 30.0) -> RetryPolicy:
    return RetryPolicy(retries=retries, delay=delay, retryable=RETRYABLE)


# ---- the policy, as a table ---------------------------------------------------------------


@pytest.mark.parametrize("state, cause, legend, retries, attempt, retry, delay, note", [
    # a retryable cause: tried again after the back-off, while retries are left
    (State.FAILED, "mirror-unreachable", "mirror/network unreachable", 2, 1, True, 30.0,
     "attempt 1: mirror/network unreachable; retried after 30 s"),
    (State.FAILED, "mirror-out-of-sync", "mirror out of sync", 2, 2, True, 60.0,
     "attempt 2: mirror out of sync; retried after 1 min"),
    (State.ERROR, "engine-error", "container engine error", 1, 1, True, 30.0,
     "attempt 1: container engine error; retried after 30 s"),
    (State.FAILED, "registry-rate-limited", "rate limit", 1, 1, True, 30.0, "retried"),
    (State.FAILED, "package-index-unreachable", "PyPI", 1, 1, True, 30.0, "retried"),
    (State.FAILED, "mirror-unreachable", "mirror/network unreachable", 2, 3, False, 0.0,
     "attempt 3: mirror/network unreachable; no retries left (retries: 2)"),
    # a deterministic cause: never retried, and the cell says why
    (State.FAILED, "no-such-script", SCRIPT, 2, 1, False, 0.0,
     f"not retried: {SCRIPT} does not change on a retry"),
    (State.FAILED, "zypper-not-available", "zypper not available", 10, 1, False, 0.0,
     "not retried: zypper not available does not change on a retry"),
    (State.FAILED, "element-not-found", "element not found: x", 2, 1, False, 0.0,
     "not retried: element not found: x does not change on a retry"),
    (State.FAILED, "hook-failed", "install.d/50-x exited 1", 2, 1, False, 0.0,
     "does not change on a retry"),
    (State.ERROR, "qemu-error", "boot: qemu failed", 2, 1, False, 0.0,
     "does not change on a retry"),
    # no named cause: nothing says a retry can fix it
    (State.FAILED, "uncategorized", "uncategorized", 2, 1, False, 0.0,
     "not retried: the cause is unknown (uncategorized)"),
    (State.FAILED, None, None, 2, 1, False, 0.0, "the cause is unknown"),
    # a cell killed at its own timeout: a retry would take as long again, whatever matched
    (State.TIMEOUT, "timeout", "timeout", 2, 1, False, 0.0, "used its whole timeout"),
    (State.TIMEOUT, "mirror-unreachable", "mirror/network unreachable", 2, 1, False, 0.0,
     "used its whole timeout"),
    # nothing to retry, or no retries asked: no note at all
    (State.SUCCESS, None, None, 2, 1, False, 0.0, None),
    (State.SKIPPED, "missing-dependency", "missing dependency", 2, 1, False, 0.0, None),
    (State.FAILED, "mirror-unreachable", "mirror/network unreachable", 0, 1, False, 0.0, None),
    (State.FAILED, "no-such-script", SCRIPT, 0, 1, False, 0.0, None),
])
def test_the_retry_policy_table(state, cause, legend, retries, attempt, retry, delay, note):
    decision = policy(retries).decide(report(state, cause, legend), attempt)
    assert (decision.retry, decision.delay) == (retry, delay)
    if note is None:
        assert decision.note is None
    else:
        assert note in decision.note


def test_a_user_catalogue_decides_what_is_retryable(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("- id: flaky-proxy\n  patterns: ['proxy hiccup']\n  retry: true\n"
                    "- id: mirror-unreachable\n  patterns: ['mirror gone']\n")
    catalogue = load_catalogue([mine])
    assert "flaky-proxy" in catalogue.retry_ids()
    # A replaced entry is what its file says: retry is false unless the file says true.
    assert "mirror-unreachable" not in catalogue.retry_ids()
    user = RetryPolicy(retries=1, delay=0, retryable=catalogue.retry_ids())
    assert user.decide(report(State.FAILED, "flaky-proxy"), 1) == Decision(
        True, 0.0, "attempt 1: flaky-proxy; retried at once")


@pytest.mark.parametrize("value", ['"yes"', "1", "0", "[true]", "null", "'true'"])
def test_the_retry_key_takes_only_a_boolean(value, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"- id: x\n  patterns: [x]\n  retry: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_catalogue([mine])
    assert "mine.yaml:3: [0].retry: must be true or false" in str(err.value)


def test_the_bundled_catalogue_retries_only_what_a_retry_can_fix():
    retryable = CATALOGUE.retry_ids()
    assert retryable == {"mirror-unreachable", "mirror-out-of-sync", "engine-error",
                         "engine-unreachable", "registry-rate-limited",
                         "package-index-unreachable"}
    # Every retryable cause is infrastructure: a build's own failure never is.
    assert retryable <= CATALOGUE.infrastructure_ids()


@pytest.mark.parametrize("line, retried", [
    ("E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/"
     "Packages.xz  Hash Sum mismatch", True),
    ("W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  "
     "Temporary failure resolving 'deb.debian.org'", True),
    ("E: Failed to fetch http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64"
     ".deb  Connection timed out [IP: 151.101.2.132 80]", True),
    ("engine error: APIError('500 Server Error')", True),
    ("toomanyrequests: You have reached your pull rate limit.", True),
    (f"E: {SCRIPT}", False),
    ("zypper not available", False),
    ("dib: element not found: no-such-element", False),
    ("something nobody has seen before", False),
])
def test_log_lines_judged_by_the_bundled_catalogue(line, retried):
    verdict = classify_lines(["noise", line], "h", "t", CATALOGUE)
    decided = policy().decide(CellReport(State.FAILED, category=verdict.category), 1)
    assert decided.retry is retried, verdict.category


# ---- the back-off ---------------------------------------------------------------------------


def test_the_back_off_doubles_up_to_its_cap():
    waits = [policy(delay=30).backoff(attempt) for attempt in range(1, 9)]
    assert waits == [30, 60, 120, 240, 480, 600, 600, 600]
    assert MAX_RETRY_DELAY == 600
    assert [policy(delay=0).backoff(a) for a in (1, 2, 10)] == [0, 0, 0]


@pytest.mark.parametrize("attempt", [0, -5, 10**6, 2**70])
def test_the_back_off_is_bounded_for_any_attempt_number(attempt):
    wait = policy(delay=1).backoff(attempt)
    assert 1 <= wait <= MAX_RETRY_DELAY


def test_a_first_delay_above_the_cap_is_kept_not_shortened():
    assert RetryPolicy(retries=3, delay=900, cap=600).backoff(2) == 900


# ---- the matrix key -------------------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    ("30s", 30.0), ("1s", 1.0), ("2m", 120.0), ("10m", 600.0), (0, 0.0), ("0", 0.0),
    ("0s", 0.0), (45, 45.0), (1.5, 1.5)])
def test_retry_delay_is_a_duration_of_at_most_ten_minutes(value, seconds):
    config = load_matrix(resolve_matrix_path(None), overrides={"retry-delay": value})
    assert config.retry_delay == seconds


def test_retry_delay_defaults_to_thirty_seconds():
    assert load_matrix(resolve_matrix_path(None)).retry_delay == 30.0


@pytest.mark.parametrize("value", ["11m", "1h", "-1s", "-0.5", "nan", ".inf", "1e3", "soon",
                                   True, [1], {"a": 1}, float("nan"), float("inf"), -1, ""])
def test_retry_delay_refuses_what_is_no_duration_or_too_long(value):
    with pytest.raises(ConfigError) as err:
        load_matrix(resolve_matrix_path(None), overrides={"retry-delay": value})
    assert "--retry-delay" in str(err.value)


@pytest.mark.parametrize("value", ["nan", "100000h", "-1", "1e309", "\x1b[2J"])
def test_a_hostile_retry_delay_on_the_command_line_is_refused_with_exit_2(value, tmp_path):
    outcome = run_cli("plan", "--retry-delay", value, cwd=tmp_path)
    assert outcome.code == 2, outcome.output
    assert "--retry-delay" in outcome.output
    assert "\x1b" not in outcome.output


def test_retry_delay_in_a_matrix_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("hosts: [debian-bookworm]\ntargets: [debian-bookworm-vm]\nretries: 1\n"
                    "retry-delay: 1s\n")
    config = load_matrix(path)
    assert (config.retries, config.retry_delay) == (1, 1.0)
    path.write_text("hosts: [debian-bookworm]\ntargets: [debian-bookworm-vm]\n"
                    "retry-delay: 1 day\n")
    with pytest.raises(ConfigError) as err:
        load_matrix(path)
    assert "m.yaml:3: retry-delay: cannot read duration" in str(err.value)


# ---- the scheduler: waits, doubling, interruption, the note ---------------------------------


class RecordedWaits(threading.Event):
    """A stop event whose waits return at once and are written down."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        return self.is_set()


class FakeHost:
    name = "h"


def planned(*rows: str) -> list[PlannedCell]:
    return [PlannedCell(FakeHost(), row, CellKind.BUILD) for row in rows]


def schedule(answers, retry: RetryPolicy, stop: threading.Event | None = None,
             on_finish=None) -> dict[str, CellReport]:
    """Run cells whose attempts answer ``answers[row](attempt)`` under ``retry``."""
    done: dict[str, CellReport] = {}

    def finish(cell: PlannedCell, outcome: CellReport) -> None:
        done[cell.id] = outcome
        if on_finish is not None:
            on_finish(cell, outcome)

    Scheduler(planned(*answers), lambda cell, attempt: answers[cell.row](attempt), finish,
              max_parallel=2, decide=retry.decide, stop=stop).run()
    return done


def test_a_retryable_failure_waits_doubling_and_then_passes():
    stop = RecordedWaits()
    unreachable = report(State.FAILED, "mirror-unreachable", "mirror/network unreachable")
    answers = {"t": lambda attempt: unreachable if attempt < 3 else CellReport(State.SUCCESS)}
    done = schedule(answers, policy(retries=3, delay=30), stop)
    assert stop.waits == [30, 60]
    cell = done["h.t"]
    assert (cell.state, cell.attempts) == (State.SUCCESS, 3)
    assert cell.retry == ("attempt 1: mirror/network unreachable; retried after 30 s; "
                          "attempt 2: mirror/network unreachable; retried after 1 min")


def test_a_deterministic_failure_runs_once_and_says_why():
    stop = RecordedWaits()
    calls = []

    def missing_script(attempt: int) -> CellReport:
        calls.append(attempt)
        return report(State.FAILED, "no-such-script", SCRIPT)

    done = schedule({"t": missing_script}, policy(retries=2), stop)
    assert calls == [1] and stop.waits == []
    assert done["h.t"].attempts == 1
    assert done["h.t"].retry == f"not retried: {SCRIPT} does not change on a retry"


def test_a_cause_that_turns_deterministic_stops_the_retries():
    unreachable = report(State.FAILED, "mirror-unreachable", "mirror/network unreachable")
    script = report(State.FAILED, "no-such-script", SCRIPT)
    answers = {"t": lambda attempt: unreachable if attempt == 1 else script}
    done = schedule(answers, policy(retries=5, delay=0), RecordedWaits())
    assert done["h.t"].attempts == 2
    assert done["h.t"].retry.endswith(f"not retried: {SCRIPT} does not change on a retry")


def test_retries_used_up_are_said():
    unreachable = report(State.FAILED, "mirror-unreachable", "mirror/network unreachable")
    done = schedule({"t": lambda attempt: unreachable}, policy(retries=2, delay=1),
                    RecordedWaits())
    assert done["h.t"].attempts == 3
    assert done["h.t"].retry.endswith("attempt 3: mirror/network unreachable; no retries "
                                      "left (retries: 2)")


def test_a_stop_during_the_back_off_ends_the_wait_at_once():
    stop = threading.Event()
    unreachable = report(State.FAILED, "mirror-unreachable", "mirror/network unreachable")
    threading.Timer(0.3, stop.set).start()
    began = time.monotonic()
    done = schedule({"t": lambda attempt: unreachable}, policy(retries=3, delay=300), stop)
    assert time.monotonic() - began < 10
    # Cut short: no verdict, a resumed run runs it again.
    assert done["h.t"].state is State.PENDING and done["h.t"].reason == "interrupted"


def test_ctrl_c_during_another_cells_back_off_does_not_wait_it_out():
    unreachable = report(State.FAILED, "mirror-unreachable", "mirror/network unreachable")

    def slow_success(attempt: int) -> CellReport:
        time.sleep(0.5)  # the other cell is in its back-off by now
        return CellReport(State.SUCCESS)

    def interrupt(cell: PlannedCell, outcome: CellReport) -> None:
        if cell.row == "slow":
            raise KeyboardInterrupt

    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        schedule({"slow": slow_success, "flaky": lambda attempt: unreachable},
                 policy(retries=3, delay=300), threading.Event(), on_finish=interrupt)
    assert time.monotonic() - began < 10


# ---- results.json and the reports -----------------------------------------------------------

NOTE = f"not retried: {SCRIPT} does not change on a retry"


def noted_run():
    cell = make_cell("h", "t", State.FAILED, category=Category("no-such-script", SCRIPT),
                     retry=NOTE)
    passed = make_cell("h", "u", State.SUCCESS, attempts=2,
                       retry="attempt 1: mirror/network unreachable; retried after 30 s")
    return make_run([make_cell("h", "hostgen"), cell, passed])


def test_the_note_is_saved_and_read_back(tmp_path):
    run_dir = RunDir(tmp_path / "run-1")
    run_dir.create()
    run_dir.save(noted_run())
    document = json.loads((run_dir.path / "results.json").read_text())
    by_id = {c["id"]: c for c in document["cells"]}
    assert by_id["h.t"]["retry"] == NOTE
    assert "retry" not in by_id["h.hostgen"]  # no note: no key, as in older runs
    back = read_results(run_dir.path)
    assert back.cell("h", "t").retry == NOTE and back.cell("h", "hostgen").retry is None


def test_the_reports_show_the_note(tmp_path):
    results = noted_run()
    text = render_report(results)
    assert f"  h.t: {NOTE}" in text
    assert "  h.u: attempt 1: mirror/network unreachable; retried after 30 s" in text
    assert NOTE in render_html(results)
    assert f"  - retry: {NOTE}\n" in render_markdown(results)


def test_a_note_of_long_legends_stays_readable_by_the_reader(tmp_path):
    """Legends filled from log lines can be kilobytes: the note a run writes must never be
    one its own reader refuses (results.schema.json takes at most 20000 characters)."""
    long_cause = report(State.FAILED, "mirror-unreachable", "unreachable " + "x" * 5000)
    done = schedule({"t": lambda attempt: long_cause},
                    RetryPolicy(retries=50, delay=0, retryable=RETRYABLE), RecordedWaits())
    note = done["h.t"].retry
    assert done["h.t"].attempts == 51 and len(note) <= 8000
    long_script = report(State.FAILED, "no-such-script", "No such script: " + "y" * 5000)
    assert len(policy().decide(long_script, 1).note) < 400
    run_dir = RunDir(tmp_path / "run-1")
    run_dir.create()
    run_dir.save(make_run([make_cell("h", "t", State.FAILED, retry=note)]))
    assert read_results(run_dir.path).cell("h", "t").retry == note


def test_a_run_without_notes_has_no_retries_section(all_states):
    assert "retries:" not in render_report(all_states)


HOSTILE_NOTE = "x\x1b[2J\x1b]8;;http://evil\x07<script>alert(1)</script>\n**@admin** #1 `y`"


def test_a_hostile_note_is_inert_in_every_report():
    results = noted_run()
    results.cell("h", "t").retry = HOSTILE_NOTE * 200
    text = render_report(results)
    assert "\x1b" not in text and "\x07" not in text
    line = next(x for x in text.splitlines() if x.startswith("  h.t: "))
    assert len(line) < 700  # one bounded line
    html = render_html(results)
    assert "<script>alert" not in html and "\x1b" not in html
    markdown = render_markdown(results)
    assert "<script>" not in markdown and "@admin" not in markdown and "\x1b" not in markdown
    assert "\n**" not in markdown


@pytest.mark.parametrize("value", [5, ["a"], {"a": 1}, True, "x" * 20001])
def test_a_results_file_with_a_bad_note_is_refused_with_exit_2(value, tmp_path):
    def edit(document):
        document["cells"][0]["retry"] = value

    run_dir = golden_copy(tmp_path / "run", edit)
    for fmt in ("text", "html", "markdown"):
        outcome = run_cli("report", run_dir, "--format", fmt)
        assert outcome.code == 2, outcome.output
        assert "retry" in outcome.output


def test_a_results_file_with_a_note_reports_it(tmp_path):
    def edit(document):
        document["cells"][0]["retry"] = "not retried: zypper not available does not change"

    run_dir = golden_copy(tmp_path / "run", edit)
    outcome = run_cli("report", run_dir, "--format", "text")
    assert outcome.code == 0, outcome.output
    assert "not retried: zypper not available does not change" in outcome.stdout
