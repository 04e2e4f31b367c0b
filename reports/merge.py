"""Merge the run directories of a sharded run into one run directory.

Each part is a run of ``dib-matrix run MATRIX --shard I/N``: its results.json says
which shard it is and carries the whole plan (``RunResults.shard``). A merge
checks that the parts agree (same matrix content hash, same dib tree content,
same shard count, assignment and planned cells), that no shard is given twice, no
host's column is in two parts and each part ran its shard's hosts, and writes one
run directory: results.json with every cell of the matrix (a missing shard's cells
stay ``pending`` with the reason), report.txt/html and junit.xml, each part's logs
and images, and each part's own results.json and run.log under
``parts/shard-I-of-N/``.

Images are hard-linked from the parts when they are on the same filesystem, else
copied (``RunResults.shard['files']`` says which); logs are copied (a resumed or
re-run cell of the merged run may append to its log).

A part is untrusted input (a CI artifact from another machine), so:

- its shard mark is checked for shape, bounds (``results.limits``) and names
  (``results.names``) before any of it is used, and every path built from it
  goes through ``results.paths.inside``, which holds even for a mark that was
  never checked;
- symlinks in a part are never followed (``reports.partfiles``): a symlinked
  directory where merge reads is refused with a MergeError naming it; a symlinked
  file, a FIFO, a device or a socket is skipped and listed in
  ``MergeOutcome.skipped`` (the command line warns);
- the output directory is made absolute and normalised before it is checked, and
  must be new or an empty directory, with a name that is a run id.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports import write_all
from reports.partfiles import (
    MergeError,
    Survey,
    check_tree_top,
    place,
    shown,
    survey_file,
    survey_tree,
)
from reports.sanitize import one_line
from results.archive import IMAGES, LOGS, RUN_LOG, RunDir
from results.limits import MAX_PARTS, MAX_SHARDS
from results.model import Cell, CellKind, RunResults
from results.names import is_name, is_row, is_run_id
from results.paths import UnsafePath, absolute, kind, resolved
from results.reader import read_results
from results.store import RESULTS_FILE

__all__ = ["MergeError", "MergeOutcome", "Part", "check", "check_mark", "merge", "merge_parts",
           "output_dir", "place", "read_part", "survey"]

PART_TREES = (IMAGES, LOGS)  # what merge reads of a part, besides its two files
PART_FILES = (RESULTS_FILE, RUN_LOG)  # kept under parts/shard-I-of-N/
CELL_KINDS = frozenset(k.value for k in CellKind)
# What every part's plan must agree on; not "assignment": a part run with one shard's
# object of a --shard-plan file knows only its own hosts' shard.
PLAN_CELLS = ("hosts", "rows", "cells")


@dataclass
class Part:
    path: Path
    results: RunResults

    @property
    def mark(self) -> dict:
        return self.results.shard

    @property
    def index(self) -> int:
        return int(self.mark["index"])


@dataclass
class MergeOutcome:
    results: RunResults
    run_dir: Path
    missing: list[int] = field(default_factory=list)  # shard numbers not given
    files: str = "hardlink"  # or "copy", or "hardlink+copy"
    skipped: list[str] = field(default_factory=list)  # parts' entries that are not files


# -- the output -------------------------------------------------------------------------


def output_dir(out: Path) -> Path:
    """``out`` made absolute and normalised (``DIR/absent/..`` is ``DIR``), refused
    unless its name is a run id and it is new or an empty directory (not a symlink)."""
    out = absolute(out)
    if not is_run_id(out.name):
        raise MergeError(f"-o {out}: {shown(out.name)} is not a run id (letters, digits, "
                         "'.', '_', '-'): the directory's name is the merged run's id")
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        return out
    if stat.S_ISLNK(mode):
        raise MergeError(f"-o {out}: is a symlink: give the directory itself")
    if not stat.S_ISDIR(mode) or any(os.scandir(out)):
        raise MergeError(f"-o {out}: exists and is not an empty directory")
    return out


def _refuse_output_in_parts(out: Path, parts: list[Part]) -> None:
    try:
        real = resolved(out)
        sources = [(part, resolved(part.path)) for part in parts]
    except UnsafePath as err:
        raise MergeError(f"-o {out}: {err}") from err
    for part, source in sources:
        if real == source or source in real.parents:
            raise MergeError(f"-o {out}: inside part {part.path}")


# -- the parts and their marks ----------------------------------------------------------


def read_part(path: Path) -> Part:
    """The part at ``path`` (a run directory or its results.json), resolved once: a
    symlink given on the command line is the user's; one inside the part is not."""
    given = absolute(path)
    try:
        real = resolved(given)
    except UnsafePath as err:
        raise MergeError(str(err)) from err
    results_file = RunDir(real).results_file if real.is_dir() else real
    try:
        mode = os.lstat(results_file).st_mode
    except FileNotFoundError as err:
        raise MergeError(f"{given}: no results.json (a run directory of run --shard I/N)"
                         ) from err
    except OSError as err:
        raise MergeError(f"{given}: cannot read: {err}") from err
    if not stat.S_ISREG(mode):
        raise MergeError(f"{results_file}: is {kind(mode)}, not a regular file (symlinks "
                         "in a part are never followed)")
    try:
        results = read_results(results_file)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MergeError(f"{given}: cannot read results: {err}") from err
    mark = results.shard
    if not isinstance(mark, dict) or mark.get("kind") != "part":
        merged = isinstance(mark, dict) and mark.get("kind") == "merged"
        what = "a merged run" if merged else "not a shard's run"
        raise MergeError(f"{given}: {what} (merge takes the run directories of "
                         "run --shard I/N)")
    return Part(results_file.parent, results)


def check_mark(part: Part) -> None:
    """The shard mark's shape, bounds and names, checked before any of it is used (the
    part may have been written by hand, or tampered with, on another machine)."""
    mark, where = part.mark, part.path
    if not isinstance(mark, dict) or mark.get("kind") != "part":
        raise MergeError(f"{where}: not a shard's run (merge takes the run directories of "
                         "run --shard I/N)")
    count = _bounded(mark.get("count"), MAX_SHARDS, f"{where}: shard count")
    _bounded(mark.get("index"), count, f"{where}: shard index (of {count})")
    if not isinstance(mark.get("matrix_hash"), str):
        raise MergeError(f"{where}: shard mark without a matrix_hash")
    digest = mark.get("dib_tree_digest")
    if digest is not None and not isinstance(digest, str):
        raise MergeError(f"{where}: the shard mark's dib_tree_digest is not a string")
    plan = mark.get("plan")
    if not isinstance(plan, dict):
        raise MergeError(f"{where}: shard mark without a plan")
    hosts = set(_names(plan.get("hosts"), is_name, f"{where}: plan hosts"))
    rows = set(_names(plan.get("rows"), is_row, f"{where}: plan rows"))
    for host in _names(mark.get("hosts"), is_name, f"{where}: shard hosts"):
        if host not in hosts:
            raise MergeError(f"{where}: host {shown(host)} ran in this shard but is not in "
                             "the plan")
    _check_assignment(plan.get("assignment", {}), hosts, count, where)
    _check_planned_cells(plan.get("cells"), hosts, rows, where)


def _bounded(value: object, top: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise MergeError(f"{what} {shown(value)}: must be a whole number from 1 to {top}")
    return value


def _names(values: object, rule: Callable[[object], bool], what: str) -> list[str]:
    if not isinstance(values, list):
        raise MergeError(f"{what}: not a list")
    for value in values:
        if not rule(value):
            raise MergeError(f"{what}: {shown(value)} is not a name (lower case letters, "
                             "digits, '.', '_', '-'; never a path)")
    return values


def _check_assignment(assignment: object, hosts: set[str], count: int, where: Path) -> None:
    if not isinstance(assignment, dict):
        raise MergeError(f"{where}: the plan's assignment is not a mapping")
    for host, index in assignment.items():
        if host not in hosts:
            raise MergeError(f"{where}: the plan assigns {shown(host)}, not a host of the plan")
        _bounded(index, count, f"{where}: shard of host {host}")


def _check_planned_cells(cells: object, hosts: set[str], rows: set[str], where: Path) -> None:
    if not isinstance(cells, list):
        raise MergeError(f"{where}: the plan's cells are not a list")
    for entry in cells:
        if not (isinstance(entry, list) and len(entry) == 4
                and all(isinstance(value, str) for value in entry[:3])
                and entry[0] in hosts and entry[1] in rows and entry[2] in CELL_KINDS
                and isinstance(entry[3], bool)):
            raise MergeError(f"{where}: planned cell {shown(entry)}: expected [host, row, "
                             "kind, voting] of the plan's hosts and rows")


def _agree(parts: list[Part], key: str, what: str) -> str:
    values = {str(p.mark.get(key)) for p in parts}
    if len(values) > 1:
        listing = "; ".join(f"{p.path}: {str(p.mark.get(key))[:16]}" for p in parts)
        raise MergeError(f"the parts come from different {what} ({listing})")
    return values.pop()


def check(parts: list[Part]) -> tuple[int, list[int], dict[str, int]]:
    """(shard count, missing shard numbers, host -> shard) of parts that fit together."""
    if not parts:
        raise MergeError("no parts to merge")
    if len(parts) > MAX_PARTS:
        raise MergeError(f"{len(parts)} parts: at most {MAX_PARTS} (one per shard)")
    for part in parts:
        check_mark(part)
    _agree(parts, "matrix_hash", "matrices (matrix content hash)")
    _agree(parts, "dib_tree_digest", "dib trees (content digest)")
    count = int(_agree(parts, "count", "shard counts"))
    seen: dict[int, Path] = {}
    for part in parts:
        if part.index in seen:
            raise MergeError(f"shard {part.index}/{count} is given twice: {seen[part.index]} "
                             f"and {part.path}")
        seen[part.index] = part.path
    assignment = _assignment(parts)
    _check_owners(parts, assignment)
    for part in parts[1:]:
        if any(part.mark["plan"].get(k) != parts[0].mark["plan"].get(k) for k in PLAN_CELLS):
            raise MergeError(f"{part.path}: its plan is not the plan of {parts[0].path} (the "
                             "same matrix hash, other cells: a part was edited)")
    missing = [i for i in range(1, count + 1) if i not in seen]
    return count, missing, assignment


def _assignment(parts: list[Part]) -> dict[str, int]:
    assignment: dict[str, int] = {}
    for part in parts:
        for host, index in part.mark["plan"].get("assignment", {}).items():
            if assignment.setdefault(host, index) != index:
                raise MergeError(f"the parts were split differently: host {host} is in shard "
                                 f"{assignment[host]} for one part and {index} for another "
                                 "(run every shard with the same --shard-plan, or none)")
    return assignment


def _check_owners(parts: list[Part], assignment: dict[str, int]) -> None:
    owner: dict[str, int] = {}
    for part in parts:
        for host in part.mark["hosts"]:
            if host in owner:
                raise MergeError(f"host {host} ran in shard {owner[host]} and {part.index}")
            owner[host] = part.index
            if assignment.get(host, part.index) != part.index:
                raise MergeError(f"{part.path}: host {host} ran in shard {part.index} but was "
                                 f"planned for shard {assignment[host]}")
        # A part that drops a host of its shard would leave that column pending unseen.
        absent = [h for h, i in assignment.items() if i == part.index
                  and h not in part.mark["hosts"]]
        if absent:
            raise MergeError(f"{part.path}: shard {part.index} was planned to run "
                             f"{', '.join(sorted(absent))}, which its mark does not list")


# -- the merge --------------------------------------------------------------------------


def merge(paths: list[Path], out: Path, baseline: RunResults | None = None) -> MergeOutcome:
    """Merge the parts at ``paths`` into the new run directory ``out``."""
    if len(paths) > MAX_PARTS:  # before reading any: each is a file to parse
        raise MergeError(f"{len(paths)} parts: at most {MAX_PARTS} (one per shard)")
    out = output_dir(out)
    return merge_parts([read_part(p) for p in paths], out, baseline)


def merge_parts(parts: list[Part], out: Path, baseline: RunResults | None = None
                ) -> MergeOutcome:
    """Merge ``parts`` (read, or made by a caller: every check is made here) into ``out``."""
    out = output_dir(out)
    count, missing, assignment = check(parts)
    parts = sorted(parts, key=lambda p: p.index)
    _refuse_output_in_parts(out, parts)
    found = Survey()
    for part in parts:  # every part surveyed before the output is made: refusals write nothing
        survey(part, count, found)
    try:  # the parts' own fields, past the mark: the reader checks them, this holds alone
        merged = _merged_results(parts, out.name, _merged_cells(parts, count, assignment),
                                 bool(missing))
    except (TypeError, AttributeError, KeyError, ValueError) as err:
        raise MergeError(f"a part's results.json is malformed: {one_line(str(err), 200)}"
                         ) from err
    out.mkdir(parents=True, exist_ok=True)
    modes = place(found.placements, out)
    files = "+".join(sorted(modes - {"copy-meta"})) or "none"
    merged.shard = _merged_mark(parts, count, missing, files)
    RunDir(out).save(merged)
    write_all(out, merged, baseline=baseline)
    return MergeOutcome(merged, out, missing, files, found.skipped)


def _merged_mark(parts: list[Part], count: int, missing: list[int], files: str
                 ) -> dict[str, Any]:
    return {
        "kind": "merged",
        "count": count,
        "matrix_hash": parts[0].mark["matrix_hash"],
        "dib_tree_digest": parts[0].mark.get("dib_tree_digest"),
        "parts": [{"index": p.index, "run_id": p.results.run_id, "source": str(p.path),
                   "hosts": list(p.mark["hosts"]), "interrupted": p.results.interrupted}
                  for p in parts],
        "missing": missing,
        "files": files,
        "plan": parts[0].mark["plan"],
    }


def _merged_cells(parts: list[Part], count: int, assignment: dict[str, int]) -> list[Cell]:
    """Every planned cell, in plan order: the owning part's verdict, else pending."""
    by_host = {host: part for part in parts for host in part.mark["hosts"]}
    cells: list[Cell] = []
    for host, row, cell_kind, voting in parts[0].mark["plan"]["cells"]:
        part = by_host.get(host)
        found = part.results.cell(host, row) if part else None
        if found is None:
            found = Cell(host, row, CellKind(cell_kind), voting=bool(voting))
            if host in assignment:
                found.reason = f"shard {assignment[host]}/{count} missing: not merged"
            else:
                found.reason = "in no merged shard"
        cells.append(found)
    return cells


def _merged_results(parts: list[Part], run_id: str, cells: list[Cell],
                    missing: bool) -> RunResults:
    plan = parts[0].mark["plan"]
    return RunResults(
        run_id=run_id,
        matrix=parts[0].results.matrix,
        hosts=list(plan["hosts"]),
        rows=list(plan["rows"]),
        cells=cells,
        started=min((p.results.started for p in parts if p.results.started), default=None),
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        interrupted=missing or any(p.results.interrupted for p in parts),
        dib_tree=dict(parts[0].results.dib_tree),
        engine={"shards": {str(p.index): p.results.engine for p in parts}},
        host_images={k: v for p in parts for k, v in sorted(p.results.host_images.items())},
        base_images={k: v for p in parts for k, v in sorted(p.results.base_images.items())},
        options=dict(parts[0].results.options),
        reruns=[r for p in parts for r in p.results.reruns],
    )


# -- the files of a part ----------------------------------------------------------------


def survey(part: Part, count: int, found: Survey | None = None) -> Survey:
    """The regular files merge takes from ``part`` (its hosts' images and logs, its
    results.json and run.log), added to ``found``. A symlinked directory, or a name
    that would lead out of the part or the merged run, is a MergeError."""
    found = found if found is not None else Survey()
    try:
        for tree in PART_TREES:
            check_tree_top(part.path, tree)
        for host in part.mark["hosts"]:
            survey_tree(part.path, (IMAGES, host), True, found)
            survey_tree(part.path, (LOGS, host), False, found)
        keep = ("parts", f"shard-{part.index}-of-{count}")
        for name in PART_FILES:
            survey_file(part.path, (name,), (*keep, name), found)
    except UnsafePath as err:
        raise MergeError(f"{part.path}: refused: {one_line(str(err), 300)}") from err
    except OSError as err:
        raise MergeError(f"{part.path}: cannot read: {one_line(str(err), 300)}") from err
    return found


