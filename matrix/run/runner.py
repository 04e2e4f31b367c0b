"""One run of a matrix: results directory, cells, classification, saving, interruption."""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import logging
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests

from dib import spawn
from dib.mirror import MirrorNotFound, find_mirror, find_security_mirror
from matrix.config import upstreamdib
from matrix.config.matrixfile import OVERRIDES, MatrixConfig
from matrix.containers import engine, leases, swarm
from matrix.hostgen.build import recorded_base
from matrix.hostgen.diblayer import LayerBaker, bundled_tree
from matrix.hostgen.hostimage import host_objects, image_names
from matrix.hostgen.pkgcache import PackageCache, PackageCacheError
from matrix.run import provenance
from matrix.run.cellreport import CellReport
from matrix.run.cells import CellRunner
from matrix.run.context import HostRecords, RunContext, RunSettings
from matrix.run.plan import Plan, PlannedCell
from matrix.run.progress import RunObserver, observed
from matrix.run.reuse import KeyMaker, index_previous
from matrix.run.scheduler import Scheduler
from matrix.verdict.catalogue import Catalogue, load_catalogue
from matrix.verdict.classify import Evidence, classify
from results.model import Cell, CellKind, RunResults, State, load, save

LOG = logging.getLogger("dib-matrix")
DEFAULT_PACKAGE_CACHE = Path.home() / ".cache" / "dib-matrix" / "apt-cacher-ng"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


def tree_info(path: Path) -> dict[str, object]:
    """Which dib tree runs: its path and, in a git checkout, the commit and dirtiness."""
    info: dict[str, object] = {"path": str(path.resolve())}
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--",
                                 "dib", "elements"], check=True, capture_output=True,
                                text=True, timeout=10).stdout
        info.update(commit=commit, dirty=bool(status.strip()))
    except (OSError, subprocess.SubprocessError):
        info.update(commit=None, dirty=None)
    return info


UPSTREAM_UNAVAILABLE = "upstream elements unavailable: "  # the catalogue's pattern


def upstream_versions(plan: Plan) -> list[str]:
    """diskimage-builder releases whose element trees the plan's builds use."""
    return sorted({c.target.upstream_elements for c in plan.cells
                   if c.kind is CellKind.BUILD and c.target is not None
                   and c.target.upstream_elements and c.excluded is None})


def prepare_upstream(versions: list[str], cache: Path = upstreamdib.DEFAULT_CACHE
                     ) -> tuple[dict[str, Path], dict[str, str]]:
    """Each release's element tree (fetched and extracted once, cached across runs), and
    for the ones that could not be had, the line their cells fail with."""
    trees: dict[str, Path] = {}
    failures: dict[str, str] = {}
    for version in versions:
        started = time.monotonic()
        try:
            trees[version] = upstreamdib.elements_dir(cache, version=version)
        except (upstreamdib.UpstreamError, OSError) as err:
            failures[version] = f"{UPSTREAM_UNAVAILABLE}diskimage-builder {version}: {err}"
            LOG.error("%s", failures[version])
            continue
        LOG.info("diskimage-builder %s elements: %s (%.1f s)", version, trees[version],
                 time.monotonic() - started)
    return trees, failures


def check_dib_tree(path: Path) -> Path:
    if not (path / "dib" / "__main__.py").is_file() or not (path / "elements").is_dir():
        raise ValueError(f"--dib-tree {path}: no dib/ package and elements/ directory there")
    return path.resolve()


@dataclass(frozen=True)
class RunRequest:
    config: MatrixConfig
    plan: Plan
    out_dir: Path
    dib_tree: Path = field(default_factory=bundled_tree)  # a checkout, or assembled
    resume: Path | None = None
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


class MatrixRun:
    """Owns the results of one run and writes them after every finished cell."""

    def __init__(self, request: RunRequest, client, catalogue: Catalogue):
        self.request = request
        self.client = client
        self.catalogue = catalogue
        self.results = self._initial_results()
        self.run_dir = request.out_dir / self.results.run_id
        self.save_lock = threading.Lock()
        self.stop = threading.Event()
        self.engine_lost: str | None = None  # why, once the engine stopped answering
        self.recorder: provenance.Recorder | None = None  # what each cell depended on

    def _initial_results(self) -> RunResults:
        req = self.request
        if req.resume is not None:
            results = load(req.resume)
            results.interrupted = False
            return results
        results = RunResults(
            run_id=new_run_id(),
            matrix=str(req.config.path),
            hosts=[h.name for h in req.plan.hosts],
            rows=list(req.plan.rows),
            started=now(),
            dib_tree=tree_info(req.dib_tree),
            # The run-time keys of the matrix file (those run can override), as in effect.
            options={key.field: getattr(req.config, key.field) for key in OVERRIDES},
        )
        if req.shard:
            results.shard = dict(req.shard)
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
            save(self.results, self.run_dir)
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
        if report.state.is_failure and not planned.voting:
            cell.state = State.ALLOWED_FAILURE
        cell.attempts = report.attempts
        cell.reason = report.reason
        cell.started = report.started
        cell.finished = now()
        cell.duration = report.duration
        log = report.log
        cell.log = str(log.relative_to(self.run_dir)) if log and log.exists() else None
        cell.reproducer = report.reproducer
        cell.key = report.key
        cell.reused = report.reused
        cell.artifacts = list(report.artifacts)
        cell.checks = list(report.checks)
        cell.category = report.category
        cell.evidence = report.verdict
        cell.free_bytes = dict(sorted(report.free_bytes.items()))


def _record_free_bytes(record: Mapping[str, Any] | None) -> dict[str, int | None]:
    """Free space dib measured when it failed (``build``, ``output`` filesystems)."""
    free = record.get("free_bytes") if record else None
    if not isinstance(free, dict):
        return {}
    return {str(k): v for k, v in free.items() if isinstance(v, int) or v is None}


def execute(request: RunRequest, client, on_start: Callable[[MatrixRun], None] | None = None,
            observer: RunObserver | None = None) -> MatrixRun:
    """Run every cell of the plan; KeyboardInterrupt propagates after cleaning up."""
    catalogue = request.catalogue or load_catalogue(request.config.categories
                                                    + request.extra_categories)
    run = MatrixRun(request, client, catalogue)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    # Another run's prune or `clean` keeps what this run uses while it lives.
    lease = leases.RunLease(run.results.run_id)
    lease.hold(*host_objects(request.plan.hosts))
    try:
        mirror: str | None = find_mirror("debian")
    except MirrorNotFound:
        mirror = None
    hosts = HostRecords()
    reusable = (index_previous(request.out_dir, run.results.run_id, request.reuse_failures)
                if request.reuse else None)
    run.results.engine = {**_engine_info(client), "cells": "swarm" if request.swarm else "local"}
    upstream_failures: dict[str, str] = {}  # version -> the line its cells fail with

    def prepared(stack: contextlib.ExitStack) -> tuple[RunContext, PackageCache | None]:
        """The run's context, once what every cell shares is in place: the upstream
        element trees (before any cell, so every cell of a release sees the same tree)
        and the package cache."""
        trees: dict[str, Path] = {}
        security_mirror = None
        versions = upstream_versions(request.plan)
        if versions:
            trees, failures = prepare_upstream(versions, request.upstream_cache)
            upstream_failures.update(failures)
            security_mirror = find_security_mirror()
        package_cache = _start_package_cache(request.package_cache, stack)
        settings = RunSettings(
            config=request.config, run_id=run.results.run_id, run_dir=run.run_dir,
            dib_tree=request.dib_tree, mirror=mirror, rebuild_hosts=request.rebuild_hosts,
            extra_env=package_cache.environment() if package_cache is not None else {},
            upstream_elements=trees, security_mirror=security_mirror)
        ctx = RunContext(
            settings, client, hosts, stop=run.stop,
            keys=KeyMaker(request.dib_tree, upstream_elements=dict(trees)), reusable=reusable,
            layers=None if request.dib_mount else LayerBaker(request.dib_tree, lease=lease),
            run_cell=swarm.run_cell if request.swarm else engine.run_cell)
        return ctx, package_cache

    def stop_everything() -> None:
        _remove_run_objects(client, run.results.run_id)
        spawn.stop_all()  # a hostgen's debootstrap, the package cache

    def execute(cell: PlannedCell, attempt: int) -> CellReport:
        if observer is not None:
            observer.cell_started(cell.id, cell.kind, attempt)
        version = cell.target.upstream_elements if cell.target else None
        if cell.kind is CellKind.BUILD and version in upstream_failures:
            log = cells.ctx.log_path(cell)
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a", encoding="utf-8") as stream:
                stream.write(upstream_failures[version] + "\n")
            return run.judge(cell, CellReport(State.FAILED, (upstream_failures[version],),
                                              log=log))
        report = cells.execute(cell, attempt)
        if report.state is State.ERROR and not _engine_answers(client):
            run.lose_engine(report.evidence[0] if report.evidence else "no answer")
            return report  # the scheduler, stopped, records it as pending
        # Judged in the cell's own worker thread: a slow log never stalls the others.
        return run.judge(cell, report)

    if request.resume is not None:
        _clear_what_a_dead_run_left(run, client)

    finish = observed(run.finish, run.results, observer)
    scheduler = Scheduler(list(request.plan.cells), execute, finish,
                          max_parallel=request.config.max_parallel,
                          retries=request.config.retries, fail_fast=request.config.fail_fast,
                          done=run.done_states(), stop=run.stop, on_stop=stop_everything)
    try:
        with contextlib.ExitStack() as stack:
            save(run.results, run.run_dir)
            _point_latest(request.out_dir, run.results.run_id)
            if on_start:
                on_start(run)
            ctx, package_cache = prepared(stack)
            cells = CellRunner(ctx)  # what execute() above calls; no cell starts before
            run.recorder = provenance.start(ctx, request.plan, run.results)
            scheduler.run()
            if package_cache is not None:
                stats = package_cache.stats()
                run.results.engine["package_cache"] = {
                    "proxy": package_cache.proxy_url, "bytes_from_upstream":
                    stats.bytes_from_upstream, "bytes_served": stats.bytes_served}
    except KeyboardInterrupt:
        run.results.interrupted = True
        raise
    finally:
        run.results.host_images = hosts.images()
        run.results.finished = now()
        if scheduler.failed_fast:
            for cell in run.results.cells:
                if cell.state is State.PENDING:
                    cell.state, cell.reason = State.SKIPPED, "cancelled by fail-fast"
        run.results.interrupted = run.results.interrupted or run.engine_lost is not None
        save(run.results, run.run_dir)
        _remove_run_objects(client, run.results.run_id)
        lease.release()
    return run


# Pings, a second apart, after a cell ended in an engine error. A daemon that is
# shutting down first stops its containers (breaking their streams) and answers until
# they are gone: up to dockerd's shutdown-timeout, 15 s by default, so the engine only
# counts as answering when it still does after that.
ENGINE_CHECKS = 16
ENGINE_CHECK_PAUSE = 1.0


def _engine_answers(client, checks: int = ENGINE_CHECKS, pause: float = ENGINE_CHECK_PAUSE
                    ) -> bool:
    """Whether the engine keeps answering (asked after a cell ended in an engine error)."""
    for check in range(checks):
        if check:
            time.sleep(pause)
        try:
            if not client.ping():
                return False
        except (docker.errors.DockerException, requests.RequestException):
            return False
    return True


def _remove_run_objects(client, run_id: str) -> None:
    """Remove the run's containers, services and volumes; an engine that is gone has
    nothing left to remove (and must not turn a finished run into a crash)."""
    try:
        engine.remove_run_objects(client, run_id)
    except (docker.errors.DockerException, requests.RequestException) as err:
        LOG.warning("could not remove this run's engine objects (%s)", err)


def _clear_what_a_dead_run_left(run: MatrixRun, client) -> None:
    """Before a resume: the containers a killed orchestrator left running (same names as
    the cells about to start), and the images of the cells that did not finish."""
    removed = engine.remove_run_objects(client, run.results.run_id)
    if removed.containers or removed.services or removed.volumes:
        LOG.info("resume: removed what the earlier run left on the engine (%d containers, "
                 "%d services, %d volumes)", removed.containers, removed.services,
                 removed.volumes)
    for cell in run.unfinished():
        if cell.kind is CellKind.BUILD:
            images = run.run_dir / "images" / cell.host
            for leftover in images.glob(f"{glob.escape(cell.row)}.*"):
                leftover.unlink(missing_ok=True)


def _start_package_cache(cache_dir: Path | None, stack: contextlib.ExitStack
                         ) -> PackageCache | None:
    """The shared apt-cacher-ng for this run's cells; a run goes on without one."""
    if cache_dir is None:
        return None
    try:
        cache = stack.enter_context(PackageCache.start(cache_dir))
    except PackageCacheError as err:
        LOG.warning("no shared package cache (%s); cells download directly", err)
        return None
    LOG.info("shared package cache at %s (%s)", cache.proxy_url, cache_dir)
    return cache


def _engine_info(client) -> dict[str, object]:
    try:
        version = client.version()
    except Exception:  # noqa: BLE001 - informational only
        return {}
    return {"version": version.get("Version"), "api": version.get("ApiVersion"),
            "docker_host": os.environ.get("DOCKER_HOST", "local socket")}


def _point_latest(out_dir: Path, run_id: str) -> None:
    link = out_dir / "latest"
    temp = out_dir / f".latest-{run_id}"
    temp.unlink(missing_ok=True)
    temp.symlink_to(run_id)
    os.replace(temp, link)
