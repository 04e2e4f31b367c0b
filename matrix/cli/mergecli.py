"""``dib-matrix merge``: one run directory (and one gate) from the parts of a sharded run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reports.cli import InputError, read_run
from reports.gate import EXIT_USAGE, gate_exit_code
from reports.merge import MergeError, MergeOutcome, merge
from results.limits import MAX_PARTS

SKIPPED_LISTED = 5  # skipped entries named on the warning line before "+N more"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "merge", help="merge the run directories of a sharded run into one",
        description="Check that the parts (run directories of run --shard I/N) come from the "
        "same matrix and dib tree with no shard given twice, and write one run directory: "
        "results.json, report.txt/html, junit.xml, the parts' logs and images (hard-linked, "
        "else copied). A missing shard's cells stay pending; the merge then exits 2 after "
        "writing. Otherwise the exit code is the gate's, as for run: 0 ok, 1 voting failures "
        "(or, with --baseline, voting regressions). Symlinks in a part are never followed: a "
        "symlinked directory is refused, a symlinked or special file skipped with a warning; "
        f"at most {MAX_PARTS} parts.")
    parser.add_argument("parts", nargs="+", type=Path, metavar="RUN_DIR",
                        help="a shard's run directory (or its results.json)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                        help="the merged run directory to create, new or empty (its name is "
                        "the run id)")
    parser.add_argument("--baseline", type=Path, metavar="RUN",
                        help="compare with this earlier run; the exit code then fails only on "
                        "regressions of voting cells")
    parser.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    try:
        baseline = read_run(args.baseline) if args.baseline else None
        outcome = merge(list(args.parts), args.output, baseline=baseline)
    except (InputError, MergeError) as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"dib-matrix: cannot write the merged run: {err}", file=sys.stderr)
        return EXIT_USAGE
    print((outcome.run_dir / "report.txt").read_text(encoding="utf-8"))
    _warn_skipped(outcome)
    shard = outcome.results.shard
    print(f"merged {len(shard['parts'])} of {shard['count']} shards "
          f"(files: {outcome.files}): {outcome.run_dir} (report.html, junit.xml, results.json)")
    if outcome.missing:
        pending = sum(c.state.value == "pending" and "not merged" in (c.reason or "")
                      for c in outcome.results.cells)
        listing = ", ".join(f"{i}/{shard['count']}" for i in outcome.missing)
        print(f"dib-matrix: shards missing: {listing}; their {pending} cells are pending. "
              "Merge again with every shard's run directory", file=sys.stderr)
        return EXIT_USAGE
    return gate_exit_code(outcome.results, baseline)


def _warn_skipped(outcome: MergeOutcome) -> None:
    """One line naming what the parts held that merge did not take (not regular files)."""
    if not outcome.skipped:
        return
    more = len(outcome.skipped) - SKIPPED_LISTED
    listing = ", ".join(outcome.skipped[:SKIPPED_LISTED]) + (f" +{more} more" if more > 0 else "")
    print(f"dib-matrix: warning: skipped {len(outcome.skipped)} entries of the parts that are "
          f"not regular files (symlinks are never followed): {listing}", file=sys.stderr)
