"""Orchestration overhead: cells whose build does nothing, run by ``dib-matrix run``.

The no-op target's only element, ``bench-noop``, provides operating-system and
has no hooks; in the benchmark's own tree copy ``base`` is emptied as well, so
dib resolves elements and writes an empty tar, nothing more. Per-cell cost is
the slope between two matrix sizes (serial: max-parallel 1), so start-up and
hostgen checks cancel out. Two references from the same run: that no-op dib
build run directly on this machine, and a bare container (create, start, wait,
remove of ``true``) through the same engine.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from bench.figures import Figure, ratio
from bench.matrixbench import PREFIX, bench_host, remove_cache_volumes, write_yaml
from bench.proc import last_lines, timed
from bench.profiling import record_argv, summarise
from bench.workspace import REPO, Bench, copy_tree, write_element
from dib import spawn
from matrix.containers import engine
from results.archive import OutDir
from results.model import CellKind, RunResults

SECTION = "overhead"
HOST = "debian-bookworm"
NOOP = "bench-noop"
PER_CELL_TARGET_S = 0.3
REPEATS = 5


def prepare(bench: Bench, counts: tuple[int, ...]) -> dict[int, Path]:
    """A tree with the no-op element, N no-op targets and one matrix file per size."""
    root = bench.path("overhead")
    tree = copy_tree(root / "tree")
    write_element(tree, NOOP, {"element-provides": "operating-system\n",
                               "README.md": "bench-noop\n==========\nbench-only: no hooks.\n"})
    # dib adds `base` to every build; emptied here so no hook runs (an empty root has no shell).
    (tree / "elements" / "base" / "element-deps").write_text("")
    host = bench_host(REPO / "hosts" / f"{HOST}.yaml", root / "hosts")
    targets = [write_yaml(root / "targets" / f"{NOOP}-{i:03d}.yaml", {
        "name": f"{NOOP}-{i:03d}", "description": "a build that does nothing",
        "elements": [NOOP], "outputs": ["tar"]}) for i in range(max(counts))]
    return {n: write_yaml(root / f"noop-{n}.yaml", {
        "name": f"noop-{n}", "hosts": [str(host)], "targets": [str(t) for t in targets[:n]],
        "checks": [], "max-parallel": 1, "timeout": "5m"}) for n in counts}


def run_matrix(bench: Bench, matrix: Path, label: str,
               profile: Path | None = None) -> tuple[float, list[float]]:
    """(wall seconds, each build cell's own duration) of one run."""
    root = bench.path("overhead")
    out = root / "out"
    argv = [sys.executable, "-m", "matrix.cli", "run", str(matrix), "--out", str(out),
            "--dib-tree", str(root / "tree")]
    if profile is not None:
        argv = record_argv(bench.py_spy(), profile, argv)
    bench.say(f"{SECTION}: {label}")
    home = root / "home"  # its own shared package cache (see matrixbench.Setup.home)
    home.mkdir(parents=True, exist_ok=True)
    result = timed(argv, bench.log(f"overhead-{label.replace(' ', '-')}"),
                   env=spawn.child_env({"HOME": str(home)}))
    results = latest_results(out)
    failed = [c.id for c in results.cells if c.state.value != "success"]
    if not result.ok or failed:
        raise RuntimeError(f"no-op matrix {label} failed (exit {result.returncode}): "
                           f"{', '.join(failed) or last_lines(result, 1)}")
    durations = [c.duration or 0.0 for c in results.cells if c.kind is CellKind.BUILD]
    return result.seconds, durations


def latest_results(out: Path) -> RunResults:
    """The results of the newest run in ``out``."""
    latest = OutDir(out).latest()
    if latest is None:
        raise RuntimeError(f"no run in {out} (no latest link)")
    return latest.load()


def direct_noop_build(bench: Bench) -> float:
    """Median seconds of the no-op dib build run on this machine, no container."""
    root = bench.path("overhead")
    tree = root / "tree"
    env = spawn.child_env({"PYTHONPATH": str(tree), "ELEMENTS_PATH": str(tree / "elements")})
    seconds = []
    for i in range(REPEATS):
        result = timed([sys.executable, "-m", "dib", "-o", str(root / "direct" / "noop"), "-t",
                        "tar", "--image-cache", str(root / "direct" / "cache"), NOOP],
                       bench.log("overhead-direct-noop"), env=env)
        if not result.ok:
            raise RuntimeError(f"no-op dib build failed: {last_lines(result, 2)}")
        if i:  # the first one warms the page cache
            seconds.append(result.seconds)
    return statistics.median(seconds)


def bare_container(image: str) -> float:
    """Median seconds of create + start + wait + remove of `true` through the engine."""
    client = engine.connect(timeout=120)
    seconds = []
    try:
        for i in range(REPEATS):
            start = time.monotonic()
            container = client.containers.create(image, ["true"], network_mode="host",
                                                 labels={engine.LABEL_RUN: "bench-overhead"})
            try:
                container.start()
                container.wait()
            finally:
                container.remove(force=True)
            if i:
                seconds.append(time.monotonic() - start)
    finally:
        client.close()
    return statistics.median(seconds)


def run(bench: Bench) -> tuple[list[Figure], dict[str, list[str]]]:
    small, large = (2, 4) if bench.quick else (5, 15)
    matrices = prepare(bench, (1, small, large))
    try:
        run_matrix(bench, matrices[1], "warm-up")  # hostgen of the bench host, if needed
        latest = latest_results(bench.path("overhead", "out"))
        wall_small, _ = run_matrix(bench, matrices[small], f"{small} cells")
        wall_large, durations = run_matrix(bench, matrices[large], f"{large} cells")
        direct = direct_noop_build(bench)
        floor = bare_container(latest.host_images[PREFIX + HOST])
    finally:
        remove_cache_volumes([PREFIX + HOST])
    slope = (wall_large - wall_small) / (large - small)
    overhead = slope - direct
    figures = [
        Figure(SECTION, f"no-op matrix, {small} cells", wall_small, "s", note="max-parallel 1"),
        Figure(SECTION, f"no-op matrix, {large} cells", wall_large, "s"),
        Figure(SECTION, "wall per extra cell", slope, "s",
               note=f"cells' own durations: median {statistics.median(durations):.2f} s"),
        Figure(SECTION, "  no-op dib build, no container", direct, "s", note="reference"),
        Figure(SECTION, "  bare container create/start/wait/remove", floor, "s",
               note="reference: the engine's floor"),
        Figure(SECTION, "per-cell overhead (wall per cell - dib)", overhead, "s",
               PER_CELL_TARGET_S),
        Figure(SECTION, "  overhead / bare container", ratio(overhead, floor), "x"),
    ]
    profiles = {}
    if overhead > PER_CELL_TARGET_S:
        raw = bench.logs / "profile-overhead.txt"
        try:
            run_matrix(bench, matrices[large], f"{large} cells (profiled)", profile=raw)
        finally:
            remove_cache_volumes([PREFIX + HOST])
        profiles[f"{large} no-op cells (py-spy: busy thread-seconds)"] = summarise(raw)
    return figures, profiles
