"""A small matrix through ``dib-matrix run``: cold, warm, --reuse unchanged, one element touched.

The benchmark's hosts are copies of the bundled ones named ``bench-<host>``, so
their images and per-host cache volumes are the benchmark's own: making them
cold never touches anyone else's. Targets: the bundled debian-bookworm and
``bench-bookworm-extra`` (debian-minimal plus the bench-only ``bench-extra``
element), so touching ``bench-extra`` must re-run only the second target's
cells (and the tox row, which tests every element).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import yaml

from bench.figures import Figure, megabytes, ratio
from bench.proc import Timed, base_env, timed
from bench.profiling import record_argv, summarise
from bench.workspace import REPO, Bench, copy_tree, write_element
from matrix import engine
from matrix.config import load_matrix
from matrix.plan import make_plan
from matrix.results import CellKind, RunResults, load
from matrix.reuse import KeyMaker

SECTION = "matrix"
PREFIX = "bench-"
TOUCHED = "bench-extra"
EXTRA_TARGET = "bench-bookworm-extra"
REUSE_TARGET_S = 10.0
HOSTS_FULL = ("debian-bookworm", "debian-trixie")
HOSTS_QUICK = ("debian-bookworm",)
EXTRA_HOOK = """#!/bin/bash
# bench-only element: leaves a mark in the image, so touching it changes a real build.
set -eu
echo "built by dib-matrix's benchmark" > /etc/dib-matrix-bench
"""


def bench_host(name: str, directory: Path) -> Path:
    """hosts/<name>.yaml renamed to bench-<name>: the benchmark's own image and volume."""
    definition = yaml.safe_load((REPO / "hosts" / f"{name}.yaml").read_text())
    definition["name"] = PREFIX + name
    path = directory / f"{PREFIX}{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return path


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def extra_target(directory: Path) -> Path:
    return write_yaml(directory / f"{EXTRA_TARGET}.yaml", {
        "name": EXTRA_TARGET,
        "description": "debian-minimal bookworm plus the bench-only bench-extra element",
        "elements": ["debian-minimal", TOUCHED],
        "env": {"DIB_RELEASE": "bookworm"},
        "outputs": ["tar"],
        "requires": {"tools": ["debootstrap"], "debootstrap-script": "bookworm"},
    })


@dataclass(frozen=True)
class MatrixRun:
    label: str
    timed: Timed
    run_dir: Path | None  # None: the run wrote no results
    results: RunResults | None
    volumes_left: int  # the hosts' image-cache volumes still there after the run

    @property
    def seconds(self) -> float | None:
        return self.timed.seconds if self.results is not None else None

    def cells(self, reused: bool) -> set[str]:
        """Finished build and check cells, reused from an earlier run or not."""
        cells = self.results.cells if self.results else []
        return {c.id for c in cells if c.kind is not CellKind.HOSTGEN and c.reused == reused
                and c.state.is_finished}

    def note(self) -> str:
        counts = self.results.counts() if self.results else {}
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if n)
        if self.timed.returncode not in (0, 1):  # 1: some voting cell failed
            states += f" (exit {self.timed.returncode}: {self.timed.tail(1)[:80]})"
        cache = self.results.engine.get("package_cache") if self.results else None
        if cache:
            states += (f"; packages: {megabytes(cache['bytes_from_upstream']):.1f} MB from the "
                       f"mirror, {megabytes(cache['bytes_served']):.1f} MB served")
        return states or f"no results (exit {self.timed.returncode})"

    def cached_bases(self) -> tuple[int, int]:
        """(builds whose log says dib took its base from the image cache, builds run)."""
        if self.results is None or self.run_dir is None:
            return 0, 0
        logs = [self.run_dir / c.log for c in self.results.cells
                if c.kind is CellKind.BUILD and not c.reused and c.log]
        used = sum(log.exists() and "using cached base" in log.read_text(errors="replace")
                   for log in logs)
        return used, len(logs)


@dataclass(frozen=True)
class Setup:
    matrix: Path
    out: Path
    tree: Path
    hosts: tuple[str, ...]
    # dib-matrix keeps its shared package cache under $HOME/.cache: the benchmark's
    # runs get a HOME of their own, so that cache starts cold and is theirs alone.
    home: Path


def matrix_run(bench: Bench, setup: Setup, label: str, extra: Sequence[str] = (),
               profile: Path | None = None) -> MatrixRun:
    bench.say(f"{SECTION}: {label}")
    argv = [sys.executable, "-m", "matrix.cli", "run", str(setup.matrix), "--out",
            str(setup.out), "--dib-tree", str(setup.tree), *extra]
    if profile is not None:
        argv = record_argv(bench.py_spy(), profile, argv)
    latest = setup.out / "latest"
    before = latest.resolve() if latest.exists() else None
    result = timed(argv, bench.log(f"matrix-{label.replace(' ', '-')}"),
                   env=base_env({"HOME": str(setup.home)}), timeout=4 * 3600)
    after = latest.resolve() if latest.exists() else None
    left = len(cache_volumes(setup.hosts))
    if after is None or after == before:
        return MatrixRun(label, result, None, None, left)
    return MatrixRun(label, result, after, load(after), left)


def cache_volumes(hosts: Sequence[str]) -> list[str]:
    """Which of these hosts' image-cache volumes exist now."""
    client = engine.connect(timeout=60)
    try:
        names = {volume.name for volume in client.volumes.list()}
    finally:
        client.close()
    return [h for h in hosts if engine.cache_volume_name(h) in names]


def by_row(cell_ids: set[str]) -> str:
    """'host.row' ids as 'row (N hosts)', so a note stays one short line."""
    rows: dict[str, int] = {}
    for cell_id in cell_ids:
        row = cell_id.split(".", 1)[1]
        rows[row] = rows.get(row, 0) + 1
    return ", ".join(f"{row} ({n} host{'s' if n > 1 else ''})" for row, n in sorted(rows.items()))


def prepare(bench: Bench) -> Setup:
    root = bench.path("matrix")
    tree = copy_tree(root / "tree")
    write_element(tree, TOUCHED, {
        "README.md": "bench-extra\n===========\nbench-only: writes /etc/dib-matrix-bench.\n",
        "post-install.d/50-bench-extra": EXTRA_HOOK,
    })
    hosts = HOSTS_QUICK if bench.quick else HOSTS_FULL
    host_files = [bench_host(host, root / "hosts") for host in hosts]
    matrix = write_yaml(root / "bench.yaml", {
        "name": "bench",
        "hosts": [str(path) for path in host_files],
        "targets": ["debian-bookworm", str(extra_target(root / "targets"))],
        "checks": [] if bench.quick else ["tox"],
        "max-parallel": 2,
        "timeout": "30m",
    })
    out, home = root / "out", root / "home"
    for fresh in (out, home):
        shutil.rmtree(fresh, ignore_errors=True)
    home.mkdir(parents=True)
    return Setup(matrix, out, tree, tuple(PREFIX + host for host in hosts), home)


def expected_after_touch(setup: Setup) -> set[str]:
    """Build cells whose element closure holds the touched element, and every check."""
    plan = make_plan(load_matrix(setup.matrix))
    keys = KeyMaker(setup.tree)
    touched = (setup.tree / "elements" / TOUCHED).resolve()
    expected = set()
    for cell in plan.cells:
        if cell.kind is CellKind.CHECK:
            expected.add(cell.id)
        elif cell.kind is CellKind.BUILD and cell.target is not None:
            closure = {path.resolve() for path in keys.element_dirs(cell.target.elements)}
            if touched in closure:
                expected.add(cell.id)
    return expected


def touch(tree: Path) -> None:
    hook = tree / "elements" / TOUCHED / "post-install.d" / "50-bench-extra"
    with hook.open("a") as script:
        script.write("# touched by the benchmark\n")


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
        touch(setup.tree)
        touched = matrix_run(bench, setup, "reuse one element touched", ["--reuse"])
    finally:
        notes += remove_cache_volumes(setup.hosts)
    figures = _figures(bench, setup, cold, warm, reuse, touched)
    if notes:
        figures.append(Figure(SECTION, "engine problems", None, note="; ".join(notes)))
    return figures, profiles


def _figures(bench: Bench, setup: Setup, cold: MatrixRun, warm: MatrixRun, reuse: MatrixRun,
             touched: MatrixRun) -> list[Figure]:
    size = f"{len(setup.hosts)} host(s) x 2 targets" + ("" if bench.quick else " + tox")
    used, built = warm.cached_bases()
    all_cells = reuse.cells(True) | reuse.cells(False)
    expected = expected_after_touch(setup)
    rerun = touched.cells(False)
    return [
        Figure(SECTION, f"cold ({size})", cold.seconds, "s",
               note=cold.note() + ("" if bench.quick else "; host images rebuilt")),
        Figure(SECTION, "  image-cache volumes left after the cold run",
               float(cold.volumes_left), "", note=f"of {len(setup.hosts)} (one per host)"),
        Figure(SECTION, "warm", warm.seconds, "s",
               note=f"{warm.note()}; {used}/{built} builds found a cached base"),
        Figure(SECTION, "warm / cold", ratio(warm.seconds, cold.seconds), "x", note="reference"),
        Figure(SECTION, "--reuse, nothing changed", reuse.seconds, "s", REUSE_TARGET_S,
               note=f"{len(reuse.cells(True))}/{len(all_cells)} cells reused"),
        Figure(SECTION, "  cells re-run", float(len(reuse.cells(False))), "", 0),
        Figure(SECTION, "--reuse, one element touched", touched.seconds, "s",
               note="re-ran: " + (by_row(rerun) or "nothing")),
        Figure(SECTION, "  re-runs not in the element's closure (or missing)",
               float(len(rerun ^ expected)), "", 0, note="expected: " + by_row(expected)),
    ]
