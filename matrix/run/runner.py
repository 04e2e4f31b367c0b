"""One run of a matrix, stage by stage (:class:`Execution`): services, scheduling, the
end of the run whatever happened. The run's results are :mod:`matrix.run.matrixrun`'s."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
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
from matrix.config.matrixfile import MatrixConfig
from matrix.config.registryname import RegistryError
from matrix.containers import engine, leases, swarm
from matrix.containers.upload import UploadError
from matrix.hostgen.diblayer import LayerBaker
from matrix.hostgen.hostimage import host_objects
from matrix.hostgen.pkgcache import PackageCache, PackageCacheError
from matrix.run import provenance
from matrix.run.archiving import archive_run
from matrix.run.cellreport import CellReport
from matrix.run.cells import CellRunner
from matrix.run.cluster import Cluster, ClusterError
from matrix.run.context import HostRecords, RunContext, RunSettings
from matrix.run.estimates import past_durations, past_nodes
from matrix.run.investigate import Services, investigate_run
from matrix.run.lastgoodimages import keep_host_images
from matrix.run.matrixrun import MatrixRun, RunRequest, now
from matrix.run.plan import Plan, PlannedCell
from matrix.run.progress import RunObserver, observed
from matrix.run.repository import LOOPBACK, RepositoryStage, suites_to_pin
from matrix.run.retry import RetryPolicy
from matrix.run.reuse import KeyMaker, Reusable, index_previous
from matrix.run.scheduler import Scheduler
from matrix.snapshot import store as snapshot_store
from matrix.verdict.catalogue import Catalogue, load_catalogue
from matrix.verdict.excerpt import add_excerpts
from matrix.verdict.lifecycle import CauseAllowance, cause_allowance
from results import occurrences
from results.archive import OutDir
from results.model import CellKind, State
from results.paths import UnsafeOutput

LOG = logging.getLogger("dib-matrix")


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


def execute(request: RunRequest, client, on_start: Callable[[MatrixRun], None] | None = None,
            observer: RunObserver | None = None) -> MatrixRun:
    """Run every cell of the plan, stage after stage (:class:`Execution`); whatever
    happens, the run is finalised. KeyboardInterrupt propagates after cleaning up."""
    execution = Execution.prepare(request, client, observer)
    try:
        with contextlib.ExitStack() as stack:  # the package cache stops before finalise
            execution.announce(on_start)
            cells, package_cache = execution.services(stack)
            execution.schedule(cells)
            execution.add_excerpts()
            occurrences.record_run(request.out_dir, execution.run.results)
            execution.record_package_cache(package_cache)
            execution.record_repository()
            execution.investigate(cells, package_cache, stack)
    except KeyboardInterrupt:
        execution.run.results.interrupted = True
        raise
    finally:
        execution.finalise()
    return execution.run


@dataclass
class Execution:
    """One run of a plan, in the stages :func:`execute` calls in order:

    1. ``prepare``: the results and their directory, a lease on the host objects the
       run uses, the machine's mirror, the reuse index; a resumed run's leftovers gone;
    2. ``announce``: results.json with every cell pending, ``latest``, the caller told;
    3. ``services``: what every cell shares, in place before the first one starts;
    4. ``schedule``: every cell (``run_cell`` in the scheduler's workers), then the
       excerpts of failures without a precise cause and the package cache's figures;
    5. ``finalise``, whatever happened: the run's end saved, its successes recorded
       as last-good cells and the retention applied (``matrix.run.archiving``), its
       engine objects removed, its lease released.
    """

    request: RunRequest
    client: Any
    observer: RunObserver | None
    run: MatrixRun
    lease: leases.RunLease
    mirror: str | None  # the machine's Debian mirror
    reusable: Mapping[str, Reusable] | None  # earlier cells by key, with --reuse
    hosts: HostRecords = field(default_factory=HostRecords)
    upstream_failures: dict[str, str] = field(default_factory=dict)  # version -> its line
    repository: RepositoryStage | None = None  # the run's repository view, once started
    cluster: Cluster | None = None  # a multi-node swarm's services, once started
    scheduler: Scheduler | None = None  # once the cells are scheduled

    @classmethod
    def prepare(cls, request: RunRequest, client, observer: RunObserver | None) -> Execution:
        catalogue = request.catalogue or load_catalogue(request.config.categories
                                                        + request.extra_categories)
        run = MatrixRun(request, client, catalogue)
        run.allowance = allowance_of(request.config, catalogue)
        run.run_dir.create()
        # Another run's prune or `clean` keeps what this run uses while it lives.
        lease = leases.RunLease(run.results.run_id)
        lease.hold(*host_objects(request.plan.hosts))
        mirror = _machine_mirror()
        reusable = (index_previous(request.out_dir, run.results.run_id, request.reuse_failures)
                    if request.reuse else None)
        run.results.engine = {**_engine_info(client),
                              "cells": "swarm" if request.swarm else "local"}
        if request.resume is not None:
            _clear_what_a_dead_run_left(run, client)
        return cls(request, client, observer, run, lease, mirror, reusable)

    def announce(self, on_start: Callable[[MatrixRun], None] | None) -> None:
        self.run.run_dir.save(self.run.results)
        point_latest(OutDir(self.request.out_dir), self.run.results.run_id)
        if on_start:
            on_start(self.run)

    def services(self, stack: contextlib.ExitStack) -> tuple[CellRunner, PackageCache | None]:
        """The upstream element trees (before any cell, so every cell of a release sees
        the same tree), the package cache, and the cells' context and recorder."""
        trees: dict[str, Path] = {}
        security_mirror = None
        versions = upstream_versions(self.request.plan)
        if versions:
            trees, self.upstream_failures = prepare_upstream(versions, self.request.upstream_cache)
            security_mirror = find_security_mirror()
        package_cache = _start_package_cache(self.request.package_cache, stack)
        self.cluster = self._cluster(stack)
        self.repository = self._repository(package_cache, stack)
        ctx = self._context(trees, security_mirror, package_cache)
        self.run.recorder = provenance.start(ctx, self.request.plan, self.run.results,
                                             repositories=self.repository.cell_record)
        if self.run.recorder is not None:
            self.repository.pin(suites_to_pin(self.request.plan, ctx.settings.mirror,
                                              self.run.recorder.suite))
        self.run.results.repository.update(self.repository.run_record())
        return CellRunner(ctx), package_cache

    def _repository(self, package_cache: PackageCache | None, stack: contextlib.ExitStack
                    ) -> RepositoryStage:
        """The run's repository view, in front of the package cache."""
        request = self.request
        return RepositoryStage.start(
            request.config.snapshot, snapshot_store.Store(request.snapshot_store),
            request.snapshot, package_cache.proxy_url if package_cache else None,
            self.run.run_dir.path / "logs" / "repository.log", stack,
            bind=self.cluster.address if self.cluster else LOOPBACK)

    def _cluster(self, stack: contextlib.ExitStack) -> Cluster | None:
        """A multi-node swarm's registry, upload endpoint and node pool (None otherwise)."""
        if not self.request.swarm:
            return None
        config = self.request.config
        try:
            cluster = Cluster.start(
                self.client, run_id=self.run.results.run_id, max_parallel=config.max_parallel,
                max_per_node=config.max_per_node,
                registry=config.registry, shared_results=config.shared_results,
                work=self.run.run_dir.path / "logs" / "registry", stop=self.run.stop,
                stack=stack)
        except (RegistryError, UploadError, engine.EngineError) as err:
            raise ClusterError(f"the swarm's services did not start: {err}") from err
        if cluster is not None:
            self.run.results.engine["nodes"] = [n.hostname for n in cluster.pool.nodes]
            cluster.previous_nodes = past_nodes(
                self.request.out_dir, (c.id for c in self.request.plan.cells),
                exclude=self.run.results.run_id)
        return cluster

    def record_repository(self) -> None:
        """The repository state the run's cells saw: results.json's block, the run's
        repository.json, and with ``snapshot: record`` a snapshot of it."""
        if self.repository is None:
            return
        results = self.run.results
        results.repository.update(self.repository.run_record())
        try:
            self.repository.write_state(self.run.run_dir.path)
        except OSError as err:
            LOG.warning("repository state not written: %s", err)
            return
        if self.request.config.snapshot.record:
            plan = self.request.plan
            self.repository.complete_indices(
                {"amd64"} | {t.arch for t in self.request.config.targets},
                {"main"} | {c for h in plan.hosts for c in getattr(h.base, "components", ())})
            self.repository.write_state(self.run.run_dir.path)
        cache = self.request.package_cache
        self.repository.record_snapshot(results, self.run.run_dir.path,
                                        cache / "cache" if cache else None)

    def _context(self, trees: dict[str, Path], security_mirror: str | None,
                 package_cache: PackageCache | None) -> RunContext:
        request = self.request
        service = request.config.snapshot.service
        extra_env = package_cache.environment() if package_cache is not None else {}
        repository = self.repository
        settings = RunSettings(
            config=request.config, run_id=self.run.results.run_id, run_dir=self.run.run_dir.path,
            dib_tree=request.dib_tree, mirror=service.mirror if service else self.mirror,
            rebuild_hosts=request.rebuild_hosts, extra_env=extra_env,
            cell_env=(None if repository is None
                      else lambda cell_id: repository.cell_env(cell_id, extra_env)),
            upstream_elements=trees, security_mirror=security_mirror)
        return RunContext(
            settings, self.client, self.hosts, stop=self.run.stop,
            keys=KeyMaker(request.dib_tree, upstream_elements=dict(trees),
                          repository=repository.key_part() if repository else "live"),
            reusable=self.reusable,
            layers=None if request.dib_mount else LayerBaker(request.dib_tree, lease=self.lease),
            run_cell=(self.cluster.launch if self.cluster else
                      swarm.run_cell if request.swarm else engine.run_cell),
            cluster=self.cluster)

    def schedule(self, cells: CellRunner) -> None:
        config = self.request.config
        self.scheduler = Scheduler(
            list(self.request.plan.cells), functools.partial(self.run_cell, cells),
            observed(self.run.finish, self.run.results, self.observer),
            max_parallel=config.max_parallel, decide=self.retry_policy().decide,
            fail_fast=config.fail_fast, done=self.run.done_states(), stop=self.run.stop,
            on_stop=self.stop_everything,
            estimates=past_durations(self.request.out_dir,
                                     (c.id for c in self.request.plan.cells),
                                     exclude=self.run.results.run_id))
        self.scheduler.run()

    def retry_policy(self) -> RetryPolicy:
        """The matrix's retries, for the causes the run's catalogue says a retry can fix."""
        config = self.request.config
        return RetryPolicy(retries=config.retries, delay=config.retry_delay,
                           retryable=self.run.catalogue.retry_ids())

    def run_cell(self, cells: CellRunner, cell: PlannedCell, attempt: int) -> CellReport:
        """One attempt at ``cell``, judged in its own worker thread (a slow log never
        stalls the others)."""
        if self.observer is not None:
            self.observer.cell_started(cell.id, cell.kind, attempt)
        version = cell.target.upstream_elements if cell.target else None
        if cell.kind is CellKind.BUILD and version in self.upstream_failures:
            return self._fail_without_upstream(cells, cell, self.upstream_failures[version])
        report = cells.execute(cell, attempt)
        if report.state is State.PENDING:  # its swarm node left: no verdict
            self.run.lose_node(report.reason or "a swarm node left")
            return report
        if report.state is State.ERROR and not _engine_answers(self.client):
            self.run.lose_engine(report.evidence[0] if report.evidence else "no answer")
            return report  # the scheduler, stopped, records it as pending
        return self.run.judge(cell, report)

    def investigate(self, cells: CellRunner, package_cache: PackageCache | None,
                    stack: contextlib.ExitStack) -> None:
        """The last stage, when asked: variants of the voting cells that regressed
        (``matrix.run.investigate``), in the services the cells had."""
        wanted = self.request.investigation
        failed_fast = self.scheduler is not None and self.scheduler.failed_fast
        if wanted is None or failed_fast or self.run.engine_lost is not None:
            return
        services = Services(OutDir(self.request.out_dir),
                            snapshot_store.Store(self.request.snapshot_store), stack,
                            package_cache.proxy_url if package_cache else None)
        investigate_run(self.run, cells.ctx, services, wanted, self.request.plan.by_id())

    def _fail_without_upstream(self, cells: CellRunner, cell: PlannedCell, line: str
                               ) -> CellReport:
        """A build of a diskimage-builder release that could not be had: that line, in
        its log too."""
        log = cells.ctx.log_path(cell)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as stream:
            stream.write(line + "\n")
        return self.run.judge(cell, CellReport(State.FAILED, (line,), log=log))

    def stop_everything(self) -> None:
        """Fail-fast: the cells still running stop."""
        if self.cluster is not None:  # cells on other nodes stop at their token's end
            self.cluster.stop_cells(self.client, self.run.results.run_id)
        _remove_run_objects(self.client, self.run.results.run_id)
        spawn.stop_all()  # a hostgen's debootstrap, the package cache

    def add_excerpts(self) -> None:
        """The verdict stage's last step, once every row's successes are known."""
        excerpted = add_excerpts(self.run.results, self.run.run_dir.path,
                                 generic=self.run.catalogue.generic_ids())
        if excerpted:
            LOG.info("%d failures without a precise cause: excerpt of their logs "
                     "against successful ones in results.json", excerpted)

    def record_package_cache(self, package_cache: PackageCache | None) -> None:
        if package_cache is not None:
            stats = package_cache.stats()
            self.run.results.engine["package_cache"] = {
                "proxy": package_cache.proxy_url, "bytes_from_upstream":
                stats.bytes_from_upstream, "bytes_served": stats.bytes_served}

    def finalise(self) -> None:
        results = self.run.results
        results.host_images = self.hosts.images()
        results.finished = now()
        if self.scheduler is not None and self.scheduler.failed_fast:
            for cell in results.cells:
                if cell.state is State.PENDING:
                    cell.state, cell.reason = State.SKIPPED, "cancelled by fail-fast"
        results.interrupted = results.interrupted or self.run.engine_lost is not None
        self.run.run_dir.save(results)
        # Successes become last-good cells, then the matrix's retention: the run itself
        # and every live one stay (its lease is still held here).
        archive_run(self.request.out_dir, results, self.request.config.retention,
                    snapshot_root=self.request.snapshot_store, tree=self.request.dib_tree)
        if self.client is not None:  # None: a run without an engine (tests, dry runs)
            keep_host_images(self.client, OutDir(self.request.out_dir), results.hosts)
        _remove_run_objects(self.client, results.run_id)
        self.lease.release()


def allowance_of(config: MatrixConfig, catalogue: Catalogue) -> CauseAllowance:
    """The allowed-failures rules naming a cause, judged on the day the run starts; an
    expired entry's rule is said once, in one warning line."""
    allowance = cause_allowance(config.allowed_failures, catalogue,
                                dt.datetime.now(dt.timezone.utc).date())
    warning = allowance.warning()
    if warning:
        LOG.warning("%s", warning)
    return allowance


def point_latest(out: OutDir, run_id: str) -> None:
    """``latest`` -> ``run_id``; a file or directory in the link's place is the user's,
    so the run goes on without the link (said once)."""
    try:
        out.point_latest(run_id)
    except UnsafeOutput as err:
        LOG.warning("%s", err)


def _machine_mirror() -> str | None:
    """The Debian mirror of this machine's apt sources; None when it has none."""
    try:
        return find_mirror("debian")
    except MirrorNotFound:
        return None


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
            for leftover in run.run_dir.image_files(cell.host, cell.row):
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
