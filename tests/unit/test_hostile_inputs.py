"""Every input file is bounded, regular and strictly validated: hostile files through the
real command line (``dib-matrix plan`` and ``classify`` in a child process under a
timeout, ``tests.hostile.run_cli``).

Classes: special files (a FIFO, a device, a directory) given as a matrix, host,
target, category file or log; YAML nested past any configuration's depth, alias
bombs and self-references; names that pass a ``$``-anchored pattern with a final
newline; a target or host file given by path whose name is not its file's or that
takes a bundled one's; booleans and lists written as strings; counts that multiply
work without bound; a huge log; terminal escapes in a log. Bad input always exits 2
with a clear line (never 1, which means a voting cell failed), never a traceback or
a hang. The plan of 5,000 targets and 2,500 excludes is checked by its number of glob
compilations, not by a clock.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from matrix.config.matrixfile import CellRule, load_matrix
from matrix.run.plan import make_plan
from matrix.verdict import logscan
from tests.hostile import CASE_TIMEOUT, REPO, Outcome, run_cli

EXIT_USAGE = 2
HOST, TARGET = "debian-bookworm", "debian-bookworm"


def matrix(tmp_path: Path, body: str = "", hosts: str = f"[{HOST}]",
           targets: str = f"[{TARGET}]") -> Path:
    """A matrix file (no check rows unless ``body`` says) in ``tmp_path``; ``body`` starts
    on line 4."""
    path = tmp_path / "m.yaml"
    checks = "" if body.startswith("checks:") else "checks: []\n"
    path.write_text(f"name: m\nhosts: {hosts}\ntargets: {targets}\n{body}{checks}")
    return path


def refused(outcome: Outcome, *words: str) -> str:
    """The one error line of an exit-2 refusal; it holds every one of ``words``."""
    assert outcome.code == EXIT_USAGE, outcome.output[-2000:]
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, outcome.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ---- special files where a file is expected ------------------------------------------


def special(kind: str, path: Path) -> Path:
    """A FIFO, a link to /dev/zero (endless) or a directory at ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    return path


KINDS = {"fifo": "a FIFO", "device": "a character device", "directory": "a directory"}
ROLES = ["matrix", "host", "target", "categories-key", "categories-option", "log",
         "boot-log"]


def _command(role: str, tmp_path: Path, bad: Path) -> list[str | Path]:
    if role == "matrix":
        return ["plan", bad]
    if role == "host":
        return ["plan", matrix(tmp_path, hosts=f"[{HOST}, {bad.name}]")]
    if role == "target":
        return ["plan", matrix(tmp_path, targets=f"[{TARGET}, {bad.name}]")]
    if role == "categories-key":
        return ["plan", matrix(tmp_path, f"categories: [{bad.name}]\n")]
    if role == "categories-option":
        log = tmp_path / "cell.log"
        log.write_text("E: Unable to locate package nosuch\n")
        return ["classify", log, "--categories", bad]
    if role == "log":
        return ["classify", bad]
    return ["classify", bad, "--row", f"{TARGET}-vm:boot"]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("role", ROLES)
def test_a_special_file_is_refused_at_once(role, kind, tmp_path):
    bad = special(kind, tmp_path / "bad.yaml")
    started = time.monotonic()
    outcome = run_cli(*_command(role, tmp_path, bad), cwd=tmp_path)
    refused(outcome, str(bad.name), KINDS[kind])
    assert time.monotonic() - started < CASE_TIMEOUT


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_special_element_file_in_the_dib_tree_is_refused(kind, tmp_path):
    tree = tmp_path / "tree"
    (tree / "dib").mkdir(parents=True)
    (tree / "dib" / "__main__.py").write_text("")
    (tree / "elements" / "hostile").mkdir(parents=True)
    special(kind, tree / "elements" / "hostile" / "element-deps")
    outcome = run_cli("plan", matrix(tmp_path), "--dib-tree", tree)
    refused(outcome, "element 'hostile'", "element-deps", KINDS[kind])


def test_a_huge_configuration_file_is_refused_unread(tmp_path):
    path = tmp_path / "m.yaml"
    with path.open("wb") as out:
        out.truncate(300 << 20)  # sparse: 300 MB of NULs
    refused(run_cli("plan", path), "m.yaml", "larger than 1 MiB")


# ---- YAML shaped to hurt ------------------------------------------------------------


@pytest.mark.parametrize("hosts, words", [
    ("[" * 100_000 + "]" * 100_000, ["m.yaml:2", "nested deeper than 50 levels"]),
    ("{a: " * 5_000 + "b" + "}" * 5_000, ["m.yaml:2", "nested deeper than 50 levels"]),
    ("&a [*a]", ["m.yaml:2", "alias refers to a node that contains it"]),
    ("[]\n" + "".join(f"x{i}: &a{i} [{f'*a{i - 1}' if i else ''}]\n" for i in range(60)),
     ["nested deeper than 50 levels through aliases"]),
    ("[]\nx: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"x{i}: &a{i} [{', '.join([f'*a{i - 1}' if i else '*a'] * 10)}]\n" for i in range(9)),
     ["expands to more than", "nested aliases"]),
])
def test_yaml_nesting_and_alias_bombs_are_refused_with_their_line(hosts, words, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(f"name: m\nhosts: {hosts}\ntargets: [{TARGET}]\n")
    refused(run_cli("plan", path), *words)


# ---- names are full matches ----------------------------------------------------------


def test_a_name_ending_in_a_newline_is_refused_everywhere(tmp_path):
    (tmp_path / "t.yaml").write_text('name: "t\\n"\nelements: [debian-minimal]\n')
    refused(run_cli("plan", matrix(tmp_path, targets="[t.yaml]")), "t.yaml:1", "name:")
    (tmp_path / "h.yaml").write_text('name: "h\\n"\nbase: {bootstrap: bookworm}\n')
    refused(run_cli("plan", matrix(tmp_path, hosts="[h.yaml]")), "h.yaml:1", "name:")
    env = matrix(tmp_path, 'env: {"DIB_X\\n": "1"}\n')
    refused(run_cli("plan", env), "m.yaml:4", "only DIB_* variable names")
    categories = tmp_path / "c.yaml"
    categories.write_text('- id: "mine\\n"\n  patterns: [x]\n')
    log = tmp_path / "cell.log"
    log.write_text("x\n")
    refused(run_cli("classify", log, "--categories", categories), "c.yaml:1", "id:")


@pytest.mark.parametrize("bootstrap, words", [
    ('{suite: bookworm, components: ["main\\n"]}', ["base.bootstrap.components[0]"]),
    ('{suite: "bookworm\\n"}', ["base.bootstrap.suite", "not a suite name"]),
    ('{suite: bookworm, mirror: "http://deb.debian.org/debian\\n"}',
     ["base.bootstrap.mirror", "not an http"]),
])
def test_host_values_are_full_matches(bootstrap, words, tmp_path):
    (tmp_path / "h.yaml").write_text(f"name: h\nbase:\n  bootstrap: {bootstrap}\n")
    refused(run_cli("plan", matrix(tmp_path, hosts="[h.yaml]")), "h.yaml", *words)


# ---- a file given by path is what its name says, and nothing bundled ------------------


def test_a_target_file_whose_name_is_not_its_file_name_is_refused(tmp_path):
    (tmp_path / "mine.yaml").write_text("name: other\nelements: [debian-minimal]\n")
    refused(run_cli("plan", matrix(tmp_path, targets="[mine.yaml]")),
            "mine.yaml:1: name: 'other' must match the file name ('mine')")


@pytest.mark.parametrize("what, key, text", [
    ("target", "targets", "name: debian-bookworm\nelements: [debian-minimal]\n"),
    ("host", "hosts", "name: debian-bookworm\nbase: {bootstrap: sid}\n"),
])
def test_a_file_given_by_path_cannot_shadow_a_bundled_one(what, key, text, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "debian-bookworm.yaml").write_text(text)
    path = matrix(tmp_path, **{key: "[mine/debian-bookworm.yaml]"})
    refused(run_cli("plan", path), f"defines {what} 'debian-bookworm'", "the name of another")


def test_the_bundled_file_itself_given_by_path_is_fine(tmp_path):
    bundled = REPO / "targets" / f"{TARGET}.yaml"
    outcome = run_cli("plan", matrix(tmp_path, targets=f"[{TARGET}, '{bundled}']"))
    assert outcome.code == 0, outcome.output


# ---- types: booleans are booleans, lists are lists, counts have a ceiling ----------------


@pytest.mark.parametrize("body, words", [
    ('fail-fast: "false"', ["fail-fast: must be true or false"]),
    ("fail-fast: 0", ["fail-fast: must be true or false"]),
    ("checks: tox", ["checks: must be a list"]),
    ("checks: [tox, tox]", ["checks: lists a check twice"]),
    ("retries: 1000000000", ["retries:", "at most 10"]),
    ("max-parallel: 1000000", ["max-parallel:", "at most 256"]),
    ('timeout: "1e9h"', ["timeout: cannot read duration"]),
    ("exclude: [{host: [a, b], target: '*', reason: r}]", ["exclude[0].host: must be a glob"]),
    ("exclude: [{target: 5, reason: r}]", ["exclude[0].target: must be a glob"]),
    ("exclude: [{target: '*', reason: [r]}]", ["exclude[0].reason: must be text"]),
    ("allowed-failures: [{target: \"x\\x1b[2J\"}]", ["allowed-failures[0].target: must not"]),
    ("include: [{host: [x], target: debian-bookworm}]", ["include[0].host: must be a host"]),
    ("include: [{host: debian-bookworm, target: {a: b}}]", ["include[0].target: must be a"]),
    ("output: [out]", ["output: must be a directory name"]),
    ('env: {DIB_X: "a\\x00b"}', ["env.DIB_X: value must not hold control characters"]),
    ('registry-mirror: "mirror.example\\n/hub"', ["registry-mirror:", "registry host"]),
])
def test_matrix_values_of_the_wrong_type_or_size_are_refused(body, words, tmp_path):
    refused(run_cli("plan", matrix(tmp_path, body + "\n")), "m.yaml", *words)


@pytest.mark.parametrize("hosts, targets, words", [
    (HOST, f"[{TARGET}]", ["hosts: must be a non-empty list"]),
    (f"[{HOST}]", TARGET, ["targets: must be a non-empty list"]),
])
def test_a_list_written_as_one_string_is_refused(hosts, targets, words, tmp_path):
    refused(run_cli("plan", matrix(tmp_path, hosts=hosts, targets=targets)), *words)


@pytest.mark.parametrize("option, value", [("--retries", "1000000000"),
                                           ("--max-parallel", "100000"),
                                           ("--timeout", "100000h")])
def test_command_line_counts_have_the_same_ceilings(option, value, tmp_path):
    refused(run_cli("plan", matrix(tmp_path), option, value), f"--{option.lstrip('-')}")


@pytest.mark.parametrize("args", [("--shards", "100000000"), ("--shards", "0")])
def test_the_shard_count_has_a_ceiling(args, tmp_path):
    refused(run_cli("plan", matrix(tmp_path), *args), "shard count", "1000")


@pytest.mark.parametrize("text, words", [
    ("name: t\nelements: [debian-minimal]\nboot-test: \"false\"\n", ["boot-test: must be true"]),
    ("name: t\nelements: debian-minimal\n", ["elements: must be a non-empty list"]),
    ("name: t\nelements: [debian-minimal]\noutputs: tar\n", ["outputs: must list types"]),
    ("name: t\nelements: [debian-minimal]\noutputs: [tar, tar]\n", ["outputs: lists a type"]),
    ("name: t\nelements: [\"debian-minimal\\n\"]\n", ["elements[0]: invalid entry"]),
])
def test_target_values_of_the_wrong_type_are_refused(text, words, tmp_path):
    (tmp_path / "t.yaml").write_text(text)
    refused(run_cli("plan", matrix(tmp_path, targets="[t.yaml]")), "t.yaml", *words)


@pytest.mark.parametrize("entry, words", [
    ("warnings: 'no'", ["warnings: must be true or false"]),
    ("hosts: [[a]]", ["hosts[0]: must be a glob"]),
    ("targets: \"a\\x1bb\"", ["targets: must not contain spaces or control"]),
])
def test_category_values_of_the_wrong_type_are_refused(entry, words, tmp_path):
    categories = tmp_path / "c.yaml"
    categories.write_text(f"- id: mine\n  patterns: [x]\n  {entry}\n")
    log = tmp_path / "cell.log"
    log.write_text("x\n")
    refused(run_cli("classify", log, "--categories", categories), "c.yaml:3", *words)


# ---- logs: a window of them, never all in memory; what they say is printed safely -----


def _peak_rss_of_cli(*args: str | Path) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run ``dib-matrix ARGS`` in a child that reports its own peak RSS (KiB).

    The peak is the child's VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss
    over an exec, so a child forked from a large pytest process would report the
    parent's size."""
    code = ("import re, sys\nfrom matrix.cli import main\nstatus = main(sys.argv[1:])\n"
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "print('peak-rss-kib', hwm, file=sys.stderr)\nsys.exit(status)\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    peak = int(done.stderr.rsplit("peak-rss-kib", 1)[1].split()[0])
    return peak, done


def test_a_boot_console_is_judged_from_a_bounded_head(tmp_path):
    console = tmp_path / "serial.log"
    line = (b"ab cd ef gh " * 40)[:399] + b"\n"
    console.write_bytes(line * ((96 << 20) // len(line)))  # 96 MB of console lines
    peak, done = _peak_rss_of_cli("classify", console, "--row", "vm:boot")
    assert done.returncode in (0, 1), done.stderr
    assert peak < 160 << 10, f"peak RSS {peak} KiB for a 96 MB console"  # the old: ~260 MB


def test_a_huge_log_is_read_from_its_end_in_bounded_memory(tmp_path):
    log = tmp_path / "cell.log"
    with log.open("wb") as out:
        out.truncate(300 << 20)  # 300 MB of NULs on one line (sparse)
        out.seek(0, os.SEEK_END)
        out.write(b"\nE: Unable to locate package nosuch\n")
    peak, done = _peak_rss_of_cli("classify", log)
    assert done.returncode == 0 and "package-not-found" in done.stdout, done.stdout
    assert peak < 160 << 10, f"peak RSS {peak} KiB"


def test_only_the_logs_last_window_is_read(tmp_path):
    log = tmp_path / "cell.log"
    filler = b"apt: Get:1 http://deb.debian.org/debian bookworm InRelease\n"
    with log.open("wb") as out:
        out.write(b"E: an early line outside the window\n")
        out.write(filler * (logscan.LOG_TAIL // len(filler) + 10))
        out.write(b"E: the last line\n")
    lines = list(logscan.lines_of_file(log))
    assert lines[-1] == "E: the last line"
    assert "E: an early line outside the window" not in lines
    assert sum(len(line) + 1 for line in lines) <= logscan.LOG_TAIL + len(filler)


def test_one_long_line_across_the_window_is_judged_by_its_head(tmp_path):
    log = tmp_path / "cell.log"
    with log.open("wb") as out:
        out.write(b"first\nE: Unable to locate package x ")
        out.write(b"y" * (logscan.LOG_TAIL + (1 << 20)))
    assert [line[:34] for line in logscan.lines_of_file(log)] == [
        "E: Unable to locate package x yyyy"]


ESCAPES = ["\x1b[2J", "\x1b]0;pwned\x07", "\x9b31m", "\r"]


def test_classify_prints_no_terminal_control_from_the_log(tmp_path):
    log = tmp_path / "cell.log"
    log.write_text("".join(f"E: Unable to locate package x{escape}y\n" for escape in ESCAPES)
                   + "".join(f"noise {escape} tail\n" for escape in ESCAPES), encoding="utf-8")
    outcome = run_cli("classify", log)
    assert outcome.code == 0, outcome.output
    for char in ("\x1b", "\x9b", "\x07", "\r"):
        assert char not in outcome.stdout, repr(outcome.stdout)
    uncategorized = tmp_path / "other.log"
    uncategorized.write_text("".join(f"noise {escape} tail\n" for escape in ESCAPES))
    outcome = run_cli("classify", uncategorized)
    assert outcome.code == 1 and "noise" in outcome.stdout, outcome.output
    for char in ("\x1b", "\x9b", "\x07", "\r"):
        assert char not in outcome.stdout, repr(outcome.stdout)


# ---- 5,000 targets and 2,500 excludes -------------------------------------------------


def test_a_large_plan_compiles_each_glob_once(tmp_path, monkeypatch):
    config = load_matrix(matrix(tmp_path))
    template = config.targets[0]
    targets = tuple(dataclasses.replace(template, name=f"t{i:05d}") for i in range(5000))
    exclude = tuple(CellRule("*", f"t{2 * i:05d}*", "r") for i in range(1250)) + tuple(
        CellRule(HOST, f"*{2 * i + 1:05d}", "r") for i in range(1250))
    allowed = tuple(CellRule("debian-*", f"t{i:04d}?", "") for i in range(100))
    config = dataclasses.replace(config, targets=targets, exclude=exclude,
                                 allowed_failures=allowed)
    from matrix.config import globs  # the one glob selector of the matrix

    compiled: list[str] = []
    real = globs._compile
    monkeypatch.setattr(globs, "_compile", lambda p: compiled.append(p) or real(p))
    globs.compiled.cache_clear()
    started = time.monotonic()
    plan = make_plan(config)
    seconds = time.monotonic() - started
    cells = {c.id: c for c in plan.cells}
    assert len(plan.cells) == 5001
    assert cells[f"{HOST}.t00042"].excluded == "r" and cells[f"{HOST}.t00043"].excluded == "r"
    assert not cells[f"{HOST}.t00123"].voting and cells[f"{HOST}.t04990"].voting
    # Each distinct glob is compiled at most once (not once per cell: 12.5 million).
    assert len(compiled) <= len({r.host for r in exclude + allowed}
                                | {r.target for r in exclude + allowed})
    assert seconds < 30, f"{seconds:.1f} s"  # a sanity bound only; ~0.1 s on a laptop
