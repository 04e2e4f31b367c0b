"""Results of a run as plain data: cells, their states and the run's metadata.

The dataclasses and enums every other part reads and writes, with their JSON form
(``to_json``/``from_json``). Writing results.json is :mod:`results.store`, reading
it back :mod:`results.reader`. One thing here serves the store: every attribute
assignment on a :class:`Cell` takes a fresh change stamp, so a save re-serializes
only the cells that changed since the last one.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1

# Change stamps for Cell: ``next()`` on a count is atomic under the GIL, so two
# assignments never get the same stamp and a stamp is never reused.
_STAMPS = itertools.count(1)
# Names of the two private entries of a Cell's __dict__ (not dataclass fields:
# equality, repr, asdict and to_json ignore them): its change stamp, and what
# results.store last serialized of it.
STAMP_ENTRY = "_json_stamp"
SAVED_ENTRY = "_json_saved"
_POSITIONS = "_cell_positions"  # RunResults: (host, row) -> index in cells


class State(str, enum.Enum):
    """The verdict of one cell. Every report shows each with one colour and one meaning."""

    SUCCESS = "success"
    FAILED = "failed"  # the build failed; category says why (or "uncategorized")
    SKIPPED = "skipped"  # not run: a prerequisite failed (category missing-dependency)
    EXCLUDED = "excluded"  # left out by the matrix file, with its reason
    TIMEOUT = "timeout"  # killed at the per-cell timeout
    ERROR = "error"  # the infrastructure failed (engine), not the build
    ALLOWED_FAILURE = "allowed-failure"  # failed, but the cell is non-voting
    PENDING = "pending"  # planned, not finished (only seen in partial results)

    @property
    def is_failure(self) -> bool:
        return self in (State.FAILED, State.TIMEOUT, State.ERROR)

    @property
    def is_finished(self) -> bool:
        return self is not State.PENDING


class CellKind(str, enum.Enum):
    HOSTGEN = "hostgen"
    CHECK = "check"  # a per-host check row such as tox
    BUILD = "build"
    BOOT = "boot"


@dataclass
class Category:
    id: str
    legend: str  # with captured groups filled in, e.g. "No such script: .../forky"
    link: str | None = None
    labels: list[str] = field(default_factory=list)  # every matching category id
    ticket: str | None = None  # the catalogue entry's known-issue ticket (an http(s) URL)
    # The entry says the cause is the mirror, the network or the engine (a bump run's
    # gate never counts it): recorded, so reports need no catalogue to tell.
    infrastructure: bool = False


@dataclass
class Artifact:
    path: str  # relative to the run directory
    type: str
    size: int
    sha256: str


@dataclass
class ImageCheck:
    """One check of a built image before its cell may say ``success``."""

    name: str  # e.g. "os-release", "packages", "qemu-img check", "partition table"
    ok: bool
    detail: str  # what was found (and, when not ok, what was wanted)
    image: str = ""  # the artifact's path relative to the run directory
    seconds: float | None = None  # what the check took


# A boot row's checks of the running system are named "boot: <check>" (units, network,
# ...); one the guest skipped is ok, its detail starting "skipped: ".
BOOT_CHECK_PREFIX = "boot: "
SKIPPED_PREFIX = "skipped: "


@dataclass
class Cell:
    host: str
    row: str  # "hostgen", a check name ("tox") or a target name
    kind: CellKind
    state: State = State.PENDING
    category: Category | None = None
    evidence: str | None = None  # the matched log line, or the log tail when uncategorized
    reason: str | None = None  # why skipped or excluded
    voting: bool = True
    attempts: int = 0
    # Why a failed attempt was tried again or not ("not retried: <cause> does not change
    # on a retry"); None when the run asked for no retries or nothing failed.
    retry: str | None = None
    reused: bool = False
    started: str | None = None
    finished: str | None = None
    duration: float | None = None
    log: str | None = None  # relative to the run directory
    artifacts: list[Artifact] = field(default_factory=list)
    reproducer: str | None = None
    key: str | None = None  # content key for reuse
    checks: list[ImageCheck] = field(default_factory=list)  # image verification, build rows
    free_bytes: dict[str, int | None] = field(default_factory=dict)  # when a cell failed
    # What the result depended on (host image, element files, mirror date, packages):
    # matrix.run.provenance writes it, reports.attribution compares it. {} in older runs.
    provenance: dict[str, Any] = field(default_factory=dict)
    # A failure without a precise cause: the log lines most unlike successful logs of
    # its row, [{"line": 1-based number, "text": ...}] (matrix.verdict.excerpt). Assign
    # a new list to change it (a change inside the list is not seen by save).
    excerpt: list[dict[str, Any]] = field(default_factory=list)
    # A variant an investigation ran of a regressed cell: {"of": its id, "variant":
    # "rerun" | "dib-tree" | "host-image" | "snapshot" | "all"} (matrix.run.investigate).
    # Such a cell is off the grid and never counts in the gate; None for every other.
    investigation: dict[str, str] | None = None
    # The swarm node the cell's job ran on (--engine swarm); None for local cells.
    node: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        # After the assignment: a save that read the previous stamp before it
        # serialized this cell sees a new one next time and serializes it again.
        self.__dict__[STAMP_ENTRY] = next(_STAMPS)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # copy, deepcopy and pickle: the saved text is not carried over (a stamp
        # from another process could equal one this process hands out later).
        self.__dict__.update(state)
        self.__dict__.pop(SAVED_ENTRY, None)
        self.__dict__[STAMP_ENTRY] = next(_STAMPS)

    @property
    def id(self) -> str:
        return f"{self.host}.{self.row}"

    @property
    def passed_on_retry(self) -> bool:
        return self.state is State.SUCCESS and self.attempts > 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["id"] = self.id
        data["kind"] = self.kind.value
        data["state"] = self.state.value
        if not data["provenance"]:  # cells that ran nothing, and older runs: as before
            del data["provenance"]
        if not data["excerpt"]:  # most cells: a success, or a failure with its cause
            del data["excerpt"]
        if data["retry"] is None:  # most cells, and runs made before retries had causes
            del data["retry"]
        if data["investigation"] is None:  # every cell but an investigation's variants
            del data["investigation"]
        if data["node"] is None:  # every local cell, and runs made before swarm nodes
            del data["node"]
        if data["category"] is not None and data["category"]["ticket"] is None:
            del data["category"]["ticket"]  # only a known issue's cause has one
        if data["category"] is not None and not data["category"]["infrastructure"]:
            del data["category"]["infrastructure"]  # only the mirror's, network's, engine's
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cell:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["kind"] = CellKind(values["kind"])
        values["state"] = State(values["state"])
        if values.get("category"):
            values["category"] = Category(**values["category"])
        values["artifacts"] = [Artifact(**a) for a in values.get("artifacts") or []]
        values["checks"] = [ImageCheck(**c) for c in values.get("checks") or []]
        return cls(**values)


@dataclass
class RunResults:
    run_id: str
    matrix: str  # path of the matrix file
    hosts: list[str]  # column order
    rows: list[str]  # row order: hostgen, checks, then targets
    cells: list[Cell] = field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    interrupted: bool = False
    dib_tree: dict[str, Any] = field(default_factory=dict)  # path, commit
    engine: dict[str, Any] = field(default_factory=dict)
    host_images: dict[str, str] = field(default_factory=dict)  # host -> image tag
    options: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # dib tree, mirror dates
    # A shard of a sharded run or a merge of shards (matrix.run.shards, reports.merge);
    # written only when set, like reruns.
    shard: dict[str, Any] = field(default_factory=dict)
    # Earlier verdicts of cells re-run in place (run --resume RUN_DIR --cells GLOB).
    reruns: list[dict[str, Any]] = field(default_factory=list)
    # Image hosts' registry images, pinned: host -> {reference, digest[, written]}.
    base_images: dict[str, dict[str, str]] = field(default_factory=dict)
    # The repository state the run's cells saw (matrix.snapshot.view): live or pinned to
    # a snapshot, the snapshot's name, the run it bumps from, each archive's suites.
    repository: dict[str, Any] = field(default_factory=dict)
    # The verdicts of investigated regressions (matrix.run.investigate), one per cell:
    # {"cell", "verdict", "evidence", "baseline", "last_good", "variants", "impossible"}.
    investigations: list[dict[str, Any]] = field(default_factory=list)

    def cell(self, host: str, row: str) -> Cell | None:
        """The cell at (host, row): a dictionary lookup, not a scan per finished cell.

        The index is a private entry of ``__dict__`` (not a field: equality, repr and
        the JSON ignore it), rebuilt when ``cells`` changed under it.
        """
        found = self._at(host, row)
        if found is None:
            self.__dict__[_POSITIONS] = {(c.host, c.row): i for i, c in enumerate(self.cells)}
            found = self._at(host, row)
        return found

    def _at(self, host: str, row: str) -> Cell | None:
        position = self.__dict__.get(_POSITIONS, {}).get((host, row))
        if position is None or position >= len(self.cells):
            return None
        cell = self.cells[position]
        return cell if (cell.host, cell.row) == (host, row) else None

    def grid_cells(self) -> list[Cell]:
        """The cells of the table: every cell but an investigation's variants."""
        return [c for c in self.cells if c.investigation is None]

    def grid_view(self) -> RunResults:
        """These results without an investigation's variants (what the table, the counts,
        the gate and JUnit are about); the same object when there are none. The cells
        are shared, not copied: a view is for reading."""
        if all(c.investigation is None for c in self.cells):
            return self
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cells"}
        return RunResults(**values, cells=self.grid_cells())

    def investigation_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.investigation is not None]

    def classification_rate(self) -> float | None:
        failed = [c for c in self.grid_cells()
                  if c.state.is_failure or c.state is State.ALLOWED_FAILURE]
        if not failed:
            return None
        named = [c for c in failed if c.category and c.category.id != "uncategorized"]
        return len(named) / len(failed)

    def counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for cell in self.grid_cells():
            totals[cell.state.value] = totals.get(cell.state.value, 0) + 1
        return dict(sorted(totals.items()))

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cells"}
        data["schema_version"] = SCHEMA_VERSION
        drop_unset(data)
        data["cells"] = [c.to_json() for c in self.cells]
        data["counts"] = self.counts()
        data["classification_rate"] = self.classification_rate()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResults:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"results schema_version {version!r} is not {SCHEMA_VERSION}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "cells"}
        results = cls(**values)
        results.cells = [Cell.from_json(c) for c in data.get("cells", [])]
        return results


OMIT_WHEN_EMPTY = ("shard", "reruns",  # only sharded, merged or re-run runs have them
                   "investigations",  # only investigated runs
                   "provenance",  # runs made before provenance was recorded
                   "base_images",  # runs without a registry (image:) host
                   "repository")  # runs made before the repository view


def drop_unset(document: dict[str, Any]) -> None:
    """Leave out the empty keys of OMIT_WHEN_EMPTY (to_json and results.store alike)."""
    for name in OMIT_WHEN_EMPTY:
        if not document.get(name):
            document.pop(name, None)
