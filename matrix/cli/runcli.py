"""``dib-matrix run``, ``plan`` and ``clean``: the matrix verbs of the command line."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from concurrent_log_handler import ConcurrentRotatingFileHandler
from tabulate import tabulate

import reports
from dib import bundled
from matrix.cli import shardcli, snapshotcli
from matrix.config.diagnostics import ConfigError
from matrix.config.dibtree import DibTree, DibTreeError, bundled_tree, elements_of, locate
from matrix.config.matrixfile import (
    MATRIX_KEYS,
    OVERRIDES,
    MatrixConfig,
    load_matrix,
    resolve_matrix_path,
)
from matrix.config.schema import Option, describe, option_value
from matrix.config.targets import element_issues, upstream_notes
from matrix.containers import engine, leases, swarm
from matrix.hostgen.facts import load_facts
from matrix.hostgen.hostimage import image_names
from matrix.run import cleanup, progress
from matrix.run.cluster import ClusterError
from matrix.run.investigate import InvestigationRequest
from matrix.run.matrixrun import DEFAULT_PACKAGE_CACHE, MatrixRun, RunRequest
from matrix.run.plan import Plan, SelectionError, make_plan, preflight
from matrix.run.runner import execute
from matrix.snapshot.manifest import Snapshot, StoreError
from matrix.snapshot.save import snapshot_for
from matrix.snapshot.signatures import signature_problems
from matrix.snapshot.store import Store
from matrix.verdict.catalogue import Catalogue, load_catalogue
from matrix.verdict.lifecycle import unknown_causes
from reports.sanitize import SafeFormatter, one_line, safe_text
from results.archive import OutDir, StoredRun
from results.model import RunResults, State
from results.paths import UnsafePath, resolved
from results.reader import clip, read_results, shown_path

LOG = logging.getLogger("dib-matrix")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
GIVE_TREE = " (finish the run with --dib-tree DIR)"


def _selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("matrix", nargs="?", help="bundled matrix name or a YAML path "
                        "(default: the bundled 'default' matrix)")
    parser.add_argument("--hosts", action="append", default=[], metavar="GLOB",
                        help="only these hosts (repeatable, shell globs)")
    parser.add_argument("--targets", action="append", default=[], metavar="GLOB",
                        help="only these targets (repeatable, shell globs)")


def _matrix_overrides(parser: argparse.ArgumentParser) -> None:
    """One option per overridable matrix key, read by that key's own parser."""
    for key in OVERRIDES:
        if key.option is Option.FLAG:
            parser.add_argument(f"--{key.name}", action="store_true", default=None,
                                help=f"{key.help} (overrides the matrix's {key.name})")
        else:
            parser.add_argument(f"--{key.name}", type=option_value, metavar=key.example,
                                help=f"{key.help} (overrides the matrix's {key.name})")


def add_parsers(sub: Any) -> None:
    run = sub.add_parser("run", help="run a host x target matrix",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="matrix file keys:\n" + describe(MATRIX_KEYS))
    _selection(run)
    run.add_argument("--out", type=Path, help="results directory (default: the matrix's "
                     "output, else out/)")
    run.add_argument("--dib-tree", type=Path,
                     help="run dib and elements from this checkout (e.g. a patched one; "
                     "default: this installation's, or with --resume the resumed run's)")
    run.add_argument("--dib-mount", action="store_true",
                     help="bind-mount the dib tree into cells instead of baking it as a thin "
                     "image layer on each host image (edits show up in cells still to run)")
    run.add_argument("--engine", choices=("local", "swarm"), default="local",
                     help="run cells as containers of the local engine, or as Docker Swarm "
                     "replicated-job services (the engine must be a swarm manager)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="finish an interrupted run: only cells without a result run")
    run.add_argument("--rebuild-hosts", action="store_true", help="rebuild host images")
    run.add_argument("--categories", action="append", type=Path, default=[], metavar="FILE",
                     help="extra failure category file (repeatable)")
    _matrix_overrides(run)
    run.add_argument("--reuse", action="store_true",
                     help="take successful cells of earlier runs in --out whose key (host "
                     "image, element closure, target, dib) is unchanged")
    run.add_argument("--reuse-failures", action="store_true",
                     help="with --reuse, also reuse failed cells")
    run.add_argument("--no-package-cache", action="store_true",
                     help="do not route cells' http package downloads through the shared "
                     "apt-cacher-ng on loopback")
    against = run.add_mutually_exclusive_group()
    against.add_argument("--baseline", type=Path, metavar="RUN",
                         help="compare with this earlier run (dir or results.json); the exit "
                         "code then fails only on regressions of voting cells (release gating)")
    against.add_argument("--bump-from", type=Path, metavar="RUN",
                         help="a bump run: compare with RUN, the pinned run (dir or "
                         "results.json), as a baseline, and write bump.md (package changes per "
                         "cell, regressions with what changed) and summary.md; the exit code "
                         "fails only on regressions of voting cells whose cause is not the "
                         "mirror, the network or the engine (catalogue: infrastructure)")
    run.add_argument("--investigate", action="store_true",
                     help="after the cells, investigate the voting cells that regressed "
                     "against --baseline (else the previous run in --out), up to the "
                     "matrix's investigate budget: variants with the last-good's dib tree, "
                     "host image, snapshot say why (dib-matrix investigate RUN: afterwards)")
    shardcli.add_run_arguments(run)
    run.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    progress.add_arguments(run)
    run.set_defaults(func=cmd_run)

    plan = sub.add_parser("plan", help="print every cell with its planned state; run nothing",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="matrix file keys:\n" + describe(MATRIX_KEYS))
    _selection(plan)
    _matrix_overrides(plan)  # plan is run's dry run: the same matrix as run would load
    plan.add_argument("--categories", action="append", type=Path, default=[], metavar="FILE",
                      help="extra failure category file to check with the matrix (repeatable)")
    plan.add_argument("--dib-tree", type=Path,
                      help="check the targets' elements against this checkout's elements/")
    shardcli.add_plan_arguments(plan)
    plan.set_defaults(func=cmd_plan)

    clean = sub.add_parser("clean", help="remove containers and volumes dib-matrix left")
    clean.add_argument("--run", metavar="RUN_ID", help="only this run's objects")
    clean.add_argument("--caches", action="store_true",
                       help="also remove the per-host image-cache volumes and the dib "
                       "layers baked on host images")
    clean.set_defaults(func=cmd_clean)


@dataclass(frozen=True)
class Loaded:
    """What ``run`` and ``plan`` (its dry run) check before anything runs, each read once."""

    config: MatrixConfig
    plan: Plan
    catalogue: Catalogue
    tree: DibTree | None  # --dib-tree or the resumed run's; None: this installation's
    resumed: StoredRun | None = None  # the run --resume finishes


def _load(args: argparse.Namespace) -> Loaded:
    resumed = _resumed(args)
    if resumed is not None:
        # A resumed run keeps its matrix file and its selection of cells.
        args.matrix = args.matrix or resumed.results.matrix
    overrides = {key.name: getattr(args, key.field) for key in OVERRIDES
                 if getattr(args, key.field, None) is not None}
    if resumed is not None and resumed.results.options.get("registry_mirror"):
        # The hosts the run built pulled through its mirror: so do the cells still to run.
        overrides.setdefault("registry-mirror", resumed.results.options["registry_mirror"])
    pinned = resumed.results.repository.get("snapshot") if resumed is not None else None
    if isinstance(pinned, str):  # the cells still to run replay the same snapshot
        overrides.setdefault("snapshot", pinned)
    config = load_matrix(resolve_matrix_path(args.matrix), overrides=overrides)
    plan = make_plan(config, args.hosts, args.targets)
    if resumed is not None:
        plan = _resumed_selection(plan, resumed.results)
    # one shard, or the cells --cells chose
    plan = shardcli.narrow(args, plan, resumed.results if resumed else None)
    # What run needs before its first cell, plan (the dry run) checks too: the
    # catalogue (and that the allowed-failures rules name its entries), and that every
    # target's elements resolve in the dib tree, before the tree is read.
    catalogue = load_catalogue(config.categories + tuple(getattr(args, "categories", ())))
    named, root = _tree_root(args, resumed)
    issues = unknown_causes(config, catalogue) + element_issues(
        {c.target.name: c.target for c in plan.cells if c.target}.values(),
        elements_of(root) if root else bundled.path("elements"))
    if issues:
        raise ConfigError(issues)
    tree = _read_tree(root, named, resumed) if root else None
    return Loaded(config, plan, catalogue, tree, resumed)


def load_finished(run: Path, dib_tree: Path | None = None) -> Loaded:
    """A finished run as ``run --resume RUN`` loads it (its matrix file, its cells, its
    dib tree unless ``dib_tree``), for ``dib-matrix investigate``."""
    return _load(argparse.Namespace(resume=run, matrix=None, hosts=[], targets=[],
                                    dib_tree=dib_tree, categories=[]))


def _resumed(args: argparse.Namespace) -> StoredRun | None:
    """The run ``--resume`` names, read (and checked to be in its own directory) once."""
    if getattr(args, "resume", None) is None:
        return None
    run_dir = _resumed_dir(args.resume)
    results = read_results(run_dir)
    _check_resumable(run_dir, results)
    return StoredRun(run_dir, results)


def _resumed_selection(plan: Plan, resumed: RunResults) -> Plan:
    """The hosts and cells the resumed run had (its matrix file may have grown since)."""
    wanted = {c.id for c in resumed.cells}
    return replace(plan, hosts=tuple(h for h in plan.hosts if h.name in resumed.hosts),
                   cells=tuple(c for c in plan.cells if c.id in wanted))


def _tree_root(args: argparse.Namespace, resumed: StoredRun | None) -> tuple[str, Path | None]:
    """Where the dib tree comes from (for messages) and its root, checked to be a dib
    tree: ``--dib-tree``, else the tree the resumed run used (its cells still to run
    must see the same one); no root when neither names one (this installation's)."""
    given = getattr(args, "dib_tree", None)
    if given is not None:
        return "--dib-tree", locate(given, "--dib-tree")
    recorded = resumed.results.dib_tree.get("path") if resumed is not None else None
    if resumed is None or not recorded:
        return "", None
    named = f"the dib tree of run {resumed.results.run_id}"
    if not isinstance(recorded, str) or not Path(recorded).is_absolute():
        raise DibTreeError(f"--resume {shown_path(resumed.run_dir)}: {named} is recorded "
                           f"as {clip(recorded)}, not an absolute path{GIVE_TREE}")
    try:
        return named, locate(Path(recorded), named)
    except DibTreeError as err:
        raise DibTreeError(f"{err}{GIVE_TREE}") from err


def _read_tree(root: Path, named: str, resumed: StoredRun | None) -> DibTree:
    """The run's dib tree, made once; a resumed run's is said when it changed since."""
    tree = DibTree.read(root, named)
    recorded = resumed.results.dib_tree.get("digest") if resumed is not None else None
    if resumed is not None and recorded and recorded != tree.digest:
        LOG.warning("the dib tree %s changed since run %s started: its cells still to run "
                    "see it as it is now", tree.path, resumed.results.run_id)
    return tree


def _setup_logging(debug: bool, console: logging.Handler | None = None) -> None:
    console = console or logging.StreamHandler(sys.stdout)
    # Records carry legends and reasons from builds: SafeFormatter neutralises them.
    console.setFormatter(SafeFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    LOG.handlers[:] = [console]
    LOG.setLevel(logging.DEBUG if debug else logging.INFO)
    LOG.propagate = False


def _log_to_run_dir(run: MatrixRun) -> None:
    handler = ConcurrentRotatingFileHandler(str(run.run_dir.run_log), "a",
                                            maxBytes=10 << 20, backupCount=3)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(message)s"))
    LOG.addHandler(handler)
    LOG.info("run %s: results in %s", run.results.run_id, run.run_dir.path)


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def cmd_run(args: argparse.Namespace) -> int:
    console = progress.console_for(args)  # the status line on a terminal, -q, -v
    _setup_logging(args.debug, console.handler())
    try:
        loaded = _load(args)
        tree = loaded.tree or bundled_tree()
        client = engine.connect()
        if args.engine == "swarm":
            swarm.check_manager(client)
        baseline = read_results(args.baseline) if args.baseline else None
        bump = _bump_mode(args, loaded.catalogue)
        store_root = snapshotcli.store_root(None)
        pinned = pinned_snapshot(loaded.config, store_root)
    except (ConfigError, SelectionError, ValueError, OSError, StoreError) as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    except engine.EngineError as err:
        print(f"dib-matrix: {err}\n(start one with ./quickstart setup, or set DOCKER_HOST)",
              file=sys.stderr)
        return EXIT_USAGE
    out_dir = args.out or loaded.config.output
    if loaded.resumed is not None:
        out_dir = loaded.resumed.run_dir.parent
    request = RunRequest(loaded.config, loaded.plan, out_dir.resolve(), tree, loaded.resumed,
                         args.rebuild_hosts, tuple(args.categories), args.reuse,
                         args.reuse_failures,
                         None if args.no_package_cache else DEFAULT_PACKAGE_CACHE,
                         dib_mount=args.dib_mount, swarm=args.engine == "swarm",
                         catalogue=loaded.catalogue,
                         bump_from=bump.pinned.run_id if bump is not None else None,
                         snapshot_store=store_root, snapshot=pinned,
                         investigation=InvestigationRequest(loaded.config.investigate, baseline)
                         if args.investigate else None)
    request, finished = shardcli.prepare(args, request)
    if finished is not None:
        return finished
    signal.signal(signal.SIGTERM, _raise_interrupt)
    holder: list[MatrixRun] = []
    try:
        try:
            run = execute(request, client, on_start=lambda r: (
                holder.append(r), _log_to_run_dir(r),
                console.begin(r.results, r.done_states(), request.out_dir)), observer=console)
        finally:
            console.close()  # the status line goes before the table is printed
    except KeyboardInterrupt:
        if holder:
            write_reports(holder[0], baseline, request.out_dir, bump)
            print(f"dib-matrix: interrupted; finished cells kept in {holder[0].run_dir.path}"
                  f" (resume with --resume {holder[0].run_dir.path})", file=sys.stderr)
        return EXIT_INTERRUPTED
    except leases.LeaseError as err:  # e.g. resuming a run that is still going
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ClusterError as err:  # a multi-node swarm's registry or upload endpoint
        where = f"; resume with --resume {holder[0].run_dir.path}" if holder else ""
        print(f"dib-matrix: {err}{where}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        where = f"; finished cells are kept in {holder[0].run_dir.results_file}" if holder else ""
        cause = "out of disk space" if err.errno == errno.ENOSPC else "cannot write results"
        print(f"dib-matrix: {cause}: {err}{where}", file=sys.stderr)
        return EXIT_FAILED
    write_reports(run, baseline, request.out_dir, bump)
    if run.engine_lost is not None:
        pending = sum(c.state is State.PENDING for c in run.results.cells)
        print(f"dib-matrix: the container engine stopped answering mid-run ({run.engine_lost}); "
              f"{pending} cells are pending. Once it is back: dib-matrix run --resume "
              f"{run.run_dir.path}", file=sys.stderr)
        return EXIT_USAGE
    if run.nodes_lost:
        pending = sum(c.state is State.PENDING for c in run.results.cells)
        print(f"dib-matrix: swarm nodes left mid-run ({'; '.join(run.nodes_lost)}); "
              f"{pending} cells are pending. Finish them with: dib-matrix run --resume "
              f"{run.run_dir.path} --engine swarm", file=sys.stderr)
        return EXIT_USAGE
    return reports.gate_exit_code(run.results, baseline, bump)


def pinned_snapshot(config: MatrixConfig, root: Path) -> Snapshot | None:
    """The snapshot a pinned run replays, read once before the run starts (an unknown
    name is a usage error, not a run of failures); its suites' signatures are checked
    against Debian's keyring, a mismatch said once (a private archive's key may differ:
    the cells' own apt and debootstrap still check)."""
    name = config.snapshot.pinned
    if name is None:
        return None
    snapshot = snapshot_for(Store(root), name)
    for problem in signature_problems(Store(root), snapshot):
        LOG.warning("snapshot %s: %s", snapshot.name, problem)
    return snapshot


def _bump_mode(args: argparse.Namespace, catalogue: Catalogue) -> reports.BumpMode | None:
    """``--bump-from RUN``: the pinned run, read as the baseline, and the catalogue's
    causes that are the mirror's, the network's or the engine's (never a regression)."""
    if getattr(args, "bump_from", None) is None:
        return None
    return reports.BumpMode(read_results(args.bump_from), catalogue.infrastructure_ids())


def _resumed_dir(resume: Path) -> Path:
    """The run directory ``--resume`` names (its results.json names it too), resolved."""
    resume = resolved(resume)  # a symlink loop: UnsafePath, a ValueError
    return resume if resume.is_dir() or not resume.exists() else resume.parent


def _check_resumable(run_dir: Path, resumed: RunResults) -> None:
    """A resumed run is written back where its id says: its own directory, never another
    run's (a copied or edited results.json would write there). ValueError otherwise."""
    try:
        home: Path | None = OutDir(run_dir.parent).run(resumed.run_id).path
    except UnsafePath:  # an id the reader takes that names no run's directory: latest
        home = None
    if home != run_dir:
        raise ValueError(f"--resume {run_dir}: its results.json is run {resumed.run_id}, "
                         "not the run of this directory: resume a run in its own directory")


def write_reports(run: MatrixRun, baseline: RunResults | None, out_dir: Path,
                   bump: reports.BumpMode | None = None) -> None:
    reports.write_all(run.run_dir.path, run.results, baseline=baseline, history_dir=out_dir,
                      bump=bump)
    print(run.run_dir.text_report.read_text())
    extra = ", bump.md, summary.md" if bump is not None else ""
    print(f"results: {run.run_dir.path} (report.html, junit.xml, results.json{extra})")


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        loaded = _load(args)
        config, plan = loaded.config, loaded.plan
        printed = shardcli.print_plan(args, plan)
    except (ConfigError, SelectionError, ValueError, OSError) as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    if printed is not None:
        return printed
    sys.stdout.write(render_plan(config, plan, _cached_facts(plan)))
    return EXIT_OK


def render_plan(config: MatrixConfig, plan: Plan, facts: dict) -> str:
    """What ``plan`` prints: every cell with its planned state, then notes. Exclusion
    reasons, preflight verdicts (from host image labels) and notes are free text from
    files: each is one line in its cell, and no control character reaches the terminal."""
    rows = []
    for cell in plan.cells:
        if cell.excluded is not None:
            planned = f"excluded: {one_line(cell.excluded)}"
        else:
            verdict = preflight(cell, facts.get(cell.host.name))
            planned = f"preflight: {one_line(str(verdict))}" if verdict else "run"
            if not cell.voting:
                planned += " (non-voting)"
        rows.append([one_line(cell.id), cell.kind.value,
                     one_line(", ".join(cell.needs)) or "-", planned])
    lines = [f"matrix {one_line(config.name)} ({one_line(str(config.path))}): "
             f"{len(plan.cells)} cells",
             tabulate(rows, headers=["cell", "kind", "needs", "planned"])]
    for host in plan.hosts:
        written = getattr(host.base, "written", None)
        if written:
            lines.append(one_line(f"registry mirror {config.registry_mirror}: {host.name}: "
                                  f"{written} -> {host.base.reference}"))  # type: ignore[union-attr]
    if not facts:
        lines.append("(no host image is built yet: preflight verdicts appear once hosts are built)")
    lines += upstream_notes({c.target.name: c.target for c in plan.cells
                             if c.target and c.excluded is None}.values())
    return safe_text("\n".join(lines) + "\n")


def _cached_facts(plan: Plan) -> dict:
    try:
        client = engine.connect(timeout=10)
    except engine.EngineError:
        return {}
    found = {}
    for host in plan.hosts:
        facts = load_facts(client, image_names(host).image)
        if facts is not None:
            found[host.name] = facts
    return found


def cmd_clean(args: argparse.Namespace) -> int:
    try:
        client = engine.connect(timeout=30)
    except engine.EngineError as err:
        print(f"dib-matrix: {err}", file=sys.stderr)
        return EXIT_USAGE
    cleanup.clean(client, run_id=args.run, caches=args.caches)
    return EXIT_OK


__all__ = ["State", "add_parsers", "load_finished", "write_reports"]
