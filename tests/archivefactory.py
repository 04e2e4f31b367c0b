"""Run directories for the archive tests: small runs with logs, images and their sidecars,
written as the runner leaves them (results.json through the store)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from results.archive import OutDir, RunDir
from results.model import Artifact, Category, Cell, CellKind, RunResults, State

HOSTS = ("h1", "h2")
TARGETS = ("t1", "t2")


def run_id(day: int) -> str:
    """A run id of day ``day`` (1-based), in the runner's format, sorted by day."""
    return f"2025{1 + (day - 1) // 28:02d}{1 + (day - 1) % 28:02d}-020000-{day:04x}"


def started(day: int) -> str:
    return f"2025-{1 + (day - 1) // 28:02d}-{1 + (day - 1) % 28:02d}T02:00:00+00:00"


def write_cell_files(run: RunDir, cell: Cell, image_size: int, seed: str) -> None:
    """The log, and for a build its image, checksum and package manifest."""
    log = run.log(cell.host, cell.row)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"{seed}: {cell.id} {cell.state.value}\n")
    cell.log = run.relative(log)
    if cell.kind is not CellKind.BUILD or cell.state is not State.SUCCESS:
        return
    image = run.image(cell.host, cell.row, ".qcow2")
    image.parent.mkdir(parents=True, exist_ok=True)
    data = (seed + cell.id).encode() * (image_size // max(len(seed + cell.id), 1) + 1)
    image.write_bytes(data[:image_size])
    digest = hashlib.sha256(data[:image_size]).hexdigest()
    Path(f"{image}.sha256").write_text(f"{digest}  {image.name}\n")
    run.packages(cell.host, cell.row).write_text("bash 5.2\n")
    cell.artifacts = [Artifact(run.relative(image), "qcow2", image_size, digest)]


def stored_run(out: Path, day: int, states: dict[str, State] | None = None,
               image_size: int = 8192, finished: bool = True,
               legend: str = "No such script: /usr/share/debootstrap/scripts/forky",
               reuse_from: RunDir | None = None) -> RunDir:
    """Run of day ``day`` in ``out``: every cell a success unless ``states`` (cell id ->
    state) says otherwise; ``reuse_from`` hard-links the builds' images of that run."""
    run = OutDir(out).new_run(run_id(day))
    cells = []
    for host in HOSTS:
        for row in ("hostgen", *TARGETS):
            kind = CellKind.HOSTGEN if row == "hostgen" else CellKind.BUILD
            cell = Cell(host, row, kind, (states or {}).get(f"{host}.{row}", State.SUCCESS),
                        attempts=1, duration=60.0 + day, key=f"key-{host}-{row}",
                        started=started(day), finished=started(day))
            if cell.state is State.FAILED:
                cell.category = Category("no-script", legend, labels=["no-script"])
            write_cell_files(run, cell, image_size, f"day{day}")
            if reuse_from is not None and cell.artifacts:
                _relink(reuse_from, run, cell)
            cells.append(cell)
    results = RunResults(run.run_id, "m.yaml", list(HOSTS), ["hostgen", *TARGETS], cells,
                         started=started(day), finished=started(day) if finished else None)
    run.save(results)
    return run


def _relink(source: RunDir, run: RunDir, cell: Cell) -> None:
    for artifact in cell.artifacts:
        earlier = source.path / artifact.path
        if earlier.exists():
            (run.path / artifact.path).unlink()
            os.link(earlier, run.path / artifact.path)
            artifact.sha256 = hashlib.sha256(earlier.read_bytes()).hexdigest()
