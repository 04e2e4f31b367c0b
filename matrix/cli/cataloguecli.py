"""``dib-matrix catalogue coverage|check|stale``: how good the failure catalogue is.

``coverage`` asks the catalogue about every error message the tools can print (apt,
dpkg, debootstrap, e2fsprogs, qemu-img, grub, pip, tox, pytest: the bundled
``matrix/verdict/messages``): how many an entry names precisely, how many only a
catch-all entry names, how many nothing names (``--missing`` lists those).

``check`` runs every entry over every successful log it can find (the corpus's, in a
checkout; with ``--out``, the successful cells of every run there): a hit is a false
positive, printed as ``file:line``. Over the failure logs it lists entries that never
match and entries that always match together. Exit 1 when a bundled entry matches a
bundled successful log (the corpus is what CI keeps clean), 2 on bad input.

``stale`` lists the entries (bundled and the user's) no run of an output directory
matched in the last N days (``results.occurrences``, the record each run appends to)
and the entries whose ``review-after`` or ``expires`` day is past. A listing: exit 0,
2 on bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matrix.config.diagnostics import ConfigError
from matrix.verdict import lifecycle, scoring
from matrix.verdict.catalogue import Catalogue, CategoryRule, load_catalogue
from matrix.verdict.coverage import Outcome, ToolCoverage, coverage
from reports.sanitize import clean_line
from results import occurrences
from results.archive import warn_on_stderr
from results.model import State

EXIT_OK, EXIT_FALSE_POSITIVE, EXIT_USAGE = 0, 1, 2
DEFAULT_OUT = Path("out")  # the matrix file's default output directory
MAX_DAYS = 36500
# The corpus of real logs lives beside the tool in a checkout, not in a wheel.
CORPUS = Path(__file__).resolve().parents[2] / "tests" / "corpus"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("catalogue", help="measure the failure category catalogue")
    commands = parser.add_subparsers(dest="catalogue_command", metavar="COMMAND",
                                     required=True)
    cover = commands.add_parser(
        "coverage", help="which of the tools' own error messages an entry names")
    _catalogue_arguments(cover)
    cover.add_argument("--tool", action="append", default=[],
                       help="only this tool (repeatable): apt, dpkg, debootstrap, e2fsprogs, "
                       "qemu-img, grub, pip, tox, pytest")
    cover.add_argument("--missing", action="store_true",
                       help="list the messages no entry names")
    cover.add_argument("--generic", action="store_true",
                       help="list the messages only a catch-all (generic) entry names")
    cover.set_defaults(func=cmd_coverage)
    check = commands.add_parser(
        "check", help="run every entry over successful logs (false positives) and failure logs")
    _catalogue_arguments(check)
    check.add_argument("--out", type=Path, metavar="DIR",
                       help="also the logs of the runs under this output directory")
    check.set_defaults(func=cmd_check)
    stale = commands.add_parser(
        "stale", help="entries no run matched for N days, and entries past their review-after "
        "or expires day")
    _catalogue_arguments(stale)
    stale.add_argument("--days", type=_days, default=lifecycle.DEFAULT_STALE_DAYS, metavar="N",
                       help="an entry not matched in the last N days is stale (default: "
                       f"{lifecycle.DEFAULT_STALE_DAYS})")
    stale.add_argument("--out", type=Path, metavar="DIR",
                       help="the output directory whose record of occurrences is read "
                       f"(default: {DEFAULT_OUT}, when it exists)")
    stale.set_defaults(func=cmd_stale)


def _days(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", text) or not 1 <= int(text) <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"a whole number of days from 1 to {MAX_DAYS}, "
                                         f"got {clean_line(text)[:40]!r}")
    return int(text)


def _catalogue_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--categories", action="append", type=Path, default=[], metavar="FILE",
                        help="extra category file, after the bundled one (repeatable)")
    parser.add_argument("--format", choices=("text", "json"), default="text")


def _load(paths: Sequence[Path]) -> Catalogue | None:
    try:
        return load_catalogue(tuple(paths))
    except ConfigError as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return None


def cmd_coverage(args: argparse.Namespace) -> int:
    catalogue = _load(args.categories)
    if catalogue is None:
        return EXIT_USAGE
    try:
        result = coverage(catalogue, tools=args.tool)
    except OSError as err:
        print(f"dib-matrix: cannot read the bundled messages: {err}", file=sys.stderr)
        return EXIT_USAGE
    unknown = sorted(set(args.tool) - {c.tool for c in result})
    if unknown:
        print(f"dib-matrix: no messages for {', '.join(unknown)}", file=sys.stderr)
        return EXIT_USAGE
    listed = [o for o, wanted in ((Outcome.UNNAMED, args.missing),
                                  (Outcome.GENERIC, args.generic)) if wanted]
    if args.format == "json":
        print(json.dumps(_coverage_document(result, listed), indent=2))
    else:
        _print_coverage(result, listed)
    return EXIT_OK


def _coverage_document(result: list[ToolCoverage], listed: list[Outcome]) -> dict[str, Any]:
    tools = {}
    for tool in result:
        entry: dict[str, Any] = {"messages": len(tool.verdicts),
                                 **{o.value: tool.count(o) for o in Outcome}}
        for outcome in listed:
            entry[f"{outcome.value}_messages"] = [
                {"message": v.message, "sample": v.sample, "entry": v.rule_id}
                for v in tool.listed(outcome)]
        tools[tool.tool] = entry
    return {"tools": tools}


def _print_coverage(result: list[ToolCoverage], listed: list[Outcome]) -> None:
    print(f"{'tool':<12} {'messages':>8} {'precise':>14} {'generic':>14} {'unnamed':>14}")
    for tool in result:
        cells = [f"{tool.count(o)} ({tool.share(o):4.0%})" for o in Outcome]
        print(f"{tool.tool:<12} {len(tool.verdicts):>8} " + " ".join(f"{c:>14}" for c in cells))
    for outcome in listed:
        for tool in result:
            for verdict in tool.listed(outcome):
                named = f" [{verdict.rule_id}]" if verdict.rule_id else ""
                print(f"{outcome.value}: {tool.tool}: {clean_line(verdict.message)}{named}")


def cmd_check(args: argparse.Namespace) -> int:
    catalogue = _load(args.categories)
    if catalogue is None:
        return EXIT_USAGE
    if args.out is not None and not args.out.is_dir():
        print(f"dib-matrix: {args.out}: not a directory of runs", file=sys.stderr)
        return EXIT_USAGE
    corpus = CORPUS if CORPUS.is_dir() else None
    successes = scoring.corpus_logs(corpus, "success")
    failures = scoring.corpus_logs(corpus, "failures")
    if args.out is not None:
        successes += scoring.archive_logs(args.out, (State.SUCCESS,))
        failures += scoring.archive_logs(args.out, (State.FAILED, State.ALLOWED_FAILURE))
    found = scoring.false_positives(catalogue, successes)
    stats = scoring.failure_stats(catalogue, failures)
    blocking = _bundled_on_bundled(found, catalogue)
    if args.format == "json":
        print(json.dumps(_check_document(successes, found, stats, corpus), indent=2))
    else:
        _print_check(successes, found, stats, corpus)
    return EXIT_FALSE_POSITIVE if blocking else EXIT_OK


def _bundled_on_bundled(found: list[scoring.FalsePositive],
                        catalogue: Catalogue) -> list[scoring.FalsePositive]:
    """The false positives CI fails on: a bundled entry (not one a user's file replaced)
    matching a bundled successful log."""
    bundled = load_catalogue()

    def is_bundled(rule_id: str) -> bool:
        rule = catalogue.get(rule_id)
        return rule is not None and scoring.same_entry(rule, bundled.get(rule_id))

    return [fp for fp in found if fp.log.bundled and is_bundled(fp.rule_id)]


def _check_document(successes: list[scoring.Log], found: list[scoring.FalsePositive],
                    stats: scoring.FailureStats, corpus: Path | None) -> dict[str, Any]:
    return {
        "corpus": str(corpus) if corpus else None,
        "successful_logs": len(successes),
        "false_positives": [{"file": str(fp.log.path), "line": fp.line, "entry": fp.rule_id,
                             "text": fp.text, "bundled_log": fp.log.bundled} for fp in found],
        "failure_logs": {**asdict(stats),
                         "together": [{"entries": list(ids), "logs": count}
                                      for ids, count in stats.together]},
    }


def _print_check(successes: list[scoring.Log], found: list[scoring.FalsePositive],
                 stats: scoring.FailureStats, corpus: Path | None) -> None:
    if corpus is None:
        print("no corpus beside the tool (an installed wheel): its logs are skipped")
    for fp in found:
        print(f"{fp.log.path}:{fp.line}: false positive: {fp.rule_id}: {clean_line(fp.text)}")
    print(f"successful logs: {len(successes)}, false positives: {len(found)}")
    print(f"failure logs: {stats.logs}")
    if stats.never_matched:
        print(f"entries no failure log matches: {', '.join(stats.never_matched)}")
    if stats.record_only:
        print(f"entries only a record or a cell names: {', '.join(stats.record_only)}")
    for ids, count in stats.together:
        print(f"entries always matching together (in {count} logs): {' + '.join(ids)}")


def cmd_stale(args: argparse.Namespace) -> int:
    catalogue = _load(args.categories)
    if catalogue is None:
        return EXIT_USAGE
    out = args.out if args.out is not None else DEFAULT_OUT
    if not out.is_dir():
        if args.out is not None:
            print(f"dib-matrix: {clean_line(str(out))}: not a directory of runs",
                  file=sys.stderr)
            return EXIT_USAGE
        print(f"dib-matrix: no output directory {out}: occurrences not checked (--out DIR)",
              file=sys.stderr)
    now = dt.datetime.now(dt.timezone.utc)
    record = occurrences.read(out, warn_on_stderr) if out.is_dir() else None
    unseen = (lifecycle.unseen(catalogue, occurrences.last_seen(record), now, args.days)
              if record is not None else None)
    past = lifecycle.past_dates(catalogue, now.date())
    origin = _origins(catalogue)
    if args.format == "json":
        print(json.dumps(_stale_document(args.days, out, record, unseen, past, origin),
                         indent=2))
    else:
        _print_stale(args.days, out, record, unseen, past, origin)
    return EXIT_OK


def _origins(catalogue: Catalogue) -> dict[str, str]:
    """Entry id -> "bundled", or "user" for an entry a user's file added or changed."""
    bundled = load_catalogue()
    return {rule.id: "bundled" if scoring.same_entry(rule, bundled.get(rule.id)) else "user"
            for rule in catalogue.rules}


def _stale_document(days: int, out: Path, record: list[occurrences.Occurrence] | None,
                    unseen: list[lifecycle.Unseen] | None, past: list[lifecycle.PastDate],
                    origin: dict[str, str]) -> dict[str, Any]:
    def entry(rule: CategoryRule) -> dict[str, Any]:
        return {"id": rule.id, "origin": origin[rule.id], "ticket": rule.ticket}

    return {
        "days": days,
        "record": str(occurrences.record_location(out)) if record is not None else None,
        "occurrences": len(record) if record is not None else None,
        "unseen": None if unseen is None else [
            {**entry(u.rule), "last_seen": u.last_seen.isoformat() if u.last_seen else None}
            for u in unseen],
        "past_date": [{**entry(p.rule), "key": p.key, "day": p.day.isoformat()} for p in past],
    }


def _print_stale(days: int, out: Path, record: list[occurrences.Occurrence] | None,
                 unseen: list[lifecycle.Unseen] | None, past: list[lifecycle.PastDate],
                 origin: dict[str, str]) -> None:
    def row(rule: CategoryRule, when: str) -> str:
        ticket = f"  {rule.ticket}" if rule.ticket else ""
        return f"  {rule.id:<36} {when:<24} {origin[rule.id]:<8}{ticket}".rstrip()

    total = len(origin)
    if unseen is not None:
        print(f"not matched in the last {days} days: {len(unseen)} of {total} entries "
              f"({len(record or [])} occurrences in {occurrences.record_location(out)})")
        for item in unseen:
            seen = f"last seen {item.last_seen.date()}" if item.last_seen else "never seen"
            print(row(item.rule, seen))
    print(f"past their review-after or expires day: {len(past)} of {total} entries")
    for item in past:
        print(row(item.rule, f"{item.key} {item.day.isoformat()}"))
