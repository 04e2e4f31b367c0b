"""What an investigation of a regressed cell runs, and what its outcome says: pure.

A voting build cell that passed in the baseline run and fails now is *investigated*:
variants of it run with one input swapped back to its value in the cell's last
success (its last-good, :mod:`results.lastgood`) and everything else as now:

====================  ==========================================  =====================
variant               swaps back                                  passes -> verdict
====================  ==========================================  =====================
``rerun``             nothing: the same inputs again              flaky
``dib-tree``          the dib tree (kept by results.treestore)    dib tree
``host-image``        the host image (its id, while the engine    host image
                      still has it)
``snapshot``          the repository snapshot the last-good run   distribution packages
                      recorded (run pinned to it)
``all``               all of the above that could be swapped,     combination
                      only when none of them alone passed
====================  ==========================================  =====================

No variant passed: ``unexplained``. The first row that passed names the verdict
(a flaky cell says nothing about its inputs). A variant that cannot run says why: no
last-good, the input not recorded, kept no longer, or unchanged since the last-good
(then the rerun already is that variant).

Nothing here touches the engine or a file: :mod:`matrix.run.investigate` gathers the
inputs, runs the variants and records the outcome.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from results.model import Cell, CellKind, RunResults, State

VARIANT_MARK = "--inv-"  # a variant's row: <target>--inv-<variant>, a row name


class Variant(str, enum.Enum):
    RERUN = "rerun"
    DIB_TREE = "dib-tree"
    HOST_IMAGE = "host-image"
    SNAPSHOT = "snapshot"
    ALL = "all"

    def row(self, of_row: str) -> str:
        """The row of this variant of the cell in row ``of_row``."""
        return f"{of_row}{VARIANT_MARK}{self.value}"

    @property
    def verdict(self) -> Verdict:
        """What this variant passing says about the regression."""
        return _VERDICT_OF[self]


class Verdict(str, enum.Enum):
    FLAKY = "flaky"
    DIB_TREE = "dib tree"
    HOST_IMAGE = "host image"
    PACKAGES = "distribution packages"
    COMBINATION = "combination"
    UNEXPLAINED = "unexplained"


_VERDICT_OF = {Variant.RERUN: Verdict.FLAKY, Variant.DIB_TREE: Verdict.DIB_TREE,
               Variant.HOST_IMAGE: Verdict.HOST_IMAGE, Variant.SNAPSHOT: Verdict.PACKAGES,
               Variant.ALL: Verdict.COMBINATION}
SINGLE_SWAPS = (Variant.DIB_TREE, Variant.HOST_IMAGE, Variant.SNAPSHOT)
ORDER = (Variant.RERUN, *SINGLE_SWAPS, Variant.ALL)  # run order, and the verdict's


@dataclass(frozen=True)
class Inputs:
    """The inputs a cell ran with that a variant may swap; None: not known."""

    tree: str | None = None  # dib tree digest
    host_image: str | None = None  # the engine's id of the host image
    snapshot: str | None = None  # the snapshot the run replayed or recorded


@dataclass(frozen=True)
class Available:
    """What the archive still holds of a last-good's inputs."""

    tree: bool = False  # its dib tree is in the tree store
    host_image: bool = False  # its host image is still in the engine
    snapshot: bool = False  # its snapshot is in the snapshot store


@dataclass(frozen=True)
class LastGoodInputs:
    run_id: str
    inputs: Inputs
    available: Available


@dataclass(frozen=True)
class Swap:
    """The inputs one variant runs with in place of the run's (None: the run's own)."""

    tree: str | None = None
    host_image: str | None = None
    snapshot: str | None = None

    def merged(self, other: Swap) -> Swap:
        return Swap(self.tree or other.tree, self.host_image or other.host_image,
                    self.snapshot or other.snapshot)


@dataclass(frozen=True)
class PlannedVariant:
    variant: Variant
    of: str  # the investigated cell's id
    host: str
    row: str  # the variant's own row
    swap: Swap

    @property
    def id(self) -> str:
        return f"{self.host}.{self.row}"


@dataclass(frozen=True)
class Impossible:
    variant: Variant
    why: str


@dataclass(frozen=True)
class CellPlan:
    """The variants of one regressed cell that can run, and those that cannot."""

    cell: str
    host: str
    row: str
    last_good: str | None  # the run of the cell's last success
    singles: tuple[PlannedVariant, ...]  # rerun first, then the one-input swaps
    impossible: tuple[Impossible, ...]

    def combined(self) -> PlannedVariant | Impossible:
        """The ``all`` variant: every input the single swaps change, together."""
        swaps = [v for v in self.singles if v.variant is not Variant.RERUN]
        if len(swaps) < 2:
            return Impossible(Variant.ALL, "fewer than two inputs can be swapped back: "
                                           "the single swaps already are all of them")
        swap = Swap()
        for planned in swaps:
            swap = swap.merged(planned.swap)
        return PlannedVariant(Variant.ALL, self.cell, self.host, Variant.ALL.row(self.row), swap)


# ---------------------------------------------------------------- which cells


def regressed(results: RunResults, baseline: RunResults) -> list[Cell]:
    """Voting build cells of ``results`` that failed where ``baseline`` passed, in the
    run's order (investigation variants are never investigated again)."""
    before = {c.id: c.state for c in baseline.grid_cells()}
    return [c for c in results.grid_cells()
            if c.kind is CellKind.BUILD and c.voting and c.state.is_failure
            and before.get(c.id) is State.SUCCESS]


@dataclass(frozen=True)
class Selection:
    chosen: tuple[Cell, ...]
    over_budget: tuple[str, ...]  # regressed cells left out, by id


def within_budget(cells: Sequence[Cell], budget: int) -> Selection:
    """The first ``budget`` cells; the ids of the rest."""
    budget = max(budget, 0)
    return Selection(tuple(cells[:budget]), tuple(c.id for c in cells[budget:]))


# ---------------------------------------------------------------- which variants


def plan_cell(cell: Cell, now: Inputs, good: LastGoodInputs | None) -> CellPlan:
    """The variants of ``cell`` (which ran with ``now``) against its last-good."""
    rerun = PlannedVariant(Variant.RERUN, cell.id, cell.host, Variant.RERUN.row(cell.row),
                           Swap())
    singles: list[PlannedVariant] = [rerun]
    impossible: list[Impossible] = []
    for variant in SINGLE_SWAPS:
        outcome = _single(variant, cell, now, good)
        (singles if isinstance(outcome, PlannedVariant) else impossible).append(outcome)
    return CellPlan(cell.id, cell.host, cell.row, good.run_id if good else None,
                    tuple(singles), tuple(impossible))


_WHAT = {Variant.DIB_TREE: ("tree", "dib tree", "the tree store"),
         Variant.HOST_IMAGE: ("host_image", "host image", "the engine"),
         Variant.SNAPSHOT: ("snapshot", "repository snapshot", "the snapshot store")}


def _single(variant: Variant, cell: Cell, now: Inputs, good: LastGoodInputs | None
            ) -> PlannedVariant | Impossible:
    field_name, what, where = _WHAT[variant]
    if good is None:
        return Impossible(variant, f"{cell.id} has no last-good: no earlier success to "
                                   f"take its {what} from")
    then = getattr(good.inputs, field_name)
    if then is None:
        why = (f"the last-good run {good.run_id} recorded no snapshot (snapshot: record)"
               if variant is Variant.SNAPSHOT else
               f"the last-good (run {good.run_id}) recorded no {what}")
        return Impossible(variant, why)
    if then == getattr(now, field_name):
        return Impossible(variant, f"the {what} is unchanged since the last-good "
                                   f"(run {good.run_id}): the rerun is this variant")
    if not getattr(good.available, field_name):
        return Impossible(variant, f"the last-good's {what} {then[:19]} is no longer in "
                                   f"{where} (collected)")
    swap = Swap(**{field_name: then})
    return PlannedVariant(variant, cell.id, cell.host, variant.row(cell.row), swap)


# ---------------------------------------------------------------- what it says


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    variant: Variant | None  # the variant whose pass names the verdict


def verdict(passed: Mapping[Variant, bool]) -> Finding:
    """The verdict of the variants' outcomes (``passed``: variant -> it passed)."""
    for variant in ORDER:
        if passed.get(variant):
            return Finding(variant.verdict, variant)
    return Finding(Verdict.UNEXPLAINED, None)


def needs_combined(passed: Mapping[Variant, bool]) -> bool:
    """Whether the ``all`` variant is still to run: nothing alone passed."""
    return not any(passed.get(v) for v in (Variant.RERUN, *SINGLE_SWAPS))


def is_variant_row(row: str) -> bool:
    return any(row.endswith(VARIANT_MARK + v.value) for v in Variant)


def passed_states(states: Iterable[tuple[Variant, State]]) -> dict[Variant, bool]:
    return {variant: state is State.SUCCESS for variant, state in states}
