"""dib-matrix's benchmark: one run, one table of figures and ratios measured in it.

    sudo .venv/bin/python bench/run.py [--quick] [--only SECTION ...]

Sections: builders (dib against diskimage-builder), pkgcache (two cold
builds through the shared package cache), matrix (cold, warm, --reuse, one
element touched), overhead (no-op cells through dib-matrix run), scale (a
synthetic 50 x 50 matrix in-process), classify (hostile logs through
``dib-matrix classify``), archive (out/ after 30 simulated nightlies, with and
without retention). Where a target is missed the
section profiles it and the profile is printed under the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

# Run as a script: make the checkout importable as `bench` (dib and matrix come
# from the virtualenv the package is installed in).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (  # noqa: E402
    archivebench,
    builders,
    classifybench,
    cleanup,
    foreign,
    matrixbench,
    overhead,
    pkgcachebench,
    scale,
)
from bench.figures import Figure, Report, format_report  # noqa: E402
from bench.proc import release_mounts  # noqa: E402
from bench.workspace import REPO, Bench, BenchError  # noqa: E402
from dib.mirror import MirrorNotFound, find_mirror  # noqa: E402
from matrix.containers import engine  # noqa: E402

Section = Callable[[Bench], "tuple[list[Figure], dict[str, list[str]]]"]
SECTIONS: dict[str, Section] = {
    "builders": builders.run,
    "pkgcache": pkgcachebench.run,
    "matrix": matrixbench.run,
    "overhead": overhead.run,
    "scale": scale.run,
    "classify": classifybench.run,
    "arm64": foreign.run,
    "archive": archivebench.run,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dib-matrix benchmark")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: no diskimage-builder, one host, small matrices")
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), default=[],
                        help="run only this section (repeatable)")
    parser.add_argument("--clean", action="store_true",
                        help="remove what runs keep (bench host images, layers, cache "
                        "volumes, the work directory) and exit")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work",
                        help="scratch directory (default: bench/.work)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (debootstrap, chroot, mounts): sudo .venv/bin/python "
              "bench/run.py", file=sys.stderr)
        return 2
    if args.clean:
        return _clean(args.work.resolve())
    try:
        mirror = find_mirror("debian")
    except MirrorNotFound as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    work = args.work.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bench = Bench(work=work, logs=work / "runs" / stamp, quick=args.quick, mirror=mirror)
    bench.logs.mkdir(parents=True, exist_ok=True)
    report = Report()
    started = time.monotonic()
    try:
        for name in args.only or list(SECTIONS):
            report = _section(bench, name, report)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        release_mounts(work)
    report.notes.append(f"{'quick' if args.quick else 'full'} run of "
                        f"{time.monotonic() - started:.0f} s; logs in {bench.logs}")
    text = format_report(report)
    print(text)
    (bench.logs / "report.txt").write_text(text + "\n")
    (bench.logs / "report.json").write_text(report.to_json() + "\n")
    return 0


def _clean(work: Path) -> int:
    try:
        client = engine.connect(timeout=60)
    except engine.EngineError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    for line in cleanup.clean(client, work) or ["nothing to remove"]:
        print(f"bench --clean: {line}")
    return 0


def _section(bench: Bench, name: str, report: Report) -> Report:
    """A section that fails becomes a 'not measured' row; the others still run."""
    try:
        figures, profiles = SECTIONS[name](bench)
    except BenchError as err:
        figures, profiles = [Figure(name, "section", None, note=f"not measured: {err}")], {}
    except Exception as err:  # noqa: BLE001 - the per-section boundary
        log = bench.log(f"{name}-error")
        log.write_text(traceback.format_exc())
        figures = [Figure(name, "section", None, note=f"not measured: {err!r} (see {log})")]
        profiles = {}
    report.add(figures)
    report.profiles.update(profiles)
    return report


if __name__ == "__main__":
    sys.exit(main())
