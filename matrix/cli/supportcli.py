"""``dib-matrix support``: the support table of an output directory's last N runs.

Built by ``reports.support`` from the readable runs (a run that cannot be read is
skipped with a warning) and the last-good cells, which answer "last green" for a cell
whose green runs were collected. Markdown is what a project puts in its docs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reports.gate import EXIT_OK, EXIT_USAGE
from reports.html import render_support
from reports.sanitize import one_line
from reports.support import DEFAULT_RUNS, build_table, last_good_refs, render_json, render_markdown
from results import lastgood
from results.archive import OutDir
from results.paths import UnsafePath, absolute

MAX_RUNS = 1000  # a window beyond this reads more runs than any table is worth
RENDERERS = {"markdown": render_markdown, "json": render_json, "html": render_support}


def _runs(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_RUNS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_RUNS}, "
                                         f"got {one_line(text, 40)!r}")
    return count


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "support", help="the support table (host x target) over the last N runs",
        description="For every host and target over the last N runs of an output directory: "
        "supported (green throughout), broken since <run> (with its cause), flaky (both), or "
        "not run; with each cell's last green run and date (its last-good once the run is "
        "collected).")
    parser.add_argument("--out", type=Path, default=Path("out"), metavar="DIR",
                        help="the output directory (default: out)")
    parser.add_argument("--runs", type=_runs, default=DEFAULT_RUNS, metavar="N",
                        help=f"the window: the newest N runs (default: {DEFAULT_RUNS})")
    parser.add_argument("--format", choices=sorted(RENDERERS), default="markdown",
                        help="markdown (default), html or json")
    parser.set_defaults(func=cmd_support)


def cmd_support(args: argparse.Namespace) -> int:
    out = OutDir(absolute(args.out))
    if not out.path.is_dir():
        print(f"dib-matrix: --out {one_line(str(out.path), 300)}: not a directory",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        runs = [stored.results for stored in out.runs(args.runs)]
        last_good = last_good_refs(lastgood.read_all(out))
    except (OSError, UnsafePath) as err:
        print(f"dib-matrix: support {one_line(str(out.path), 300)}: {one_line(str(err), 500)}",
              file=sys.stderr)
        return EXIT_USAGE
    table = build_table(runs, args.runs, last_good)
    sys.stdout.write(RENDERERS[args.format](table))
    return EXIT_OK
