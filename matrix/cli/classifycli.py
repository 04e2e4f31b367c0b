"""``dib-matrix classify LOG``: which catalogue entry names this log, and why.

For trying a catalogue entry against a real log before adding it (the way
elastic-recheck signatures are checked): prints the id, the legend, the
evidence line and every other entry that matched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dib.boottest import replay_log
from matrix.config.diagnostics import ConfigError
from matrix.config.targets import BOOT_SUFFIX
from matrix.verdict.catalogue import UNCATEGORIZED, load_catalogue
from matrix.verdict.classify import Evidence, classify
from matrix.verdict.logscan import lines_of_file

CONSOLE_LIMIT = 8 << 20  # bytes of a serial console replayed through the boot watcher


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "classify", help="name the cause of a failure log with the category catalogue")
    parser.add_argument("log", type=Path, metavar="LOG", help="a cell's log file")
    parser.add_argument("--row", default="*",
                        help="the row it came from (a target, tox, hostgen, <target>:boot): "
                        "entries scoped to other rows do not apply (default: every entry)")
    parser.add_argument("--host", default="*", help="the host it came from (default: any)")
    parser.add_argument("--categories", action="append", type=Path, default=[], metavar="FILE",
                        help="extra category file, after the bundled one (repeatable)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(func=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> int:
    """Exit 0 when an entry names the log, 1 when it is uncategorized, 2 on bad input."""
    if not args.log.is_file():
        print(f"dib-matrix: {args.log}: no such log file", file=sys.stderr)
        return 2
    try:
        catalogue = load_catalogue(tuple(args.categories))
    except ConfigError as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return 2
    if args.row.endswith(BOOT_SUFFIX):
        # A boot row is judged on what the boot watcher makes of the console.
        console = "\n".join(lines_of_file(args.log))[:CONSOLE_LIMIT]
        evidence = Evidence(args.host, args.row, (replay_log(console).evidence,))
    else:
        evidence = Evidence(args.host, args.row, log=args.log)
    verdict = classify(evidence, catalogue)
    category = verdict.category
    if args.format == "json":
        print(json.dumps({"id": category.id, "legend": category.legend,
                          "evidence": verdict.evidence, "labels": category.labels,
                          "link": category.link}, indent=2))
    else:
        print(f"id:       {category.id}")
        print(f"legend:   {category.legend}")
        for number, line in enumerate(verdict.evidence.splitlines() or [""]):
            print(f"{'evidence:' if number == 0 else '':9} {line}")
        if len(category.labels) > 1:
            print(f"also:     {', '.join(category.labels[1:])}")
    return 1 if category.id == UNCATEGORIZED else 0
