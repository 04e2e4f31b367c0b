"""``dib-matrix gc``, ``keep`` and ``show --last-good``: the run archive on the command line.

The archive's rules are ``results``' (:mod:`results.retention`, :mod:`results.keeps`,
:mod:`results.lastgood`); this module reads the arguments, asks the leases which runs
are live, prints, and turns problems into exit code 2 (never 1, which means a voting
cell failed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matrix.cli import snapshotcli
from matrix.config.globs import match_globs
from matrix.containers import engine
from matrix.containers.leases import Registry
from matrix.run import cachetrim
from matrix.run.archiving import live_runs
from matrix.run.matrixrun import DEFAULT_PACKAGE_CACHE
from reports.cli import InputError, read_run, run_dir_of
from reports.gate import EXIT_OK, EXIT_USAGE
from reports.sanitize import one_line
from results import keeps, lastgood, retention
from results.archive import LATEST, OutDir, RunDir
from results.lastgood import LastGood, LastGoodError
from results.names import is_name, is_row
from results.paths import UnsafePath, absolute
from results.retention import Policy, parse_keep_days, parse_keep_runs
from results.sizes import format_size, parse_size

DEFAULT_OUT = Path("out")
ENGINE_TIMEOUT = 10  # seconds gc --caches waits for the engine before leaving volumes


def _argument(parse: Callable[[Any], Any], convert: Callable[[str], Any] = str
              ) -> Callable[[str], Any]:
    """An argparse type from one of the archive's parsers (its message on a bad value)."""

    def read(text: str) -> Any:
        try:
            return parse(convert(text))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err) or f"cannot read {text!r}") from None

    return read


def add_parsers(sub: Any) -> None:
    gc = sub.add_parser(
        "gc", help="remove old runs (retention) or trim the caches",
        description="Remove the runs of an output directory that a limit says go: beyond the "
        "newest N, older than D days, then the oldest until the directory holds at most SIZE. "
        "Never removed: the newest run, the run 'latest' names, runs marked with "
        "'dib-matrix keep', runs in progress (a live lease), and each cell's last-good "
        "(.dib-matrix/last-good). Bytes are bytes on disk, each hard-linked file once. A run "
        "whose results.json cannot be read is listed, and removed only with --remove-bad. "
        "Then the snapshot store: a snapshot recorded at the end of a run (snapshot: record) "
        "goes with its run, unless a run left names it; snapshots saved by hand stay; files "
        "no snapshot names go after a week. "
        "With --caches: report the package cache and the image-cache volumes, and with "
        "--max-bytes trim them to that size, least recently used first.")
    gc.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                    help="the output directory (default: out)")
    gc.add_argument("--keep-runs", type=_argument(parse_keep_runs, int), metavar="N",
                    help="keep the newest N runs")
    gc.add_argument("--keep-days", type=_argument(parse_keep_days, float), metavar="D",
                    help="keep the runs of the last D days")
    gc.add_argument("--max-bytes", type=_argument(parse_size), metavar="SIZE",
                    help="then remove the oldest runs until the directory holds at most SIZE "
                    "(800M, 50G); with --caches, the caches' size")
    gc.add_argument("--dry-run", action="store_true",
                    help="print what would go and the bytes it frees; change nothing")
    gc.add_argument("--remove-bad", action="store_true",
                    help="also remove runs whose results.json cannot be read")
    gc.add_argument("--caches", action="store_true",
                    help="the package cache and image-cache volumes instead of runs")
    gc.add_argument("--snapshot-store", type=Path, metavar="DIR",
                    help="the snapshot store (default: $DIB_MATRIX_SNAPSHOTS or "
                    "~/.cache/dib-matrix/snapshots)")
    gc.set_defaults(func=cmd_gc)

    keep = sub.add_parser(
        "keep", help="mark a run that retention must never remove",
        description="Mark RUN (a run id in --out, 'latest', or a run directory) as kept: "
        "'dib-matrix gc' and the matrix's retention never remove it. Without RUN: list the "
        "kept runs.")
    keep.add_argument("run", nargs="?", metavar="RUN", help="run id, 'latest' or run directory")
    keep.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                      help="the output directory (default: out)")
    keep.add_argument("--reason", default="", metavar="TEXT", help="why it is kept")
    keep.add_argument("--remove", action="store_true", help="drop the mark instead")
    keep.set_defaults(func=cmd_keep)


# ---------------------------------------------------------------- gc


def cmd_gc(args: argparse.Namespace) -> int:
    out = OutDir(absolute(args.out))
    if args.caches:
        return _gc_caches(args, out)
    if not out.path.is_dir():
        return _usage(f"--out {out.path}: not a directory")
    policy = Policy(args.keep_runs, args.keep_days, args.max_bytes)
    try:
        live = live_runs()
        if args.dry_run or not (policy.limits or args.remove_bad):
            done = retention.plan(out, policy, live, remove_bad=args.remove_bad, warn=_warn)
        else:
            done = retention.collect(out, policy, live, remove_bad=args.remove_bad, warn=_warn)
    except (OSError, UnsafePath) as err:
        return _usage(f"gc {out.path}: {err}")
    removing = not args.dry_run and (policy.limits or args.remove_bad)
    for line in retention.describe_plan(done, dry_run=not removing):
        print(one_line(line))
    if not (policy.limits or args.remove_bad):
        print("no limit given: --keep-runs N, --keep-days D or --max-bytes SIZE (nothing "
              "removed)")
    return snapshotcli.gc_snapshots(out, [r.name for r in done.removals],
                                    dry_run=not removing, root=args.snapshot_store)


def _gc_caches(args: argparse.Namespace, out: OutDir) -> int:
    if args.keep_runs is not None or args.keep_days is not None or args.remove_bad:
        return _usage("--caches takes only --max-bytes and --dry-run")
    try:
        client: Any = engine.connect(timeout=ENGINE_TIMEOUT)
    except engine.EngineError as err:
        client = f"left as they are: the engine is unreachable ({one_line(str(err), 300)})"
    try:
        cachetrim.trim_caches(DEFAULT_PACKAGE_CACHE, client, args.max_bytes,
                              registry=Registry(), last_runs=_last_runs(out),
                              dry_run=args.dry_run, say=lambda line: print(one_line(line)))
    except OSError as err:
        return _usage(f"gc --caches: {err}")
    return EXIT_OK


def _last_runs(out: OutDir) -> dict[str, dt.datetime]:
    """Per host, when the newest run in ``out`` that used it started (its cache volume's
    last use as far as this output directory knows)."""
    last: dict[str, dt.datetime] = {}
    for run in retention.list_runs(out) if out.path.is_dir() else []:
        if run.results is not None:
            for host in run.results.hosts:
                last.setdefault(host, run.when)
    return last


# ---------------------------------------------------------------- keep


def cmd_keep(args: argparse.Namespace) -> int:
    try:
        if args.run is None:
            return _list_kept(OutDir(absolute(args.out)))
        out, run_id = _named_run(args.run, args.out)
        if args.remove:
            had = keeps.unmark(out, run_id)
            print(f"run {run_id}: {'no longer kept' if had else 'was not kept'}")
            return EXIT_OK
        kept = keeps.mark(out, run_id, args.reason)
    except (keeps.NotARun, UnsafePath, OSError) as err:
        return _usage(f"keep: {err}")
    print(f"run {run_id}: kept" + (f" ({kept.reason})" if kept.reason else ""))
    return EXIT_OK


def _named_run(text: str, out_dir: Path) -> tuple[OutDir, str]:
    """The output directory and run id RUN names: a run directory's path, 'latest', or
    a run id in ``out_dir``."""
    if "/" in text:
        path = absolute(Path(text))
        return OutDir(path.parent), path.name
    out = OutDir(absolute(out_dir))
    if text == LATEST:
        latest = out.latest()
        if latest is None:
            raise keeps.NotARun(f"no 'latest' run in {out.path}")
        return out, latest.run_id
    return out, text


def _list_kept(out: OutDir) -> int:
    kept = keeps.marks(out, warn=_warn)
    for run_id, mark in sorted(kept.items()):
        print(one_line(f"{run_id}  {mark.at or '-'}  {mark.reason or '-'}"))
    if not kept:
        print(f"no kept runs in {out.path}")
    return EXIT_OK


# ---------------------------------------------------------------- show --last-good


def show_last_good(run: Path, pattern: str) -> int:
    """``show RUN CELL --last-good``: where each matching cell's last-good is, and from
    which run. RUN is a run directory (its output directory's store is read) or the
    output directory itself (for a cell whose runs are all collected)."""
    try:
        out, cell_ids = _cells_for(run, pattern)
    except InputError as err:
        return _usage(str(err))
    if not cell_ids:
        return _usage(f"no cell {one_line(pattern, 200)!r} in {one_line(str(run), 300)}")
    for number, cell_id in enumerate(cell_ids):
        if number:
            print()
        host, row = cell_id.split(".", 1)
        try:
            fields = _describe(cell_id, lastgood.read(out, host, row), out)
        except (OSError, LastGoodError) as err:
            fields = [("cell", cell_id), ("last-good", f"unreadable: {err}")]
        for name, value in fields:
            print(f"{name:<10} {one_line(value, 2000)}")
    return EXIT_OK


def _cells_for(run: Path, pattern: str) -> tuple[OutDir, list[str]]:
    """The output directory and the ids of the cells ``pattern`` matches."""
    if run.is_dir() and not RunDir(run).results_file.exists():  # an output directory
        out = OutDir(absolute(run))
        ids = sorted(lastgood.read_all(out, warn=_warn))
    else:
        results = read_run(run)
        out = OutDir(absolute(run_dir_of(run)).parent)
        ids = [cell.id for cell in results.cells if is_name(cell.host) and is_row(cell.row)]
    exact = [cell_id for cell_id in ids if cell_id == pattern]
    return out, exact or match_globs(ids, pattern)


def _describe(cell_id: str, good: LastGood | None, out: OutDir) -> list[tuple[str, str]]:
    """(field, text) pairs of a cell's last-good."""
    if good is None:
        return [("cell", cell_id), ("last-good", "none recorded (no success kept in "
                                                 f"{out.last_good_dir})")]
    collected = "" if out.run(good.run_id).path.is_dir() else " (run since collected)"
    fields = [("cell", cell_id), ("last-good", str(good.directory)),
              ("run", good.run_id + collected), ("date", good.date or "-"),
              ("key", good.key or "-")]
    fields += [("file", f"{item.path} {format_size(item.size)} sha256 {item.sha256[:16] or '-'}")
               for item in good.files]
    return fields


def _usage(message: str) -> int:
    print(f"dib-matrix: {one_line(message, 2000)}", file=sys.stderr)
    return EXIT_USAGE


def _warn(message: str) -> None:
    print(f"dib-matrix: warning: {one_line(message, 2000)}", file=sys.stderr)
