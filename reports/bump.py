"""A bump run read against the run it bumps from: what the distribution changed.

``dib-matrix run --bump-from RUN`` builds against the live mirror (or a newer snapshot)
and reads RUN, a pinned run, as its baseline. Per cell present in both runs with a
package list on both sides (``provenance.packages``, dib's manifest of the image): the
packages added, removed and changed in version, with counts. Regressions come with what
differs for the cell, the package diff first. A failure whose cause is the mirror, the
network or the engine (a catalogue entry marked ``infrastructure: true``, an engine
error, or a cell skipped because such a failure stopped its prerequisite) says nothing
about the distribution: it is listed as infrastructure and never fails a bump run's gate.

Pure functions over two ``RunResults``; :func:`render_bump_markdown` is sized to be the
body of a "bump the snapshot" review (at most MAX_CHARS, every list elided with
"... N more"), every value from a run escaped.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from reports.attribution import Attribution, Factor, cause_words, names_package
from reports.compare import CellDiff, Comparison, compare, describe
from reports.legend import grid_order
from reports.markdown import MAX_CHARS, code, escape
from reports.sanitize import one_line, safe_text
from results.archive import BUMP_REPORT
from results.model import Cell, RunResults, State

SHOWN_PACKAGES = 60  # rows of the table of package changes across cells
SHOWN_CELLS = 60  # rows of the per-cell table, items of each list of cells
SHOWN_SUITES = 40  # rows of the InRelease dates table
CELLS_PER_CHANGE = 4  # cell ids named in one row of the package table
CHANGES_PER_REGRESSION = 8  # package changes shown under one regression
DETAILS_PER_REGRESSION = 6  # other differences shown under one regression
# The scheduler's reason for a cell it skipped: "<prerequisite cell id> did not succeed".
_BLOCKED_BY = re.compile(r"^(\S+) did not succeed$")


class ChangeKind(str, enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"  # the version changed


@dataclass(frozen=True, order=True)
class PackageChange:
    """One package of an image that differs: ``old`` None when added, ``new`` None when
    removed. ``name`` is ``name:arch`` where dib's manifest qualifies it."""

    name: str
    old: str | None
    new: str | None

    @property
    def kind(self) -> ChangeKind:
        if self.old is None:
            return ChangeKind.ADDED
        return ChangeKind.REMOVED if self.new is None else ChangeKind.CHANGED

    def text(self) -> str:
        """``libc6 2.36-9 -> 2.36-10``, ``+ foo 1.0`` (added), ``- bar 2.0`` (removed)."""
        if self.kind is ChangeKind.ADDED:
            return f"+ {self.name} {self.new}"
        if self.kind is ChangeKind.REMOVED:
            return f"- {self.name} {self.old}"
        return f"{self.name} {self.old} -> {self.new}"


def _package_list(value: object) -> dict[str, str] | None:
    """A recorded package list with only text names and versions (results.json is
    untrusted); None when there is none."""
    if not isinstance(value, dict):
        return None
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _pair_qualified(alone: Iterable[str], others: set[str], versions: Mapping[str, str],
                     other_versions: Mapping[str, str]) -> list[tuple[str, str]]:
    """Bare names on one side matched with an ``name:arch`` entry on the other: dib's
    manifest qualifies a name once a second architecture of it is installed, which is
    no change of the package itself. The entry with the same version is taken first."""
    pairs = []
    for name in sorted(alone):
        if ":" in name:
            continue
        candidates = sorted(o for o in others if ":" in o and o.split(":", 1)[0] == name)
        if not candidates:
            continue
        same = [o for o in candidates if other_versions[o] == versions[name]]
        chosen = (same or candidates)[0]
        others.discard(chosen)
        pairs.append((name, chosen))
    return pairs


def diff_packages(before: Mapping[str, str], after: Mapping[str, str]
                  ) -> tuple[PackageChange, ...]:
    """What changed from ``before`` to ``after`` (name -> version), sorted by name."""
    gone, new = set(before) - set(after), set(after) - set(before)
    pairs = [(name, name) for name in set(before) & set(after)]
    found = _pair_qualified(gone, new, before, after)
    gone -= {old for old, _ in found}
    pairs += found
    found = _pair_qualified(new, gone, after, before)
    new -= {added for added, _ in found}
    pairs += [(old, added) for added, old in found]
    changes = [PackageChange(n, before[o], after[n]) for o, n in pairs if before[o] != after[n]]
    changes += [PackageChange(name, None, after[name]) for name in new]
    changes += [PackageChange(name, before[name], None) for name in gone]
    return tuple(sorted(changes, key=lambda c: (c.name, c.old or "", c.new or "")))


@dataclass(frozen=True)
class CellPackages:
    """The package changes of one cell's image between the two runs."""

    cell_id: str
    changes: tuple[PackageChange, ...]

    def count(self, kind: ChangeKind) -> int:
        return sum(change.kind is kind for change in self.changes)

    def counts(self) -> tuple[int, int, int]:
        """How many packages changed version, were added, were removed."""
        return (self.count(ChangeKind.CHANGED), self.count(ChangeKind.ADDED),
                self.count(ChangeKind.REMOVED))

    def summary(self) -> str:
        """``12 packages changed, 3 added, 1 removed`` (parts that are 0 left out)."""
        words = ("changed", "added", "removed")
        shown = [(n, word) for n, word in zip(self.counts(), words) if n]
        if not shown:
            return "no package changed"
        first, word = shown[0]
        return ", ".join([f"{first} package{'s' if first != 1 else ''} {word}",
                          *(f"{n} {w}" for n, w in shown[1:])])


@dataclass(frozen=True)
class PackageDiff:
    """Every cell of both runs with a package list on both sides: those that changed (in
    the new run's table order), how many did not, and how many had a list on one side
    only (a build that failed before writing its image has none)."""

    changed: tuple[CellPackages, ...] = ()
    unchanged: int = 0
    one_sided: int = 0

    def total(self, kind: ChangeKind) -> int:
        return sum(cell.count(kind) for cell in self.changed)

    def of(self, cell_id: str) -> CellPackages | None:
        return next((c for c in self.changed if c.cell_id == cell_id), None)


def package_diff(old: RunResults, new: RunResults) -> PackageDiff:
    """The package diff of every cell present in both runs (its own list, not a boot
    row's build's: that one is counted once, under the build)."""
    changed, unchanged, one_sided = [], 0, 0
    for cell in grid_order(new):
        before_cell = old.cell(cell.host, cell.row)
        if before_cell is None:
            continue
        before = _package_list(before_cell.provenance.get("packages"))
        after = _package_list(cell.provenance.get("packages"))
        if before is None or after is None:
            recorded = "packages" in before_cell.provenance or "packages" in cell.provenance
            one_sided += recorded
            continue
        changes = diff_packages(before, after)
        if changes:
            changed.append(CellPackages(cell.id, changes))
        else:
            unchanged += 1
    return PackageDiff(tuple(changed), unchanged, one_sided)


@dataclass(frozen=True)
class SharedChange:
    """One package version change and the cells whose images it is in."""

    change: PackageChange
    cells: tuple[str, ...]


def shared_changes(diff: PackageDiff, cells: Collection[str] | None = None
                   ) -> list[SharedChange]:
    """Each distinct change once, with its cells (of ``cells`` when given): the change
    in most cells first, then by name."""
    where: dict[PackageChange, list[str]] = {}
    for cell in diff.changed:
        if cells is None or cell.cell_id in cells:
            for change in cell.changes:
                where.setdefault(change, []).append(cell.cell_id)
    rows = [SharedChange(change, tuple(ids)) for change, ids in where.items()]
    return sorted(rows, key=lambda row: (-len(row.cells), row.change))


# ---------------------------------------------------------------- infrastructure


def _blocker(cell: Cell) -> str | None:
    """The prerequisite whose failure made the scheduler skip ``cell``."""
    if cell.state is not State.SKIPPED or not isinstance(cell.reason, str):
        return None
    found = _BLOCKED_BY.match(cell.reason)
    return found.group(1) if found else None


def is_infrastructure(cell: Cell, run: RunResults, infrastructure: Collection[str]) -> bool:
    """Whether ``cell`` failed because of the mirror, the network or the engine: its cause
    is one of the ``infrastructure`` catalogue ids, the engine failed it (state error),
    or it was skipped because a prerequisite failed so (followed down the chain)."""
    return _infrastructure(cell, {c.id: c for c in run.cells}, infrastructure)


def _infrastructure(cell: Cell, by_id: Mapping[str, Cell], infrastructure: Collection[str]
                    ) -> bool:
    seen: set[str] = set()
    current: Cell | None = cell
    while current is not None and current.id not in seen:  # a results.json may loop
        seen.add(current.id)
        if current.state is State.ERROR:
            return True
        if current.state is not State.SKIPPED:
            return current.category is not None and (current.category.infrastructure
                                                     or current.category.id in infrastructure)
        blocker = _blocker(current)
        current = by_id.get(blocker) if blocker else None
    return False


@dataclass(frozen=True)
class BumpMode:
    """How a bump run is read: ``pinned`` is the run it bumps from (its baseline), and a
    failure whose cause is one of the ``infrastructure`` catalogue ids (those marked
    ``infrastructure: true``) is infrastructure, never a regression."""

    pinned: RunResults
    infrastructure: frozenset[str] = frozenset()


@dataclass
class BumpReport:
    """Everything a bump review shows, computed once."""

    old: RunResults
    new: RunResults
    comparison: Comparison
    packages: PackageDiff
    regressions: list[CellDiff] = field(default_factory=list)  # not infrastructure
    infrastructure: list[Cell] = field(default_factory=list)  # failed cells of the new run
    _by_row: dict[str, list[SharedChange]] = field(default_factory=dict, repr=False)

    @property
    def voting_regressions(self) -> list[CellDiff]:
        return [d for d in self.regressions if d.voting]

    def row_changes(self, row: str) -> list[SharedChange]:
        """The package changes of the cells of ``row`` (a target), across hosts."""
        if row not in self._by_row:
            cells = {c.id for c in self.new.cells if c.row == row}
            self._by_row[row] = shared_changes(self.packages, cells)
        return self._by_row[row]


def _failed(cell: Cell) -> bool:
    return cell.state.is_failure or cell.state in (State.SKIPPED, State.ALLOWED_FAILURE)


def bump_report(old: RunResults, new: RunResults,
                infrastructure: Collection[str] = frozenset()) -> BumpReport:
    """The bump of ``old`` (the pinned run) by ``new``: the package diff, the failures of
    the new run that are infrastructure, and the regressions that are not."""
    comparison = compare(old, new)
    found = BumpReport(old, new, comparison, package_diff(old, new))
    by_id = {c.id: c for c in new.cells}
    for cell in grid_order(new):
        if _failed(cell) and _infrastructure(cell, by_id, infrastructure):
            found.infrastructure.append(cell)
    infra = {c.id for c in found.infrastructure}
    found.regressions = [d for d in comparison.regressions if d.id not in infra]
    return found


def gating_cells(new: RunResults, mode: BumpMode) -> list[Cell]:
    """The cells that fail a bump run's gate: voting cells that regressed against the
    pinned run, for a cause other than the mirror, the network or the engine."""
    return [d.new for d in bump_report(mode.pinned, new, mode.infrastructure)
            .voting_regressions if d.new is not None]


# ---------------------------------------------------------------- text (report.txt)


def render_bump_text(mode: BumpMode, new: RunResults) -> str:
    """report.txt's bump lines: one per cell whose packages changed, then the counts and
    the infrastructure failures."""
    found = bump_report(mode.pinned, new, mode.infrastructure)
    diff = found.packages
    lines = [f"bump from {one_line(_pinned_name(found.old))}: package changes per cell "
             "(against the pinned run)"]
    lines += [f"  {one_line(cell.cell_id)}: {cell.summary()}" for cell in diff.changed]
    lines.append(f"  {len(diff.changed)} cells changed, {diff.unchanged} unchanged"
                 + (f", {diff.one_sided} without a package list in one run"
                    if diff.one_sided else ""))
    voting = len(found.voting_regressions)
    lines.append(f"bump regressions: {len(found.regressions)} ({voting} voting); "
                 f"infrastructure failures (never a regression of a bump run): "
                 f"{len(found.infrastructure)}")
    lines += [f"  infrastructure: {one_line(c.id)}: {describe(c)}" for c in found.infrastructure]
    return safe_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- markdown (bump.md)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _snapshot(run: RunResults) -> str | None:
    """The snapshot a pinned run was served from (``repository.snapshot``)."""
    repository = run.repository if isinstance(run.repository, dict) else {}
    return _text(repository.get("snapshot"))


def _pinned_name(run: RunResults) -> str:
    """What the run a bump starts from was built against: its snapshot, else its id."""
    snapshot = _snapshot(run)
    return f"snapshot {snapshot}" if snapshot else run.run_id


def _built_against(run: RunResults) -> str:
    snapshot = _snapshot(run)
    return f"snapshot {snapshot}" if snapshot else "live mirror"


def _suite_dates(run: RunResults) -> dict[tuple[str, str], str | None]:
    """(archive URL, suite) -> its InRelease ``Date:``, from the run's repository record
    (``archives``: URL -> suite -> state, or URL -> {"suites": ...}), else from the
    mirror dates provenance recorded; anything not shaped so is left out."""
    repository = run.repository if isinstance(run.repository, dict) else {}
    archives = repository.get("archives")
    if not isinstance(archives, dict):
        provenance = run.provenance if isinstance(run.provenance, dict) else {}
        archives = provenance.get("mirrors")
    dates: dict[tuple[str, str], str | None] = {}
    for url, suites in (archives.items() if isinstance(archives, dict) else ()):
        if isinstance(suites, dict) and isinstance(suites.get("suites"), dict):
            suites = suites["suites"]
        for suite, state in (suites.items() if isinstance(suites, dict) else ()):
            if isinstance(url, str) and isinstance(suite, str) and isinstance(state, dict):
                dates[(url, suite)] = _text(state.get("date"))
    return dates


def _elided(items: list[list[str]], limit: int, what: str) -> list[str]:
    lines = [line for item in items[:limit] for line in item]
    if len(items) > limit:
        lines.append(f"- \u2026 {len(items) - limit} more {what}")
    return lines


def _suites_section(found: BumpReport) -> list[str]:
    before, after = _suite_dates(found.old), _suite_dates(found.new)
    keys = sorted(set(before) | set(after))
    if not keys:
        return []
    rows = [_suite_row(key, before.get(key), after.get(key)) for key in keys[:SHOWN_SUITES]]
    lines = ["", "#### InRelease dates", "", "| archive | suite | pinned | now |",
             "|---|---|---|---|", *rows]
    if len(keys) > SHOWN_SUITES:
        lines += ["", f"\u2026 {len(keys) - SHOWN_SUITES} more suites"]
    return lines


def _suite_row(key: tuple[str, str], before: str | None, after: str | None) -> str:
    url, suite = key
    return (f"| {escape(url, 120)} | {escape(suite, 60)} | {escape(before or '-', 60)} | "
            f"{escape(after or '-', 60)} |")


def _cells_text(cells: tuple[str, ...]) -> str:
    shown = ", ".join(escape(c, 120) for c in cells[:CELLS_PER_CHANGE])
    more = len(cells) - CELLS_PER_CHANGE
    return shown + (f" and {more} more" if more > 0 else "")


def _packages_section(found: BumpReport) -> list[str]:
    rows = shared_changes(found.packages)
    if not rows:
        return []
    lines = ["", f"#### Package changes ({len(rows)})", "", "| package | pinned | now | cells |",
             "|---|---|---|---|"]
    lines += [f"| {escape(r.change.name, 120)} | {escape(r.change.old or '-', 80)} | "
              f"{escape(r.change.new or '-', 80)} | {len(r.cells)}: {_cells_text(r.cells)} |"
              for r in rows[:SHOWN_PACKAGES]]
    if len(rows) > SHOWN_PACKAGES:
        lines += ["", f"\u2026 {len(rows) - SHOWN_PACKAGES} more package changes"]
    cells = found.packages.changed
    lines += ["", "| cell | changed | added | removed |", "|---|---:|---:|---:|"]
    lines += ["| " + " | ".join([escape(c.cell_id, 120), *map(str, c.counts())]) + " |"
              for c in cells[:SHOWN_CELLS]]
    if len(cells) > SHOWN_CELLS:
        lines += ["", f"\u2026 {len(cells) - SHOWN_CELLS} more cells"]
    return lines


def failure_words(cell: Cell | None) -> frozenset[str]:
    """The words of a failure's legend and evidence that could name a package (read once
    per cell: a bump's diff can hold thousands of packages)."""
    if cell is None:
        return frozenset()
    return cause_words(" ".join(t for t in (cell.category.legend if cell.category else "",
                                            cell.evidence or "") if t))


def _change_items(changes: Iterable[PackageChange], words: Collection[str],
                  where: str) -> list[str]:
    ordered = sorted(changes, key=lambda c: not names_package(c.name, words))
    lines = [f"    - {code(c.text(), 200)}"
             + (" (likely: the failure names it)" if names_package(c.name, words) else "")
             for c in ordered[:CHANGES_PER_REGRESSION]]
    if len(ordered) > CHANGES_PER_REGRESSION:
        lines.append(f"    - \u2026 {len(ordered) - CHANGES_PER_REGRESSION} more {where}")
    return lines


def _package_items(found: BumpReport, diff: CellDiff) -> list[str]:
    """The cell's own package diff; when its image has no package list (a build that
    failed before writing it), the changes in the other cells of its row."""
    words = failure_words(diff.new)
    own = found.packages.of(diff.id)
    if own is not None:
        return [f"  - packages: {own.summary()}",
                *_change_items(own.changes, words, "package changes")]
    row = diff.new.row if diff.new is not None else ""
    shared = found.row_changes(row)  # this cell has none of its own: its peers'
    if not shared:
        return ["  - packages: not compared (no package list in one of the runs, and no "
                "other cell of this row changed)"]
    return ["  - packages: no package list of this cell in one run; changed in the other "
            f"cells of {code(row, 80)}:",
            *_change_items([s.change for s in shared], words, "package changes")]


def _other_differences(attribution: Attribution | None) -> list[str]:
    """What else differs for the cell (attribution), packages left out: shown above."""
    if attribution is None:
        return []
    factors: list[Factor] = [f for f in attribution.factors if f.kind != "packages"]
    entries = [(f.summary + (" (likely cause)" if f.likely else ""), f.details) for f in factors]
    # attribution's notes on packages ("not compared", "no recorded input differs") are
    # said better above, where the bump shows what changed in the row's other cells
    entries += [(note, ()) for note in attribution.notes
                if not note.startswith(("package versions not compared",
                                        "no recorded input of this cell differs"))]
    lines = []
    for entry, details in entries[:DETAILS_PER_REGRESSION]:
        shown = "; ".join(details[:4]) + ("; \u2026" if len(details) > 4 else "")
        lines.append(f"  - also: {escape(entry)}" + (f" ({escape(shown, 400)})" if details else ""))
    if len(entries) > DETAILS_PER_REGRESSION:
        lines.append(f"  - \u2026 {len(entries) - DETAILS_PER_REGRESSION} more differences")
    return lines


def _regression_item(found: BumpReport, diff: CellDiff) -> list[str]:
    voting = "" if diff.voting else " (non-voting)"
    lines = [f"- {code(diff.id)}{voting}: {escape(describe(diff.old))} \u2192 "
             f"{escape(describe(diff.new))}"]
    if diff.new is not None and diff.new.evidence:
        lines.append(f"  - evidence: {code(diff.new.evidence)}")
    lines += _package_items(found, diff)
    return lines + _other_differences(found.comparison.attributions.get(diff.id))


def _infrastructure_item(found: BumpReport, cell: Cell) -> list[str]:
    before = found.old.cell(cell.host, cell.row)
    was = f" (pinned run: {escape(describe(before))})" if before is not None else ""
    line = f"- {code(cell.id)}: {escape(describe(cell))}{was}"
    return [line] + ([f"  - evidence: {code(cell.evidence)}"] if cell.evidence else [])


def _counts_line(found: BumpReport) -> str:
    diff = found.packages
    compared = len(diff.changed) + diff.unchanged
    parts = [f"**{compared} cells compared**: {len(diff.changed)} with package changes "
             f"({diff.total(ChangeKind.CHANGED)} version changes, {diff.total(ChangeKind.ADDED)} "
             f"additions, {diff.total(ChangeKind.REMOVED)} removals in all), "
             f"{diff.unchanged} unchanged"]
    if diff.one_sided:
        parts.append(f"{diff.one_sided} without a package list in one run")
    parts.append(f"**{len(found.regressions)} regressions** ({len(found.voting_regressions)} "
                 f"voting), {len(found.comparison.fixes)} fixes")
    parts.append(f"{len(found.infrastructure)} infrastructure failures")
    return "; ".join(parts) + "."


def _section(title: str, items: list[list[str]], what: str) -> list[str]:
    if not items:
        return []
    return ["", f"#### {title} ({len(items)})", "", *_elided(items, SHOWN_CELLS, what)]


def _title(found: BumpReport) -> str:
    day = escape((_text(found.new.started) or "?")[:10], 20)
    return (f"### Bump {code(_pinned_name(found.old), 120)} \u2192 "
            f"{escape(_built_against(found.new), 140)} ({day})")


def render_bump_markdown(old: RunResults, new: RunResults,
                         infrastructure: Collection[str] = frozenset(),
                         limit: int = MAX_CHARS) -> str:
    """The body of a "bump the snapshot" review: title, counts, InRelease dates, the
    package changes across cells, regressions with what differs (packages first), then
    the infrastructure failures. At most ``limit`` characters."""
    found = bump_report(old, new, infrastructure)
    lines = [_title(found), "", _counts_line(found),
             "", f"Run {code(new.run_id, 80)} against the pinned run {code(old.run_id, 80)}."]
    lines += _suites_section(found)
    lines += _packages_section(found)
    lines += _section("Regressions", [_regression_item(found, d) for d in found.regressions],
                      "regressions")
    lines += _section("Infrastructure failures (the mirror, the network or the engine: "
                      "never a regression of a bump run)",
                      [_infrastructure_item(found, c) for c in found.infrastructure],
                      "infrastructure failures")
    if new.interrupted:
        lines += ["", "**Interrupted**: results are partial."]
    return safe_text(bounded("\n".join(lines) + "\n", limit))


def bounded(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` cut at a line to fit ``limit`` characters, saying how many lines went."""
    if len(text) <= limit:
        return text
    kept = text[: max(limit - 200, 0)].rsplit("\n", 1)[0]  # room for the closing line
    dropped = text.count("\n") - kept.count("\n")
    return kept + f"\n\n\u2026 {dropped} more lines (cut to fit a review; see report.html)\n"


def summary_section(mode: BumpMode, new: RunResults) -> list[str]:
    """summary.md's short Bump section: the counts, and the review body's file."""
    found = bump_report(mode.pinned, new, mode.infrastructure)
    lines = ["", "#### Bump", "", f"Against {code(_pinned_name(found.old), 120)}: "
             + _counts_line(found)]
    infrastructure = len(found.comparison.regressions) - len(found.regressions)
    if infrastructure:
        lines += ["", f"{infrastructure} of the regressions above are infrastructure (the "
                  "mirror, the network or the engine): they never fail a bump run's gate."]
    return lines + ["", "Package changes per cell and the review body: "
                    f"[{BUMP_REPORT}]({BUMP_REPORT})."]

