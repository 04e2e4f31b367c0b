"""``dib-matrix catalogue coverage``: the tools' own error messages against the catalogue.

The bundled messages (matrix/verdict/messages, written by tests/corpus/messages.py from
the tools' gettext catalogues, scripts and sources) are turned into the lines the tools
print and classified. Each tool keeps at least the precise coverage it has: deleting or
breaking an entry fails here, and nothing a tool can say may fall to ``uncategorized``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import struct
import sys
import zipfile
from pathlib import Path

import pytest

from matrix.verdict.catalogue import Catalogue, load_catalogue
from matrix.verdict.coverage import (
    Outcome,
    bundled_messages,
    coverage,
    fill_format,
    sample_line,
)
from tests.hostile import REPO, run_cli

CATALOGUE = load_catalogue()
# Messages each tool has named precisely today (raise it when entries are added).
MIN_PRECISE = {"apt": 130, "debootstrap": 26, "dpkg": 49, "e2fsprogs": 16, "grub": 19,
               "pip": 10, "pytest": 3, "qemu-img": 9, "tox": 3}
TOOLS = sorted(MIN_PRECISE)
RESULT = {tool.tool: tool for tool in coverage(CATALOGUE)}


def _messages_script():
    spec = importlib.util.spec_from_file_location("corpus_messages",
                                                  REPO / "tests" / "corpus" / "messages.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["corpus_messages"] = module
    spec.loader.exec_module(module)
    return module


MESSAGES = _messages_script()


def test_every_tool_has_its_messages_bundled():
    found = bundled_messages()
    assert sorted(found) == TOOLS
    for tool, lines in found.items():
        assert len(lines) >= 40, tool
        assert lines == sorted(set(lines)), f"{tool}.txt: sorted, one message a line"
        assert all(line == line.strip() and line.isprintable() for line in lines), tool


@pytest.mark.parametrize("tool", TOOLS)
def test_precise_coverage_does_not_drop(tool):
    result = RESULT[tool]
    assert result.count(Outcome.PRECISE) >= MIN_PRECISE[tool], (
        f"{tool}: {result.count(Outcome.PRECISE)} messages named precisely, was "
        f"{MIN_PRECISE[tool]}: an entry was deleted or broken")


@pytest.mark.parametrize("tool", TOOLS)
def test_nothing_a_tool_says_is_uncategorized(tool):
    unnamed = RESULT[tool].listed(Outcome.UNNAMED)
    assert len(unnamed) <= len(RESULT[tool].verdicts) // 100, [v.sample for v in unnamed[:5]]


def test_deleting_an_entry_lowers_the_count():
    without = Catalogue(tuple(r for r in CATALOGUE.rules if r.id != "dependency-problems"))
    dpkg = coverage(without, tools=["dpkg"])[0]
    assert dpkg.count(Outcome.PRECISE) < MIN_PRECISE["dpkg"]
    assert dpkg.count(Outcome.GENERIC) > RESULT["dpkg"].count(Outcome.GENERIC)


def test_a_precise_verdict_names_its_entry():
    named = {v.message: v.rule_id for v in RESULT["dpkg"].verdicts}
    assert named["dependency problems - leaving unconfigured"] == "dependency-problems"
    assert named["error processing package %s (--%s):"] == "package-install-failed"
    apt = {v.message: v for v in RESULT["apt"].verdicts}
    assert apt["Unable to locate package %s"].rule_id == "package-not-found"
    assert apt["Unable to locate package %s"].outcome is Outcome.PRECISE
    assert apt["Bad header line"].outcome is Outcome.GENERIC


@pytest.mark.parametrize(
    "message, expected",
    [
        ("Unable to locate package %s", "Unable to locate package example"),
        ("Could not open file %s", "Could not open file /var/lib/example"),
        ("trying to overwrite '%.250s', which is also in package %.250s %.250s",
         "trying to overwrite '/var/lib/example', which is also in package example example"),
        ("wrote %d of %llu bytes (%2.2f%%)", "wrote 42 of 42 bytes (1.5%)"),
        ("%1$s: %2$s", "example: example"),
        ("No such script: %s", "No such script: /var/lib/example"),
        ("no format here", "no format here"),
    ],
)
def test_fill_format(message, expected):
    assert fill_format(message) == expected


@pytest.mark.parametrize(
    "tool, message, expected",
    [
        ("apt", "Unable to locate package %s", "E: Unable to locate package example"),
        ("dpkg", "unable to lock %s", "dpkg: error: unable to lock /var/lib/example"),
        ("dpkg", "%s: internal gzip read error", "dpkg: error: example: internal gzip read error"),
        ("dpkg", "error processing package %s (--%s):",
         "dpkg: error processing package example (--example):"),
        ("grub", "cannot find EFI directory", "grub-install: error: cannot find EFI directory"),
        ("pip", "No matching distribution found for %s",
         "ERROR: No matching distribution found for example"),
        ("unknown", "as it is", "as it is"),
    ],
)
def test_sample_line(tool, message, expected):
    assert sample_line(tool, message) == expected


# ---- the extraction script's rules ------------------------------------------------


def _mo(path: Path, msgids: list[str]) -> Path:
    """A GNU .mo with these msgids (translations empty)."""
    ids = sorted(msgids)
    count = len(ids)
    originals = 28
    translations = originals + 8 * count
    data_start = translations + 8 * count
    blob, table_o, table_t = b"", b"", b""
    for text in ids:
        raw = text.encode()
        table_o += struct.pack("<2I", len(raw), data_start + len(blob))
        blob += raw + b"\0"
    for _ in ids:
        table_t += struct.pack("<2I", 0, data_start + len(blob))
        blob += b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, count, originals, translations, 0, 0)
    path.write_bytes(header + table_o + table_t + blob)
    return path


def test_mo_reader_reads_msgids(tmp_path):
    path = _mo(tmp_path / "x.mo", ["Unable to lock %s", "Usage: x [options]\n  -h help",
                                   "%d file\0%d files"])
    assert sorted(MESSAGES.mo_msgids(path)) == ["%d file", "Unable to lock %s",
                                                "Usage: x [options]\n  -h help"]


@pytest.mark.parametrize(
    "message, kept",
    [
        ("Could not get lock %s", True),
        ("Unable to correct problems, you have held broken packages.", True),
        ("Reading package lists...", False),  # progress
        ("Usage: apt-get [options] command", False),  # help
        ("  -q  Loggable output - no progress indicator", False),
        ("Do you want to continue?", False),  # a prompt, no error word
        ("Building dependency tree", False),
        ("x" * 300 + " failed", False),  # not one line a log shows
    ],
)
def test_error_shaped_rule(message, kept):
    assert MESSAGES.sentence_like(message) is kept


def test_debootstrap_error_calls_are_read(tmp_path):
    script = tmp_path / "functions"
    script.write_text(
        'error () {\n\t(printf "E: $fmt\\n" "$@") >&4\n}\n'
        '\t\terror 1 NOSCRIPT "No such script: %s" "$SCRIPT"\n'
        '\tif [ -z "$x" ]; then error 1 ARG "$set_what is specified with $1, use one."; fi\n'
        '\twarning RETRYING "Retrying failed download of %s" "$from"\n'
        '\terror 1 KEY "Release signed by unknown key (key id %s)\\n The keyring..." "$k"\n')
    assert MESSAGES.debootstrap_messages([script, tmp_path / "absent"]) == [
        "No such script: %s", "%s is specified with %s, use one.",
        "Release signed by unknown key (key id %s)"]


def test_python_raise_and_log_messages_are_read(tmp_path):
    module = '''
import logging
logger = logging.getLogger(__name__)
class BadError(Exception): pass
def f(name, path):
    if not path:
        raise BadError(f"no such file {path} for {name}")
    msg = "could not find python interpreter with spec(s): %s"
    raise Skip(msg % name)
def g(x):
    logger.error("Could not install packages due to an %s.", x)
    logger.info("Collecting %s", x)
    raise ValueError("x")
def h(x):
    raise InvalidWheel(reason="Wheel has unexpected file name {}".format(x))
'''
    ast.parse(module)
    wheel = tmp_path / "tool-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("tool/api.py", module)
        archive.writestr("tool/_vendor/other.py", 'raise OSError("vendored text here")')
    assert sorted(MESSAGES.python_messages(wheel)) == sorted([
        "no such file %s for %s",
        "could not find python interpreter with spec(s): %s",
        "Could not install packages due to an %s.",
    ])


# ---- the command ------------------------------------------------------------------


def test_the_command_prints_a_row_per_tool():
    outcome = run_cli("catalogue", "coverage")
    assert outcome.code == 0, outcome.output
    rows = [line.split()[0] for line in outcome.stdout.splitlines()[1:]]
    assert rows == TOOLS


def test_json_counts_add_up():
    outcome = run_cli("catalogue", "coverage", "--format", "json", "--tool", "apt")
    document = json.loads(outcome.stdout)
    apt = document["tools"]["apt"]
    assert set(document["tools"]) == {"apt"}
    assert apt["precise"] + apt["generic"] + apt["unnamed"] == apt["messages"] > 0


def test_missing_lists_what_a_users_catalogue_leaves_unnamed(tmp_path):
    # a user's file replacing the apt catch-all by an entry that never matches
    mine = tmp_path / "mine.yaml"
    mine.write_text("- id: apt-error\n  legend: never\n  patterns: ['^never matches$']\n")
    outcome = run_cli("catalogue", "coverage", "--tool", "apt", "--missing",
                      "--categories", mine)
    assert outcome.code == 0, outcome.output
    missing = [line for line in outcome.stdout.splitlines() if line.startswith("unnamed: apt: ")]
    assert "unnamed: apt: Bad header line" in missing
    assert not any("Unable to locate package" in line for line in missing)


@pytest.mark.parametrize(
    "args, words",
    [
        (("--tool", "nosuchtool"), "no messages for nosuchtool"),
        (("--categories", "/nonexistent/mine.yaml"), "mine.yaml"),
    ],
)
def test_bad_input_exits_2(args, words):
    outcome = run_cli("catalogue", "coverage", *args)
    assert outcome.code == 2 and words in outcome.stderr


def test_a_broken_user_catalogue_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: x\n  patterns: ['(a)\\1']\n")
    outcome = run_cli("catalogue", "coverage", "--categories", bad)
    assert outcome.code == 2 and "bad regex" in outcome.stderr
