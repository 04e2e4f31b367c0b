"""``dib-matrix report`` and ``dib-matrix compare``: reports from a results.json, no re-run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reports import investigation, write_all
from reports.bump import BumpMode, render_bump_markdown, render_bump_text
from reports.compare import compare, render_comparison
from reports.gate import EXIT_OK, EXIT_USAGE, gate_exit_code
from reports.html import render_html
from reports.jsonreport import render_json
from reports.junit import render_junit
from reports.markdown import render_markdown
from reports.sanitize import safe_text
from reports.text import render_report
from results.model import RunResults
from results.paths import output_file
from results.reader import ResultsError, error_line, read_results, shown_path
from results.store import write_atomically

FORMATS = ("text", "html", "json", "junit", "markdown")


class InputError(Exception):
    """A run directory or results.json that cannot be read; the message is one line."""


def read_run(path: Path) -> RunResults:
    """A run from its directory or its results.json, or an InputError saying why not."""
    try:
        return read_results(path)
    except FileNotFoundError as err:
        raise InputError(f"{shown_path(path)}: no results.json (a run directory or the file)"
                         ) from err
    except (ResultsError, OSError) as err:
        raise InputError(error_line(err)) from err


def run_dir_of(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def add_parsers(sub: Any) -> None:
    report = sub.add_parser(
        "report",
        help="regenerate reports from a run's results.json",
        description="Without --format: rewrite report.txt, report.html and junit.xml in "
        "RUN_DIR and print the table. With --format: print that one report (or write it "
        "to --output).",
    )
    report.add_argument("run", type=Path, metavar="RUN_DIR", help="run directory or results.json")
    report.add_argument("--format", choices=FORMATS, help="print only this report")
    against = report.add_mutually_exclusive_group()
    against.add_argument("--baseline", type=Path, metavar="RUN",
                         help="compare with this earlier run (directory or results.json)")
    against.add_argument("--bump-from", type=Path, metavar="RUN",
                         help="read RUN_DIR as a bump of RUN, the pinned run it was built "
                         "against (run --bump-from): package changes per cell, and failures "
                         "whose cause the bundled catalogue marks infrastructure (mirror, "
                         "network, engine) listed apart from regressions. Without --format "
                         "also writes bump.md and summary.md; --format markdown prints bump.md")
    report.add_argument("--transpose", action="store_true",
                        help="hosts as rows, targets as columns")
    report.add_argument("--history", type=Path, metavar="OUT_DIR",
                        help="show trends over the runs in OUT_DIR and rewrite its index.html")
    report.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="write the --format report to FILE ('-': standard output); only "
                        "a regular file is replaced, never a FIFO, device, symlink or "
                        "directory, and FILE's directory must exist")
    report.set_defaults(func=cmd_report)

    comp = sub.add_parser(
        "compare",
        help="compare two runs; exit 1 when a voting cell regressed",
        description="Print regressions, fixes, changed causes and new/removed cells. "
        "Exit codes: 0 no voting regression, 1 a voting cell regressed, 2 unreadable input.",
    )
    comp.add_argument("old", type=Path, metavar="OLD",
                      help="baseline run directory or results.json")
    comp.add_argument("new", type=Path, metavar="NEW", help="new run directory or results.json")
    comp.set_defaults(func=cmd_compare)


def render(fmt: str, results: RunResults, args: argparse.Namespace,
           baseline: RunResults | None, bump: BumpMode | None = None) -> str:
    baseline = bump.pinned if bump is not None else baseline
    if fmt != "json":  # the reports' cells are the grid's; JSON is the whole results
        results = results.grid_view()
    if fmt == "text":
        comparison = render_comparison(compare(baseline, results)) if baseline else None
        if bump is not None:
            comparison = f"{comparison}\n{render_bump_text(bump, results)}"
        return render_report(results, args.transpose, comparison, run_dir_of(args.run))
    if fmt == "html":
        return render_html(results, run_dir_of(args.run), baseline, transpose=args.transpose)
    if fmt == "json":
        return render_json(results)
    if fmt == "markdown" and bump is not None:  # the body of a "bump the snapshot" review
        return render_bump_markdown(bump.pinned, results, bump.infrastructure)
    if fmt == "markdown":  # comment-sized: regressions with their attribution, fixes, counts
        return render_markdown(results, baseline, run_dir_of(args.run))
    return render_junit(results)


def bump_mode(pinned: RunResults) -> BumpMode:
    """A bump of ``pinned``: the run's own record says which failures are infrastructure
    (``category.infrastructure``, from the catalogue the run was judged with)."""
    return BumpMode(pinned)


STDOUT = Path("-")  # report -o -: standard output, as without -o


def cmd_report(args: argparse.Namespace) -> int:
    if args.format is None and args.output:
        print("dib-matrix: --output needs --format", file=sys.stderr)
        return EXIT_USAGE
    try:
        results = read_run(args.run)
        baseline = read_run(args.baseline) if args.baseline else None
        bump = bump_mode(read_run(args.bump_from)) if args.bump_from else None
    except InputError as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:  # the output resolved and checked before any work: a bad one costs nothing
        output = None if args.output in (None, STDOUT) else output_file(args.output)
    except OSError as err:  # UnsafeOutput (a FIFO, a symlink, no such directory), EACCES
        print(f"dib-matrix: -o: {err} ('-o -' writes to standard output)", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.format is None:
            write_all(run_dir_of(args.run), results, baseline, args.history, bump)
        text = render(args.format or "text", results, args, baseline, bump)
        if output is None:
            sys.stdout.write(text)
        else:
            write_atomically(output, text)
    except OSError as err:  # read-only, /proc, a report file replaced by a symlink, ...
        where = output or (run_dir_of(args.run) if args.format is None else "standard output")
        # strerror, not str(err): the message would name the writer's temporary file
        print(f"dib-matrix: cannot write the report to {where}: {err.strerror or err}",
              file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        old, new = read_run(args.old), read_run(args.new)
    except InputError as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(render_comparison(compare(old, new)))
    found = investigation.text_lines(new)
    if found:
        sys.stdout.write(safe_text("\n".join(found[1:]) + "\n"))
    if new.interrupted:
        print(f"dib-matrix: {new.run_id} was interrupted; its results are partial", file=sys.stderr)
    return gate_exit_code(new, baseline=old)
