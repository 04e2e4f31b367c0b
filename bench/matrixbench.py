"""``dib-matrix run``: cold, warm, --reuse unchanged, one element touched.

The full run measures the default matrix (``matrix/config/matrices/default.yaml``,
read at run time): its targets, checks, max-parallel and timeout, on copies of
its hosts named ``bench-<host>``, so their images and per-host cache volumes
are the benchmark's own: making them cold never touches anyone else's. The
touched element is a real bundled one that only some targets use (``growroot``:
only the VM target), so the touched run must re-run exactly the build cells
whose element closure holds it, the boot rows of those builds, and every check
row (tox tests every element).

``--quick`` keeps a small matrix: one host x debian-bookworm and
``bench-bookworm-extra`` (debian-minbase plus the bench-only ``bench-extra``
element, the touched one), no checks.

Which cells ran, which were reused and which never ran (a preflight verdict,
skipped, excluded) comes from each run's ``results.json``, per kind (build,
check, boot).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import yaml

from bench.figures import Figure, megabytes, ratio
from bench.proc import last_lines, timed
from bench.profiling import record_argv, summarise
from bench.workspace import REPO, Bench, BenchError, copy_tree, write_element
from dib import spawn
from matrix.config.dibtree import DibTree
from matrix.config.matrixfile import load_matrix, resolve_matrix_path
from matrix.containers import engine
from matrix.run.plan import Plan, PlannedCell, make_plan
from matrix.run.provenance import tree_cache_outcome
from matrix.run.reuse import KeyMaker
from results.archive import OutDir, RunDir
from results.model import Cell, CellKind, RunResults, State

SECTION = "matrix"
PREFIX = "bench-"
REUSE_TARGET_S = 10.0
WARM_TARGET = 0.30  # the default matrix warm (host images and dib's caches kept) / cold
# The element touched in the full run: the first of these that only some targets
# use, else the element fewest (but not all) of the matrix's targets use.
TOUCH_PREFERRED = ("growroot", "boot-marker")
QUICK_TOUCHED = "bench-extra"
QUICK_TARGET = "bench-bookworm-extra"
QUICK_HOSTS = ("debian-bookworm",)
RUN_KINDS = (CellKind.BUILD, CellKind.CHECK, CellKind.BOOT)
TOUCH_MARK = "# touched by dib-matrix's benchmark\n"
EXTRA_HOOK = """#!/bin/bash
# bench-only element: leaves a mark in the image, so touching it changes a real build.
set -eu
echo "built by dib-matrix's benchmark" > /etc/dib-matrix-bench
"""


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def bench_host(source: Path, directory: Path) -> Path:
    """A host YAML renamed to bench-<name>: the benchmark's own image and volume."""
    definition = yaml.safe_load(source.read_text())
    definition["name"] = PREFIX + definition["name"]
    return write_yaml(directory / f"{definition['name']}.yaml", definition)


def bench_matrix(source: Mapping, source_dir: Path, hosts: Sequence[Path]) -> dict:
    """The matrix document ``source`` (from ``source_dir``) on the bench host files ``hosts``.

    Everything else is kept (targets, checks, max-parallel, timeout, ...): host
    globs of exclude and allowed-failures get the bench prefix, paths relative
    to the source matrix become absolute, and ``output`` is left to ``--out``.
    """
    if source.get("include"):
        raise BenchError("the default matrix has include entries: they name bundled hosts, "
                         "which the benchmark replaces with its copies")

    def absolute(entry: object) -> object:
        if isinstance(entry, str) and entry.endswith((".yaml", ".yml")):
            return str((source_dir / entry).resolve())
        return entry

    doc: dict = {"name": f"{PREFIX}{source.get('name', 'default')}",
                 "hosts": [str(path) for path in hosts]}
    for key, value in source.items():
        if key in ("name", "hosts", "output"):
            continue
        if key == "targets" and isinstance(value, list):
            value = [absolute(entry) for entry in value]
        elif key in ("exclude", "allowed-failures") and isinstance(value, list):
            value = [{**rule, "host": PREFIX + str(rule["host"])}
                     if isinstance(rule, dict) and "host" in rule else rule for rule in value]
        elif key == "categories" and isinstance(value, list):
            value = [str((source_dir / str(path)).resolve()) for path in value]
        doc[key] = value
    return doc


def quick_target(directory: Path) -> Path:
    return write_yaml(directory / f"{QUICK_TARGET}.yaml", {
        "name": QUICK_TARGET,
        "description": "debian-minbase bookworm plus the bench-only bench-extra element",
        "elements": ["debian-minbase", QUICK_TOUCHED],
        "env": {"DIB_RELEASE": "bookworm"},
        "outputs": ["tar"],
        "requires": {"tools": ["debootstrap"], "debootstrap-script": "bookworm"},
    })


# --- what a plan holds and what a touch must re-run (pure) ---------------------------------


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def describe_plan(label: str, plan: Plan) -> str:
    """'default matrix: 3 hosts x 6 targets + tox + 1 boot row', from the plan's rows."""
    kinds = {cell.row: cell.kind for cell in plan.cells}
    builds = [row for row in plan.rows if kinds.get(row) is CellKind.BUILD]
    checks = [row for row in plan.rows if kinds.get(row) is CellKind.CHECK]
    boots = [row for row in plan.rows if kinds.get(row) is CellKind.BOOT]
    text = f"{label}: {_plural(len(plan.hosts), 'host')} x {_plural(len(builds), 'target')}"
    text += "".join(f" + {check}" for check in checks)
    if boots:
        text += f" + {_plural(len(boots), 'boot row')}"
    return text


def closures(plan: Plan, tree: Path) -> dict[str, set[str]]:
    """Target name -> names of the elements its build resolves to in ``tree``."""
    keys = KeyMaker(DibTree.read(tree))
    return {cell.target.name: {Path(part).name for part in keys.closure_parts(cell.target.elements)}
            for cell in plan.cells if cell.kind is CellKind.BUILD and cell.target is not None}


def pick_touched(target_closures: Mapping[str, set[str]],
                 preferred: Sequence[str] = TOUCH_PREFERRED) -> str | None:
    """An element some targets' closures hold but not all: a touch that spares cells."""
    users: dict[str, set[str]] = {}
    for target, elements in target_closures.items():
        for element in elements:
            users.setdefault(element, set()).add(target)
    partial = {e: targets for e, targets in users.items() if targets != set(target_closures)}
    for element in preferred:
        if element in partial:
            return element
    return min(partial, key=lambda e: (len(partial[e]), e), default=None)


def expected_after_touch(plan: Plan, target_closures: Mapping[str, set[str]],
                         touched: str) -> set[str]:
    """Build cells whose closure holds ``touched``, the boot rows of those builds, every check."""
    def holds(cell: PlannedCell) -> bool:
        return cell.target is not None and touched in target_closures.get(cell.target.name, ())

    expected = {cell.id for cell in plan.cells if cell.kind is CellKind.CHECK
                or (cell.kind is CellKind.BUILD and holds(cell))}
    expected |= {cell.id for cell in plan.cells
                 if cell.kind is CellKind.BOOT and any(need in expected for need in cell.needs)}
    return expected


# --- what one run did, from its results (pure) --------------------------------------------


def ran(cell: Cell) -> bool:
    """The cell ran this time (a container, or qemu for a boot row): not reused, and not
    a preflight verdict, a skip or an exclusion (those have no reproducer)."""
    if cell.kind not in RUN_KINDS or cell.reused:
        return False
    if cell.state in (State.SKIPPED, State.EXCLUDED, State.PENDING):
        return False
    return cell.reproducer is not None or cell.state is State.ERROR


def ran_ok(cells: Iterable[Cell]) -> set[str]:
    """Cells that ran and succeeded: what a later --reuse can take."""
    return {c.id for c in cells if ran(c) and c.state is State.SUCCESS}


def by_kind(cells: Iterable[Cell], ids: set[str], of: set[str] | None = None) -> str:
    """'build 4, check 2, boot 2' for ``ids``, or 'build 4/4, ...' out of ``of``."""
    kinds = {c.id: c.kind for c in cells}
    parts = []
    for kind in RUN_KINDS:
        count = sum(kinds.get(i) is kind for i in ids)
        if of is None:
            if count:
                parts.append(f"{kind.value} {count}")
            continue
        total = sum(kinds.get(i) is kind for i in of)
        if total or count:
            parts.append(f"{kind.value} {count}/{total}")
    return ", ".join(parts) or "none"


def by_row(cell_ids: Iterable[str]) -> str:
    """'host.row' ids as 'row (N hosts)', so a note stays one short line."""
    rows: dict[str, int] = {}
    for cell_id in cell_ids:
        row = cell_id.split(".", 1)[1]
        rows[row] = rows.get(row, 0) + 1
    return ", ".join(f"{row} ({_plural(n, 'host')})" for row, n in sorted(rows.items()))


# --- runs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixRun:
    label: str
    timed: spawn.Result
    run_dir: Path | None  # None: the run wrote no results
    results: RunResults | None
    volumes_left: int  # the hosts' image-cache volumes still there after the run

    @property
    def seconds(self) -> float | None:
        return self.timed.seconds if self.results is not None else None

    @property
    def cells(self) -> list[Cell]:
        return self.results.cells if self.results else []

    def ran(self) -> set[str]:
        return {c.id for c in self.cells if ran(c)}

    def reused(self) -> set[str]:
        return {c.id for c in self.cells if c.kind in RUN_KINDS and c.reused}

    def note(self) -> str:
        counts = self.results.counts() if self.results else {}
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if n)
        if self.timed.returncode not in (0, 1):  # 1: some voting cell failed
            states += f" (exit {self.timed.returncode}: {last_lines(self.timed, 1)[:80]})"
        if self.results is not None:
            states += f"; ran: {by_kind(self.cells, self.ran())}"
        cache = self.results.engine.get("package_cache") if self.results else None
        if cache:
            states += (f"; packages: {megabytes(cache['bytes_from_upstream']):.1f} MB from the "
                       f"mirror, {megabytes(cache['bytes_served']):.1f} MB served")
        return states or f"no results (exit {self.timed.returncode})"

    def cached_starts(self) -> tuple[int, int, int]:
        """(successful builds that started from dib's installed-tree cache, those that took
        only their base from the image cache, all successful builds that ran): a build that
        fails early never gets to either."""
        if self.run_dir is None:
            return 0, 0, 0
        run = RunDir(self.run_dir)
        logs = [run.recorded(c.log) for c in self.cells if c.kind is CellKind.BUILD
                and ran(c) and c.state is State.SUCCESS and c.log]
        said = [(tree_cache_outcome(log) or "", log) for log in logs
                if log is not None and log.exists()]
        trees = sum(outcome.startswith("hit ") for outcome, _ in said)
        bases = sum(not outcome.startswith("hit ") and "using cached base" in
                    log.read_text(errors="replace") for outcome, log in said)
        return trees, bases, len(logs)

    def hosts_that_built(self) -> int:
        return len({c.host for c in self.cells if c.kind is CellKind.BUILD and ran(c)})


@dataclass(frozen=True)
class Setup:
    matrix: Path
    out: Path
    tree: Path
    hosts: tuple[str, ...]
    # dib-matrix keeps its shared package cache under $HOME/.cache: the benchmark's
    # runs get a HOME of their own, so that cache starts cold and is theirs alone.
    home: Path
    label: str  # "default matrix", "bench matrix"
    touched: str  # the element the last run touches
    plan: Plan
    closures: dict[str, set[str]]


def matrix_run(bench: Bench, setup: Setup, label: str, extra: Sequence[str] = (),
               profile: Path | None = None) -> MatrixRun:
    bench.say(f"{SECTION}: {label}")
    argv = [sys.executable, "-m", "matrix.cli", "run", str(setup.matrix), "--out",
            str(setup.out), "--dib-tree", str(setup.tree), *extra]
    if profile is not None:
        argv = record_argv(bench.py_spy(), profile, argv)
    out = OutDir(setup.out)
    before = out.latest()
    result = timed(argv, bench.log(f"matrix-{label.replace(' ', '-')}"),
                   env=spawn.child_env({"HOME": str(setup.home)}), timeout=4 * 3600)
    after = out.latest()
    left = len(cache_volumes(setup.hosts))
    if after is None or after == before:
        return MatrixRun(label, result, None, None, left)
    return MatrixRun(label, result, after.path, after.load(), left)


def cache_volumes(hosts: Sequence[str]) -> list[str]:
    """Which of these hosts' image-cache volumes exist now."""
    client = engine.connect(timeout=60)
    try:
        names = {volume.name for volume in client.volumes.list()}
    finally:
        client.close()
    return [h for h in hosts if engine.cache_volume_name(h) in names]


def prepare(bench: Bench) -> Setup:
    root = bench.path("matrix")
    tree = copy_tree(root / "tree")
    hosts_dir = root / "hosts"
    shutil.rmtree(hosts_dir, ignore_errors=True)
    if bench.quick:
        write_element(tree, QUICK_TOUCHED, {
            "README.md": "bench-extra\n===========\nbench-only: writes /etc/dib-matrix-bench.\n",
            "post-install.d/50-bench-extra": EXTRA_HOOK,
        })
        host_files = [bench_host(REPO / "hosts" / f"{host}.yaml", hosts_dir)
                      for host in QUICK_HOSTS]
        matrix = write_yaml(root / "bench.yaml", {
            "name": "bench",
            "hosts": [str(path) for path in host_files],
            "targets": ["debian-bookworm", str(quick_target(root / "targets"))],
            "checks": [],
            "max-parallel": 2,
            "timeout": "30m",
        })
        label = "bench matrix"
    else:
        source = resolve_matrix_path(None)  # the default matrix
        default = load_matrix(source)
        sources = [host.source or REPO / "hosts" / f"{host.name}.yaml" for host in default.hosts]
        host_files = [bench_host(path, hosts_dir) for path in sources]
        matrix = write_yaml(root / "bench.yaml", bench_matrix(
            yaml.safe_load(source.read_text()), source.parent, host_files))
        label = f"{default.name} matrix"
    plan = make_plan(load_matrix(matrix))
    target_closures = closures(plan, tree)
    touched = QUICK_TOUCHED if bench.quick else pick_touched(target_closures)
    if touched is None:
        raise BenchError("every target of the matrix uses the same elements: no element "
                         "touch spares any cell")
    out, home = root / "out", root / "home"
    for fresh in (out, home):
        shutil.rmtree(fresh, ignore_errors=True)
    home.mkdir(parents=True)
    hosts = tuple(host.name for host in plan.hosts)
    return Setup(matrix, out, tree, hosts, home, label, touched, plan, target_closures)


def touch(tree: Path, element: str) -> Path:
    """Append a comment to the element's first phase script (README.md if it has none)."""
    directory = tree / "elements" / element
    scripts = sorted(p for p in directory.glob("*.d/*")
                     if p.is_file() and p.parent.name != "environment.d")
    path = scripts[0] if scripts else directory / "README.md"
    with path.open("a") as out:
        out.write(TOUCH_MARK)
    return path


def remove_cache_volumes(hosts: Sequence[str]) -> list[str]:
    """The benchmark hosts' image-cache volumes (cold caches); problems as notes."""
    problems = []
    try:
        client = engine.connect(timeout=60)
    except engine.EngineError as err:
        return [str(err)]
    for host in hosts:
        try:
            client.volumes.get(engine.cache_volume_name(host)).remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as err:
            problems.append(f"volume of {host}: {err}")
    client.close()
    return problems


def run(bench: Bench) -> tuple[list[Figure], dict[str, list[str]]]:
    setup = prepare(bench)
    notes = remove_cache_volumes(setup.hosts)
    profiles: dict[str, list[str]] = {}
    try:
        cold = matrix_run(bench, setup, "cold", [] if bench.quick else ["--rebuild-hosts"])
        warm = matrix_run(bench, setup, "warm")
        reuse = matrix_run(bench, setup, "reuse unchanged", ["--reuse"])
        if reuse.seconds is not None and reuse.seconds > REUSE_TARGET_S:
            raw = bench.logs / "profile-matrix-reuse.txt"
            matrix_run(bench, setup, "reuse unchanged (profiled)", ["--reuse"], profile=raw)
            title = "dib-matrix run --reuse, nothing changed (py-spy: busy thread-seconds)"
            profiles[title] = summarise(raw)
        touch(setup.tree, setup.touched)
        touched = matrix_run(bench, setup, "reuse one element touched", ["--reuse"])
    finally:
        notes += remove_cache_volumes(setup.hosts)
    figures = _figures(bench, setup, cold, warm, reuse, touched)
    if notes:
        figures.append(Figure(SECTION, "engine problems", None, note="; ".join(notes)))
    return figures, profiles


def reuse_figures(reuse: MatrixRun, touched: MatrixRun, reusable: set[str],
                  expected: set[str], element: str) -> list[Figure]:
    """The --reuse rows: ``reusable`` are the cells the warm run ran with success (a
    failed cell runs again under --reuse by design: it is counted, not held against it)."""
    cells = reuse.cells
    again = reusable - reuse.reused()  # includes any that vanished from the results
    failed_again = reuse.ran() - reusable
    rerun = touched.ran()
    expected = expected & reusable  # a cell that never succeeds is not the touch's doing
    mismatch = (rerun & reusable) ^ expected
    reuse_note = f"reused: {by_kind(cells, reuse.reused() & reusable, reusable)}"
    if failed_again:
        reuse_note += ("; failed cells ran again (no --reuse-failures): "
                       + by_kind(cells, failed_again))
    touched_note = f"re-ran: {by_row(rerun) or 'nothing'} ({by_kind(touched.cells, rerun)})"
    if rerun - reusable:
        touched_note += f"; of which failed before: {len(rerun - reusable)}"
    return [
        Figure(SECTION, "--reuse, nothing changed", reuse.seconds, "s", REUSE_TARGET_S,
               note=reuse_note),
        Figure(SECTION, "  successful cells re-run", float(len(again)), "", 0,
               note=(f"{by_row(again)} ({by_kind(cells, again)})" if again else "")),
        Figure(SECTION, f"--reuse, {element} touched", touched.seconds, "s", note=touched_note),
        Figure(SECTION, f"  re-runs not in {element}'s closure (or missing)",
               float(len(mismatch)), "", 0,
               note=f"expected: {by_row(expected) or 'nothing'}"
               + (f"; differ: {', '.join(sorted(mismatch))}" if mismatch else "")),
    ]


def _figures(bench: Bench, setup: Setup, cold: MatrixRun, warm: MatrixRun, reuse: MatrixRun,
             touched: MatrixRun) -> list[Figure]:
    size = describe_plan(setup.label, setup.plan)
    trees, bases, built = warm.cached_starts()
    expected = expected_after_touch(setup.plan, setup.closures, setup.touched)
    return [
        Figure(SECTION, f"cold ({size})", cold.seconds, "s",
               note=cold.note() + ("" if bench.quick else "; host images rebuilt")),
        Figure(SECTION, "  image-cache volumes left after the cold run",
               float(cold.volumes_left), "",
               note=f"of {cold.hosts_that_built()} (one per host whose builds ran)"),
        Figure(SECTION, "warm", warm.seconds, "s",
               note=f"{warm.note()}; of {built} successful builds {trees} started from a "
               f"cached tree, {bases} from a cached base"),
        Figure(SECTION, "warm / cold", ratio(warm.seconds, cold.seconds), "x",
               None if bench.quick else WARM_TARGET,
               note="reference (one host)" if bench.quick else "host images cached, no --reuse"),
        *reuse_figures(reuse, touched, ran_ok(warm.cells), expected, setup.touched),
    ]
