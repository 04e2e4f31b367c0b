"""A synthetic H x T matrix through the orchestrator in-process, every cell a no-op.

Real matrix files (H host and T target YAML files) are loaded and planned, the
real ``Scheduler`` runs every cell on its thread pool, the real ``MatrixRun``
records each one (results.json rewritten after every cell, as in a run) and
the reports are written at the end. Only the executor is a no-op: no engine,
no containers. Run as a child process (``python bench/synthetic.py ...``) so its
peak RSS is the orchestrator's alone; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import yaml

import reports
from matrix.config.dibtree import bundled_tree
from matrix.config.matrixfile import load_matrix
from matrix.run.cellreport import CellReport
from matrix.run.matrixrun import MatrixRun, RunRequest
from matrix.run.plan import PlannedCell, make_plan
from matrix.run.scheduler import Scheduler
from matrix.verdict.catalogue import load_catalogue
from results import store
from results.model import RunResults, State

REPO = Path(__file__).resolve().parent.parent


def write_matrix(work: Path, hosts: int, targets: int) -> Path:
    host = yaml.safe_load((REPO / "hosts" / "debian-bookworm.yaml").read_text())
    target = yaml.safe_load((REPO / "targets" / "debian-bookworm.yaml").read_text())
    host_files, target_files = [], []
    for i in range(hosts):
        name = f"synthetic-host-{i:03d}"
        host_files.append(_dump(work / "hosts" / f"{name}.yaml", {**host, "name": name}))
    for i in range(targets):
        name = f"synthetic-target-{i:03d}"
        target_files.append(_dump(work / "targets" / f"{name}.yaml", {**target, "name": name}))
    return _dump(work / "matrix.yaml", {
        "name": f"synthetic-{hosts}x{targets}",
        "hosts": [str(p) for p in host_files],
        "targets": [str(p) for p in target_files],
        "checks": ["tox"],
        "max-parallel": 8,
    })


def _dump(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _time_saves() -> dict[str, float]:
    """Wrap the results.json writer (``results.store``) to add up the time it takes: ``saves``
    in all, ``writes`` of it in the file write (temp file, fsync, rename), and the
    last document's ``bytes``."""
    spent = {"saves": 0.0, "writes": 0.0, "bytes": 0.0}
    save, write = store.save, store.write_chunks_atomically

    def timed_save(run: RunResults, run_dir: Path) -> Path:
        start = time.monotonic()
        try:
            return save(run, run_dir)
        finally:
            spent["saves"] += time.monotonic() - start

    def timed_write(path: Path, chunks: list[bytes]) -> None:
        start = time.monotonic()
        try:
            write(path, chunks)
        finally:
            spent["writes"] += time.monotonic() - start
            spent["bytes"] = float(sum(len(chunk) for chunk in chunks))

    store.save = timed_save  # type: ignore[assignment]
    store.write_chunks_atomically = timed_write  # type: ignore[assignment]
    return spent


def no_op(cell: PlannedCell, attempt: int) -> CellReport:
    return CellReport(State.SUCCESS, reason="no-op")


def measure(work: Path, hosts: int, targets: int) -> dict[str, float]:
    phases: dict[str, float] = {}
    clock = time.monotonic()
    matrix = write_matrix(work, hosts, targets)
    config = load_matrix(matrix)
    plan = make_plan(config)
    tree = bundled_tree()
    phases["load_and_plan_s"] = time.monotonic() - clock
    clock = time.monotonic()
    saving = _time_saves()
    request = RunRequest(config, plan, work / "out", tree)
    run = MatrixRun(request, None, load_catalogue(config.categories))
    run.run_dir.create()
    Scheduler(list(plan.cells), no_op, run.finish, max_parallel=config.max_parallel).run()
    phases["schedule_s"] = time.monotonic() - clock
    phases["results_saves_s"] = saving["saves"]
    phases["results_writes_s"] = saving["writes"]
    phases["results_bytes"] = saving["bytes"]
    clock = time.monotonic()
    reports.write_all(run.run_dir.path, run.results, history_dir=request.out_dir)
    phases["reports_s"] = time.monotonic() - clock
    states = {c.state for c in run.results.cells}
    if states != {State.SUCCESS}:
        raise RuntimeError(f"unexpected states: {sorted(s.value for s in states)}")
    phases["cells"] = len(run.results.cells)
    # ru_maxrss is in KiB on Linux.
    phases["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--work", type=Path, required=True, help="an empty directory")
    parser.add_argument("--profile", type=Path, help="write cProfile stats here")
    args = parser.parse_args(argv)
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(measure, args.work, args.hosts, args.targets)
        profiler.dump_stats(str(args.profile))
    else:
        result = measure(args.work, args.hosts, args.targets)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
