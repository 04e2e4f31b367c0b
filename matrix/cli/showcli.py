"""``dib-matrix show RUN_DIR CELL``: one cell's verdict, evidence, reproducer and log.

Everything shown comes from the run's results.json and logs, which hold what
builds printed: every line is cleaned of terminal escapes and control
characters (``reports.sanitize``), and the log is streamed in bounded pieces.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from matrix.cli import archivecli
from matrix.config.schema import match_globs
from reports.cli import InputError, read_run, run_dir_of
from reports.excerptview import excerpt_lines
from reports.knownissues import KnownIssues
from reports.logs import log_path, read_tail
from reports.sanitize import clean_line, one_line
from reports.styles import style
from results.model import Cell, RunResults

EXIT_OK, EXIT_USAGE = 0, 2
CHUNK = 64 << 10  # a log is read this much at a time; a longer line is cut into pieces
FIELD_LIMIT = 2000  # characters of one field (evidence, reproducer) shown


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "show", help="one cell of a run: state, category, evidence, reproducer, log",
        description="Print a cell's state, category, evidence, reproducer and log path "
        "(and its earlier verdicts when it was re-run in place); --log prints the log itself.")
    parser.add_argument("run", type=Path, metavar="RUN_DIR", help="run directory or results.json")
    parser.add_argument("cell", metavar="CELL",
                        help="cell id HOST.ROW (a shell glob shows every match)")
    parser.add_argument("--log", action="store_true", help="print the cell's log")
    parser.add_argument("--last-good", action="store_true",
                        help="where the cell's last success is kept (.dib-matrix/last-good) "
                        "and from which run; RUN_DIR may also be the output directory")
    parser.add_argument("--tail", type=int, metavar="N",
                        help="with --log: only the last N lines")
    parser.set_defaults(func=cmd_show)


def find_cells(results: RunResults, pattern: str) -> list[Cell]:
    exact = [c for c in results.cells if c.id == pattern]
    if exact:
        return exact
    ids = match_globs([c.id for c in results.cells], pattern)
    return [c for c in results.cells if c.id in ids]


def describe(cell: Cell, run_dir: Path, results: RunResults,
             known: KnownIssues | None = None) -> list[tuple[str, str]]:
    """(field, text) pairs of a cell, every text on one line and bounded; ``known``
    (read once for every cell shown) gives the known issue's counts."""
    def text(value: object) -> str:
        return one_line(str(value), FIELD_LIMIT)

    state = style(cell.state).label + (" (non-voting)" if not cell.voting else "")
    if cell.reused:
        state += " (reused)"
    if cell.passed_on_retry:
        state += f" (passed on attempt {cell.attempts})"
    fields: list[tuple[str, str]] = [("cell", text(cell.id)), ("kind", cell.kind.value),
                                     ("state", state)]
    if cell.category:
        category = f"{cell.category.legend} [{cell.category.id}]"
        if cell.category.link:
            category += f" {cell.category.link}"
        fields.append(("category", text(category)))
    if cell.evidence:
        fields.append(("evidence", text(cell.evidence)))
    known = known or KnownIssues(results)
    for name, said in (("known issue", known.known_issue_text(cell)),
                       ("where", known.also_on_text(cell))):
        if said:
            fields.append((name, text(said)))
    for unusual in excerpt_lines(cell):  # log lines unlike successful builds of the row
        fields.append(("excerpt", f"line {unusual.line}: {unusual.text}"))
    if cell.reason:
        fields.append(("reason", text(cell.reason)))
    if cell.attempts:
        fields.append(("attempts", str(cell.attempts)))
    if cell.duration is not None:
        fields.append(("duration", f"{cell.duration:.1f} s"
                       + (f" (started {text(cell.started)})" if cell.started else "")))
    if cell.reproducer:
        fields.append(("reproducer", text(cell.reproducer)))
    path = log_path(run_dir, cell)
    if cell.log:
        fields.append(("log", str(path) if path else f"{text(cell.log)} (missing)"))
    for artifact in cell.artifacts:
        fields.append(("image", text(f"{artifact.path} {artifact.size} bytes sha256 "
                                     f"{artifact.sha256[:16] or '-'}")))
    for check in cell.checks:
        fields.append(("check", text(f"{check.name}: {'ok' if check.ok else 'FAILED'}: "
                                     f"{check.detail}")))
    for earlier in (r for r in results.reruns if r.get("cell") == cell.id):
        what = str(earlier.get("state"))
        if earlier.get("category"):
            what += f": {earlier['category']}"
        if earlier.get("log"):
            what += f" (log {earlier['log']})"
        when = earlier.get("finished") or "not finished"
        again = f"; re-run at {earlier.get('at')}"
        if earlier.get("rerun_dib_tree"):
            again += f" with the dib tree {earlier['rerun_dib_tree']}"
        fields.append(("earlier", text(f"{when}: {what}{again}")))
    return fields


def print_fields(fields: list[tuple[str, str]], out: TextIO) -> None:
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        out.write(f"{name:<{width}}  {one_line(value)}\n")  # the terminal boundary


def stream_log(path: Path, out: TextIO) -> None:
    """The log, cleaned, CHUNK bytes at a time: memory stays bounded whatever its shape."""
    pending = b""
    with path.open("rb") as stream:
        while True:
            block = stream.read(CHUNK)
            if not block:
                break
            pending += block
            *lines, pending = pending.split(b"\n")
            if len(pending) > CHUNK:  # one very long line: show it in pieces
                lines.append(pending)
                pending = b""
            for line in lines:
                out.write(clean_line(line.decode("utf-8", errors="replace")) + "\n")
    if pending:
        out.write(clean_line(pending.decode("utf-8", errors="replace")) + "\n")


def cmd_show(args: argparse.Namespace) -> int:
    if args.last_good:
        return archivecli.show_last_good(args.run, args.cell)
    try:
        results = read_run(args.run)
    except InputError as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    run_dir = run_dir_of(args.run)
    cells = find_cells(results, args.cell)
    if not cells:
        print(f"dib-matrix: no cell {one_line(args.cell, 200)!r} in run {results.run_id}",
              file=sys.stderr)
        return EXIT_USAGE
    if args.log and len(cells) > 1:
        print(f"dib-matrix: --log shows one cell; {args.cell!r} matches {len(cells)}",
              file=sys.stderr)
        return EXIT_USAGE
    if args.tail is not None and args.tail < 1:
        print("dib-matrix: --tail must be 1 or more", file=sys.stderr)
        return EXIT_USAGE
    out = sys.stdout
    if not args.log:
        known = KnownIssues.load(results, run_dir)
        for number, cell in enumerate(cells):
            if number:
                out.write("\n")
            print_fields(describe(cell, run_dir, results, known), out)
        return EXIT_OK
    path = log_path(run_dir, cells[0])
    if path is None:
        print(f"dib-matrix: {cells[0].id} has no log in {run_dir}", file=sys.stderr)
        return EXIT_USAGE
    if args.tail is not None:
        _, lines = read_tail(path)
        out.writelines(line + "\n" for line in lines[-args.tail:])
    else:
        stream_log(path, out)
    return EXIT_OK
