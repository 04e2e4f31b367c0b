"""Re-run chosen cells of an existing run in place: ``run --resume RUN_DIR --cells GLOB``.

Which cells run again (:func:`choose`): the cells matching the globs; their
prerequisites that did not succeed (a build whose boot row was chosen; hostgen,
which a resumed run always checks again, cheap when its image is cached); and
what depends on a chosen cell (a chosen build's boot row: its verdict was about
the old image; a chosen hostgen's whole column). Every cell added is said with
its reason.

Before they run (:func:`reset`), each such cell's earlier verdict is recorded in
``results.json`` (``reruns``), its log is renamed to ``<row>.run-N.log`` beside
the new one (N counts the cell's earlier runs from 1), and the cell goes back to
``pending``; the resumed run then runs exactly those cells and keeps the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from matrix.config.schema import closest, match_globs
from matrix.run.plan import Plan
from results.archive import RunDir
from results.model import Cell, CellKind, RunResults, State

LOG_SUFFIX = ".log"


class SelectionError(ValueError):
    """--cells matched nothing, or cannot be honoured."""


@dataclass(frozen=True)
class Choice:
    cells: tuple[str, ...]  # cell ids to run again, in plan order
    notes: tuple[str, ...]  # why cells beyond the globs' own were added


def choose(plan: Plan, results: RunResults, globs: Sequence[str]) -> Choice:
    """The cells of ``plan`` to run again for ``globs`` (shell globs over cell ids)."""
    ids = [c.id for c in plan.cells]
    in_run = {c.id for c in results.cells}
    chosen: list[str] = []
    for pattern in globs:
        matched = match_globs(ids, pattern)
        if not matched:
            example = ids[0] if ids else "-"
            raise SelectionError(f"--cells {pattern!r} matches no cell of run "
                                 f"{results.run_id} (ids are HOST.ROW, e.g. {example})"
                                 f"{closest(pattern, ids)}")
        chosen.extend(m for m in matched if m not in chosen)
    missing = [i for i in chosen if i not in in_run]
    if missing:
        raise SelectionError(f"--cells: {', '.join(missing)} not in run {results.run_id}")
    by_id = plan.by_id()
    states = {c.id: c.state for c in results.cells}
    notes: list[str] = []
    selected = set(chosen)
    # Prerequisites that did not succeed run first (their dependents would be skipped).
    queue = list(chosen)
    while queue:
        cell = by_id[queue.pop()]
        for need in cell.needs:
            if need in selected:
                continue
            kind = by_id[need].kind if need in by_id else None
            if kind is CellKind.HOSTGEN:
                selected.add(need)
                queue.append(need)
                why = ("did not succeed" if states.get(need) is not State.SUCCESS
                       else "checked again (cheap when its image is cached)")
                notes.append(f"{need}: runs too, prerequisite of {cell.id} ({why})")
            elif need not in by_id:
                raise SelectionError(f"--cells: {cell.id} needs {need}, which is not in this "
                                     "run: it cannot run again here")
            elif states.get(need) is not State.SUCCESS:
                selected.add(need)
                queue.append(need)
                notes.append(f"{need}: runs too, prerequisite of {cell.id} that did not "
                             f"succeed ({_state(states.get(need))})")
    # What depends on a chosen cell ran on its old result: it runs again too.
    explicit = set(chosen) | {n for n in selected if by_id[n].kind is not CellKind.HOSTGEN}
    changed = True
    while changed:
        changed = False
        for cell in plan.cells:
            if cell.id in selected:
                continue
            cause = next((n for n in cell.needs if n in explicit), None)
            if cause is not None:
                selected.add(cell.id)
                explicit.add(cell.id)
                notes.append(f"{cell.id}: runs too, it depends on {cause}")
                changed = True
    return Choice(tuple(i for i in ids if i in selected), tuple(notes))


def _state(state: State | None) -> str:
    return state.value if state is not None else "not run"


def restrict(plan: Plan, choice: Choice) -> Plan:
    """The plan a resumed run follows: the chosen cells only (every other cell keeps its
    verdict; a cell not chosen is never run, even one still pending)."""
    keep = set(choice.cells)
    return replace(plan, cells=tuple(c for c in plan.cells if c.id in keep))


def earlier_logs(run_dir: Path, log: str) -> list[Path]:
    """Logs of a cell's earlier runs kept beside ``log`` (``<row>.run-N.log``), oldest first;
    none when ``log`` leads out of the run."""
    current = RunDir(run_dir).recorded(log)
    if current is None:
        return []
    stem = current.name[: -len(LOG_SUFFIX)] if current.name.endswith(LOG_SUFFIX) else current.name
    found = []
    for path in current.parent.glob(f"{_glob_escape(stem)}.run-*{LOG_SUFFIX}"):
        number = path.name[len(stem) + len(".run-"): -len(LOG_SUFFIX)]
        if number.isdigit():
            found.append((int(number), path))
    return [p for _, p in sorted(found)]


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def reset(run_dir: Path, results: RunResults, cells: Sequence[str], at: str,
          dib_tree: Path | None = None) -> list[str]:
    """Put ``cells`` back to pending, keeping their earlier verdict and log; save.
    ``dib_tree`` is the tree the cells run with now (recorded: it may be a fixed one).

    Returns one line per cell saying where its earlier log went."""
    lines = []
    by_id = {c.id: c for c in results.cells}
    for cell_id in cells:
        cell = by_id.get(cell_id)
        if cell is None:
            continue
        was = cell.state.value + (f" ({cell.category.legend})" if cell.category else "")
        kept = _keep_log(run_dir, cell)
        if cell.state is not State.PENDING or kept:
            results.reruns.append({
                "cell": cell.id, "at": at, "finished": cell.finished, "state": cell.state.value,
                "category": cell.category.legend if cell.category else None,
                "evidence": cell.evidence, "reason": cell.reason, "attempts": cell.attempts,
                "duration": cell.duration, "log": kept, "reused": cell.reused,
                "rerun_dib_tree": str(dib_tree) if dib_tree is not None else None,
            })
        _clear(cell)
        lines.append(f"{cell.id}: was {was}" + (f"; earlier log kept as {kept}" if kept else ""))
    RunDir(run_dir).save(results)
    return lines


def _keep_log(run_dir: Path, cell: Cell) -> str | None:
    """Rename the cell's log to the next free ``<row>.run-N.log``; its relative path."""
    run = RunDir(run_dir.resolve())  # recorded() resolves: so is the base of relative()
    current = run.recorded(cell.log)
    if current is None or not current.is_file():
        return None
    stem = current.name[: -len(LOG_SUFFIX)] if current.name.endswith(LOG_SUFFIX) else current.name
    number = len(earlier_logs(run.path, cell.log)) + 1
    while (current.parent / f"{stem}.run-{number}{LOG_SUFFIX}").exists():
        number += 1
    kept = current.parent / f"{stem}.run-{number}{LOG_SUFFIX}"
    os.rename(current, kept)
    return run.relative(kept)


def _clear(cell: Cell) -> None:
    cell.state = State.PENDING
    cell.category = None
    cell.evidence = None
    cell.reason = "re-running"
    cell.attempts = 0
    cell.retry = None
    cell.reused = False
    cell.started = cell.finished = None
    cell.duration = None
    cell.log = None
    cell.artifacts = []
    cell.checks = []
    cell.free_bytes = {}
    cell.excerpt = []
    cell.reproducer = None
    cell.key = None
