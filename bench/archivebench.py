"""The run archive: ``out/`` bytes after 30 nightlies of the default matrix, with and
without retention (``keep-runs 7``).

No builds: each nightly is simulated on disk through the archive's own code. Every
night writes new images for the default matrix's builds (a nightly rebuilds: new
inodes), each cell's successes become its last-good (``results.lastgood``, hard links)
and, with retention, ``results.retention.collect`` runs as the runner's last stage
does. Images and logs are sparse files of their real size (thirty nights of real
images would take tens of GB of a bench machine's disk), so ``out/`` is measured in
the bytes its files say they have, each inode once (``retention.apparent``).

Image sizes come from a real run when ``out/latest`` holds one (each build's recorded
artifact sizes, and which builds succeeded); else from ``IMAGE_BYTES``, measured on
Debian-family builds of this repository's targets (a minbase root tarball, a small VM
disk). :func:`expected_bytes` is the arithmetic the simulation must agree with.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.figures import Figure, megabytes, ratio
from bench.workspace import REPO, Bench
from matrix.config.matrixfile import load_matrix, resolve_matrix_path
from matrix.run.plan import make_plan
from results import lastgood, retention
from results.archive import OutDir
from results.model import Artifact, Cell, CellKind, RunResults, State
from results.reader import ResultsError

NIGHTS = 30
KEEP_RUNS = 7
LOG_BYTES = 200 << 10  # a build's log: dib's output at its default verbosity
IMAGE_BYTES = {"tar": 180 << 20, "qcow2": 420 << 20, "raw": 2 << 30}  # by output type
SECTION = f"archive: {NIGHTS} nightlies"


@dataclass(frozen=True)
class Build:
    """One build of the matrix: its cell, its image bytes, whether it succeeds."""

    host: str
    target: str
    image_bytes: int
    succeeds: bool = True


def expected_bytes(builds: list[Build], nights: int, keep_runs: int | None) -> int:
    """``out/`` after ``nights`` nightlies that each rebuild ``builds``: the runs kept
    (each an image per build and a log per cell) plus, with retention, the last-good
    images that only the store still holds (builds failing now succeeded before the
    kept runs: none here, every build's state is the same every night)."""
    per_night = sum(b.image_bytes if b.succeeds else 0 for b in builds) + len(builds) * LOG_BYTES
    runs = nights if keep_runs is None else min(nights, keep_runs)
    return runs * per_night


def default_builds(latest: Path | None) -> tuple[list[Build], str]:
    """The default matrix's builds, sized from ``latest`` (a real run) when it has them."""
    config = load_matrix(resolve_matrix_path("default"))
    recorded = _recorded_sizes(latest) if latest is not None else {}
    builds = []
    for cell in make_plan(config).cells:
        if cell.kind is not CellKind.BUILD or cell.target is None or cell.excluded:
            continue
        size, succeeds = recorded.get((cell.host.name, cell.row), (None, True))
        if size is None:
            size = sum(IMAGE_BYTES.get(kind, IMAGE_BYTES["tar"]) for kind in cell.target.outputs)
        builds.append(Build(cell.host.name, cell.row, size, succeeds))
    source = (f"image sizes of {latest.name} (out/latest) where it built them"
              if recorded else "documented image sizes (no out/latest): " +
              ", ".join(f"{k} {v >> 20} MiB" for k, v in IMAGE_BYTES.items()))
    return builds, source


def _recorded_sizes(latest: Path) -> dict[tuple[str, str], tuple[int | None, bool]]:
    try:
        results = OutDir(latest.parent).run(latest.name).load()
    except (ResultsError, OSError, ValueError):
        return {}
    return {(c.host, c.row): (sum(a.size for a in c.artifacts) or None,
                              c.state is State.SUCCESS)
            for c in results.cells if c.kind is CellKind.BUILD}


def simulate(work: Path, builds: list[Build], nights: int, keep_runs: int | None) -> int:
    """Bytes on disk of ``work``/out after ``nights`` simulated nightlies, scaled back."""
    out = OutDir(work / "out")
    policy = retention.Policy(keep_runs=keep_runs)
    for night in range(1, nights + 1):
        run = out.new_run(f"202501{night:02d}-020000-{night:04x}")
        results = RunResults(run.run_id, "default", sorted({b.host for b in builds}),
                             sorted({b.target for b in builds}),
                             [_night_cell(run, build, night) for build in builds],
                             started=f"2025-01-{night:02d}T02:00:00+00:00")
        results.finished = results.started
        run.save(results)
        lastgood.record_run(out, run, results, warn=_quiet)
        if keep_runs is not None:
            retention.collect(out, policy, lambda run_id: False, protect={run.run_id},
                              warn=_quiet)
    return retention.Ledger.of(out.path, retention.apparent).total


def _night_cell(run, build: Build, night: int) -> Cell:
    cell = Cell(build.host, build.target, CellKind.BUILD,
                State.SUCCESS if build.succeeds else State.FAILED, attempts=1,
                finished=f"2025-01-{night:02d}T03:00:00+00:00")
    log = run.log(build.host, build.target)
    log.parent.mkdir(parents=True, exist_ok=True)
    _sparse(log, LOG_BYTES)
    cell.log = run.relative(log)
    if build.succeeds:
        image = run.image(build.host, build.target, ".img")
        image.parent.mkdir(parents=True, exist_ok=True)
        _sparse(image, build.image_bytes)
        cell.artifacts = [Artifact(run.relative(image), "img", build.image_bytes, "0" * 64)]
    return cell


def _sparse(path: Path, size: int) -> None:
    """A file of ``size`` bytes that takes no disk (a hole)."""
    with path.open("wb") as stream:
        stream.truncate(size)


def _quiet(message: str) -> None:
    pass


def figures(builds: list[Build], measured: Mapping[str, int], source: str) -> list[Figure]:
    """The section's rows from the two simulated series (``without``, ``with``)."""
    without, kept = measured["without"], measured["with"]
    checks = {name: expected_bytes(builds, NIGHTS, keep) for name, keep in
              (("without", None), ("with", KEEP_RUNS))}
    agree = all(abs(measured[k] - checks[k]) <= 0.02 * checks[k] for k in checks)
    return [
        Figure(SECTION, "builds a night", float(len(builds)), note=source),
        Figure(SECTION, "out/ without retention", megabytes(without), "MB",
               note=f"expected {megabytes(checks['without']):.0f} MB"),
        Figure(SECTION, f"out/ with keep-runs {KEEP_RUNS}", megabytes(kept), "MB",
               note=f"expected {megabytes(checks['with']):.0f} MB; last-good kept for "
               "every cell"),
        Figure(SECTION, "with / without", ratio(kept, without), "x",
               note="sparse files of real sizes through results.retention; "
               + ("agrees with" if agree else "DIFFERS from") + " the arithmetic"),
    ]


def run(bench: Bench) -> tuple[list[Figure], dict[str, list[str]]]:
    latest = REPO / "out" / "latest"
    builds, source = default_builds(latest if latest.is_dir() else None)
    measured = {}
    for name, keep in (("without", None), ("with", KEEP_RUNS)):
        work = bench.path("archive", name)
        shutil.rmtree(work, ignore_errors=True)
        bench.say(f"{SECTION}: {name} retention")
        try:
            measured[name] = simulate(work, builds, NIGHTS, keep)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return figures(builds, measured, source), {}
