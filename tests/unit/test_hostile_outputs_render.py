"""What the tool prints and publishes is safe, whatever a run directory or a matrix file holds.

Free text in results.json (evidence, legends, reasons, reproducers, check details,
documentation links, host image tags, the matrix path), log lines, and reasons in a
matrix file carry terminal escapes, carriage returns, C1 controls, bidi overrides,
NULs and characters XML 1.0 forbids. Through the real command line:

- nothing printed to a terminal (report in every format, compare, show, plan) and no
  report file written holds a control character that a terminal, a parser or the
  reading direction would obey;
- junit.xml always parses (``xml.etree`` and junitparser);
- report.html and index.html link only to relative paths into the run directory;
- JSON output is strict (no NaN/Infinity), even when an estimate overflows;
- a reader that closes the pipe early (``| head``) or a Ctrl-C ends quietly.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from junitparser import JUnitXml

from matrix.cli import hostcli, main, runcli
from matrix.hostgen.build import HostgenOutcome, HostgenStatus
from matrix.verdict.classify import Verdict
from reports.history import TrendPoint
from reports.html import render_html, render_index
from reports.jsonreport import dumps, render_json
from reports.junit import render_junit
from reports.sanitize import SafeFormatter, clean_line, clean_text, one_line, safe_text
from reports.text import render_report
from results.model import Artifact, Category, State
from tests.hostile import REPO, golden_copy, run_cli
from tests.resultfactory import category, make_cell, make_run

# Each piece is one class of hostile character; HOSTILE holds them all.
PIECES = {
    "osc-title": "\x1b]0;pwned\x07",
    "csi-clear": "\x1b[2J",
    "csi-colour": "\x1b[31;1m",
    "lone-esc": "\x1b",
    "cr": "\r",
    "crlf": "\r\n",
    "bel": "\x07",
    "nul": "\x00",
    "c1-csi": "\x9b6n",
    "c1-nel": "\x85",
    "c1-osc": "\x9d0;t\x9c",
    "del": "\x7f",
    "vt-ff": "\x0b\x0c",
    "xml-illegal": "\x01\x02\x08\x1f",
    "nonchar": "\ufffe\uffff",
    "rlo": "\u202e",
    "bidi-isolate": "\u2066\u2067\u2068\u2069",
    "lrm-rlm": "\u200e\u200f\u061c",
    "line-sep": "\u2028\u2029",
}
HOSTILE = "before " + " ".join(PIECES.values()) + " after"
# Independent of reports.sanitize: what must never reach an output.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                    "\u2066-\u2069\u2028\u2029\ud800-\udfff\ufffe\uffff]")
OUTSIDE = ("https://evil.example/x", "//evil.example/x", "javascript:alert(1)",
           "JaVaScRiPt:alert(1)", "data:text/html,x", "/etc/passwd", "../../x", "\\\\evil\\x",
           " javascript:alert(1)", "http:evil.example")


def unsafe_in(text: str) -> list[str]:
    return sorted({f"U+{ord(ch):04X}" for ch in UNSAFE.findall(text)})


def assert_clean(text: str, where: str) -> None:
    found = unsafe_in(text)
    assert not found, f"{where}: control characters {found} in {text[-400:]!r}"


def strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def tamper(document: dict[str, Any]) -> None:
    """Hostile text in every free-text field of a golden results.json (names stay valid)."""
    document["matrix"] = f"matrix {HOSTILE}.yaml"
    document["host_images"] = {h: f"dib-matrix/host-{h}:{HOSTILE}" for h in document["hosts"]}
    for cell in document["cells"]:
        for key in ("evidence", "reason", "reproducer"):
            cell[key] = f"{key} {HOSTILE}"
        if cell.get("category"):
            cell["category"]["legend"] = f"legend {HOSTILE}"
            cell["category"]["link"] = "https://evil.example/x"
        if cell["state"] == "success" and cell["kind"] == "build":
            cell["checks"] = [{"name": "os-release", "ok": True, "detail": f"found {HOSTILE}"}]


@pytest.fixture
def hostile_run(tmp_path: Path) -> Path:
    run_dir = golden_copy(tmp_path / "hostile", tamper)
    for log in (run_dir / "logs").rglob("*.log"):
        with log.open("a", encoding="utf-8") as stream:
            stream.write(f"E: {HOSTILE}\nprogress 10%\rprogress 100%\x1b[K\n")
    return run_dir


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.targets: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src", "action", "formaction", "srcset", "poster", "data"):
                self.targets.append((tag, name, value or ""))


def _links(html: str) -> list[tuple[str, str, str]]:
    parser = Links()
    parser.feed(html)
    return parser.targets


def assert_only_relative_links(html: str) -> list[str]:
    """Every link is an in-page anchor or a plain relative path; returns the paths."""
    paths = []
    for tag, name, target in _links(html):
        assert name == "href" and tag == "a", (tag, name, target)
        if re.fullmatch(r"#[A-Za-z0-9_.-]+", target):
            continue
        parts = urlsplit(target)
        assert not parts.scheme and not parts.netloc, target
        assert not target.startswith(("/", "\\")) and "\\" not in target, target
        assert ".." not in target.split("/") and "" not in target.split("/"), target
        assert_clean(target, "href")
        paths.append(target)
    return paths


# ---------------------------------------------------------------- the sanitizer itself

@pytest.mark.parametrize("piece", sorted(PIECES))
def test_every_class_is_neutralised_by_every_cleaner(piece: str) -> None:
    text = f"a {PIECES[piece]} b"
    for clean in (clean_line, clean_text, one_line, safe_text):
        assert_clean(clean(text), f"{clean.__name__}({piece})")
    assert_clean(one_line("x\ud800y"), "lone surrogate")


def test_escape_sequences_go_whole_and_layout_stays() -> None:
    assert one_line("a\x1b]0;pwned\x07b\x1b[2Jc\x9b31md") == "abcd"
    assert clean_line("10%\r100%") == "100%"  # a log line: what the terminal showed
    assert one_line("check os-release: ok\rFAILED") == "check os-release: ok FAILED"
    assert safe_text("table\n|a\t|b|\r\n") == "table\n|a\t|b|\n"
    assert safe_text("a\x1b[2Jb\rc") == "ab\ufffdc"  # a lone \r is shown, never obeyed


@pytest.mark.parametrize("flood", ["\x9d", "\x1b]", "\x9b", "\x1b[", "\x1b", "\x1b]0;"])
def test_cleaning_stays_linear_on_a_flood_of_unterminated_escapes(flood: str) -> None:
    text = flood * 200_000 + "tail"
    started = time.monotonic()
    for clean in (clean_line, clean_text, one_line, safe_text):
        assert_clean(clean(text), clean.__name__)
    assert time.monotonic() - started < 5


def test_log_records_for_the_console_and_run_log_are_clean() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("dib-matrix")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        runcli._setup_logging(False, handler)  # what ``run`` prints per finished cell
        logger.info("%-40s %-15s %s", "h.t", "failed", f"legend {HOSTILE}")
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])
    assert "h.t" in stream.getvalue() and "legend before" in stream.getvalue()
    assert_clean(stream.getvalue(), "console record")
    record = logging.LogRecord("x", logging.INFO, "f", 1, "%s", (HOSTILE,), None)
    assert_clean(SafeFormatter("%(message)s").format(record), "SafeFormatter")


# ---------------------------------------------------------------- through the CLI

@pytest.mark.parametrize("fmt", ["text", "markdown", "html", "json", "junit"])
def test_report_formats_print_no_control_characters(hostile_run: Path, fmt: str) -> None:
    done = run_cli("report", hostile_run, "--format", fmt)
    assert done.code == 0, done.output
    assert_clean(done.output, f"report --format {fmt}")
    if fmt == "json":
        assert strict_json(done.stdout)["run_id"]
    if fmt == "html":
        assert_only_relative_links(done.stdout)
        assert "evil.example" not in "".join(t for _, _, t in _links(done.stdout))
    if fmt == "junit":
        ET.fromstring(done.stdout.encode("utf-8"))
        assert JUnitXml.fromstring(done.stdout.encode("utf-8")).tests > 0


def test_report_files_and_table_are_clean(hostile_run: Path) -> None:
    done = run_cli("report", hostile_run)
    assert done.code == 0, done.output
    assert_clean(done.output, "report (table)")
    for name in ("report.txt", "report.html", "junit.xml"):
        assert_clean((hostile_run / name).read_text(encoding="utf-8"), name)
    ET.parse(hostile_run / "junit.xml")
    assert JUnitXml.fromfile(str(hostile_run / "junit.xml")).tests > 0
    links = assert_only_relative_links((hostile_run / "report.html").read_text(encoding="utf-8"))
    assert "logs/debian-bookworm/debian-forky.log" in links


def test_compare_prints_no_control_characters(tmp_path: Path, hostile_run: Path) -> None:
    def other_causes(document: dict[str, Any]) -> None:
        tamper(document)
        for cell in document["cells"]:
            if cell.get("category"):
                cell["category"]["legend"] = f"older {HOSTILE}"
    old = golden_copy(tmp_path / "old", other_causes)
    done = run_cli("compare", old, hostile_run)
    assert done.code in (0, 1), done.output
    assert "changed" in done.stdout
    assert_clean(done.output, "compare")
    baseline = run_cli("report", hostile_run, "--format", "text", "--baseline", old)
    assert_clean(baseline.output, "report --baseline")
    markdown = run_cli("report", hostile_run, "--format", "markdown", "--baseline", old)
    assert_clean(markdown.output, "report --format markdown --baseline")


def test_show_prints_no_control_characters(hostile_run: Path) -> None:
    forky = "debian-bookworm.debian-forky"
    for args in (["*"], [forky, "--log"], [forky, "--log", "--tail", "3"]):
        done = run_cli("show", hostile_run, *args)
        assert done.code == 0, done.output
        assert_clean(done.output, f"show {args}")
        assert "after" in done.stdout  # the hostile text was shown, cleaned


def hostile_matrix(tmp_path: Path) -> Path:
    reason = json.dumps(f"reason {HOSTILE}")  # a YAML double-quoted string: escapes work
    path = tmp_path / "hostile.yaml"
    path.write_text(
        "name: hostile\nhosts: [debian-bookworm, debian-trixie]\n"
        "targets: [debian-bookworm, debian-forky]\nchecks: [tox]\n"
        f"exclude:\n  - host: '*'\n    target: debian-forky\n    reason: {reason}\n"
        f"allowed-failures:\n  - host: debian-trixie\n    target: '*'\n    reason: {reason}\n",
        encoding="utf-8")
    return path


@pytest.mark.parametrize("extra", [[], ["--format", "json"], ["--shards", "2"]])
def test_plan_prints_no_control_characters(tmp_path: Path, extra: list[str]) -> None:
    done = run_cli("plan", hostile_matrix(tmp_path), *extra)
    assert done.code in (0, 2), done.output  # a stricter config reader may refuse the reason
    assert_clean(done.output, f"plan {extra}")
    if done.code == 0 and extra == []:
        assert "excluded: reason before" in done.stdout  # the \r erases nothing


def test_plan_shards_json_is_strict_when_estimates_overflow(tmp_path: Path) -> None:
    def absurd(document: dict[str, Any]) -> None:
        for cell in document["cells"]:
            cell["duration"] = 1e308  # finite, valid JSON; sums of two are infinite
    history = tmp_path / "history"
    golden_copy(history / "20250601T020000Z-a1b2c3", absurd)
    done = run_cli("plan", "--shards", "2", "--history", history, "--format", "json")
    assert done.code == 0, done.output
    shards = strict_json(done.stdout)
    assert [s["estimate_seconds"] for s in shards] == [None, None]
    text = run_cli("plan", "--shards", "2", "--history", history)
    assert text.code == 0 and "Traceback" not in text.output


def test_history_index_links_only_to_run_directories(tmp_path: Path, hostile_run: Path) -> None:
    out = tmp_path / "out"
    for number, run_id in enumerate(OUTSIDE):
        golden_copy(out / f"run{number}", lambda d, r=run_id: d.update(run_id=r))
    golden_copy(out / "20250601T020000Z-a1b2c3")
    done = run_cli("report", hostile_run, "--history", out)
    assert done.code == 0, done.output
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "20250601T020000Z-a1b2c3/report.html" in assert_only_relative_links(index)
    assert_clean(index, "index.html")
    assert_only_relative_links((hostile_run / "report.html").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- renderers, names included
# (a validating reader refuses bad names at the CLI; the renderers must not rely on it)

def hostile_names_run():
    weird = f"h{HOSTILE}"
    cells = [
        make_cell(weird, f"t{HOSTILE}", State.FAILED, evidence=HOSTILE, reason=HOSTILE,
                  category=Category(f"id{HOSTILE}", HOSTILE, link="javascript:alert(1)",
                                    labels=[f"id{HOSTILE}", HOSTILE]),
                  log=f"logs/{weird}/x.log", reproducer=HOSTILE),
        make_cell("h2", "t", State.SUCCESS, log="https://evil.example/log",
                  artifacts=[Artifact("//evil.example/i.qcow2", "qcow2", 1, "")]),
        make_cell("h3", "t", State.EXCLUDED, reason=HOSTILE),
        make_cell("h4", "t", State.SKIPPED, category=category("missing-dependency", HOSTILE)),
    ]
    results = make_run(cells, run_id=f"run{HOSTILE}", started=HOSTILE)
    results.matrix = HOSTILE
    results.host_images = {weird: HOSTILE}
    return results


def test_renderers_clean_names_too() -> None:
    results = hostile_names_run()
    for name, text in (("text", render_report(results)), ("json", render_json(results)),
                       ("junit", render_junit(results)), ("html", render_html(results))):
        assert_clean(text, name)
    ET.fromstring(render_junit(results).encode("utf-8"))
    JUnitXml.fromstring(render_junit(results).encode("utf-8"))
    assert_only_relative_links(render_html(results))


def test_index_never_links_outside(tmp_path: Path) -> None:
    runs = [make_run([make_cell("h", "t")], run_id=r) for r in (*OUTSIDE, "run\x1b[2J", "ok-1")]
    html = render_index(runs)
    assert assert_only_relative_links(html) == ["ok-1/report.html"]
    assert_clean(html, "index.html")


def test_trend_titles_from_history_are_clean() -> None:
    results = make_run([make_cell("h", "t")])
    trends = {"h.t": [TrendPoint(f"old{HOSTILE}", State.FAILED),
                      TrendPoint("run-1", State.SUCCESS)]}
    assert_clean(render_html(results, trends=trends), "trends")


def test_json_output_is_strict() -> None:
    assert strict_json(dumps({"a": [float("inf"), float("nan"), -float("inf"), 1.5]})) == {
        "a": [None, None, None, 1.5]}
    results = make_run([make_cell("h", "t", duration=float("inf"))])
    assert strict_json(render_json(results))["cells"][0]["duration"] is None


class HostileFacts:
    def summary(self) -> str:
        return f"python 3.11, {HOSTILE}"


def test_hosts_list_and_build_print_no_control_characters(tmp_path: Path, monkeypatch: Any,
                                                          capsys: Any) -> None:
    """Facts come from image labels, verdicts from build logs: both untrusted."""
    monkeypatch.setattr(hostcli, "connect", lambda: object())
    monkeypatch.setattr(hostcli, "load_facts", lambda client, image: HostileFacts())
    assert main(["hosts", "list"]) == 0
    listing = capsys.readouterr()
    assert "python 3.11" in listing.out
    assert_clean(listing.out + listing.err, "hosts list")

    def failed(client: Any, host: Any, log_path: Path, **options: Any) -> HostgenOutcome:
        return HostgenOutcome(host.name, HostgenStatus.FAILED, "img", 1.0, log_path,
                              facts=HostileFacts(), evidence=f"E: {HOSTILE}")
    monkeypatch.setattr(hostcli, "build_host", failed)
    monkeypatch.setattr(hostcli, "classify", lambda evidence, catalogue: Verdict(
        Category("base-image-unavailable", f"legend {HOSTILE}"), f"E: {HOSTILE}"))
    assert main(["hosts", "build", "debian-bookworm", "--log-dir", str(tmp_path)]) == 1
    built = capsys.readouterr()
    assert "failed (legend before" in built.out
    assert_clean(built.out + built.err, "hosts build")


# ---------------------------------------------------------------- closed pipes and Ctrl-C

def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("args", [
    ["plan"], ["plan", "--format", "json"], ["plan", "--shards", "2"],
    ["report", "tests/unit/golden/run_all_states", "--format", "text"],
    ["report", "tests/unit/golden/run_all_states", "--format", "html"],
    ["report", "tests/unit/golden/run_all_states", "--format", "junit"],
    ["compare", "tests/unit/golden/run_all_states", "tests/unit/golden/run_all_states"],
    ["show", "tests/unit/golden/run_all_states", "*"],
    ["--help"],
])
def test_closed_stdout_ends_quietly(args: list[str]) -> None:
    """The reader is gone before the first byte: the worst case of ``| head``."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "matrix.cli", *args], cwd=REPO,
                              stdout=write_end, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              env=_child_env(), timeout=60, check=False)
    finally:
        os.close(write_end)
    stderr = done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert done.returncode in (0, 141), (done.returncode, stderr)
    if args != ["--help"]:  # argparse's own exit
        assert done.returncode == 141


def test_plan_piped_into_head_exits_quietly() -> None:
    """``dib-matrix plan | head -1``: one line read, then the pipe closes."""
    child = subprocess.Popen([sys.executable, "-m", "matrix.cli", "plan", "nightly"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, env=_child_env())
    assert child.stdout is not None and child.stderr is not None
    first = child.stdout.readline()
    child.stdout.close()
    stderr = child.stderr.read().decode("utf-8", "replace")
    code = child.wait(timeout=60)
    assert first.startswith(b"matrix nightly")
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert code in (0, 141)


def test_closed_stderr_ends_quietly(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "matrix.cli", "report", str(tmp_path)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=write_end,
                              stdin=subprocess.DEVNULL, env=_child_env(), timeout=60,
                              check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 2  # the message is lost, the exit code still says bad input


SLOW_COMMAND = """
import sys, time
from matrix import cli
from matrix.cli import runcli
def slow(args):
    print("ready", file=sys.stderr, flush=True)
    time.sleep(60)
    return 0
runcli.cmd_plan = slow
sys.exit(cli.main(["plan"]))
"""


def test_ctrl_c_at_top_level_is_one_line() -> None:
    child = subprocess.Popen([sys.executable, "-c", SLOW_COMMAND], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, env=_child_env())
    assert child.stderr is not None
    assert child.stderr.readline().strip() == b"ready"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    stderr = err.decode("utf-8", "replace")
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr and "dib-matrix: interrupted" in stderr
