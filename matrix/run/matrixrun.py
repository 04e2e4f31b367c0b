"""One run's results as it goes: the request, every cell's state and verdict, saved
after each finished cell (:class:`MatrixRun`). The stages that run the cells are
:mod:`matrix.run.runner`'s."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests

from matrix.config import upstreamdib
from matrix.config.dibtree import DibTree
from matrix.config.matrixfile import OVERRIDES, MatrixConfig
from matrix.hostgen.build import recorded_base
from matrix.hostgen.hostimage import image_names
from matrix.run import provenance
from matrix.run.cellreport import CellReport
from matrix.run.investigate import InvestigationRequest
from matrix.run.plan import Plan, PlannedCell
from matrix.snapshot import store as snapshot_store
from matrix.snapshot.manifest import Snapshot
from matrix.verdict.catalogue import Catalogue
from matrix.verdict.classify import Evidence, classify
from matrix.verdict.lifecycle import CauseAllowance
from results.archive import OutDir, StoredRun
from results.model import Cell, CellKind, RunResults, State

LOG = logging.getLogger("dib-matrix")
DEFAULT_PACKAGE_CACHE = Path.home() / ".cache" / "dib-matrix" / "apt-cacher-ng"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RunRequest:
    config: MatrixConfig
    plan: Plan
    out_dir: Path
    dib_tree: DibTree  # made once by the command line: a checkout, or assembled
    resume: StoredRun | None = None  # the run to finish, read once by the command line
    rebuild_hosts: bool = False
    extra_categories: tuple[Path, ...] = ()
    reuse: bool = False
    reuse_failures: bool = False
    package_cache: Path | None = DEFAULT_PACKAGE_CACHE  # None: cells fetch directly
    dib_mount: bool = False  # bind-mount the tree rather than bake a dib layer
    swarm: bool = False  # cells as swarm replicated-job services instead of local containers
    upstream_cache: Path = upstreamdib.DEFAULT_CACHE  # diskimage-builder wheels and trees
    catalogue: Catalogue | None = None  # loaded (and checked) by the caller; else loaded here
    shard: dict[str, Any] | None = None  # this run is a shard (matrix.run.shards.mark)
    bump_from: str | None = None  # the pinned run a bump run (run --bump-from) compares with
    snapshot_store: Path = snapshot_store.DEFAULT_ROOT
    snapshot: Snapshot | None = None  # the pinned snapshot, read once by the command line
    # run --investigate, dib-matrix investigate: the regressions to investigate at the end
    investigation: InvestigationRequest | None = None


class MatrixRun:
    """Owns the results of one run and writes them after every finished cell."""

    def __init__(self, request: RunRequest, client, catalogue: Catalogue):
        self.request = request
        self.client = client
        self.catalogue = catalogue
        self.results = self._initial_results()
        self.run_dir = OutDir(request.out_dir).run(self.results.run_id)
        self.allowance = CauseAllowance()  # allowed-failures naming a cause: see prepare
        self.save_lock = threading.Lock()
        self.stop = threading.Event()
        self.engine_lost: str | None = None  # why, once the engine stopped answering
        self.nodes_lost: list[str] = []  # swarm nodes that left mid-run, and why
        self._lost_lock = threading.Lock()
        self.recorder: provenance.Recorder | None = None  # what each cell depended on

    def _initial_results(self) -> RunResults:
        req = self.request
        if req.resume is not None:
            results = req.resume.results  # the command line's reading: one for the run
            results.interrupted = False
            return results
        results = RunResults(
            run_id=new_run_id(),
            matrix=str(req.config.path),
            hosts=[h.name for h in req.plan.hosts],
            rows=list(req.plan.rows),
            started=now(),
            dib_tree=req.dib_tree.to_json(),
            # The run-time keys of the matrix file (those run can override), as in effect.
            options={key.field: _option_json(getattr(req.config, key.field))
                     for key in OVERRIDES},
        )
        if req.shard:
            results.shard = dict(req.shard)
        if req.bump_from:
            results.repository["bump_from"] = req.bump_from
        for planned in req.plan.cells:
            results.cells.append(Cell(planned.host.name, planned.row, planned.kind,
                                      voting=planned.voting))
        return results

    def done_states(self) -> dict[str, State]:
        """Finished cells a resumed run keeps (hostgen re-checks: cheap when cached). An
        engine error is not a verdict on the build: a resumed run runs that cell again."""
        return {c.id: c.state for c in self.results.cells
                if c.state.is_finished and c.state is not State.ERROR
                and c.kind is not CellKind.HOSTGEN}

    def unfinished(self) -> list[Cell]:
        return [c for c in self.results.cells if c.id not in self.done_states()]

    def lose_node(self, why: str) -> None:
        """A swarm node left: its cells stay pending, the others go on."""
        with self._lost_lock:
            if why not in self.nodes_lost:
                self.nodes_lost.append(why)
                self.results.engine.setdefault("nodes_lost", []).append(f"{now()}: {why}")
                LOG.error("%s: its cells stay pending (finish them with --resume)", why)

    def lose_engine(self, why: str) -> None:
        """The engine stopped answering: no cell can run, none gets a verdict from it."""
        if self.engine_lost is None:
            self.engine_lost = why
            self.results.engine["lost"] = f"{now()}: {why}"
            LOG.error("the container engine stopped answering (%s): the cells not finished "
                      "stay pending", why)
        self.stop.set()

    def judge(self, planned: PlannedCell, report: CellReport) -> CellReport:
        """The verdict stage for one report: its category, from the catalogue alone."""
        if not report.needs_verdict:
            return report
        # A boot row's log is the guest's console, which the boot watcher already read:
        # its evidence line is what names the cause (a guest's own "No space left" or
        # "command not found" says nothing about the image build). An infrastructure
        # error is judged on the engine's (or qemu's) own message, not on what the
        # build had printed before the engine failed.
        own_lines_only = planned.kind is CellKind.BOOT or report.state is State.ERROR
        log = None if own_lines_only else report.log
        # dib measured at the moment it failed; the orchestrator's later look fills gaps.
        measured = {k: v for k, v in _record_free_bytes(report.record).items() if v is not None}
        free = {**report.free_bytes, **measured}
        verdict = classify(Evidence(
            host=planned.host.name, row=planned.row, lines=report.evidence, log=log,
            record=report.record, hint=report.hint, free_bytes=free), self.catalogue)
        return report.replace(category=verdict.category, verdict=verdict.evidence,
                              free_bytes=free)

    def finish(self, planned: PlannedCell, report: CellReport) -> None:
        cell = self.results.cell(planned.host.name, planned.row)
        if cell is None:
            cell = Cell(planned.host.name, planned.row, planned.kind, voting=planned.voting)
            self.results.cells.append(cell)
        self._fill(cell, planned, self.judge(planned, report))
        if planned.kind is CellKind.HOSTGEN and cell.state is State.SUCCESS:
            self._pin_base_image(planned)
        if self.recorder is not None:
            self.recorder.fill(self.results, planned, cell)
        with self.save_lock:
            self.run_dir.save(self.results)
        mark = cell.category.legend if cell.category else (cell.reason or "")
        LOG.info("%-40s %-15s %s", cell.id, cell.state.value, mark)

    def _pin_base_image(self, planned: PlannedCell) -> None:
        """An image host's registry image, by the digest its host image was built from."""
        try:
            pinned = recorded_base(self.client, planned.host, image_names(planned.host).image)
        except (docker.errors.DockerException, requests.RequestException) as err:
            LOG.warning("%s: base image not recorded (%s)", planned.id, err)
            return
        if pinned is not None:
            self.results.base_images[planned.host.name] = pinned

    def _fill(self, cell: Cell, planned: PlannedCell, report: CellReport) -> None:
        cell.state = report.state
        if report.state.is_failure and (not planned.voting or self.allowance.allows(
                cell.host, cell.row, report.category)):
            cell.state = State.ALLOWED_FAILURE
        cell.attempts = report.attempts
        cell.retry = report.retry
        cell.reason = report.reason
        cell.started = report.started
        cell.finished = now()
        cell.duration = report.duration
        log = report.log
        cell.log = self.run_dir.relative(log) if log and log.exists() else None
        cell.reproducer = report.reproducer
        cell.key = report.key
        cell.reused = report.reused
        cell.node = report.node
        cell.artifacts = list(report.artifacts)
        cell.checks = list(report.checks)
        cell.category = report.category
        cell.evidence = report.verdict
        cell.free_bytes = dict(sorted(report.free_bytes.items()))
        cell.excerpt = []  # an earlier attempt's; add_excerpts gives the run's at its end


def _record_free_bytes(record: Mapping[str, Any] | None) -> dict[str, int | None]:
    """Free space dib measured when it failed (``build``, ``output`` filesystems)."""
    free = record.get("free_bytes") if record else None
    if not isinstance(free, dict):
        return {}
    return {str(k): v for k, v in free.items() if isinstance(v, int) or v is None}


def _option_json(value: Any) -> Any:
    """A run option as results.json keeps it (a structured setting as its JSON)."""
    to_json = getattr(value, "to_json", None)
    return to_json() if callable(to_json) else value
