"""The excerpt of a failure without a precise cause: the log lines most unlike the
successful logs of the same row (matrix.verdict.excerpt), and where reports show it.

Classes of input covered: what varies between runs of one build (normalisation);
an error buried in noise, not at the end, with or without successful logs; noise
that repeats; error words successful builds print too; retried cells; hostile logs
(huge, one endless line, binary, a FIFO, a directory, outside the run); hostile
excerpts in results.json; and the corpus figure.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from matrix.run.cellreport import CellReport
from matrix.run.matrixrun import MatrixRun
from matrix.run.rerun import reset
from matrix.verdict import excerpt as ex
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.excerpt import (
    Baseline,
    add_excerpts,
    baseline_of,
    error_weight,
    excerpt_lines,
    excerpt_of_log,
    excerpt_of_text,
    message,
    normalise,
    numbered_tail,
)
from reports.excerptview import MAX_LINES
from reports.excerptview import excerpt_lines as shown_lines
from reports.html import render_html
from reports.markdown import render_markdown
from results.model import Category, Cell, State
from results.reader import read_results
from results.schemafile import SCHEMA_PATH
from tests.corpus.excerpt_score import measure
from tests.hostile import TreeWatch, golden_copy, run_cli
from tests.resultfactory import category, make_cell, make_run

ERROR = "corpus-site: ERROR: template /etc/corpus/site.conf.in is empty"


# ---- what varies between two runs of one build ------------------------------------

@pytest.mark.parametrize("one, other", [
    ("2026-11-29 08:54:24.077 | root.d/08-debootstrap | I: Retrieving bash 5.2.15-2+b13",
     "2027-01-02 23:01:59.999 | root.d/08-debootstrap | I: Retrieving bash 5.2.21-2+b1"),
    ("Get:12 http://10.0.0.1:3142/debian bookworm/main amd64 libc6 2.36-9+deb12u4 [2757 kB]",
     "Get:3 http://192.168.1.20/debian bookworm/main amd64 libc6 2.36-9+deb12u7 [2801 kB]"),
    ("building in tmpfs /tmp/dib_build.o2xu4_02", "building in tmpfs /tmp/dib_build.Xq81zzk7"),
    ("/var/tmp/tmp.AbC123xyz/hooks/root.d/05-check: line 4",
     "/var/tmp/tmp.k9k9k9k9/hooks/root.d/05-check: line 9"),
    ("cached base as debian-bookworm-amd64-3531cd2ab8832a5e.tar",
     "cached base as debian-bookworm-amd64-0f0f0f0f0f0f0f0f.tar"),
    ("mounted UUID=00000000-1111-2222-3333-444444444444 on /",
     "mounted UUID=deadbeef-0000-4000-8000-00000000abcd on /"),
    ("[    5.126651] random: crng init done", "[  123.000001] random: crng init done"),
    ("Progress: [ 24%] [####......................]",
     "Progress: [ 87%] [######################....]"),
    ("\x1b[1;31mFetched 6258 kB in 0s (12.7 MB/s)\x1b[0m", "Fetched 61 MB in 12s (5095 kB/s)"),
    ("container 313309e780c3e73c002aaed8b0fea22b357c002c253c823a12f3f479f6731d8f started",
     "container 11aa22bb33cc44dd55ee66ff77889900aabbccddeeff00112233445566778899 started"),
    ("at 2026-11-29T09:13:14Z: done", "at 2026-12-01T00:00:00+01:00: done"),
])
def test_what_varies_between_runs_normalises_alike(one, other):
    assert normalise(message(one)) == normalise(message(other))


@pytest.mark.parametrize("one, other", [
    ("E: Unable to locate package foo", "E: Unable to fetch some archives"),
    ("exit status 0", "exit status: success"),
    ("running install.d/01-package-installs", "running install.d/50-corpus-config"),
])
def test_different_messages_stay_different(one, other):
    assert normalise(message(one)) != normalise(message(other))


def test_error_words_rank_a_precise_failure_above_a_bare_one():
    precise = error_weight("qemu-img: error while writing at byte 4096: No space left on device")
    bare = error_weight("ERROR: qemu-img failed with exit code 1")
    status = error_weight("exit status 1")
    assert precise > bare > status > 0
    assert error_weight("exit status 0") == 0
    assert error_weight("I: Base system installed successfully.") == 0
    assert error_weight("Setting up libc6:amd64 (2.36-9) ...") == 0


# ---- an error buried in noise ---------------------------------------------------

def _stamp(number: int) -> str:
    return f"2026-11-29 08:{number // 3600 % 60:02d}:{number // 60 % 60:02d}.{number % 1000:03d}"


def _apt_noise(rng: random.Random, count: int, start: int = 0) -> list[str]:
    """apt/dpkg progress as dib prints it: thousands of lines, every number different."""
    lines = []
    for number in range(start, start + count):
        package = f"lib{rng.choice(['foo', 'bar', 'baz', 'qux'])}{rng.randint(0, 99)}"
        version = (f"{rng.randint(1, 9)}.{rng.randint(0, 40)}-{rng.randint(1, 9)}"
                   f"+deb12u{rng.randint(1, 9)}")
        shape = number % 4
        text = (f"Get:{number} http://10.{rng.randint(0, 255)}.0.1/debian bookworm/main amd64 "
                f"{package} amd64 {version} [{rng.randint(1, 9999)} kB]" if shape == 0 else
                f"Unpacking {package}:amd64 ({version}) ..." if shape == 1 else
                f"Setting up {package}:amd64 ({version}) ..." if shape == 2 else
                f"Progress: [ {rng.randint(0, 99)}%] [{'#' * rng.randint(0, 30)}{'.' * 10}]")
        lines.append(f"{_stamp(number)} | install.d/01-package-installs | {text}")
    return lines


_TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "/usr/lib/python3/dist-packages/corpus/site.py", line 41, in render',
    "    template = read_results(path)",
    "               ^^^^^^^^^^",
    '  File "/usr/lib/python3/dist-packages/corpus/site.py", line 12, in load',
    '    raise TemplateError(f"{path}: empty")',
    "corpus.site.TemplateError: /etc/corpus/site.conf.in: empty",
]
_CLEANUP = ["finished install.d/01-package-installs in 12.0 s",
            "---- phase cleanup.d: 1 script(s)", "running cleanup.d/90-dpkg-cleanup",
            "finished cleanup.d/90-dpkg-cleanup in 0.0 s"]


def _successful_log(seed: int) -> str:
    rng = random.Random(seed)
    return "\n".join([*_apt_noise(rng, 3000), *_CLEANUP, "exit status 0"])


def _buried_failure(seed: int = 99) -> tuple[str, int, int]:
    """A failed log: noise, a traceback and the error line in the middle, then
    thousands more lines a successful build prints too. (text, error line, exception
    line), both 1-based."""
    rng = random.Random(seed)
    lines = _apt_noise(rng, 2000)
    lines += [f"{_stamp(2000)} | install.d/50-corpus-site | {line}" for line in _TRACEBACK]
    exception = len(lines)
    lines.append(f"{_stamp(2001)} | install.d/50-corpus-site | {ERROR}")
    error = len(lines)
    lines += _apt_noise(rng, 2500, start=2002) + _CLEANUP + ["exit status 1"]
    return "\n".join(lines), error, exception


def test_error_buried_in_noise_found_against_successful_logs():
    text, error, exception = _buried_failure()
    shown = excerpt_of_text(text, [_successful_log(1), _successful_log(2)])
    numbers = [line.line for line in shown]
    assert error in numbers and exception in numbers
    assert len(shown) <= 5 and numbers == sorted(numbers)
    assert shown[numbers.index(error)].text == ERROR  # dib's prefix gone
    # A traceback's frames may fill the excerpt, never before its exception line.
    best_two = excerpt_of_text(text, [_successful_log(1), _successful_log(2)], k=2)
    assert [line.line for line in best_two] == [exception, error]


def test_error_buried_in_noise_found_without_successful_logs():
    text, error, exception = _buried_failure(seed=7)
    numbers = [line.line for line in excerpt_of_text(text)]
    assert error in numbers and exception in numbers


def test_novelty_alone_finds_an_error_without_error_words():
    quiet = "corpus-site: template /etc/corpus/site.conf.in is empty, leaving it out"
    text, error, _ = _buried_failure()
    lines = text.split("\n")
    lines[error - 1] = lines[error - 1].replace(ERROR, quiet)
    del lines[error - 8:error - 1]  # and no traceback to point at it
    shown = excerpt_of_text("\n".join(lines), [_successful_log(1)])
    assert any(line.text == quiet for line in shown)


def test_error_words_successful_builds_print_too_do_not_crowd_the_excerpt():
    known = ["W: Possible missing firmware /lib/firmware/i915 for module i915",
             "dpkg: warning: ignoring request to remove foo which isn't installed",
             "error: no such file /etc/default/keyboard, using the default",
             "update-initramfs: failed to find the running kernel, skipping"]
    success = "\n".join([*_apt_noise(random.Random(3), 500), *known, *_CLEANUP])
    failed = [*_apt_noise(random.Random(4), 500), ERROR, *known * 3, *_CLEANUP]
    assert 501 in [line.line for line in excerpt_of_text("\n".join(failed), [success])]
    assert [line.line for line in excerpt_of_text("\n".join(failed), [success], k=1)] == [501]


def test_a_repeated_line_is_one_candidate_shown_where_it_began():
    rng = random.Random(5)
    retry = "Waiting for the image lock held by build 1234 (attempt {})"
    lines = _apt_noise(rng, 200)
    lines += [retry.format(n) for n in range(1, 2001)]
    lines += ["E: Could not get the image lock: timed out", "exit status 1"]
    shown = excerpt_of_text("\n".join(lines), ["\n".join(_apt_noise(rng, 200))])
    texts = [line.text for line in shown]
    assert "E: Could not get the image lock: timed out" in texts
    assert sum(text.startswith("Waiting for") for text in texts) <= 1
    first = [line for line in shown if line.text.startswith("Waiting for")]
    assert not first or first[0].line == 201


def test_only_the_last_attempt_counts():
    text = "\n".join(["E: first attempt: mirror hiccup", "# dib-matrix: attempt 2 of 2",
                      "running root.d/10-thing", ERROR, "exit status 1"])
    numbers = [line.line for line in excerpt_lines(enumerate(text.split("\n"), 1), Baseline())]
    assert 4 in numbers and min(numbers) > 2


def test_a_log_that_says_nothing_new_shows_where_it_stopped():
    success = _successful_log(1)
    stopped = "\n".join(success.split("\n")[:1500])
    shown = excerpt_of_text(stopped, [success])
    assert [line.line for line in shown] == [1496, 1497, 1498, 1499, 1500]


def test_lines_are_cleaned_and_cut():
    long_line = "E: \x1b[31mfailed\x1b[0m " + "x" * 5000
    shown = excerpt_of_text(long_line)
    assert len(shown) == 1
    assert "\x1b" not in shown[0].text and shown[0].text.startswith("E: failed x")
    assert len(shown[0].text) == ex.TEXT_LIMIT


# ---- hostile logs ---------------------------------------------------------------

def test_huge_log_is_read_from_its_end_with_right_line_numbers(tmp_path):
    log = tmp_path / "big.log"
    with log.open("w") as out:
        for number in range(1, 20001):
            out.write(f"line {number} ok\n")
        out.write(f"{ERROR}\nexit status 1\n")
    window = 4096  # a small window: the first ~19,700 lines are counted, not read
    numbered = list(numbered_tail(log, window))
    assert numbered[-2] == (20001, ERROR)
    assert all(text.startswith("line ") and text == f"line {number} ok"
               for number, text in numbered[:-2])
    assert sum(len(text) + 1 for _, text in numbered) <= window
    assert 20001 in [line.line for line in excerpt_lines(numbered_tail(log, window), Baseline())]


def test_one_endless_line_and_binary_noise_stay_bounded(tmp_path):
    log = tmp_path / "noise.log"
    log.write_bytes(b"\x00\xff\xfe" * 300_000 + b"\n" + os.urandom(20_000) + b"\n"
                    + ERROR.encode() + b"\n")
    shown = excerpt_of_log(log, [])
    assert ERROR in [line.text for line in shown]
    assert all(len(line.text) <= ex.TEXT_LIMIT for line in shown)


def test_a_log_over_the_size_limit_gets_no_excerpt(tmp_path, monkeypatch):
    log = tmp_path / "huge.log"
    with log.open("wb") as out:  # sparse: 1 GiB and a bit, but no disk used
        out.truncate(ex.MAX_LOG_BYTES + 1)
    assert excerpt_of_log(log, []) == []
    monkeypatch.setattr(ex, "MAX_LOG_BYTES", 100)
    log.write_text(f"{ERROR}\n" * 10)
    assert excerpt_of_log(log, []) == []


@pytest.mark.parametrize("shape", [
    "a1_", "_1a", "a_", "1.", "1.1.", "a:", "-a", "00000000-", "1.1 k", "2026-11-29t",
    "exit ", "[ ", "ab12", "\x1b]", "A.", "0x", "/tmp/a",
])
def test_no_line_shape_costs_more_than_its_length(shape):
    """Every pattern is linear in the line: 64 KiB of any repeated shape (16 times the
    longest line a log read gives) is scored in well under a second; a pattern that
    backtracks over the rest of the line at each position takes minutes."""
    line = shape * (65536 // len(shape))
    started = time.perf_counter()
    text = message(line)
    error_weight(text, ex.words(normalise(text)))
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("kind", ["fifo", "directory", "missing", "device"])
def test_a_log_that_is_no_regular_file_gives_no_excerpt_and_no_hang(tmp_path, kind):
    path = tmp_path / "cell.log"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path.symlink_to("/dev/zero")
    assert excerpt_of_log(path, [path]) == []
    assert baseline_of([path]).empty


# ---- the run's verdict stage ------------------------------------------------------

def _run_with_logs(tmp_path: Path):
    """Three hosts of one row: two built it, one failed without a precise cause."""
    run_dir = tmp_path / "run"
    cells = []
    for number, host in enumerate(["alpha", "beta"]):
        log = run_dir / "logs" / host / "img.log"
        log.parent.mkdir(parents=True)
        log.write_text(_successful_log(number))
        cells.append(make_cell(host, "img", log=f"logs/{host}/img.log"))
    failed_log = run_dir / "logs" / "gamma" / "img.log"
    failed_log.parent.mkdir(parents=True)
    text, error, _ = _buried_failure()
    failed_log.write_text(text)
    cells.append(make_cell("gamma", "img", State.FAILED, log="logs/gamma/img.log",
                           category=category("uncategorized")))
    return make_run(cells), run_dir, error


def test_add_excerpts_uses_the_rows_successful_logs(tmp_path):
    results, run_dir, error = _run_with_logs(tmp_path)
    assert add_excerpts(results, run_dir) == 1
    failed = results.cell("gamma", "img")
    assert error in [entry["line"] for entry in failed.excerpt]
    assert all(set(entry) == {"line", "text"} for entry in failed.excerpt)
    assert not results.cell("alpha", "img").excerpt


@pytest.mark.parametrize("cause, state, wanted", [
    ("hook-failed", State.FAILED, True),
    ("engine-error", State.ERROR, True),
    ("uncategorized", State.ALLOWED_FAILURE, True),
    ("timeout", State.TIMEOUT, True),
    ("package-not-found", State.FAILED, False),  # a named cause has its line
    ("missing-dependency", State.SKIPPED, False),
])
def test_which_failures_get_an_excerpt(tmp_path, cause, state, wanted):
    results, run_dir, _ = _run_with_logs(tmp_path)
    failed = results.cell("gamma", "img")
    failed.state, failed.category = state, category(cause)
    failed.excerpt = [{"line": 1, "text": "from an earlier verdict"}]
    add_excerpts(results, run_dir, generic=load_catalogue().generic_ids())
    assert bool(failed.excerpt) is wanted
    assert failed.excerpt != [{"line": 1, "text": "from an earlier verdict"}]


def test_a_run_reads_its_logs_within_one_budget(tmp_path):
    """A resumed results.json may list any number of failed cells: past the budget, no
    more logs are read (and no cell keeps an excerpt it had before)."""
    results, run_dir, _ = _run_with_logs(tmp_path)
    failed = results.cell("gamma", "img")
    clones = []
    for number in range(50):
        clone = make_cell(f"h{number}", "img", State.FAILED, log=failed.log,
                          category=category("uncategorized"))
        clone.excerpt = [{"line": 1, "text": "from an earlier verdict"}]
        clones.append(clone)
    results.cells += clones
    size = (run_dir / failed.log).stat().st_size
    baseline = sum((run_dir / c.log).stat().st_size for c in results.cells[:2])
    given = add_excerpts(results, run_dir, budget=baseline + 10 * size)
    assert given == 10
    assert not any(clone.excerpt for clone in clones[9:])


def test_every_run_level_catch_all_is_in_the_bundled_catalogue():
    catalogue = load_catalogue()
    assert {cause for cause in ex.GENERIC_CAUSES
            if cause != "uncategorized" and catalogue.get(cause) is None} == set()


def test_the_catalogues_catch_alls_get_an_excerpt_and_named_causes_do_not():
    catalogue = load_catalogue()
    generic = catalogue.generic_ids()
    assert {"hook-failed", "package-install-failed", "apt-error"} <= generic
    assert "no-such-script" not in generic and "out-of-disk-space" not in generic
    cell = make_cell("h", "img", State.FAILED, log="logs/h/img.log",
                     category=category("apt-error"))
    assert ex.needs_excerpt(cell, generic)
    assert not ex.needs_excerpt(cell)  # without the catalogue's flags: a named cause
    cell.category = category("no-such-script")
    assert not ex.needs_excerpt(cell, generic)


@pytest.mark.parametrize("where", ["../../outside.log", "/etc/passwd", "logs/link.log",
                                   "logs/loop.log", "logs/fifo.log", "logs"])
def test_a_log_outside_the_run_is_never_read(tmp_path, where):
    results, run_dir, _ = _run_with_logs(tmp_path)
    outside = tmp_path / "outside.log"
    outside.write_text(f"{ERROR}\n")
    (run_dir / "logs" / "link.log").symlink_to(outside)
    (run_dir / "logs" / "loop.log").symlink_to(run_dir / "logs" / "loop.log")
    os.mkfifo(run_dir / "logs" / "fifo.log")
    results.cell("gamma", "img").log = where
    results.cell("alpha", "img").log = where  # nor taken as a successful log
    watch = TreeWatch(tmp_path)
    add_excerpts(results, run_dir)
    assert not results.cell("gamma", "img").excerpt
    watch.assert_untouched()


def test_earlier_runs_successful_logs_join_the_baseline(tmp_path):
    results, run_dir, error = _run_with_logs(tmp_path)
    for cell in results.cells[:2]:
        cell.state = State.FAILED  # no success in this run
        cell.category = category("package-not-found")
    earlier = tmp_path / "earlier.log"
    earlier.write_text(_successful_log(8))
    add_excerpts(results, run_dir, earlier={"img": [earlier]})
    assert error in [entry["line"] for entry in results.cell("gamma", "img").excerpt]


def test_a_finished_or_re_run_cell_drops_its_earlier_excerpt(tmp_path):
    stale = [{"line": 1, "text": "from an earlier verdict"}]
    results = make_run([make_cell("h", "img", State.FAILED, category=category("uncategorized"))])
    cell = results.cells[0]
    cell.excerpt = list(stale)
    reset(tmp_path, results, [cell.id], at="now")  # run --resume --cells
    assert cell.state is State.PENDING and not cell.excerpt
    cell.excerpt = list(stale)
    run = MatrixRun.__new__(MatrixRun)
    run.run_dir = tmp_path
    run._fill(cell, SimpleNamespace(voting=True), CellReport(State.SUCCESS))
    assert not cell.excerpt


# ---- results.json and the reports ---------------------------------------------------

def test_the_excerpt_is_written_only_when_there_is_one():
    cell = make_cell("h", "img", State.FAILED, category=category("uncategorized"))
    assert "excerpt" not in cell.to_json()
    cell.excerpt = [{"line": 3, "text": ERROR}]
    assert cell.to_json()["excerpt"] == [{"line": 3, "text": ERROR}]
    assert Cell.from_json(cell.to_json()).excerpt == cell.excerpt


@pytest.mark.parametrize("entries, valid", [
    ([{"line": 3, "text": ERROR}], True),
    ([{"line": 0, "text": ERROR}], False),
    ([{"line": "3", "text": ERROR}], False),
    ([{"line": 3, "text": ERROR, "href": "javascript:x"}], False),
    ([{"line": 3}], False),
    ("line 3", False),
    ([{"line": 3, "text": "x" * 5000}], False),
])
def test_schema_holds_the_excerpt_to_its_shape(entries, valid):
    schema = json.loads(SCHEMA_PATH.read_text())
    cell = make_cell("h", "img", State.FAILED, category=category("uncategorized")).to_json()
    cell["excerpt"] = entries
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.evolve(schema={**schema["$defs"]["cell"], "$defs": schema["$defs"]})
                  .iter_errors(cell))
    assert (not errors) is valid


HOSTILE_TEXT = '<script>alert("pwned")</script>\x1b]0;title\x07\x1b[2J`@here` **#1**\r\u202e'


@pytest.mark.parametrize("entries", [
    [{"line": True, "text": "bool"}], [{"line": -1, "text": "negative"}],
    [{"line": 2 ** 80, "text": "huge"}], [{"line": 1, "text": None}], ["not a dict"],
    [{"line": 1.5, "text": "float"}], "a string", None,
])
def test_reports_leave_out_malformed_entries(entries):
    cell = make_cell("h", "img", State.FAILED)
    cell.excerpt = entries
    assert shown_lines(cell) == []


def test_reports_bound_and_clean_what_they_show():
    cell = make_cell("h", "img", State.FAILED)
    cell.excerpt = [{"line": n, "text": HOSTILE_TEXT + "y" * 1000} for n in range(1, 100)]
    shown = shown_lines(cell)
    assert len(shown) == MAX_LINES
    for line in shown:
        assert not any(ch in line.text for ch in "\x1b\x07\r\u202e\n")
        assert len(line.text) <= 300


def _hostile_run():
    failed = make_cell("debian-bookworm", "img", State.FAILED,
                       category=Category("uncategorized", "uncategorized"),
                       evidence="exit status 1")
    failed.excerpt = [{"line": 12, "text": HOSTILE_TEXT}, {"line": 40, "text": ERROR}]
    return make_run([make_cell("debian-bookworm", "hostgen"), failed])


def test_html_shows_the_excerpt_escaped():
    html = render_html(_hostile_run())
    assert "Lines unlike successful builds" in html
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    assert '<script>alert("pwned")' not in html and "\x1b" not in html
    assert ">40</span>" + ERROR in html


def test_markdown_shows_the_excerpt_escaped():
    text = render_markdown(_hostile_run())
    assert "line 40: `" + ERROR + "`" in text
    # In a code span: inert markup; the text's own backticks cannot close the span.
    assert "    - line 12: `<script>alert(\"pwned\")</script>'@here' **#1** \ufffd`" in text
    assert "\x1b" not in text and "\u202e" not in text


def test_show_prints_the_excerpt_cleaned(tmp_path):
    def inject(document):
        cell = next(c for c in document["cells"] if c["id"] == "debian-trixie.tox")
        cell["excerpt"] = [{"line": 7, "text": HOSTILE_TEXT}, {"line": 9, "text": ERROR}]

    run_dir = golden_copy(tmp_path / "run", inject)
    outcome = run_cli("show", run_dir, "debian-trixie.tox")
    assert outcome.code == 0, outcome.output
    assert f"line 9: {ERROR}" in outcome.stdout
    assert "line 7: <script>" in outcome.stdout
    assert not any(ch in outcome.stdout for ch in "\x1b\x07\u202e")


@pytest.mark.parametrize("bad, command", [
    ([{"line": "7", "text": "x"}], ("show", "debian-trixie.tox")),
    ([{"line": 7, "text": ["x"]}], ("report", "--format", "markdown")),
    ({"line": 7}, ("show", "debian-trixie.tox")),
    ([7], ("report", "--format", "html")),
    ([{"line": 7, "text": "x"}] * 500, ("show", "debian-trixie.tox")),
])
def test_a_tampered_excerpt_is_bad_input_not_a_crash(tmp_path, bad, command):
    def inject(document):
        document["cells"][10]["excerpt"] = bad

    run_dir = golden_copy(tmp_path / "run", inject)
    watch = TreeWatch(tmp_path)
    outcome = run_cli(command[0], run_dir, *command[1:])
    assert outcome.code == 2, outcome.output  # unreadable input, never "a cell failed"
    watch.assert_untouched()


def test_golden_run_gets_an_excerpt_for_its_uncategorized_tox(all_states_dir):
    results = read_results(all_states_dir)
    add_excerpts(results, all_states_dir)
    tox = results.cell("debian-trixie", "tox")
    assert tox.excerpt and all(entry["line"] >= 1 for entry in tox.excerpt)
    assert not results.cell("debian-bookworm", "debian-forky").excerpt  # named cause


# ---- the corpus --------------------------------------------------------------------

def test_corpus_evidence_line_is_in_the_top_five():
    """Measured by tests/corpus/excerpt_score.py: 77 of 77 at the time of writing."""
    scores = measure(ks=(5,))
    assert scores[5].rate >= 0.9, scores[5].misses


def test_corpus_evidence_line_survives_being_buried_under_a_successful_tail():
    scores = measure(ks=(5,), bury=100)
    assert scores[5].rate >= 0.9, scores[5].misses
