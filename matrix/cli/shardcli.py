"""The sharding and one-cell options of ``dib-matrix run`` and ``plan``.

``run --shard I/N [--shard-plan FILE]`` runs one shard (``matrix.run.shards``),
``run --resume RUN_DIR --cells GLOB`` re-runs cells in place (``matrix.run.rerun``),
``plan --shards N [--history DIR] [--format json]`` prints the shards. runcli calls
in here at three points: :func:`narrow` (the plan), :func:`prepare` (just before
the run) and :func:`print_plan`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tabulate import tabulate

import reports
from matrix.containers import leases
from matrix.run import rerun, shards
from matrix.run.matrixrun import RunRequest, new_run_id, now
from matrix.run.plan import Plan
from matrix.run.runner import point_latest
from reports import jsonreport
from results.archive import OutDir
from results.model import RunResults

LOG = logging.getLogger("dib-matrix")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shard", metavar="I/N",
                        help="run only shard I of N (hosts' columns split as plan --shards N "
                        "prints them); the run directory is marked for dib-matrix merge")
    parser.add_argument("--shard-plan", type=Path, metavar="FILE",
                        help="with --shard: take the split from this output of plan --shards N "
                        "--format json (the list, or one shard's object), e.g. one balanced "
                        "by --history")
    parser.add_argument("--cells", action="append", default=[], metavar="GLOB",
                        help="with --resume: run these cells again in place (HOST.ROW shell "
                        "globs, repeatable); the earlier log is kept as <row>.run-N.log")


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=int, metavar="N",
                        help="split the cells into N shards that run independently")
    parser.add_argument("--history", type=Path, metavar="OUT_DIR",
                        help="with --shards: balance by the durations recorded by earlier runs "
                        "in this output directory (else by cell count and kind)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="json: with --shards, a list of shard objects to use as a CI "
                        "matrix; without, the cells")


def _check_combinations(args: argparse.Namespace) -> None:
    if getattr(args, "cells", None) and args.resume is None:
        raise shards.ShardError("--cells needs --resume RUN_DIR (the run whose cells run again)")
    if getattr(args, "shard", None) and args.resume is not None:
        raise shards.ShardError("--shard and --resume: a shard's run is resumed by its "
                                "directory alone (--resume RUN_DIR)")
    if getattr(args, "shard_plan", None) and not getattr(args, "shard", None):
        raise shards.ShardError("--shard-plan needs --shard I/N")
    if getattr(args, "history", None) and getattr(args, "shards", None) is None:
        raise shards.ShardError("--history needs --shards N")


def narrow(args: argparse.Namespace, plan: Plan, resumed: RunResults | None) -> Plan:
    """The part of ``plan`` this run runs: one shard, or the cells --cells chose."""
    _check_combinations(args)
    args.shard_state = None
    args.rerun_choice = None
    if getattr(args, "shard", None):
        index, count = shards.parse_spec(args.shard)
        if args.shard_plan is not None:
            split = shards.from_plan_file(args.shard_plan, plan, count)
        else:
            split = shards.split(plan, count)
        args.shard_state = (plan, split, index)
        return shards.select(plan, split, index)
    if getattr(args, "cells", None) and resumed is not None:
        choice = rerun.choose(plan, resumed, args.cells)
        args.rerun_choice = choice
        return rerun.restrict(plan, choice)
    return plan


def prepare(args: argparse.Namespace, request: RunRequest) -> tuple[RunRequest, int | None]:
    """Just before the run: mark a shard (an empty one is written at once: exit code
    returned), or put the cells to run again back to pending."""
    if getattr(args, "shard_state", None):
        whole, split, index = args.shard_state
        mark = shards.mark(whole, split, index, request.dib_tree)
        request = replace(request, shard=mark)
        if not request.plan.cells:
            return request, _empty_shard(request, mark)
        LOG.info("shard %s of matrix %s: hosts %s (%d cells)", f"{index}/{split.count}",
                 split.matrix_hash[:12], ", ".join(mark["hosts"]), len(request.plan.cells))
    choice = getattr(args, "rerun_choice", None)
    if choice is not None and request.resume is not None:
        results = request.resume.results  # the command line's reading, passed on
        try:
            live = leases.Registry().live_runs()
            if results.run_id in live:
                raise leases.LeaseError(f"run {results.run_id} is live in "
                                        f"{live[results.run_id].describe()}: wait for it to end")
            for note in choice.notes:
                LOG.info("--cells: %s", note)
            for line in rerun.reset(request.resume.run_dir, results, choice.cells, now(),
                                    request.dib_tree.path):
                LOG.info("re-running %s", line)
        except (leases.LeaseError, OSError, ValueError) as err:
            print(f"dib-matrix: {err}", file=sys.stderr)
            return request, 2
    return request, None


def _empty_shard(request: RunRequest, mark: dict[str, Any]) -> int:
    """A shard with no cells: a run directory that says so (a merge counts it as given)."""
    results = RunResults(run_id=new_run_id(), matrix=str(request.config.path), hosts=[],
                         rows=[], started=now(), dib_tree=request.dib_tree.to_json(),
                         shard=mark)
    results.finished = results.started
    out = OutDir(request.out_dir)
    run = out.new_run(results.run_id)
    run.save(results)
    reports.write_all(run.path, results, history_dir=out.path)
    point_latest(out, results.run_id)
    print(f"shard {mark['index']}/{mark['count']} has no cells (the matrix has fewer host "
          f"columns than shards): nothing to run. Run directory for merge: {run.path}")
    return 0


def print_plan(args: argparse.Namespace, plan: Plan) -> int | None:
    """``plan --shards N`` / ``plan --format json``; None: the ordinary plan output."""
    _check_combinations(args)
    if args.shards is None:
        if args.format != "json":
            return None
        cells = [{"id": c.id, "host": c.host.name, "row": c.row, "kind": c.kind.value,
                  "needs": list(c.needs), "excluded": c.excluded, "voting": c.voting}
                 for c in plan.cells]
        print(jsonreport.dumps(cells, indent=2))
        return 0
    history = shards.load_history(args.history) if args.history else None
    estimates = shards.estimate(plan, history)
    split = shards.split(plan, args.shards, estimates)
    if args.format == "json":
        print(jsonreport.dumps(split.to_json()))  # one line: a CI step's output as it stands
        return 0
    print(shards.render_text(split, estimates))
    if args.history and estimates.source == "history":
        print("balanced by history: give every shard's run this split with --shard-plan FILE "
              "(the --format json output); without it, run --shard balances by kind")
    rows = [[s.spec, s.cells, f"{s.estimate / 60:.1f}", ", ".join(s.hosts) or "-"]
            for s in split.shards]
    print(tabulate(rows, headers=["shard", "cells", "est. min", "hosts"]))
    return 0
