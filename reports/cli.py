"""``dib-matrix report`` and ``dib-matrix compare``: reports from a results.json, no re-run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reports import write_all
from reports.compare import compare, render_comparison
from reports.gate import EXIT_OK, EXIT_USAGE, gate_exit_code
from reports.html import render_html
from reports.jsonreport import render_json
from reports.junit import render_junit
from reports.markdown import render_markdown
from reports.text import render_report
from results.model import RunResults, load, write_atomically

FORMATS = ("text", "html", "json", "junit", "markdown")


class InputError(Exception):
    """A run directory or results.json that cannot be read."""


def read_run(path: Path) -> RunResults:
    """A run from its directory or its results.json, or an InputError saying why not."""
    try:
        return load(path)
    except FileNotFoundError as err:
        raise InputError(f"{path}: no results.json (a run directory or the file)") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: cannot read results: {err}") from err


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
    report.add_argument("--baseline", type=Path, metavar="RUN",
                        help="compare with this earlier run (directory or results.json)")
    report.add_argument("--transpose", action="store_true",
                        help="hosts as rows, targets as columns")
    report.add_argument("--history", type=Path, metavar="OUT_DIR",
                        help="show trends over the runs in OUT_DIR and rewrite its index.html")
    report.add_argument("-o", "--output", type=Path, help="write the --format report here")
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
           baseline: RunResults | None) -> str:
    if fmt == "text":
        comparison = render_comparison(compare(baseline, results)) if baseline else None
        return render_report(results, args.transpose, comparison)
    if fmt == "html":
        return render_html(results, run_dir_of(args.run), baseline, transpose=args.transpose)
    if fmt == "json":
        return render_json(results)
    if fmt == "markdown":  # comment-sized: regressions with their attribution, fixes, counts
        return render_markdown(results, baseline)
    return render_junit(results)


def cmd_report(args: argparse.Namespace) -> int:
    try:
        results = read_run(args.run)
        baseline = read_run(args.baseline) if args.baseline else None
    except InputError as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.format is None:
        if args.output:
            print("dib-matrix: --output needs --format", file=sys.stderr)
            return EXIT_USAGE
        write_all(run_dir_of(args.run), results, baseline, args.history)
        args.format = "text"
    text = render(args.format, results, args, baseline)
    if args.output:
        write_atomically(args.output, text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        old, new = read_run(args.old), read_run(args.new)
    except InputError as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(render_comparison(compare(old, new)))
    if new.interrupted:
        print(f"dib-matrix: {new.run_id} was interrupted; its results are partial", file=sys.stderr)
    return gate_exit_code(new, baseline=old)
