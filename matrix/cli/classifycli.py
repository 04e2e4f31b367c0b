"""``dib-matrix classify LOG``: which catalogue entry names this log, and why.

For trying a catalogue entry against a real log before adding it (the way
elastic-recheck signatures are checked): prints the id, the legend, the
evidence line and every other entry that matched.

The log is untrusted: it is read through ``matrix.verdict.logscan`` (a regular file
only, never a hang on a FIFO, a bounded window of it), and what it contributes to the
output (evidence, a legend's captured groups) is printed with terminal control
characters neutralised.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dib.bootconsole import replay_log
from matrix.config.diagnostics import ConfigError
from matrix.config.targets import BOOT_SUFFIX
from matrix.verdict.catalogue import UNCATEGORIZED, Catalogue, load_catalogue
from matrix.verdict.classify import Evidence, Verdict, classify
from matrix.verdict.logscan import head_of_file
from reports.sanitize import clean_line, one_line
from results.safefile import UnsafeFile, open_regular

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
    try:
        catalogue = load_catalogue(tuple(args.categories))
        verdict = _verdict(args, catalogue)
    except ConfigError as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # missing, a FIFO, a device, a directory, unreadable
        print(f"dib-matrix: {args.log}: {_unreadable(err, args.log)}", file=sys.stderr)
        return 2
    print(_render(verdict, args.format))
    return 1 if verdict.category.id == UNCATEGORIZED else 0


def _verdict(args: argparse.Namespace, catalogue: Catalogue) -> Verdict:
    if args.row.endswith(BOOT_SUFFIX):
        # A boot row is judged on what the boot watcher makes of the console, from its
        # start (at most CONSOLE_LIMIT bytes of it).
        console = "\n".join(head_of_file(args.log, CONSOLE_LIMIT))
        return classify(Evidence(args.host, args.row, (replay_log(console).evidence,)),
                        catalogue)
    # classify() passes over a cell's log that is not a file; here the log is the whole
    # input, so anything but a regular file is refused first (an OSError).
    open_regular(args.log).close()
    return classify(Evidence(args.host, args.row, log=args.log), catalogue)


def _unreadable(err: OSError, path: Path) -> str:
    """Why the log cannot be read, without repeating its path."""
    if isinstance(err, UnsafeFile):
        return str(err).removeprefix(f"{path}: ")
    if isinstance(err, FileNotFoundError):
        return "no such log file"
    return f"cannot read: {err.strerror or err}"


def _render(verdict: Verdict, form: str) -> str:
    """The verdict as text or JSON. Text from the log is cleaned of terminal controls
    (JSON escapes them itself: no control character is ever printed raw)."""
    category = verdict.category
    if form == "json":
        return json.dumps({"id": category.id, "legend": category.legend,
                           "evidence": verdict.evidence, "labels": category.labels,
                           "link": category.link}, indent=2)
    lines = [f"id:       {one_line(category.id)}", f"legend:   {one_line(category.legend)}"]
    for number, line in enumerate(verdict.evidence.splitlines() or [""]):
        lines.append(f"{'evidence:' if number == 0 else '':9} {clean_line(line)}")
    if len(category.labels) > 1:
        lines.append(f"also:     {one_line(', '.join(category.labels[1:]))}")
    return "\n".join(lines)
