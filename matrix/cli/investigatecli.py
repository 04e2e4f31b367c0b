"""``dib-matrix investigate RUN``: investigate a finished run's regressions afterwards.

The run is resumed (its matrix file, its dib tree, its pinned snapshot) with its
hostgen cells only, for the hosts of the cells investigated (cheap: their images are
cached); the variants are added to the run directory beside its cells, as
``run --investigate`` adds them (:mod:`matrix.run.investigate`), and its reports are
written again. Exit 0 once the investigation ran (its verdicts are a diagnosis, not a
gate), 2 for a run, baseline or glob that cannot be used, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

from matrix.cli import runcli, snapshotcli
from matrix.config.diagnostics import ConfigError
from matrix.config.dibtree import bundled_tree
from matrix.containers import engine, leases
from matrix.run.investigate import (
    InvestigationError,
    InvestigationRequest,
    check_globs,
    chosen_cells,
    previous_run,
)
from matrix.run.matrixrun import DEFAULT_PACKAGE_CACHE, RunRequest
from matrix.run.plan import SelectionError
from matrix.run.runner import execute
from matrix.snapshot.manifest import StoreError
from results.archive import OutDir
from results.model import CellKind
from results.reader import read_results

LOG = logging.getLogger("dib-matrix")
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


def add_parsers(sub) -> None:
    parser = sub.add_parser(
        "investigate", help="investigate a finished run's regressions: run each regressed "
        "voting cell again with its last-good's dib tree, host image, snapshot")
    parser.add_argument("run", type=Path, metavar="RUN", help="the run directory")
    parser.add_argument("--cells", action="append", default=[], metavar="GLOB",
                        help="only the regressed cells matching (HOST.ROW shell globs, "
                        "repeatable)")
    parser.add_argument("--baseline", type=Path, metavar="RUN",
                        help="the run the cells regressed against (default: the run before "
                        "RUN in its output directory)")
    parser.add_argument("--budget", type=int, metavar="N",
                        help="cells investigated at most (default: the matrix's investigate)")
    parser.add_argument("--no-package-cache", action="store_true",
                        help="do not route the variants' downloads through the shared cache")
    parser.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    parser.set_defaults(func=cmd_investigate)


def cmd_investigate(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        request = _request(args)
    except (ConfigError, SelectionError, InvestigationError, ValueError, OSError,
            StoreError) as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    if request is None:
        return EXIT_OK
    try:
        client = engine.connect()
    except engine.EngineError as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        run = execute(request, client)
    except KeyboardInterrupt:
        print("dib-matrix: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except leases.LeaseError as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    runcli.write_reports(run, request.investigation.baseline if request.investigation
                         else None, request.out_dir)
    return EXIT_OK


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _request(args: argparse.Namespace) -> RunRequest | None:
    """The resumed run that investigates; None (said) when nothing regressed."""
    if args.budget is not None and args.budget < 0:
        raise InvestigationError(f"--budget {args.budget}: must be 0 or more")
    loaded = runcli.load_finished(args.run)
    resumed = loaded.resumed
    assert resumed is not None  # load_finished resumes
    results = resumed.results
    check_globs(results, args.cells)
    out = OutDir(resumed.run_dir.parent)
    baseline = read_results(args.baseline) if args.baseline else previous_run(out, results)
    if baseline is None:
        raise InvestigationError(f"run {results.run_id} has no earlier run in "
                                 f"{out.path} to compare with: give --baseline RUN")
    wanted = InvestigationRequest(args.budget if args.budget is not None
                                  else loaded.config.investigate, baseline,
                                  tuple(args.cells), loaded.plan.by_id())
    chosen, _over = chosen_cells(results, baseline, wanted)
    if not chosen:
        print(f"dib-matrix: no voting build cell of run {results.run_id} regressed against "
              f"run {baseline.run_id}" + (" among --cells" if args.cells else ""))
        return None
    hosts = {c.host for c in chosen}
    plan = replace(loaded.plan, cells=tuple(
        c for c in loaded.plan.cells if c.kind is CellKind.HOSTGEN and c.host.name in hosts))
    store_root = snapshotcli.store_root(None)
    return RunRequest(loaded.config, plan, out.path.resolve(), loaded.tree or bundled_tree(),
                      resumed, catalogue=loaded.catalogue,
                      package_cache=None if args.no_package_cache else DEFAULT_PACKAGE_CACHE,
                      snapshot_store=store_root,
                      snapshot=runcli.pinned_snapshot(loaded.config, store_root),
                      investigation=wanted)
