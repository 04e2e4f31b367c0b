"""The synthetic H x T matrix (bench/synthetic.py) in a child process: wall time and peak RSS."""

from __future__ import annotations

import json
import shutil
import sys

from bench.figures import Figure, megabytes, ratio
from bench.proc import last_lines, timed
from bench.workspace import REPO, Bench
from dib import spawn

RSS_TARGET_MB = 200.0


def run(bench: Bench) -> tuple[list[Figure], dict[str, list[str]]]:
    hosts, targets = (10, 10) if bench.quick else (50, 50)
    section = f"{hosts}x{targets} synthetic"
    work = bench.path("synthetic")
    shutil.rmtree(work, ignore_errors=True)
    bench.say(f"{section}: in-process scheduler, no-op executor")
    log = bench.log("synthetic")
    try:
        result = timed([sys.executable, str(REPO / "bench" / "synthetic.py"), "--hosts",
                        str(hosts), "--targets", str(targets), "--work", str(work)], log,
                       env=spawn.child_env(), timeout=3 * 3600)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = log.read_text(errors="replace").strip().splitlines()
    if not result.ok or not lines or not lines[-1].startswith("{"):
        return [Figure(section, "run", None, note=f"failed: {last_lines(result, 2)}")], {}
    data = json.loads(lines[-1])
    cells = int(data["cells"])
    schedule = data["schedule_s"]
    saves = data["results_saves_s"]
    writes = data.get("results_writes_s")
    size = data.get("results_bytes")
    how = "in-process, no-op executor, no engine"
    return [
        Figure(section, "cells", float(cells), note=f"{hosts} hosts x ({targets} targets "
               "+ hostgen + tox); " + how),
        Figure(section, "wall (child process)", result.seconds, "s",
               note=f"load+plan {data['load_and_plan_s']:.1f} s, reports "
               f"{data['reports_s']:.1f} s"),
        Figure(section, "scheduling per cell", ratio(1000 * schedule, cells), "ms"),
        Figure(section, "  results.json rewrites / scheduling", ratio(100 * saves, schedule),
               "%", note=_saves_note(saves, writes, size, cells)),
        Figure(section, "orchestrator peak RSS", megabytes(result.peak_rss), "MB",
               RSS_TARGET_MB),
    ], {}


def _saves_note(saves: float, writes: float | None, size: float | None, cells: int) -> str:
    """What the rewrites cost: only changed cells are serialized again, so what is
    left is mostly writing the whole file (temp file, fsync, rename) every time."""
    note = f"{saves:.1f} s rewriting results.json after each of {cells} cells"
    if writes is not None and size:
        note += (f" ({1000 * saves / cells:.2f} ms each, {1000 * writes / cells:.2f} ms of it "
                 f"writing and fsyncing {size / 1e6:.1f} MB)")
    return note
