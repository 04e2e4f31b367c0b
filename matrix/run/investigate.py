"""Investigation runs: prove why a voting cell regressed instead of guessing.

After a run's cells (``run --investigate``), or later on a finished run (``dib-matrix
investigate RUN``, which resumes the run with its hostgen cells only), each voting
build cell that passed in the baseline and fails now, up to the budget, runs again as
variants planned by :mod:`matrix.run.variants`: the same inputs, then each input its
last-good had swapped back (dib tree, host image, snapshot), then all of them together
when none alone passed. A variant is a cell of its own in the same run directory
(row ``<target>--inv-<variant>``, its own log and images; marked ``investigation``,
off the grid, never voting), run by a :class:`CellRunner` whose context differs from
the run's only in what the variant swaps.

A variant whose reuse key an earlier run already has takes that run's verdict instead
of building: only when the run replays a pinned snapshot, since a live mirror's state
is not in the key (a reused success would hide a package change).

The verdict of each investigated cell, with the evidence (the variant that passed and
its log) and every variant that could not run with why, is appended to the run's
``investigations``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import docker
import requests

from matrix.config.dibtree import DibTree, DibTreeError
from matrix.config.schema import match_globs
from matrix.config.snapshotkey import SnapshotSetting
from matrix.hostgen.facts import load_facts
from matrix.run.cellreport import CellReport
from matrix.run.cells import CellRunner
from matrix.run.context import HostRecord, HostRecords, RunContext
from matrix.run.plan import PlannedCell
from matrix.run.repository import RepositoryStage
from matrix.run.reuse import Reusable, index_previous
from matrix.run.variants import (
    Available,
    CellPlan,
    Finding,
    Impossible,
    Inputs,
    LastGoodInputs,
    PlannedVariant,
    Variant,
    needs_combined,
    plan_cell,
    regressed,
    verdict,
    within_budget,
)
from matrix.snapshot.manifest import StoreError
from matrix.snapshot.save import snapshot_for
from matrix.snapshot.store import Store
from results import lastgood, treestore
from results.archive import OutDir, RunDir
from results.lastgood import LastGoodError
from results.model import Cell, CellKind, RunResults, State

LOG = logging.getLogger("dib-matrix")
DEFAULT_BUDGET = 3


class InvestigationError(ValueError):
    """The investigation asked for cannot be made (a glob matching no cell, no baseline)."""


@dataclass(frozen=True)
class InvestigationRequest:
    """What to investigate: up to ``budget`` regressed cells (matching ``globs``, when
    given) against ``baseline`` (None: the run before this one in the output directory).
    ``cells`` is the whole plan by id (a later investigation's run plans hostgen only)."""

    budget: int = DEFAULT_BUDGET
    baseline: RunResults | None = None
    globs: tuple[str, ...] = ()
    cells: Mapping[str, PlannedCell] = field(default_factory=dict)


class Finisher(Protocol):
    """The run a variant's report goes to (``matrixrun.MatrixRun``)."""

    results: RunResults
    run_dir: RunDir

    def finish(self, planned: PlannedCell, report: CellReport) -> None: ...


@dataclass(frozen=True)
class Services:
    """What the investigation's variants share with the run."""

    out: OutDir
    snapshots: Store
    stack: contextlib.ExitStack  # a snapshot variant's repository view lives in it
    upstream_proxy: str | None = None  # the package cache, in front of that view


# ---------------------------------------------------------------- which cells, what baseline


def previous_run(out: OutDir, results: RunResults) -> RunResults | None:
    """The newest readable run in ``out`` that started before ``results`` (a nightly's
    baseline)."""
    for stored in out.runs(exclude=results.run_id, warn=lambda message: LOG.warning(
            "%s", message)):
        before = stored.results
        if before.shard or before.started is None or results.started is None:
            continue
        if before.started < results.started:
            return before
    return None


def check_globs(results: RunResults, globs: Sequence[str]) -> None:
    """Every glob matches a cell of the run (InvestigationError naming the one that does not)."""
    ids = [c.id for c in results.grid_cells()]
    for pattern in globs:
        if not match_globs(ids, pattern):
            raise InvestigationError(f"--cells {pattern!r} matches no cell of run "
                                     f"{results.run_id} (ids are HOST.ROW)")


def chosen_cells(results: RunResults, baseline: RunResults, request: InvestigationRequest
                 ) -> tuple[list[Cell], tuple[str, ...]]:
    """The regressed cells to investigate, and the ids of those over the budget."""
    cells = regressed(results, baseline)
    if request.globs:
        wanted = {i for pattern in request.globs for i in match_globs([c.id for c in cells],
                                                                     pattern)}
        cells = [c for c in cells if c.id in wanted]
    selection = within_budget(cells, request.budget)
    return list(selection.chosen), selection.over_budget


# ---------------------------------------------------------------- what the archive offers


def inputs_now(results: RunResults, cell: Cell) -> Inputs:
    found = lastgood.inputs_of(results, cell)
    return Inputs(found.tree, found.host_image, found.snapshot)


def last_good_inputs(out: OutDir, cell: Cell, client, snapshots: Store) -> LastGoodInputs | None:
    """The cell's last-good and which of its inputs are still kept; None without one."""
    try:
        good = lastgood.read(out, cell.host, cell.row)
    except (OSError, LastGoodError) as err:
        LOG.warning("investigation: last-good of %s unreadable: %s", cell.id, err)
        return None
    if good is None:
        return None
    kept = good.inputs
    available = Available(
        tree=bool(kept.tree) and treestore.stored(out, kept.tree) is not None,
        host_image=bool(kept.host_image) and _image_exists(client, kept.host_image),
        snapshot=bool(kept.snapshot) and _snapshot_exists(snapshots, kept.snapshot))
    return LastGoodInputs(good.run_id, Inputs(kept.tree, kept.host_image, kept.snapshot),
                          available)


def _image_exists(client, image_id: str) -> bool:
    try:
        client.images.get(image_id)
    except (docker.errors.DockerException, requests.RequestException):
        return False
    return True


def _snapshot_exists(snapshots: Store, name: str) -> bool:
    try:
        snapshot_for(snapshots, name)
    except (StoreError, OSError, ValueError):
        return False
    return True


# ---------------------------------------------------------------- running the variants


@dataclass
class Investigator:
    """Runs the variants of the chosen cells in the run ``run`` with the context ``ctx``."""

    run: Finisher
    ctx: RunContext
    services: Services
    cells: Mapping[str, PlannedCell]  # the plan's cells by id
    reusable: Mapping[str, Reusable] | None = None  # earlier cells by key (pinned runs only)
    _trees: dict[str, DibTree] = field(default_factory=dict)
    _repositories: dict[str, RepositoryStage] = field(default_factory=dict)

    def investigate(self, cell: Cell) -> dict:
        """Run the variants of ``cell``; its entry for ``investigations``."""
        started = time.monotonic()
        plan = plan_cell(cell, inputs_now(self.run.results, cell), last_good_inputs(
            self.services.out, cell, self.ctx.client, self.services.snapshots))
        impossible = list(plan.impossible)
        outcomes: dict[Variant, Cell] = {}
        if self._run_singles(plan, outcomes, impossible) and needs_combined(_passes(outcomes)):
            combined = plan.combined()
            if isinstance(combined, Impossible):
                impossible.append(combined)
            else:
                self._try(combined, outcomes, impossible)
        return record(plan, verdict(_passes(outcomes)), outcomes, impossible,
                      time.monotonic() - started, self.run.results)

    def _run_singles(self, plan: CellPlan, outcomes: dict[Variant, Cell],
                     impossible: list[Impossible]) -> bool:
        """The rerun, then (unless it passed: flaky) each one-input swap; whether the
        swaps ran against a failed rerun (only then can a pass name an input)."""
        rerun, *swaps = plan.singles
        self._try(rerun, outcomes, impossible)
        if _passed(outcomes, Variant.RERUN):
            return False  # flaky: what the inputs say no longer matters
        if Variant.RERUN not in outcomes or outcomes[Variant.RERUN].state is State.ERROR:
            # Without the rerun's verdict a swap that passes cannot tell its input from
            # a flaky cell: nothing else runs, the verdict is "unexplained".
            impossible += [Impossible(later.variant, "not run: the rerun gave no verdict "
                                      "(an engine error, or it could not start)")
                           for later in swaps]
            return False
        for planned in swaps:
            self._try(planned, outcomes, impossible)
        return True

    def _try(self, planned: PlannedVariant, outcomes: dict[Variant, Cell],
             impossible: list[Impossible]) -> None:
        try:
            outcomes[planned.variant] = self.run_variant(planned)
        except VariantUnavailable as err:
            impossible.append(Impossible(planned.variant, str(err)))
        except (docker.errors.DockerException, requests.RequestException, OSError) as err:
            # Before its cell started (the old image's facts, the variant's old files):
            # the variant did not run, which is what the investigation says.
            impossible.append(Impossible(planned.variant, f"could not start: {err}"))

    def run_variant(self, planned: PlannedVariant) -> Cell:
        """Run one variant (or take an earlier run's verdict for its key); its cell."""
        original = self.cells.get(planned.of)
        if original is None or original.target is None:
            raise VariantUnavailable(f"{planned.of} is not a build of this run's plan")
        cell_plan = variant_cell(original, planned)
        ctx = self.context_for(planned)
        prepare_cell(self.run.results, self.run.run_dir, planned)
        report = self._reused(ctx, cell_plan) or CellRunner(ctx).execute(cell_plan, 1)
        self.run.finish(cell_plan, report)
        found = self.run.results.cell(planned.host, planned.row)
        assert found is not None  # finish made it
        return found

    def _reused(self, ctx: RunContext, planned: PlannedCell) -> CellReport | None:
        if self.reusable is None or ctx.keys is None:
            return None
        try:
            key = ctx.keys.key(planned, ctx.image_id(planned.host.name))
        except (docker.errors.DockerException, requests.RequestException):
            return None  # the cell runs, and says what the engine lacks
        earlier = self.reusable.get(key) if key else None
        if earlier is None:
            return None
        log = ctx.log_path(planned)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"# dib-matrix: investigation variant: the verdict of "
                       f"{earlier.cell.id} in run {earlier.run_dir.name}, same key "
                       f"{key[:16]}\n", encoding="utf-8")
        state = State.FAILED if earlier.cell.state is State.ALLOWED_FAILURE else earlier.cell.state
        return CellReport(state, reason=f"verdict of run {earlier.run_dir.name}", log=log,
                          key=key, reused=True, category=earlier.cell.category,
                          verdict=earlier.cell.evidence)

    # ------------------------------------------------------------ the variant's context

    def context_for(self, planned: PlannedVariant) -> RunContext:
        """The run's context with what ``planned`` swaps (VariantUnavailable when the
        kept input cannot be had after all)."""
        ctx = self.ctx
        swap = planned.swap
        if swap.tree is not None:
            tree = self._tree(swap.tree)
            ctx = dataclasses.replace(
                ctx, settings=dataclasses.replace(ctx.settings, dib_tree=tree),
                keys=dataclasses.replace(ctx.keys, tree=tree) if ctx.keys else None,
                layers=None)  # the kept tree is bind-mounted, not baked
        if swap.host_image is not None:
            # The old image's own facts: a preflight must judge the image the cell runs on.
            facts = load_facts(self.ctx.client, swap.host_image)
            ctx = dataclasses.replace(
                ctx, hosts=HostRecords({planned.host: HostRecord(swap.host_image, facts)}),
                layers=None)  # the tree is bind-mounted into the old image
        if swap.snapshot is not None:
            stage = self._repository(swap.snapshot)
            base = ctx.settings.extra_env
            ctx = dataclasses.replace(
                ctx, settings=dataclasses.replace(
                    ctx.settings, cell_env=lambda cell_id: stage.cell_env(cell_id, base)),
                keys=dataclasses.replace(ctx.keys, repository=stage.key_part())
                if ctx.keys else None)
        return ctx

    def _tree(self, digest: str) -> DibTree:
        if digest not in self._trees:
            path = treestore.stored(self.services.out, digest)
            if path is None:
                raise VariantUnavailable(f"the kept dib tree {digest[:16]} is gone")
            try:
                tree = DibTree.read(path, named="the last-good's kept dib tree")
            except DibTreeError as err:
                raise VariantUnavailable(str(err)) from err
            if tree.digest != digest:
                raise VariantUnavailable(f"the kept dib tree {digest[:16]} was changed "
                                         f"since it was kept (its digest is now "
                                         f"{tree.digest[:16]})")
            self._trees[digest] = tree
        return self._trees[digest]

    def _repository(self, name: str) -> RepositoryStage:
        """A repository view replaying snapshot ``name``, started once for the run."""
        if name not in self._repositories:
            store = self.services.snapshots
            try:
                snapshot = snapshot_for(store, name)
                self._repositories[name] = RepositoryStage.start(
                    SnapshotSetting(pinned=name), store, snapshot, self.services.upstream_proxy,
                    self.run.run_dir.path / "logs" / f"repository-inv-{name}.log",
                    self.services.stack)
            except (StoreError, OSError, ValueError) as err:
                raise VariantUnavailable(f"snapshot {name} cannot be replayed: {err}") from err
        return self._repositories[name]


class VariantUnavailable(RuntimeError):
    """A variant planned as possible that cannot run after all; the message says why."""


def _passes(outcomes: Mapping[Variant, Cell]) -> dict[Variant, bool]:
    return {variant: cell.state is State.SUCCESS for variant, cell in outcomes.items()}


def _passed(outcomes: Mapping[Variant, Cell], variant: Variant) -> bool:
    cell = outcomes.get(variant)
    return cell is not None and cell.state is State.SUCCESS


def variant_cell(original: PlannedCell, planned: PlannedVariant) -> PlannedCell:
    """The planned cell of a variant: the original build under the variant's row (its
    own log, its own images: the target is named after the row), needing nothing."""
    assert original.target is not None
    return dataclasses.replace(original, row=planned.row, needs=(),
                               target=dataclasses.replace(original.target, name=planned.row))


def prepare_cell(results: RunResults, run_dir: RunDir, planned: PlannedVariant) -> None:
    """The variant's cell in the results, marked, not voting, its earlier files gone (an
    investigation made again replaces the earlier one's variants)."""
    mark = {"of": planned.of, "variant": planned.variant.value}
    cell = results.cell(planned.host, planned.row)
    if cell is None:
        cell = Cell(planned.host, planned.row, CellKind.BUILD, voting=False, investigation=mark)
        results.cells.append(cell)
    cell.investigation, cell.voting, cell.state = mark, False, State.PENDING
    run_dir.log(planned.host, planned.row).unlink(missing_ok=True)
    for leftover in run_dir.image_files(planned.host, planned.row):
        leftover.unlink(missing_ok=True)


def record(plan: CellPlan, finding: Finding, outcomes: Mapping[Variant, Cell],
           impossible: Sequence[Impossible], seconds: float, results: RunResults) -> dict:
    """The ``investigations`` entry of one investigated cell."""
    passed = outcomes.get(finding.variant) if finding.variant else None
    evidence = (f"variant {finding.variant.value} passed ({passed.id}, log {passed.log})"
                if finding.variant is not None and passed is not None
                else "no variant passed")
    return {
        "cell": plan.cell, "verdict": finding.verdict.value, "evidence": evidence,
        "baseline": None, "last_good": plan.last_good, "seconds": round(seconds, 1),
        "variants": [{"variant": v.value, "cell": c.id, "state": c.state.value, "log": c.log,
                      "reused": c.reused} for v, c in outcomes.items()],
        "impossible": [{"variant": i.variant.value, "why": i.why} for i in impossible],
    }


def investigate_run(run: Finisher, ctx: RunContext, services: Services,
                    request: InvestigationRequest,
                    plan_cells: Mapping[str, PlannedCell]) -> list[dict]:
    """Investigate the regressed cells of ``run`` (see the module's text); the entries
    added to its results' ``investigations`` (saved by the variants' ``finish``)."""
    results = run.results
    baseline = request.baseline or previous_run(services.out, results)
    if baseline is None:
        LOG.info("investigation: no baseline (no earlier run in %s): nothing to investigate",
                 services.out.path)
        return []
    chosen, over = chosen_cells(results, baseline, request)
    if over:
        LOG.info("investigation: budget of %d cells: not investigated: %s", request.budget,
                 ", ".join(over))
    if not chosen:
        LOG.info("investigation: no voting cell regressed against run %s", baseline.run_id)
        return []
    reusable = (index_previous(services.out.path, results.run_id)
                if ctx.keys is not None and ctx.keys.repository != "live" else None)
    # The scheduler stopped when the run's cells were done: the variants get a stop of
    # their own (a set one would cancel each as it starts).
    ctx = dataclasses.replace(ctx, stop=threading.Event())
    investigator = Investigator(run, ctx, services, {**plan_cells, **request.cells}, reusable)
    entries = []
    for cell in chosen:
        LOG.info("investigation of %s (regressed against run %s)", cell.id, baseline.run_id)
        entry = investigator.investigate(cell)
        entry["baseline"] = baseline.run_id
        entries.append(entry)
        results.investigations[:] = [e for e in results.investigations
                                     if e.get("cell") != cell.id] + [entry]
        run.run_dir.save(results)
        LOG.info("investigation of %s: %s (%s)", cell.id, entry["verdict"], entry["evidence"])
    return entries

