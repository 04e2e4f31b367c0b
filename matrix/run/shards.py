"""Split a plan into shards that run on separate machines, and select one of them.

The unit of a shard is a host's whole column: its ``hostgen`` and every cell that
needs it (check rows, builds, boot rows). Cells of one host share that host's
image and dib layer on the engine that built them, so a shard never needs
another shard's engine, and a column is never split. More shards than hosts
leave some shards empty: such a shard runs nothing and says so.

Shards are balanced by estimated duration, largest column first onto the least
loaded shard (ties: lower shard number, then host name). Estimates come from the
recorded durations of earlier runs when an output directory with history is
given, else from a fixed cost per kind of cell. The same inputs (plan, shard
count, history) give the same shards on every machine; the ``run --shard``
side of a CI job has no history, so it either balances by kind too (what
``plan --shards N`` prints without ``--history``) or follows the JSON that
``plan --shards N --history DIR --format json`` printed (``--shard-plan FILE``).

Pure functions except :func:`load_history` (it reads the output directory); no
engine. The shard mark carries the dib tree's digest (``matrix.config.dibtree``): a
merge refuses parts run with different trees.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from matrix.config.dibtree import DibTree
from matrix.run.plan import Plan, PlannedCell
from results.archive import OutDir
from results.limits import MAX_SHARDS  # one ceiling for plan, run --shard and merge
from results.model import CellKind, RunResults, State

HASH_VERSION = "1"
# Seconds a cell of each kind costs when no earlier run recorded it.
KIND_COST = {CellKind.HOSTGEN: 120.0, CellKind.CHECK: 60.0, CellKind.BUILD: 90.0,
             CellKind.BOOT: 60.0}
HISTORY_RUNS = 10  # the newest runs an estimate looks at
SPEC_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
LABEL_HOSTS = 3  # hosts named in a label before "+N more"


class ShardError(ValueError):
    """A bad --shard/--shards value or a shard plan that does not fit this matrix."""


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, as in --shard I/N
    count: int
    hosts: tuple[str, ...]
    cells: int  # cells to run (excluded ones not counted)
    estimate: float  # seconds

    @property
    def spec(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def label(self) -> str:
        if not self.hosts:
            return f"shard {self.spec}: no cells"
        named = ", ".join(self.hosts[:LABEL_HOSTS])
        more = len(self.hosts) - LABEL_HOSTS
        return f"shard {self.spec}: {named}" + (f" +{more} more" if more > 0 else "")


@dataclass(frozen=True)
class Estimates:
    seconds: dict[str, float]  # cell id -> estimated seconds
    source: str  # "history" (some cell had a recorded duration) or "kind"
    runs: int = 0  # earlier runs read


@dataclass(frozen=True)
class ShardPlan:
    count: int
    matrix_hash: str
    balance: str  # "history", "kind" or "plan-file"
    shards: tuple[Shard, ...]
    assignment: dict[str, int] = field(default_factory=dict)  # host -> shard index

    def to_json(self) -> list[dict[str, Any]]:
        """The CI matrix: one object per shard, in shard order."""
        return [{"index": s.index, "shard": s.spec, "label": s.label, "hosts": list(s.hosts),
                 "cells": s.cells, "estimate_seconds": round(s.estimate, 1),
                 "matrix_hash": self.matrix_hash, "balance": self.balance}
                for s in self.shards]


def parse_spec(text: str) -> tuple[int, int]:
    """``I/N`` (1 <= I <= N) as (I, N)."""
    match = SPEC_RE.match(text or "")
    if not match:
        raise ShardError(f"--shard {text!r}: expected I/N, e.g. 1/4")
    index, count = int(match.group(1)), int(match.group(2))
    check_count(count)
    if not 1 <= index <= count:
        raise ShardError(f"--shard {text!r}: I must be between 1 and {count}")
    return index, count


def check_count(count: int) -> int:
    if not 1 <= count <= MAX_SHARDS:
        raise ShardError(f"shard count {count}: must be between 1 and {MAX_SHARDS}")
    return count


def _cell_definition(cell: PlannedCell) -> dict[str, Any]:
    target = cell.target
    return {
        "id": cell.id, "kind": cell.kind.value, "needs": list(cell.needs),
        "env": [list(pair) for pair in cell.env], "excluded": cell.excluded,
        "voting": cell.voting,
        "target": None if target is None else {
            "name": target.name, "elements": list(target.elements),
            "env": [list(pair) for pair in target.env], "outputs": list(target.outputs),
            "arch": target.arch, "requires": {"tools": list(target.requires.tools),
                                              "debootstrap_script":
                                              target.requires.debootstrap_script},
            "boot_test": target.boot_test, "upstream_elements": target.upstream_elements,
            # Only when chosen: plans made before boot checks keep their hash.
            **({} if target.boot_checks is None else {"boot_checks": list(target.boot_checks)})},
    }


def matrix_hash(plan: Plan) -> str:
    """Content hash of the whole plan: every cell, its host's and target's definitions
    (not where their files are: two checkouts of one commit agree)."""
    document = {
        "version": HASH_VERSION,
        "hosts": [h.canonical() for h in plan.hosts],
        "rows": list(plan.rows),
        "cells": [_cell_definition(c) for c in plan.cells],
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_history(out_dir: Path, runs: int = HISTORY_RUNS) -> list[RunResults]:
    """The newest ``runs`` readable runs directly under ``out_dir`` (newest first; a run
    that cannot be read is skipped with a warning)."""
    if not out_dir.is_dir():
        raise ShardError(f"--history {out_dir}: not a directory")
    return [stored.results for stored in OutDir(out_dir).runs(runs)]


def _recorded(history: Iterable[RunResults]) -> dict[str, list[float]]:
    """cell id -> durations of its real runs (not reused, skipped, excluded or pending)."""
    durations: dict[str, list[float]] = {}
    for run in history:
        for cell in run.cells:
            if (cell.duration is None or cell.reused or cell.duration < 0
                    or cell.state in (State.PENDING, State.SKIPPED, State.EXCLUDED)):
                continue
            durations.setdefault(cell.id, []).append(float(cell.duration))
    return durations


def estimate(plan: Plan, history: list[RunResults] | None = None) -> Estimates:
    """Seconds per cell: the median of its recorded durations, else the median of its
    kind's recorded durations, else KIND_COST. Excluded cells cost nothing."""
    recorded = _recorded(history or [])
    by_kind: dict[CellKind, list[float]] = {}
    for cell in plan.cells:
        by_kind.setdefault(cell.kind, []).extend(recorded.get(cell.id, ()))
    seconds: dict[str, float] = {}
    for cell in plan.cells:
        if cell.excluded is not None:
            seconds[cell.id] = 0.0
        elif cell.id in recorded:
            seconds[cell.id] = statistics.median(recorded[cell.id])
        elif by_kind.get(cell.kind):
            seconds[cell.id] = statistics.median(by_kind[cell.kind])
        else:
            seconds[cell.id] = KIND_COST[cell.kind]
    used = any(cell.id in recorded for cell in plan.cells)
    return Estimates(seconds, "history" if used else "kind", len(history or []))


def split(plan: Plan, count: int, estimates: Estimates | None = None) -> ShardPlan:
    """Host columns onto ``count`` shards, balanced by estimated seconds."""
    check_count(count)
    estimates = estimates or estimate(plan)
    columns: dict[str, list[PlannedCell]] = {h.name: [] for h in plan.hosts}
    for cell in plan.cells:
        columns.setdefault(cell.host.name, []).append(cell)
    weight = {host: round(sum(estimates.seconds.get(c.id, 0.0) for c in cells), 3)
              for host, cells in columns.items()}
    loads = [0.0] * count
    members: list[list[str]] = [[] for _ in range(count)]
    for host in sorted(columns, key=lambda h: (-weight[h], h)):
        target = min(range(count), key=lambda i: (loads[i], i))
        loads[target] += weight[host]
        members[target].append(host)
    order = {h.name: i for i, h in enumerate(plan.hosts)}
    shards = []
    assignment: dict[str, int] = {}
    for i, hosts in enumerate(members):
        hosts.sort(key=lambda h: order.get(h, len(order)))
        for host in hosts:
            assignment[host] = i + 1
        cells = sum(1 for h in hosts for c in columns[h] if c.excluded is None)
        shards.append(Shard(i + 1, count, tuple(hosts), cells, round(loads[i], 3)))
    return ShardPlan(count, matrix_hash(plan), estimates.source, tuple(shards), assignment)


def from_plan_file(path: Path, plan: Plan, count: int) -> ShardPlan:
    """The assignment printed by ``plan --shards N --format json`` (the whole list, or
    one shard's object when every host not named stays out of this shard)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ShardError(f"--shard-plan {path}: cannot read: {err}") from err
    entries = data if isinstance(data, list) else [data]
    wanted = matrix_hash(plan)
    assignment: dict[str, int] = {}
    known = {h.name for h in plan.hosts}
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise ShardError(f"--shard-plan {path}: expected objects of plan --shards "
                             "--format json")
        if entry.get("matrix_hash") != wanted:
            raise ShardError(f"--shard-plan {path}: planned for another matrix (hash "
                             f"{str(entry.get('matrix_hash'))[:12]}, this one {wanted[:12]}): "
                             "plan again")
        spec = str(entry.get("shard", ""))
        index, entry_count = parse_spec(spec)
        if entry_count != count:
            raise ShardError(f"--shard-plan {path}: shard {spec} is not of {count} shards")
        hosts = entry.get("hosts")
        if not isinstance(hosts, list):
            raise ShardError(f"--shard-plan {path}: shard {spec} has no list of hosts")
        for host in hosts:
            if host not in known:
                raise ShardError(f"--shard-plan {path}: host {host!r} is not in this matrix")
            if assignment.setdefault(str(host), index) != index:
                raise ShardError(f"--shard-plan {path}: host {host!r} is in two shards")
    base = split(plan, count)
    columns: dict[str, int] = {}
    for cell in plan.cells:
        if cell.excluded is None:
            columns[cell.host.name] = columns.get(cell.host.name, 0) + 1
    shards = tuple(Shard(i, count, tuple(h.name for h in plan.hosts
                                         if assignment.get(h.name) == i),
                         sum(columns.get(h, 0) for h, at in assignment.items() if at == i), 0.0)
                   for i in range(1, count + 1))
    return replace(base, balance="plan-file", shards=shards, assignment=assignment)


def select(plan: Plan, shard_plan: ShardPlan, index: int) -> Plan:
    """The part of ``plan`` shard ``index`` runs: its hosts' columns, rows they use."""
    hosts = set(shard_plan.shards[index - 1].hosts)
    cells = tuple(c for c in plan.cells if c.host.name in hosts)
    used = {c.row for c in cells}
    return Plan(tuple(h for h in plan.hosts if h.name in hosts),
                tuple(r for r in plan.rows if r in used), cells)


def mark(plan: Plan, shard_plan: ShardPlan, index: int, dib_tree: DibTree) -> dict[str, Any]:
    """What a shard's results.json says of it (``RunResults.shard``): enough for a merge
    to check its parts and to list every cell of the matrix, run or not."""
    return {
        "kind": "part",
        "index": index,
        "count": shard_plan.count,
        "matrix_hash": shard_plan.matrix_hash,
        "dib_tree_digest": dib_tree.digest,
        "balance": shard_plan.balance,
        "hosts": list(shard_plan.shards[index - 1].hosts),
        "plan": {
            "hosts": [h.name for h in plan.hosts],
            "rows": list(plan.rows),
            "assignment": dict(sorted(shard_plan.assignment.items())),
            "cells": [[c.host.name, c.row, c.kind.value, c.voting] for c in plan.cells],
        },
    }


def render_text(shard_plan: ShardPlan, estimates: Estimates) -> str:
    source = {"history": f"recorded durations of {estimates.runs} earlier runs",
              "kind": "cell count and kind (no history)"}[estimates.source]
    lines = [f"{shard_plan.count} shards of matrix {shard_plan.matrix_hash[:12]}, balanced by "
             f"{source}; a host's column stays in one shard",
             "run one: dib-matrix run MATRIX --shard I/N; merge: dib-matrix merge RUN_DIR... "
             "-o OUT"]
    return "\n".join(lines)
